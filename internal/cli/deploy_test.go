package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/internal/loadgen"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
)

func TestDeployOptionsCaptured(t *testing.T) {
	var got *DeployOptions
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, new(string))
	cmd := NewCmdDeploy(f, func() Output { return OutputText }, func(o *DeployOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"--batch", "1,10%,100%", "--max-fail", "10%", "-m", "canary", "--dry-run", "--role", "app"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got == nil || strings.Join(got.Batches, ",") != "1,10%,100%" || got.MaxFail != "10%" || got.Message != "canary" || !got.DryRun || got.Role != "app" {
		t.Fatalf("options: %+v", got)
	}
}

func TestDeployUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"deploy", "--batch", "0"}, "--batch"},
		{[]string{"deploy", "--batch", "x%"}, "--batch"},
		{[]string{"deploy", "--max-fail", "many"}, "--max-fail"},
		{[]string{"deploy", "--resume", "R1", "--batch", "1"}, "drop --batch"},
		{[]string{"deploy", "--artifact", "a", "--source", "."}, "--source"},
		{[]string{"run", "--role", "app"}, "after --"},
		{[]string{"run", "--role", "app", "--hosts", "app-0", "--", "true"}, "exclude"},
		{[]string{"lock", "release"}, "--force"},
	} {
		_, stderr, code := run(t, tc.args...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 mentioning %q", tc.args, code, stderr, tc.want)
		}
	}
}

