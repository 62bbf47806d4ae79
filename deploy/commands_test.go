package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/templates"
)

// runLocal runs a remote command with this machine's sh, the same way sshd's login shell
// would run the quoted string, and returns stdout and the exit code.
func runLocal(t *testing.T, cmd remote.Command, stdin string) (string, int) {
	t.Helper()
	c := exec.Command("sh", "-c", cmd.String())
	c.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String() + errb.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

// stageLocal makes a sealed release directory as Stage would.
func stageLocal(t *testing.T, root, id string) {
	t.Helper()
	bin := BinaryPath(root, id, "app")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho "+id+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, code := runLocal(t, SealCommand(root, id, "sum-"+id), ""); code != 0 {
		t.Fatalf("seal: %s", out)
	}
}

func current(t *testing.T, root string) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(root, "current"))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

func history(t *testing.T, root string) string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(root, ".instactl", "history"))
	return strings.Join(strings.Fields(string(b)), ",")
}

func TestRestartCommandFollowsServiceManager(t *testing.T) {
	for sm, want := range map[string]string{
		templates.ServiceManagerSystemd: "systemctl restart instagram-app.service",
		templates.ServiceManagerSandbox: "/opt/instagram/bin/instactl-svc restart app",
	} {
		cmd, err := RestartCommand(sm, "app")
		if err != nil || cmd.String() != want {
			t.Errorf("RestartCommand(%s) = %q, %v; want %q", sm, cmd.String(), err, want)
		}
	}
	if _, err := RestartCommand("upstart", "app"); err == nil {
		t.Error("unknown service manager accepted")
	}
}

func TestCommandStringsAreQuoted(t *testing.T) {
	// A deploy root with a quote and a space must reach sh as one word.
	cmd := MarkCommand("/opt/it's here", "run-1", "abc")
	want := `sh -c 'set -e
[ -d '\''/opt/it'\''\'\'''\''s here/.instactl/runs'\'' ] || mkdir -p -- '\''/opt/it'\''\'\'''\''s here/.instactl/runs'\''
printf '\''activated %s\n'\'' abc > '\''/opt/it'\''\'\'''\''s here/.instactl/runs/run-1.tmp'\''
mv -f -- '\''/opt/it'\''\'\'''\''s here/.instactl/runs/run-1.tmp'\'' '\''/opt/it'\''\'\'''\''s here/.instactl/runs/run-1'\'''`
	if got := cmd.String(); got != want {
		t.Errorf("MarkCommand =\n%s\nwant\n%s", got, want)
	}
	root := filepath.Join(t.TempDir(), "it's here")
	if out, code := runLocal(t, MarkCommand(root, "run-1", "abc"), ""); code != 0 {
		t.Fatalf("mark: %s", out)
	}
	if b, _ := os.ReadFile(MarkerPath(root, "run-1")); string(b) != "activated abc\n" {
		t.Errorf("marker = %q", b)
	}
}

func TestProbe(t *testing.T) {
	root := t.TempDir()
	probe := ProbeCommand(root, "r1", "app", "sum-r1")
	if out, _ := runLocal(t, probe, ""); out != "current \nabsent\n" {
		t.Errorf("probe before staging = %q", out)
	}
	stageLocal(t, root, "r1")
	if out, _ := runLocal(t, probe, ""); out != "current \npresent\n" {
		t.Errorf("probe after staging = %q", out)
	}
	wrongSum := ProbeCommand(root, "r1", "app", "other")
	if out, _ := runLocal(t, wrongSum, ""); !strings.HasSuffix(out, "absent\n") {
		t.Errorf("probe with another sha = %q; want absent", out)
	}
	// current resolves to the release's name, through a symlinked root too.
	link := filepath.Join(t.TempDir(), "app")
	if err := os.Symlink(root, link); err != nil {
		t.Fatal(err)
	}
	if out, code := runLocal(t, ActivateCommand(root, "r1", "app"), ""); code != 0 {
		t.Fatalf("activate: %s", out)
	}
	if out, _ := runLocal(t, ProbeCommand(link, "r1", "app", "sum-r1"), ""); out != "current r1\npresent\n" {
		t.Errorf("probe of the current release through a symlinked root = %q", out)
	}
	// A binary written after its seal (truncated here; the later mtime is what any write
	// after the seal gives it) is not trusted: the release is staged again.
	bin := BinaryPath(root, "r1", "app")
	later := time.Now().Add(time.Minute)
	if err := os.Truncate(bin, 3); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(bin, later, later); err != nil {
		t.Fatal(err)
	}
	if out, _ := runLocal(t, probe, ""); out != "current r1\nabsent\n" {
		t.Errorf("probe of a binary modified after its seal = %q; want absent", out)
	}
}

