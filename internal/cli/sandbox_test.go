package cli

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
)

// sandboxStackFile writes a sandbox stack for one test: its own addresses, ports and directory,
// so tests of different packages never collide.
func sandboxStackFile(t *testing.T, base string, lbPort, motoPort int, roles string) string {
	t.Helper()
	dir := t.TempDir()
	data := fmt.Sprintf(`name: t%d
provider: sandbox
network:
  address_base: %s
roles:
%s
sandbox:
  dir: %s
  lb_port: %d
  moto_port: %d
`, lbPort, base, roles, filepath.Join(dir, "sandbox"), lbPort, motoPort)
	path := filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// requireSandbox ends the test unless root and the sandbox's components are present.
func requireSandbox(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("sandbox integration test; -short")
	}
	testenv.RequireRoot(t)
	testenv.Require(t, "sshd", "openssh-server")
	testenv.Require(t, "nginx", "nginx-light")
	testenv.Require(t, "mkfs.xfs", "xfsprogs")
	testenv.Require(t, "redis-server", "redis-server")
	testenv.Require(t, "memcached", "memcached")
	testenv.Require(t, "moto_server", "python3-moto")
	testenv.Require(t, "/usr/lib/postgresql/15/bin/postgres", "postgresql-15")
}

// sandboxUp brings a stack up through the CLI and tears it down at cleanup, checking nothing is
// left running and no loop device stays attached.
func sandboxUp(t *testing.T, stackPath string) *stack.Stack {
	t.Helper()
	st, err := stack.Load(stackPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, stderr, code := run(t, "--stack", stackPath, "sandbox", "down"); code != 0 {
			t.Errorf("sandbox down: exit %d: %s", code, stderr)
		}
		out, _ := exec.Command("losetup", "-a").Output()
		if strings.Contains(string(out), st.Sandbox.Dir) {
			t.Errorf("loop devices left attached after down:\n%s", out)
		}
		if _, err := os.Stat(st.Sandbox.Dir); !os.IsNotExist(err) {
			t.Errorf("sandbox dir %s left after down", st.Sandbox.Dir)
		}
		cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, c := range cmdlines {
			if b, err := os.ReadFile(c); err == nil && strings.Contains(string(b), st.Sandbox.Dir) {
				t.Errorf("process of the sandbox left running: %s: %s", c, strings.ReplaceAll(string(b), "\x00", " "))
			}
		}
	})
	if _, stderr, code := run(t, "--stack", stackPath, "sandbox", "up"); code != 0 {
		t.Fatalf("sandbox up: exit %d:\n%s", code, stderr)
	}
	return st
}