func TestDeployRenderReport(t *testing.T) {
	rep := &deploy.Report{RunID: "R1", Kind: deploy.KindDeploy, Role: "app", Release: "abc", Version: "v2", Result: deploy.ResultPartial,
		Hosts: []deploy.HostReport{
			{Host: "app-0", Batch: 1, State: deploy.OutcomeActivated, Uploaded: true, Bytes: 3 << 20},
			{Host: "app-1", Batch: 2, State: deploy.OutcomeActivated},
			{Host: "app-2", Batch: 2, State: deploy.OutcomeRolledBack, Stage: deploy.StageHealth, Error: "health: 503 after 30s\nmore"},
			{Host: "app-3", Batch: 2, State: deploy.OutcomeActivated},
		}}
	var b bytes.Buffer
	if err := deployRenderReport(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"release abc (v2) on 4 app hosts: PARTIAL", "1 hosts uploaded over SSH (3.0 MiB), 3 already had it",
		"batch 1  1   hosts app-0", "batch 2  3   hosts app-1..app-3", "activated 2, rolled-back 1",
		"app-2  2      rolled-back  health  health: 503 after 30s more\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

// The sandbox test runs the real stack at 127.0.70.x: 20 app hosts behind nginx, a PostgreSQL
// primary and replica, a Redis primary and replica, memcached, and the real app server built
// from cmd/instagram-app.
const (
	deployTestLBPort   = 18170
	deployTestMotoPort = 15070
	deployTestApps     = 20
)

func deployTestStack(t *testing.T) (path string, st *stack.Stack) {
	t.Helper()
	dir := t.TempDir()
	data := fmt.Sprintf(`name: deploycli
provider: sandbox
network:
  address_base: 127.0.70.1
roles:
  app:
    count: %d
  pg:
    count: 2
    replicas: 1
    volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}
  redis:
    count: 2
    replicas: 1
    volumes: {count: 1, size_gib: 10, mount: /var/lib/redis}
  memcached:
    count: 1
deploy:
  batches: [1, 100%%]
  health_timeout: 60s
shards:
  logical: 8
sandbox:
  dir: %s
  volume_size_mib: 300
  lb_port: %d
  moto_port: %d
`, deployTestApps, filepath.Join(dir, "sandbox"), deployTestLBPort, deployTestMotoPort)
	path = filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := stack.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, st
}

// deploySandboxUp brings the stack up and registers its removal, checking nothing is left.
func deploySandboxUp(t *testing.T, path string, st *stack.Stack) {
	t.Helper()
	t.Cleanup(func() {
		if _, stderr, code := run(t, "--stack", path, "sandbox", "down"); code != 0 {
			t.Errorf("sandbox down: exit %d: %s", code, stderr)
		}
		if ks := deployKeepers(t, st); len(ks) != 0 {
			t.Errorf("ssh keepers of the stack after sandbox down: %+v", ks)
		}
		out, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").CombinedOutput()
		if strings.Contains(string(out), st.Sandbox.Dir) {
			t.Errorf("after down, loop devices still map sandbox images:\n%s", out)
		}
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			cl, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			if bytes.Contains(cl, []byte(st.Sandbox.Dir)) || bytes.Contains(cl, []byte("127.0.70.")) {
				t.Errorf("after down, pid %s is alive: %s", e.Name(), bytes.ReplaceAll(cl, []byte{0}, []byte{' '}))
			}
		}
	})
	if _, stderr, code := run(t, "--stack", path, "sandbox", "up"); code != 0 {
		t.Fatalf("sandbox up: exit %d:\n%s", code, stderr)
	}
}

// deployInitShards creates the control database and the shard schemas the app needs, with
// the shard family's `instactl shard init`.
func deployInitShards(t *testing.T, path string) {
	t.Helper()
	if stdout, stderr, code := run(t, "--stack", path, "shard", "init"); code != 0 {
		t.Fatalf("shard init: exit %d\n%s%s", code, stdout, stderr)
	}
}

// deployVersions GETs /healthz on every app host and returns the bodies.
func deployVersions(t *testing.T, st *stack.Stack) []string {
	t.Helper()
	app := st.Role("app")
	var out []string
	for i := range app.Count {
		a, _ := st.Address(stack.HostRef{Role: "app", Index: i})
		resp, err := http.Get(fmt.Sprintf("http://%s:%d/healthz", a, app.Port))
		if err != nil {
			out = append(out, "down: "+err.Error())
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, string(b))
	}
	return out
}

func TestDeploySandbox(t *testing.T) {
	if testing.Short() {
		t.Skip("sandbox integration test")
	}
	testenv.RequireRoot(t)
	for bin, pkg := range map[string]string{"sshd": "openssh-server", "nginx": "nginx", "unshare": "util-linux",
		"losetup": "mount", "moto_server": "python3-moto", "pg_ctl": "postgresql-15", "redis-server": "redis-server", "memcached": "memcached"} {
		testenv.Require(t, bin, pkg)
	}
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	start := time.Now()
	path, st := deployTestStack(t)
	deploySandboxUp(t, path, st)
	t.Logf("sandbox up in %s", time.Since(start).Round(time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute) // a bound, not a timing: the whole test under load
	defer cancel()
	cli := func(args ...string) (string, string, int) {
		return run(t, append([]string{"--stack", path}, args...)...)
	}
	app1, _ := st.Address(stack.HostRef{Role: "app", Index: 1})

	t.Run("run on a role, prefixed, with a failing host in the summary", func(t *testing.T) {
		script := fmt.Sprintf(`set -- $SSH_CONNECTION; echo "serving on $3"; if [ "$3" = %s ]; then echo broken >&2; exit 3; fi`, app1)
		stdout, stderr, code := cli("run", "--role", "app", "--", script)
		if code != ExitPartial {
			t.Fatalf("exit %d, want 5\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		for i := range deployTestApps {
			a, _ := st.Address(stack.HostRef{Role: "app", Index: i})
			if want := fmt.Sprintf("app-%d | serving on %s\n", i, a); !strings.Contains(stdout, want) {
				t.Errorf("stdout lacks %q:\n%s", want, stdout)
			}
		}
		for _, want := range []string{"app-1 | broken\n", fmt.Sprintf("%d hosts: %d ok, 1 failed", deployTestApps, deployTestApps-1)} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, stderr)
			}
		}
		for _, re := range []string{`(?m)^HOST +EXIT +TIME +ERROR$`, `(?m)^deploycli-app-1 +3 +`, `(?m)^deploycli-app-0 +0 +`} {
			if !regexp.MustCompile(re).MatchString(stderr) {
				t.Errorf("summary does not match %s:\n%s", re, stderr)
			}
		}
		if strings.Contains(stdout, "pg-0") {
			t.Errorf("--role app ran on pg-0:\n%s", stdout)
		}
		if _, _, code := cli("run", "--role", "app", "--", "false"); code != ExitError {
			t.Errorf("all hosts failing: exit %d, want 1", code)
		}
	})

	t.Run("deploy before shard init is refused before any host is touched", func(t *testing.T) {
		stdout, stderr, code := cli("deploy", "--version", "v1")
		t.Logf("deploy before shard init (exit %d):\n%s%s", code, stdout, stderr)
		if code != ExitUsage || !strings.Contains(stderr, "instactl --stack "+path+" shard init`") || !strings.Contains(stderr, "no shard map") {
			t.Errorf("exit %d, want 2 naming `instactl --stack %s shard init`", code, path)
		}
		noRelease := `set -- /opt/instagram/releases/*; [ ! -e "$1" ] && [ ! -e /opt/instagram/current ]`
		if stdout, stderr, code := cli("run", "--role", "app", "--", noRelease); code != 0 {
			t.Errorf("a host was touched by the refused deploy (exit %d):\n%s%s", code, stdout, stderr)
		}
		if stdout, _, code := cli("lock", "status"); code != 0 || !strings.Contains(stdout, "is free") {
			t.Errorf("lock after the refused deploy: exit %d %s", code, stdout)
		}
	})
	if t.Failed() {
		return
	}
	deployInitShards(t, path)

	t.Run("unknown host key is refused with the fix", func(t *testing.T) {
		kh := filepath.Join(t.TempDir(), "known_hosts")
		os.WriteFile(kh, nil, 0o600)
		data, _ := os.ReadFile(path)
		alt := filepath.Join(t.TempDir(), "stack.yaml")
		os.WriteFile(alt, []byte(strings.Replace(string(data), "provider: sandbox\n", "provider: sandbox\nssh:\n  known_hosts: "+kh+"\n", 1)), 0o644)
		_, stderr, code := run(t, "--stack", alt, "run", "--role", "app", "--", "true")
		if code != ExitError || !strings.Contains(stderr, "is unknown") || !strings.Contains(stderr, "--accept-new-host-keys") ||
			!strings.Contains(stderr, "ssh-keyscan") {
			t.Fatalf("run with an empty known_hosts: exit %d, want 1 and the fix:\n%s", code, stderr)
		}
		_, stderr, code = run(t, "--stack", alt, "deploy", "--artifact", "/bin/true")
		if code != ExitError || !strings.Contains(stderr, "--accept-new-host-keys") {
			t.Fatalf("deploy with an empty known_hosts: exit %d, want 1 and the fix:\n%s", code, stderr)
		}
		if _, stderr, code = run(t, "--stack", alt, "run", "--role", "app", "--accept-new-host-keys", "--", "true"); code != 0 {
			t.Fatalf("--accept-new-host-keys: exit %d:\n%s", code, stderr)
		}
		if b, _ := os.ReadFile(kh); bytes.Count(b, []byte("\n")) < deployTestApps {
			t.Fatalf("known_hosts after --accept-new-host-keys:\n%s", b)
		}
	})

	t.Run("dry run changes nothing", func(t *testing.T) {
		stdout, stderr, code := cli("deploy", "--dry-run", "--version", "v1", "--batch", "1,100%")
		t.Logf("dry run:\n%s", stdout)
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, stderr)
		}
		for _, want := range []string{"app-0", "app-2", "ln -s", "instagram-app"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("plan lacks %q:\n%s", want, stdout)
			}
		}
		if !strings.Contains(stderr, "nothing was changed") {
			t.Errorf("stderr: %s", stderr)
		}
		stdout, stderr, code = cli("releases")
		if code != 0 || strings.Count(stdout, "nothing deployed") != deployTestApps {
			t.Fatalf("releases after a dry run: exit %d\n%s%s", code, stdout, stderr)
		}
		if stdout, _, code := cli("lock", "status"); code != 0 || !strings.Contains(stdout, "is free") {
			t.Fatalf("lock after a dry run: exit %d %s", code, stdout)
		}
		if ents, _ := os.ReadDir(filepath.Join(st.Sandbox.Dir, "state", "artifacts")); len(ents) != 0 {
			t.Errorf("a dry run left builds behind: %v", ents)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("a first deploy failing its health check says what is true", func(t *testing.T) {
		bin := deployBuildStandin(t, "v0")
		alt := deployAltStack(t, path, "  health_timeout: 60s\n", "  health_timeout: 8s\n")
		stdout, stderr, code := run(t, "--stack", alt, "deploy", "--artifact", bin, "--version", "v0")
		t.Logf("first deploy, broken (exit %d):\n%s%s", code, stdout, stderr)
		if code != ExitError {
			t.Fatalf("exit %d, want 1", code)
		}
		row := regexp.MustCompile(`(?m)^deploycli-app-0 +1 +stopped +health +.*status 500.*no earlier release to return to: service stopped, no release current, \w+ stays staged$`)
		if !row.MatchString(stdout) {
			t.Errorf("report does not say app-0 had no earlier release and is stopped")
		}
		for _, bad := range []string{"back on its previous release", "no previous release to roll back to", "rollback fail"} {
			if strings.Contains(stdout+stderr, bad) {
				t.Errorf("output claims %q", bad)
			}
		}
		for _, want := range []string{"had no earlier release to return to", "fix the app and run instactl deploy again", "later batches were not touched"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("verdict lacks %q", want)
			}
		}
		// What the report says is what the host shows: release staged, nothing current, app down.
		state := `test ! -e /opt/instagram/current && ls /opt/instagram/releases && ! ` + templates.SupervisorPath + ` status app`
		if out, stderr, code := cli("run", "--hosts", "app-0", "--", state); code != 0 || !strings.Contains(out, "app-0 | ") {
			t.Errorf("app-0 after the failed first deploy (exit %d):\n%s%s", code, out, stderr)
		}
		if stdout, _, code := cli("lock", "status"); code != 0 || !strings.Contains(stdout, "is free") {
			t.Errorf("lock after the failed first deploy: exit %d %s", code, stdout)
		}
	})
	if t.Failed() {
		return
	}

	var v1 deploy.Report
	t.Run("deploy v1 of the real app", func(t *testing.T) {
		stdout, stderr, code := cli("deploy", "--version", "v1")
		t.Logf("deploy v1:\n%s", stdout)
		m := regexp.MustCompile(fmt.Sprintf(`(?m)^deploy \S+: release (\w+) \(v1\) on %d app hosts: OK$`, deployTestApps)).FindStringSubmatch(stdout)
		if code != 0 || m == nil {
			t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
		}
		v1.Release = m[1]
		for _, want := range []string{"uploaded once to s3://deploycli-photos/instactl/releases/", fmt.Sprintf("%d hosts fetched it from S3", deployTestApps), "batch 1  1   hosts deploycli-app-0", "activated 1",
			fmt.Sprintf("activated %d", deployTestApps-1)} {
			if !strings.Contains(stdout, want) {
				t.Errorf("summary lacks %q", want)
			}
		}
		for i, b := range deployVersions(t, st) {
			if !strings.Contains(b, `"version":"v1"`) {
				t.Errorf("app-%d /healthz after v1: %s", i, b)
			}
		}
	})
	if t.Failed() {
		return
	}

	t.Run("an unchanged redeploy runs on the connections the keeper kept", func(t *testing.T) {
		before := deployKeepers(t, st)
		if len(before) != 1 || len(before[0].Hosts) < deployTestApps {
			t.Fatalf("keepers after the deploy: %+v; want one holding the %d app hosts", before, deployTestApps)
		}
		artifact := filepath.Join(st.Sandbox.Dir, "state", "artifacts", v1.Release, "instagram-app")
		stdout, stderr, code := cli("deploy", "--artifact", artifact, "--version", "v1", "-o", "json")
		var rep deploy.Report
		if err := json.Unmarshal([]byte(stdout), &rep); code != 0 || err != nil || rep.Result != deploy.ResultOK {
			t.Fatalf("unchanged redeploy: exit %d %v\n%s\n%s", code, err, stdout, stderr)
		}
		for _, h := range rep.Hosts {
			if !h.WasCurrent {
				t.Errorf("%s: not reported already current: %+v", h.Host, h)
			}
		}
		after := deployKeepers(t, st)
		if len(after) != 1 || after[0].PID != before[0].PID || !after[0].LastUse.After(before[0].LastUse) {
			t.Errorf("keepers after the redeploy: %+v; want the same keeper (pid %d), used again", after, before[0].PID)
		}
		if _, stderr, code := cli("ssh-keeper", "stop"); code != 0 || !strings.Contains(stderr, "stopped 1 ssh keeper(s)") {
			t.Errorf("ssh-keeper stop: exit %d %s", code, stderr)
		}
		if ks := deployKeepers(t, st); len(ks) != 0 {
			t.Errorf("keepers after ssh-keeper stop: %+v", ks)
		}
		if stdout, _, code := cli("lock", "status"); code != 0 || !strings.Contains(stdout, "is free") {
			t.Errorf("lock status after the keeper stopped: exit %d %s", code, stdout)
		}
		if ks := deployKeepers(t, st); len(ks) != 1 || ks[0].PID == before[0].PID {
			t.Errorf("keepers after the next run: %+v; want a new one", ks)
		}
	})

	var v2 deploy.Report
	t.Run("rolling v2 under load, a concurrent deploy is locked out", func(t *testing.T) {
		stopLoad := deployStartLoad(ctx, 7)

		type result struct {
			stdout, stderr string
			code           int
		}
		done := make(chan result, 1)
		go func() {
			o, e, c := cli("deploy", "--version", "v2", "--message", "ship v2", "-o", "json")
			done <- result{o, e, c}
		}()
		// As soon as v2 holds the lock, a second deploy must be refused with the holder.
		var locked bool
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline) && !locked; {
			select {
			case r := <-done:
				done <- r
				deadline = time.Time{}
				continue
			default:
			}
			if _, _, code := cli("lock", "status"); code == ExitLocked {
				locked = true
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !locked {
			t.Error("never saw the v2 deploy holding the lock")
		} else {
			_, stderr, code := cli("deploy", "--artifact", filepath.Join(st.Sandbox.Dir, "state", "artifacts", v1.Release, "instagram-app"))
			t.Logf("concurrent deploy (exit %d):\n%s", code, stderr)
			for _, want := range []string{"held by", "ship v2", "lock release --force", "--resume"} {
				if code != ExitLocked || !strings.Contains(stderr, want) {
					t.Errorf("concurrent deploy: exit %d, want 4 and %q:\n%s", code, want, stderr)
				}
			}
		}
		r := <-done
		deployCheckLoad(t, stopLoad())
		t.Logf("deploy v2 progress:\n%s", r.stderr)
		rep := &v2
		if err := json.Unmarshal([]byte(r.stdout), rep); err != nil || r.code != 0 || rep.Result != deploy.ResultOK {
			t.Fatalf("deploy v2: exit %d, %v\n%s\n%s", r.code, err, r.stdout, r.stderr)
		}
		t.Logf("deploy v2 to %d hosts: stage %s, activate %s", len(rep.Hosts), deployMS(rep.StageMS), deployMS(rep.ActivateMS))
		for _, want := range []string{"app-0 | lock ok", "batch 1/2 | ok", fmt.Sprintf("== batch 2/2 ok: %d hosts done, 0 failed", deployTestApps-1),
			fmt.Sprintf("app-%d | health ok", deployTestApps-1)} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("progress lacks %q:\n%s", want, r.stderr)
			}
		}
		for i, b := range deployVersions(t, st) {
			if !strings.Contains(b, `"version":"v2"`) {
				t.Errorf("app-%d /healthz after v2: %s", i, b)
			}
		}
		stdout, _, code := cli("releases")
		cur := regexp.MustCompile(`(?m)^deploycli-app-\d+ +\* +` + rep.Release + ` .* current$`)
		prev := regexp.MustCompile(`(?m)^deploycli-app-\d+ +` + v1.Release + ` .* previous`)
		if code != 0 || len(cur.FindAllString(stdout, -1)) != deployTestApps || len(prev.FindAllString(stdout, -1)) != deployTestApps {
			t.Errorf("releases after v2 (want %s current on every host, %s previous): exit %d\n%s", rep.Release, v1.Release, code, stdout)
		}
		audit, _ := os.ReadFile(deploy.AuditLogPath(filepath.Join(st.Sandbox.Dir, "state")))
		if !bytes.Contains(audit, []byte(rep.RunID)) || !bytes.Contains(audit, []byte(`"version":"v2"`)) {
			t.Errorf("local audit log lacks run %s:\n%s", rep.RunID, audit)
		}
		stdout, stderr, code := cli("run", "--role", "app", "--", "tail -n 1 "+deploy.DefaultAuditPath)
		if code != 0 || strings.Count(stdout, rep.RunID) != deployTestApps {
			t.Errorf("hosts' audit logs lack run %s: exit %d\n%s%s", rep.RunID, code, stdout, stderr)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("rollback to v1 and back", func(t *testing.T) {
		if stdout, stderr, code := cli("rollback", "--dry-run"); code != 0 || !strings.Contains(stdout, "rollback") {
			t.Fatalf("rollback --dry-run: exit %d\n%s%s", code, stdout, stderr)
		}
		stdout, stderr, code := cli("rollback", "--message", "back to v1")
		if code != 0 || !strings.Contains(stdout, "OK") {
			t.Fatalf("rollback: exit %d\n%s%s", code, stdout, stderr)
		}
		for i, b := range deployVersions(t, st) {
			if !strings.Contains(b, `"version":"v1"`) {
				t.Errorf("app-%d /healthz after rollback: %s", i, b)
			}
		}
		var rels []deploy.HostReleases
		stdout, _, code = cli("releases", "-o", "json")
		if err := json.Unmarshal([]byte(stdout), &rels); err != nil || code != 0 || len(rels) != deployTestApps || rels[0].Current != v1.Release {
			t.Fatalf("releases -o json after rollback: exit %d %v\n%s", code, err, stdout)
		}
	})

	t.Run("lock status and a forced release", func(t *testing.T) {
		var ls deployLockState
		stdout, _, code := cli("lock", "status", "-o", "json")
		if err := json.Unmarshal([]byte(stdout), &ls); err != nil || code != 0 || ls.Held {
			t.Fatalf("lock status: exit %d %v %s", code, err, stdout)
		}
		// A dead run's lock, left behind on the lock host.
		dir := deploy.LockDir("/opt/instagram")
		info := `{"holder":"ghost@laptop","time":"2024-05-01T10:15:00Z","kind":"deploy","release":"abc","message":"died","run_id":"R-dead"}`
		if _, stderr, code := cli("run", "--hosts", "app-0", "--", "mkdir -p "+dir+" && echo '"+info+"' > "+dir+"/info.json"); code != 0 {
			t.Fatalf("plant a lock: %s", stderr)
		}
		stdout, _, code = cli("lock", "status")
		if code != ExitLocked || !strings.Contains(stdout, "ghost@laptop") || !strings.Contains(stdout, "died") {
			t.Fatalf("lock status of a held lock: exit %d\n%s", code, stdout)
		}
		if _, stderr, code := cli("lock", "release", "--force"); code != 0 {
			t.Fatalf("lock release --force: exit %d %s", code, stderr)
		}
		if stdout, _, code := cli("lock", "status"); code != 0 || !strings.Contains(stdout, "is free") {
			t.Fatalf("after release: exit %d %s", code, stdout)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("changed host key is a loud refusal that changes nothing", func(t *testing.T) {
		// app-7's known_hosts line carries another key: a rebuilt host, or a man in the middle.
		victim, _ := st.Address(stack.HostRef{Role: "app", Index: 7})
		known, err := os.ReadFile(st.SSH.KnownHosts)
		if err != nil {
			t.Fatal(err)
		}
		other := deployOtherKey(t)
		var lines []string
		replaced := 0
		for _, l := range strings.Split(strings.TrimSpace(string(known)), "\n") {
			if f := strings.Fields(l); len(f) >= 3 && (f[0] == victim.String() || strings.HasPrefix(f[0], "["+victim.String()+"]:")) {
				l = f[0] + " " + other
				replaced++
			}
			lines = append(lines, l)
		}
		if replaced != 1 {
			t.Fatalf("%s has %d lines for %s:\n%s", st.SSH.KnownHosts, replaced, victim, known)
		}
		kh := filepath.Join(t.TempDir(), "known_hosts")
		os.WriteFile(kh, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
		alt := deployAltStack(t, path, "provider: sandbox\n", "provider: sandbox\nssh:\n  known_hosts: "+kh+"\n")
		artifact := filepath.Join(st.Sandbox.Dir, "state", "artifacts", v2.Release, "instagram-app")
		stdout, stderr, code := run(t, "--stack", alt, "deploy", "--artifact", artifact, "--version", "v2", "--accept-new-host-keys")
		t.Logf("deploy with a changed key (exit %d):\n%s%s", code, stdout, stderr)
		if code != ExitError || !strings.Contains(stdout+stderr, "HOST KEY CHANGED for ["+victim.String()+"]:") ||
			!strings.Contains(stdout+stderr, "deploycli-app-7") {
			t.Errorf("exit %d, want 1 and HOST KEY CHANGED for app-7", code)
		}
		if b, _ := os.ReadFile(kh); string(b) != strings.Join(lines, "\n")+"\n" {
			t.Errorf("--accept-new-host-keys rewrote known_hosts on a changed key:\n%s", b)
		}
		for i, b := range deployVersions(t, st) {
			if !strings.Contains(b, `"version":"v1"`) {
				t.Errorf("app-%d /healthz after the refused deploy: %s", i, b)
			}
		}
		if stdout, _, code := cli("lock", "status"); code != 0 || !strings.Contains(stdout, "is free") {
			t.Errorf("lock after the refused deploy: exit %d %s", code, stdout)
		}
	})

	t.Run("a v3 failing its health check stops at the canary under load", func(t *testing.T) {
		// The stand-in app answers /healthz with 500; the gate gives up after 8s.
		bin := deployBuildStandin(t, "v3")
		alt := deployAltStack(t, path, "  health_timeout: 60s\n", "  health_timeout: 8s\n")
		stopLoad := deployStartLoad(ctx, 8)
		stdout, stderr, code := run(t, "--stack", alt, "deploy", "--artifact", bin, "--version", "v3", "--message", "broken v3")
		deployCheckLoad(t, stopLoad())
		t.Logf("deploy v3 (exit %d):\n%s%s", code, stdout, stderr)
		if code != ExitError {
			t.Fatalf("exit %d, want 1", code)
		}
		for _, want := range []string{"batch 1  1   hosts deploycli-app-0", "rolled-back 1", "deploycli-app-0  1      rolled-back  health",
			"status 500"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("report lacks %q", want)
			}
		}
		if !strings.Contains(stderr, "later batches were not touched") {
			t.Errorf("stderr does not say the later batches were spared")
		}
		for i, b := range deployVersions(t, st) {
			if !strings.Contains(b, `"version":"v1"`) {
				t.Errorf("app-%d /healthz after the failed canary: %s", i, b)
			}
		}
		if stdout, _, code := cli("lock", "status"); code != 0 || !strings.Contains(stdout, "is free") {
			t.Errorf("lock after the failed canary: exit %d %s", code, stdout)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("deploy killed with SIGKILL mid-batch: the lock is stale, --resume converges", func(t *testing.T) {
		artifact := filepath.Join(st.Sandbox.Dir, "state", "artifacts", v2.Release, "instagram-app")
		var runID string
		proc := deployStartHelper(t, []string{"--stack", path, "deploy", "--artifact", artifact, "--version", "v2"},
			func(line string) bool {
				if m := regexp.MustCompile(`^deploy (\S+): release`).FindStringSubmatch(line); m != nil {
					runID = m[1]
				}
				// Mid-batch: batch 1 finished and a host of batch 2 passed its health gate,
				// while the batch is out of the load balancer.
				return strings.Contains(line, "| health ok") && !strings.Contains(line, "app-0 |")
			})
		if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		proc.Wait()
		t.Logf("killed run %s mid-batch", runID)
		if runID == "" {
			t.Fatal("the killed deploy never printed its run id")
		}
		// The next deploy is refused: the lock names the dead process and both ways out.
		_, stderr, code := cli("deploy", "--artifact", artifact, "--version", "v2", "--lock-wait", "10m")
		t.Logf("next deploy (exit %d):\n%s", code, stderr)
		for _, want := range []string{"the lock is stale", fmt.Sprintf("process %d on", proc.Process.Pid), "is gone",
			"instactl deploy --resume " + runID, "instactl lock release --force"} {
			if code != ExitLocked || !strings.Contains(stderr, want) {
				t.Errorf("next deploy: exit %d, want 4 and %q", code, want)
			}
		}
		if strings.Contains(stderr, "waited") {
			t.Errorf("--lock-wait waited for a stale lock")
		}
		var ls deployLockState
		stdout, _, code := cli("lock", "status", "-o", "json")
		if err := json.Unmarshal([]byte(stdout), &ls); err != nil || code != ExitLocked || !strings.Contains(ls.Stale, "is gone") {
			t.Errorf("lock status after the kill: exit %d %v\n%s", code, err, stdout)
		}
		stdout, stderr, code = cli("deploy", "--resume", runID)
		t.Logf("resume (exit %d):\n%s%s", code, stdout, stderr)
		if code != 0 || !strings.Contains(stdout, "OK") {
			t.Fatalf("resume: exit %d", code)
		}
		for i, b := range deployVersions(t, st) {
			if !strings.Contains(b, `"version":"v2"`) {
				t.Errorf("app-%d /healthz after the resume: %s", i, b)
			}
		}
		if stdout, _, code := cli("lock", "status"); code != 0 || !strings.Contains(stdout, "is free") {
			t.Errorf("lock after the resume: exit %d %s", code, stdout)
		}
		// Every host is back behind the load balancer, the ones the killed run took out too.
		p, err := newSandbox(st)
		if err != nil {
			t.Fatal(err)
		}
		health, err := p.InstanceHealth(ctx, deploy.ConfigFromStack(st, t.TempDir()).LoadBalancer)
		if err != nil || len(health) != deployTestApps {
			t.Errorf("load balancer after the resume: %v, %d instances (want %d): %+v", err, len(health), deployTestApps, health)
		}
		for _, h := range health {
			if h.State != "InService" {
				t.Errorf("load balancer after the resume: %s is %s (%s)", h.InstanceID, h.State, h.Reason)
			}
		}
	})
	if t.Failed() {
		return
	}

	t.Run("--lock-wait waits for a live holder, then gives up naming it", func(t *testing.T) {
		// A lock held by this (live) test process.
		host, _ := os.Hostname()
		info := fmt.Sprintf(`{"holder":"alice@%s","hostname":"%s","pid":%d,"time":"%s","kind":"deploy","release":"abc","message":"long one","run_id":"R-live"}`,
			host, host, os.Getpid(), time.Now().UTC().Format(time.RFC3339))
		dir := deploy.LockDir("/opt/instagram")
		plant := "mkdir -p " + dir + " && echo '" + info + "' > " + dir + "/info.json"
		if _, stderr, code := cli("run", "--hosts", "app-0", "--", plant); code != 0 {
			t.Fatalf("plant a lock: %s", stderr)
		}
		artifact := filepath.Join(st.Sandbox.Dir, "state", "artifacts", v2.Release, "instagram-app")
		_, stderr, code := cli("deploy", "--artifact", artifact, "--version", "v2", "--lock-wait", "2s")
		if code != ExitLocked || !strings.Contains(stderr, "alice@") || !strings.Contains(stderr, "waited:") || strings.Contains(stderr, "stale") {
			t.Errorf("--lock-wait 2s on a live lock: exit %d, want 4 naming alice and the wait:\n%s", code, stderr)
		}
		// A deploy waiting for it goes on once the holder lets go.
		proc := deployStartHelper(t, []string{"--stack", path, "deploy", "--artifact", artifact, "--version", "v2", "--lock-wait", "10m"},
			func(line string) bool {
				return strings.Contains(line, "waiting up to 10m0s for the lock held by alice@")
			})
		if _, stderr, code := cli("lock", "release", "--force"); code != 0 {
			t.Fatalf("lock release --force: exit %d %s", code, stderr)
		}
		if err := proc.Wait(); err != nil {
			t.Errorf("the waiting deploy, once the lock was free: %v", err)
		}
	})

	t.Run("back to v1 for the last test", func(t *testing.T) {
		if stdout, stderr, code := cli("rollback", "--to", v1.Release); code != 0 {
			t.Fatalf("rollback --to v1: exit %d\n%s%s", code, stdout, stderr)
		}
	})
	if t.Failed() {
		return
	}

	// Last: the host stays without sshd until sandbox down.
	t.Run("sshd killed mid-deploy fails that host within --max-fail under load", func(t *testing.T) {
		last := deployTestApps - 1
		stopLoad := deployStartLoad(ctx, 9)
		type result struct {
			stdout, stderr string
			code           int
		}
		done := make(chan result, 1)
		artifact := filepath.Join(st.Sandbox.Dir, "state", "artifacts", v2.Release, "instagram-app")
		go func() {
			o, e, c := cli("deploy", "--artifact", artifact, "--version", "v2", "--max-fail", "1")
			done <- result{o, e, c}
		}()
		var killed bool
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && !killed; time.Sleep(50 * time.Millisecond) {
			if _, _, code := cli("lock", "status"); code == ExitLocked {
				deployKillSSHD(t, st, last)
				killed = true
			}
		}
		r := <-done
		deployCheckLoad(t, stopLoad())
		t.Logf("deploy with app-%d's sshd killed (exit %d):\n%s%s", last, r.code, r.stdout, r.stderr)
		if !killed {
			t.Fatal("never saw the deploy holding the lock")
		}
		want := regexp.MustCompile(fmt.Sprintf(`(?m)^deploycli-app-%d +2 +failed +\S+ +.*deploycli-app-%d`, last, last))
		if r.code != ExitPartial || !want.MatchString(r.stdout) {
			t.Errorf("exit %d, want 5 and app-%d failed with an error naming it", r.code, last)
		}
		for i, b := range deployVersions(t, st) {
			if want := `"version":"v2"`; i == last {
				want = `"version":"v1"`
				if !strings.Contains(b, want) {
					t.Errorf("app-%d (no sshd) /healthz: %s; want still v1", i, b)
				}
			} else if !strings.Contains(b, want) {
				t.Errorf("app-%d /healthz after the deploy: %s", i, b)
			}
		}
	})
	t.Logf("whole test %s", time.Since(start).Round(time.Second))
}

// deployKeepers returns the running ssh keepers of st (those with its known_hosts).
func deployKeepers(t *testing.T, st *stack.Stack) []keeperView {
	t.Helper()
	stdout, stderr, code := run(t, "ssh-keeper", "status", "-o", "json")
	var all []keeperView
	if err := json.Unmarshal([]byte(stdout), &all); code != 0 || err != nil {
		t.Fatalf("ssh-keeper status: exit %d %v\n%s%s", code, err, stdout, stderr)
	}
	kh := keeperConfig(st, false).KnownHostsFile
	var mine []keeperView
	for _, k := range all {
		if k.KnownHosts == kh {
			mine = append(mine, k)
		}
	}
	return mine
}

// TestDeployHelperProcess is not a test: deployStartHelper runs the test binary with it to
// execute one instactl command line in a process of its own, one a test can kill.
func TestDeployHelperProcess(t *testing.T) {
	raw := os.Getenv("INSTACTL_HELPER_ARGS")
	if raw == "" {
		t.Skip("only run as a helper process")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		t.Fatal(err)
	}
	os.Exit(Run(context.Background(), &IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}, args))
}

// deployStartHelper starts instactl args in a child process and returns once a line of its
// stderr satisfies ready (the test fails if the process ends first). The rest of its stderr
// is logged; its stdout is discarded.
func deployStartHelper(t *testing.T, args []string, ready func(line string) bool) *exec.Cmd {
	t.Helper()
	raw, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^TestDeployHelperProcess$")
	cmd.Env = append(os.Environ(), "INSTACTL_HELPER_ARGS="+string(raw))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var seen []string
	for sc.Scan() {
		seen = append(seen, sc.Text())
		if ready(sc.Text()) {
			go func() {
				for sc.Scan() {
				}
			}()
			return cmd
		}
	}
	cmd.Wait()
	t.Fatalf("instactl %v ended before it was ready:\n%s", args, strings.Join(seen, "\n"))
	return nil
}

// deployBuildStandin builds the deploy package's stand-in app stamped with version, broken:
// it answers /healthz with 500.
func deployBuildStandin(t *testing.T, version string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "instagram-app")
	// The deploy package's tests build the same (same flags: the build cache serves it).
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version+" -X main.healthy=false", "-o", bin, "../../deploy/testdata/standin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the broken %s: %v\n%s", version, err, out)
	}
	return bin
}

// deployStartLoad runs the load generator through the LB until the returned function is
// called; it returns the result.
func deployStartLoad(ctx context.Context, seed uint64) func() loadgen.Result {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan loadgen.Result, 1)
	go func() {
		res, _ := loadgen.Run(lctx, loadgen.Config{BaseURL: fmt.Sprintf("http://127.0.0.1:%d", deployTestLBPort),
			Rate: 40, Duration: 3 * time.Minute, Mix: loadgen.DefaultMix, Timeout: 10 * time.Second, MaxInFlight: 200,
			PhotoBytes: 2048, Seed: seed})
		done <- res
	}()
	time.Sleep(2 * time.Second) // load is flowing before the deploy starts
	return func() loadgen.Result {
		time.Sleep(time.Second)
		cancel()
		return <-done
	}
}

// deployCheckLoad wants requests through the LB and none failed.
func deployCheckLoad(t *testing.T, load loadgen.Result) {
	t.Helper()
	// Requests the generator never sent (its in-flight bound was reached on a busy machine) are
	// no failure of the deploy; every request that was sent must have been answered well.
	if load.Requests-load.Dropped < 50 || load.Errors != 0 {
		t.Errorf("load through the LB during the deploy: %d requests sent, %d errors: %v",
			load.Requests-load.Dropped, load.Errors, load.FirstErrors)
		return
	}
	t.Logf("load through the LB during the deploy: %d requests sent, 0 failed (%d not sent)", load.Requests-load.Dropped, load.Dropped)
}

// deployAltStack writes a copy of the stack file (same stack, same sandbox) with old replaced.
func deployAltStack(t *testing.T, path, old, new string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil || !bytes.Contains(data, []byte(old)) {
		t.Fatalf("stack file %s lacks %q (%v)", path, old, err)
	}
	alt := filepath.Join(t.TempDir(), "stack.yaml")
	if err := os.WriteFile(alt, bytes.Replace(data, []byte(old), []byte(new), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	return alt
}

// deployOtherKey returns "ssh-ed25519 AAAA..." of a fresh key no host has.
func deployOtherKey(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "k")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	b, _ := os.ReadFile(f + ".pub")
	return strings.Join(strings.Fields(string(b))[:2], " ")
}

// deployKillSSHD kills, by PID, every sshd process of app host index (the listener and the
// sessions in its mount namespace), the way a crashed daemon vanishes; the app keeps running.
func deployKillSSHD(t *testing.T, st *stack.Stack, index int) {
	t.Helper()
	p, err := newSandbox(st)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Describe(context.Background(), st.Name)
	if err != nil {
		t.Fatal(err)
	}
	var root string
	for _, in := range res.Instances {
		if in.Role == "app" && in.Index == index {
			root, err = p.HostPath(context.Background(), in.ID, "/")
		}
	}
	if root == "" || err != nil {
		t.Fatalf("app-%d's root: %q %v", index, root, err)
	}
	listener, err := strconv.Atoi(strings.Split(root, "/")[2]) // /proc/PID/root/
	if err != nil {
		t.Fatalf("kill sshd of app-%d: %s: %v", index, root, err)
	}
	ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", listener))
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + ent.Name() + "/comm")
		if pns, _ := os.Readlink("/proc/" + ent.Name() + "/ns/mnt"); pns == ns && strings.HasPrefix(string(comm), "sshd") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