func TestActivateRollbackHistory(t *testing.T) {
	root := t.TempDir()
	if out, code := runLocal(t, ActivateCommand(root, "r1", "app"), ""); code != 3 || !strings.Contains(out, "not staged") {
		t.Fatalf("activating an unstaged release: exit %d %q", code, out)
	}
	for _, id := range []string{"r1", "r2", "r3"} {
		stageLocal(t, root, id)
	}
	step := func(cmd remote.Command, wantOut, wantCur, wantHist string) {
		t.Helper()
		out, code := runLocal(t, cmd, "")
		if code != 0 || out != wantOut || current(t, root) != wantCur || history(t, root) != wantHist {
			t.Fatalf("exit %d out %q current %s history %s; want %q %s %s", code, out, current(t, root), history(t, root), wantOut, wantCur, wantHist)
		}
	}
	step(ActivateCommand(root, "r1", "app"), "previous \n", "r1", "r1")
	step(ActivateCommand(root, "r2", "app"), "previous r1\n", "r2", "r1,r2")
	step(ActivateCommand(root, "r2", "app"), "previous r2\n", "r2", "r1,r2") // idempotent
	step(ActivateCommand(root, "r3", "app"), "previous r2\n", "r3", "r1,r2,r3")
	if tgt, _ := os.Readlink(filepath.Join(root, "current")); tgt != filepath.Join(root, "releases", "r3") {
		t.Errorf("current -> %s; want an absolute path to the release", tgt)
	}
	step(RollbackCommand(root, "", "app"), "previous r3\ncurrent r2\n", "r2", "r1,r2")
	step(RollbackCommand(root, "", "app"), "previous r2\ncurrent r1\n", "r1", "r1")
	if out, code := runLocal(t, RollbackCommand(root, "", "app"), ""); code != 3 || !strings.Contains(out, "no previous release") {
		t.Errorf("rollback past the oldest: exit %d %q", code, out)
	}
	step(RollbackCommand(root, "r3", "app"), "previous r1\ncurrent r3\n", "r3", "r1,r3")
	if out, code := runLocal(t, RollbackCommand(root, "r9", "app"), ""); code != 3 || !strings.Contains(out, "not on this host") {
		t.Errorf("rollback to a missing release: exit %d %q", code, out)
	}
	// A history the host lost is rebuilt from current on the next activation.
	os.Remove(filepath.Join(root, ".instactl", "history"))
	step(ActivateCommand(root, "r2", "app"), "previous r3\n", "r2", "r3,r2")
	// Rollback skips releases that were deleted by hand.
	os.RemoveAll(ReleaseDir(root, "r3"))
	if out, code := runLocal(t, RollbackCommand(root, "", "app"), ""); code != 3 {
		t.Errorf("rollback to a deleted release: exit %d %q", code, out)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(root, ".current.tmp.*")); len(leftovers) > 0 {
		t.Errorf("temporary symlinks left: %v", leftovers)
	}
}

