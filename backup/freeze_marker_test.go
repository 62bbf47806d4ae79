package backup

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestFreezeMarker runs the real freeze and thaw scripts with sh (xfs_freeze replaced by a stub
// that records its calls): each freeze adds its mount's line to the marker, a second freeze of
// the same mount replaces its line, and a thaw that succeeds removes the marker; a failed thaw
// keeps it, so the monitoring still sees the frozen volume.
func TestFreezeMarker(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	calls := filepath.Join(dir, "calls")
	stub := "#!/bin/sh\necho \"$*\" >>" + calls + "\n[ -e " + filepath.Join(dir, "fail") + " ] && { echo 'xfs_freeze: cannot unfreeze' >&2; exit 1; }\nexit 0\n"
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "xfs_freeze"), []byte(stub), 0o755); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "textfile", "instactl_freeze.prom")
	c := commands{freezeMarker: marker}
	sh := func(cmd []string) (string, error) {
		x := exec.Command(cmd[0], cmd[1:]...)
		x.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
		out, err := x.CombinedOutput()
		return string(out), err
	}
	for _, m := range []string{"/var/lib/postgresql", "/data", "/data"} {
		if out, err := sh(c.freeze(m)); err != nil {
			t.Fatalf("freeze %s: %v\n%s", m, err, out)
		}
	}
	b, err := os.ReadFile(marker)
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`^instactl_volume_frozen_since_seconds\{mountpoint="(/[a-z/]+)"\} [0-9]{10}$`)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || line.FindStringSubmatch(lines[0])[1] != "/var/lib/postgresql" || line.FindStringSubmatch(lines[1])[1] != "/data" {
		t.Fatalf("marker after three freezes:\n%s", b)
	}
	if got, _ := os.ReadFile(calls); string(got) != "-f /var/lib/postgresql\n-f /data\n-f /data\n" {
		t.Errorf("xfs_freeze calls: %q", got)
	}

	if err := os.WriteFile(filepath.Join(dir, "fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sh(c.thaw([]string{"/var/lib/postgresql", "/data"})); err == nil {
		t.Fatal("a failing thaw succeeded")
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("a failed thaw removed the marker: %v", err)
	}
	os.Remove(filepath.Join(dir, "fail"))
	if out, err := sh(c.thaw([]string{"/var/lib/postgresql", "/data"})); err != nil || !strings.Contains(out, "thawed /data") {
		t.Fatalf("thaw: %v\n%s", err, out)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("the marker outlived the thaw: %v", err)
	}
}
