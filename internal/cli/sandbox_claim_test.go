package cli

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/instactl/instactl/stack"
)

// claimStackFile writes a one-host sandbox stack in its own directory.
func claimStackFile(t *testing.T, name, base string, lbPort, motoPort int) string {
	t.Helper()
	dir := t.TempDir()
	data := fmt.Sprintf("name: %s\nprovider: sandbox\nnetwork:\n  address_base: %s\nroles:\n  app: {count: 1}\nsandbox:\n  dir: %s\n  lb_port: %d\n  moto_port: %d\n",
		name, base, filepath.Join(dir, "sandbox"), lbPort, motoPort)
	path := filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSandboxHeldByAnotherStack is issue 14's eighth break, against real sandbox hosts: with a
// stack A up, a stack B on the same addresses under another name is refused once, naming A and
// the command that frees them; a copy of A's file (same name and directory) is refused before
// it can plan to destroy A's hosts; and init next to A picks a name and addresses A does not use.
func TestSandboxHeldByAnotherStack(t *testing.T) {
	requireSandbox(t)
	const base = "127.0.140.1" // no other test uses 127.0.140-142.x
	pathA := claimStackFile(t, "instagram", base, 18140, 15140)
	sandboxUp(t, pathA)

	pathB := claimStackFile(t, "other", base, 18141, 15141)
	t.Cleanup(func() { run(t, "--stack", pathB, "sandbox", "down") })
	_, stderr, code := run(t, "--stack", pathB, "sandbox", "up")
	fix := "instactl --stack " + pathA + " sandbox down"
	if code != ExitUsage || !strings.Contains(stderr, `held by sandbox stack "instagram"`) || !strings.Contains(stderr, fix) {
		t.Errorf("stack B on A's addresses: exit %d, want 2 naming stack instagram and %q:\n%s", code, fix, stderr)
	}
	if n := strings.Count(stderr, "held by"); n != 1 || strings.Contains(stderr, "in use by another instance") {
		t.Errorf("want one line about the holder, got %d:\n%s", n, stderr)
	}

	// A copy of A's file, elsewhere: same name, same directory.
	a, err := os.ReadFile(pathA)
	if err != nil {
		t.Fatal(err)
	}
	pathC := filepath.Join(t.TempDir(), "instagram.yaml")
	if err := os.WriteFile(pathC, bytes.Replace(a, []byte("count: 1"), []byte("count: 2"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = run(t, "--stack", pathC, "sandbox", "up")
	if code != ExitUsage || !strings.Contains(stderr, "from "+pathA) || !strings.Contains(stderr, fix) {
		t.Errorf("a copy of A's file: exit %d, want 2 naming %s and %q:\n%s", code, pathA, fix, stderr)
	}
	if stdout, stderr, code := run(t, "--stack", pathA, "sandbox", "status"); code != 0 || !strings.Contains(stdout, "1 hosts, healthy") {
		t.Errorf("A after B and C were refused: exit %d\n%s%s", code, stdout, stderr)
	}

	// A's hosts asked to boot another image: the plan refuses, and says why for each change.
	moved := bytes.Replace(a, []byte("provider: sandbox\n"), []byte("provider: sandbox\nimage: ami-0000000000000beef\n"), 1)
	if err := os.WriteFile(pathA, moved, 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = run(t, "--stack", pathA, "sandbox", "up")
	if code == 0 || !strings.Contains(stderr, "instance.app[0]: ") || !strings.Contains(stderr, "--replace instance.app[0]") {
		t.Errorf("a refused sandbox plan: exit %d, want each refused change with its reason:\n%s", code, stderr)
	}
	if err := os.WriteFile(pathA, a, 0o644); err != nil {
		t.Fatal(err)
	}

	// init next to A, searching from A's base: another name, another range.
	var errOut bytes.Buffer
	pathD := filepath.Join(t.TempDir(), "instagram.yaml")
	opts := &InitOptions{IO: &IOStreams{Out: &bytes.Buffer{}, ErrOut: &errOut}, Path: pathD, AddressFrom: netip.MustParseAddr(base)}
	if err := initRun(opts); err != nil {
		t.Fatal(err)
	}
	d, err := stack.Load(pathD)
	if err != nil {
		t.Fatalf("init's file does not load: %v", err)
	}
	last := d.Network.AddressBase
	for range d.Hosts()[1:] {
		last = last.Next()
	}
	held := netip.MustParseAddr(base)
	if d.Name == "instagram" || d.Sandbox.Dir == "/var/lib/instactl/sandbox/instagram" || !(held.Less(d.Network.AddressBase) || last.Less(held)) {
		t.Errorf("init next to A chose name %s, dir %s, addresses %s-%s (A: instagram on %s)", d.Name, d.Sandbox.Dir, d.Network.AddressBase, last, base)
	}
	if !strings.Contains(errOut.String(), "this stack gets name "+d.Name+", addresses "+d.Network.AddressBase.String()) {
		t.Errorf("init does not say what it chose:\n%s", errOut.String())
	}
}