func TestReleasesAndPrune(t *testing.T) {
	root := t.TempDir()
	ids := []string{"r1", "r2", "r3", "r4", "r5"}
	for i, id := range ids {
		stageLocal(t, root, id)
		// Distinct staging times, oldest first.
		mt := time.Date(2026, 11, 26, 12, i, 0, 0, time.UTC)
		os.Chtimes(filepath.Join(ReleaseDir(root, id), shaFile), mt, mt)
	}
	runLocal(t, ActivateCommand(root, "r1", "app"), "")
	runLocal(t, ActivateCommand(root, "r2", "app"), "")
	out, _ := runLocal(t, ReleasesCommand(root, "app"), "")
	hr := parseReleases([]byte(out))
	if hr.Current != "r2" || hr.Previous != "r1" || len(hr.Releases) != 5 || hr.Releases[0].ID != "r5" ||
		!hr.Releases[3].Current || !hr.Releases[4].Previous || hr.Releases[0].SHA256 != "sum-r5" {
		b, _ := json.Marshal(hr)
		t.Fatalf("releases = %s\nfrom %q", b, out)
	}
	out, code := runLocal(t, PruneCommand(root, "app", 2), "")
	if code != 0 || out != "pruned r3\n" {
		t.Fatalf("prune keep 2: exit %d %q; want only r3 pruned (r5, r4 newest; r2 current; r1 previous)", code, out)
	}
	if _, err := os.Stat(ReleaseDir(root, "r3")); !os.IsNotExist(err) {
		t.Error("r3 still there")
	}
	if out, _ := runLocal(t, PruneCommand(root, "app", 2), ""); out != "" {
		t.Errorf("second prune = %q; want nothing", out)
	}
	if history(t, root) != "r1,r2" {
		t.Errorf("history = %s", history(t, root))
	}
}

func TestLockCommands(t *testing.T) {
	root := t.TempDir()
	a, _ := json.Marshal(LockInfo{Holder: "alice@laptop", RunID: "run-a", Release: "r1"})
	b, _ := json.Marshal(LockInfo{Holder: "bob@desk", RunID: "run-b"})
	if out, _ := runLocal(t, LockCommand(root, a), ""); out != "acquired\n" {
		t.Fatalf("first lock = %q", out)
	}
	out, _ := runLocal(t, LockCommand(root, b), "")
	state, info := parseLockReply([]byte(out))
	if state != "held" || info.Holder != "alice@laptop" || info.RunID != "run-a" {
		t.Fatalf("second lock = %q -> %s %+v", out, state, info)
	}
	if out, _ := runLocal(t, LockStatusCommand(root), ""); !strings.HasPrefix(out, "held\n{") {
		t.Errorf("status = %q", out)
	}
	if out, _ := runLocal(t, UnlockCommand(root, "run-b"), ""); !strings.HasPrefix(out, "held\n") {
		t.Errorf("unlock by another run = %q; want refused", out)
	}
	if out, _ := runLocal(t, UnlockCommand(root, "run-a"), ""); out != "released\n" {
		t.Errorf("unlock by holder = %q", out)
	}
	if out, _ := runLocal(t, LockStatusCommand(root), ""); out != "free\n" {
		t.Errorf("status after unlock = %q", out)
	}
	runLocal(t, LockCommand(root, b), "")
	if out, _ := runLocal(t, UnlockCommand(root, ""), ""); out != "released\n" {
		t.Errorf("forced unlock = %q", out)
	}
}

func TestAppendCommand(t *testing.T) {
	file := filepath.Join(t.TempDir(), "log", "deploy.jsonl")
	runLocal(t, AppendCommand(file), "{\"a\":1}\n")
	runLocal(t, AppendCommand(file), "{\"b\":\"it's\"}\n")
	if b, _ := os.ReadFile(file); string(b) != "{\"a\":1}\n{\"b\":\"it's\"}\n" {
		t.Errorf("audit log = %q", b)
	}
}