// sandboxRun runs a shell command on host over SSH with strict host key checking.
func sandboxRun(t *testing.T, pool *remote.Pool, st *stack.Stack, host stack.HostRef, script string) string {
	t.Helper()
	addr, err := st.Address(host)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := pool.Get(ctx, remote.Target{Name: host.Name(), Address: addr.String(), Port: st.SSH.Port, User: st.SSH.User})
	if err != nil {
		t.Fatalf("ssh %s: %v", host.Name(), err)
	}
	res, err := c.Run(ctx, remote.Script(script), nil)
	if err != nil {
		t.Fatalf("%s: %v", host.Name(), err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("%s: %q exited %d: %s", host.Name(), script, res.ExitCode, res.Stderr)
	}
	return strings.TrimSpace(string(res.Stdout))
}

// TestSandboxFoundation is the foundation issue's proof: seven hosts, strict host keys, private
// filesystems, streaming Postgres and Redis replicas, XFS freeze/thaw, and a clean teardown.
func TestSandboxFoundation(t *testing.T) {
	requireSandbox(t)
	path := sandboxStackFile(t, "127.0.30.1", 18130, 15030, `  app: {count: 2}
  pg: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
  redis: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/redis}}
  memcached: {count: 1}`)
	st := sandboxUp(t, path)

	stdout, stderr, code := run(t, "--stack", path, "sandbox", "status")
	if code != 0 || !strings.Contains(stdout, "7 hosts, healthy") {
		t.Fatalf("status: exit %d\n%s\n%s", code, stdout, stderr)
	}
	// A second up changes nothing.
	if _, stderr, code := run(t, "--stack", path, "sandbox", "up"); code != 0 || !strings.Contains(stderr, "No changes.") {
		t.Fatalf("second up: exit %d: %s", code, stderr)
	}

	f := NewFactory(&IOStreams{}, &path)
	pool, err := f.SSH(false)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	// Private filesystems: each host writes its own name where every host sees a private copy.
	for _, h := range st.Hosts() {
		sandboxRun(t, pool, st, h, "echo "+h.Name()+" > /etc/instagram/who")
	}
	for _, h := range st.Hosts() {
		if got := sandboxRun(t, pool, st, h, "cat /etc/instagram/who"); got != h.Name() {
			t.Errorf("%s reads %q from its private /etc/instagram", h.Name(), got)
		}
	}
	if _, err := os.Stat("/etc/instagram/who"); err == nil {
		t.Error("a host's private file is visible on the machine")
	}

	// Postgres: write on the primary, read on the streaming replica.
	pg0, pg1 := stack.HostRef{Role: "pg", Index: 0}, stack.HostRef{Role: "pg", Index: 1}
	a0, _ := st.Address(pg0)
	sandboxRun(t, pool, st, pg0, fmt.Sprintf(`psql -h %s -U postgres -d instagram -qc "CREATE TABLE IF NOT EXISTS probe (v text); INSERT INTO probe VALUES ('from-primary')"`, a0))
	a1, _ := st.Address(pg1)
	waitFor(t, 30*time.Second, "row on the pg replica", func() bool {
		out := sandboxRun(t, pool, st, pg1, fmt.Sprintf(`psql -h %s -U postgres -d instagram -tAc "SELECT v FROM probe" 2>/dev/null || true`, a1))
		return out == "from-primary"
	})
	if got := sandboxRun(t, pool, st, pg1, fmt.Sprintf(`psql -h %s -U postgres -tAc "SELECT pg_is_in_recovery()"`, a1)); got != "t" {
		t.Errorf("pg-1 in recovery = %q, want t", got)
	}

	// Redis: write on the master, read on the replica.
	r0, r1 := stack.HostRef{Role: "redis", Index: 0}, stack.HostRef{Role: "redis", Index: 1}
	ra0, _ := st.Address(r0)
	ra1, _ := st.Address(r1)
	sandboxRun(t, pool, st, r0, fmt.Sprintf("redis-cli -h %s SET probe from-master", ra0))
	waitFor(t, 30*time.Second, "key on the redis replica", func() bool {
		return sandboxRun(t, pool, st, r1, fmt.Sprintf("redis-cli -h %s GET probe", ra1)) == "from-master"
	})

	// XFS: freeze blocks writes, thaw lets them through.
	mnt := "/var/lib/postgresql"
	if got := sandboxRun(t, pool, st, pg1, "stat -f -c %T "+mnt); got != "xfs" {
		t.Fatalf("%s on pg-1 is %q, want xfs", mnt, got)
	}
	// One script freezes, probes with a background write (a write to a frozen file system sleeps
	// uninterruptibly until thaw), and always thaws before it exits.
	frozen := sandboxRun(t, pool, st, pg1, `set -u
m=`+mnt+`
trap 'xfs_freeze -u $m 2>/dev/null' EXIT
xfs_freeze -f $m
( touch $m/probe-frozen ) & w=$!
sleep 1
if [ -e $m/probe-frozen ]; then echo wrote; else echo blocked; fi
xfs_freeze -u $m
wait $w`)
	if frozen != "blocked" {
		t.Errorf("a write to a frozen XFS volume did not block (%s)", frozen)
	}
	sandboxRun(t, pool, st, pg1, "touch "+mnt+"/probe-thawed")
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
