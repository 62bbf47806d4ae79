package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/instactl/instactl/canary"
	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/internal/loadgen"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/stack"
)

// The canary sandbox test runs the real stack at 127.0.154.x: two app hosts behind nginx (the
// canary and its baseline), one PostgreSQL, one Redis, memcached and moto, and the real app
// server built from cmd/instagram-app, in fault-injection builds for the bad releases.
const (
	canaryTestLBPort   = 18154
	canaryTestMotoPort = 15154
	canaryTestNet      = "127.0.154."
)

func canaryTestStack(t *testing.T) (path string, st *stack.Stack) {
	t.Helper()
	dir := t.TempDir()
	data := fmt.Sprintf(`name: canarycli
provider: sandbox
network:
  address_base: %s1
roles:
  app:
    count: 2
  pg:
    count: 1
    volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}
  redis:
    count: 1
    volumes: {count: 1, size_gib: 10, mount: /var/lib/redis}
  memcached:
    count: 1
deploy:
  batches: [1, 100%%]
  health_timeout: 60s
shards:
  logical: 4
sandbox:
  dir: %s
  volume_size_mib: 300
  lb_port: %d
  moto_port: %d
`, canaryTestNet, filepath.Join(dir, "sandbox"), canaryTestLBPort, canaryTestMotoPort)
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

// canarySandboxUp brings the stack up and registers its removal, checking nothing is left.
func canarySandboxUp(t *testing.T, path string, st *stack.Stack) {
	t.Helper()
	t.Cleanup(func() {
		if _, stderr, code := run(t, "--stack", path, "sandbox", "down"); code != 0 {
			t.Errorf("sandbox down: exit %d: %s", code, stderr)
		}
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			cl, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			if bytes.Contains(cl, []byte(st.Sandbox.Dir)) || bytes.Contains(cl, []byte(canaryTestNet)) {
				t.Errorf("after down, pid %s is alive: %s", e.Name(), bytes.ReplaceAll(cl, []byte{0}, []byte{' '}))
			}
		}
	})
	if _, stderr, code := run(t, "--stack", path, "sandbox", "up"); code != 0 {
		t.Fatalf("sandbox up: exit %d:\n%s", code, stderr)
	}
}

// canaryBuildApp builds the real app server stamped with version; fault, when set, makes it
// a fault-injection build (app.Faults): only a build flag can.
func canaryBuildApp(t *testing.T, version, fault string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "instagram-app")
	ld := "-s -w -X main.version=" + version
	if fault != "" {
		ld += " -X main.fault=" + fault
	}
	build := exec.Command("go", "build", "-trimpath", "-ldflags", ld, "-o", bin, "../../cmd/instagram-app")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s (fault %q): %v\n%s", version, fault, err, out)
	}
	return bin
}

// canaryStartLoad runs the load generator through the LB at rate until the returned
// function is called; it returns the result.
func canaryStartLoad(ctx context.Context, rate float64, seed uint64) func() loadgen.Result {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan loadgen.Result, 1)
	go func() {
		res, _ := loadgen.Run(lctx, loadgen.Config{BaseURL: fmt.Sprintf("http://127.0.0.1:%d", canaryTestLBPort),
			Rate: rate, Duration: 5 * time.Minute, Mix: loadgen.DefaultMix, Timeout: 10 * time.Second, MaxInFlight: 200,
			PhotoBytes: 2048, Seed: seed})
		done <- res
	}()
	time.Sleep(2 * time.Second) // load is flowing before the deploy starts
	return func() loadgen.Result {
		cancel()
		return <-done
	}
}

// canaryVersions are the versions the app hosts report on /healthz, in host order.
func canaryVersions(t *testing.T, st *stack.Stack) string {
	var vs []string
	for _, b := range deployVersions(t, st) {
		m := regexp.MustCompile(`"version":"([^"]*)"`).FindStringSubmatch(b)
		if m == nil {
			vs = append(vs, "?")
			continue
		}
		vs = append(vs, m[1])
	}
	return strings.Join(vs, ",")
}

// canaryLogAnalysis logs the verdict and the overall row with its statistics.
func canaryLogAnalysis(t *testing.T, name string, a *canary.Analysis) {
	t.Helper()
	if a == nil {
		t.Logf("%s: no canary analysis in the report", name)
		return
	}
	o := a.Overall
	t.Logf("%s: %s after %dms (%d looks): canary %d req %.2f%% 5xx p50 %.1fms p99 %.1fms; baseline %d req %.2f%% 5xx p50 %.1fms p99 %.1fms; "+
		"errors z %.2f p %s; latency U %.0f z %.2f p %s; %s", name, a.Verdict, a.WindowMS, a.Looks,
		o.Canary.Requests, 100*o.Canary.ErrorRatio, 1000*o.Canary.P50, 1000*o.Canary.P99,
		o.Baseline.Requests, 100*o.Baseline.ErrorRatio, 1000*o.Baseline.P50, 1000*o.Baseline.P99,
		o.ErrorTest.Z, canary.FormatP(o.ErrorTest.P), o.LatencyTest.U, o.LatencyTest.Z, canary.FormatP(o.LatencyTest.P), a.Reason)
}

func TestDeployCanarySandbox(t *testing.T) {
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
	path, st := canaryTestStack(t)
	canarySandboxUp(t, path, st)
	deployInitShards(t, path)
	t.Logf("sandbox up and shards initialised in %s", time.Since(start).Round(time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // a bound, not a timing
	defer cancel()

	v1 := canaryBuildApp(t, "v1", "")
	if stdout, stderr, code := run(t, "--stack", path, "deploy", "--artifact", v1, "--version", "v1"); code != 0 {
		t.Fatalf("deploy v1 (no canary analysis): exit %d\n%s%s", code, stdout, stderr)
	}
	if got := canaryVersions(t, st); got != "v1,v1" {
		t.Fatalf("versions after v1: %s", got)
	}
	// The same stack with the canary analysis: 10 s windows, up to 30 s; at 80 requests a
	// second through the LB each side serves about 400 in a window. Confidence 0.99 keeps a
	// healthy build's chance of failing by bad luck to 1% at most, while the bad builds'
	// tests are sure beyond 1e-3 in one window. A freshly started canary on a busy machine
	// can look slower at first (inconclusive): the longer max_window lets it show otherwise.
	alt := deployAltStack(t, path, "  health_timeout: 60s\n",
		"  health_timeout: 60s\n  canary:\n    window: 10s\n    max_window: 30s\n    min_requests: 200\n    confidence: 0.99\n")
	// Low traffic needs no long window to stay below min_requests: 4 s, up to 8 s.
	lowCanary := "  health_timeout: 60s\n  canary:\n    window: 4s\n    max_window: 8s\n    min_requests: 200\n"
	lowAlt := deployAltStack(t, path, "  health_timeout: 60s\n", lowCanary)
	strictAlt := deployAltStack(t, path, "  health_timeout: 60s\n", lowCanary+"    on_inconclusive: rollback\n")
	deployWith := func(bin, version string, args ...string) (string, string, int) {
		return run(t, append([]string{"--stack", alt, "deploy", "--artifact", bin, "--version", version}, args...)...)
	}
	if stdout, _, code := run(t, "--stack", alt, "deploy", "--dry-run", "--artifact", v1, "--version", "v1"); code != 0 ||
		!strings.Contains(stdout, "canary analysis after batch 1") {
		t.Errorf("the plan does not announce the canary analysis (exit %d):\n%s", code, stdout)
	}

	t.Run("a build answering 5% with 500 is rolled back by the analysis", func(t *testing.T) {
		bin := canaryBuildApp(t, "v-err", "errors=5%")
		stop := canaryStartLoad(ctx, 80, 21)
		stdout, stderr, code := deployWith(bin, "v-err", "-o", "json")
		load := stop()
		t.Logf("deploy v-err (exit %d), load %d requests, %d errors; progress:\n%s", code, load.Requests, load.Errors, stderr)
		var rep deploy.Report
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("report: %v\n%s", err, stdout)
		}
		canaryLogAnalysis(t, "5% errors", rep.Canary)
		if code != ExitError || rep.Canary == nil || rep.Canary.Verdict != canary.Fail {
			t.Fatalf("exit %d, verdict %v; want 1 and fail", code, rep.Canary)
		}
		o := rep.Canary.Overall
		if o.ErrorTest.P >= 0.05 || o.Canary.ErrorRatio < 0.03 || o.Baseline.Errors != 0 || !strings.Contains(rep.Canary.Reason, "more errors") {
			t.Errorf("overall row %+v; want the error test sure (p < 0.05) of about 5%% against none", o)
		}
		if h := rep.Hosts[0]; h.State != deploy.OutcomeRolledBack || h.Stage != deploy.StageCanary || rep.Hosts[1].State != deploy.OutcomeNotStarted {
			t.Errorf("hosts %+v; want the canary rolled back at the canary stage, the other not started", rep.Hosts)
		}
		for _, want := range []string{"the canary analysis failed", "batch 1 is back on its previous release", "later batches were not touched"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q", want)
			}
		}
		if got := canaryVersions(t, st); got != "v1,v1" {
			t.Errorf("versions after the failed canary: %s; want v1,v1", got)
		}
	})

	t.Run("a build adding 50ms is rolled back by the analysis", func(t *testing.T) {
		bin := canaryBuildApp(t, "v-slow", "delay=50ms")
		stop := canaryStartLoad(ctx, 80, 22)
		stdout, stderr, code := deployWith(bin, "v-slow")
		load := stop()
		t.Logf("deploy v-slow (exit %d), load %d requests, %d errors:\n%s%s", code, load.Requests, load.Errors, stdout, stderr)
		if code != ExitError {
			t.Fatalf("exit %d, want 1", code)
		}
		for _, re := range []string{`(?m)^Canary analysis: FAIL after \S+: canarycli-app-0 against canarycli-app-1$`,
			`(?m)^  canary is slower at 99% confidence: `,
			`(?m)^ENDPOINT +REQUESTS c/b +ERRORS c/b +P50 c/b +P99 c/b +ERRORS z \(p\) +LATENCY z \(p\) +VERDICT$`,
			`(?m)^overall +\d+/\d+ +[0-9.]+%/[0-9.]+% +[0-9.]+ms/[0-9.]+ms +[0-9.]+ms/[0-9.]+ms +-?[0-9.]+ \(\S+\) +[0-9.]+ \(\S+\) +fail$`,
			`(?m)^canarycli-app-0 +1 +rolled-back +canary +canary analysis failed`} {
			if !regexp.MustCompile(re).MatchString(stdout) {
				t.Errorf("report does not match %s", re)
			}
		}
		if got := canaryVersions(t, st); got != "v1,v1" {
			t.Errorf("versions after the failed canary: %s; want v1,v1", got)
		}
	})

	// The low-traffic cases below redeploy these healthy builds rather than build more.
	v2 := canaryBuildApp(t, "v2", "")
	t.Run("a healthy build passes the analysis and rolls on", func(t *testing.T) {
		stop := canaryStartLoad(ctx, 80, 23)
		stdout, stderr, code := deployWith(v2, "v2", "-o", "json")
		load := stop()
		t.Logf("deploy v2 (exit %d); progress:\n%s", code, stderr)
		var rep deploy.Report
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("report: %v\n%s", err, stdout)
		}
		canaryLogAnalysis(t, "healthy", rep.Canary)
		if code != 0 || rep.Result != deploy.ResultOK || rep.Canary == nil || rep.Canary.Verdict != canary.Pass {
			t.Fatalf("exit %d, result %s, analysis %+v; want 0, ok and pass", code, rep.Result, rep.Canary)
		}
		if o := rep.Canary.Overall; o.Canary.Requests < 200 || o.Baseline.Requests < 200 {
			t.Errorf("overall %+v; want at least min_requests on each side", o)
		}
		deployCheckLoad(t, load)
		if got := canaryVersions(t, st); got != "v2,v2" {
			t.Errorf("versions after v2: %s", got)
		}
	})

	t.Run("low traffic is inconclusive, never a fail", func(t *testing.T) {
		stop := canaryStartLoad(ctx, 2, 24)
		stdout, stderr, code := run(t, "--stack", lowAlt, "deploy", "--artifact", v1, "--version", "v1")
		load := stop()
		t.Logf("deploy v1 over v2 at 2 requests/s (exit %d), load %d requests:\n%s%s", code, load.Requests, stdout, stderr)
		if code != 0 {
			t.Fatalf("exit %d, want 0: low traffic must not fail the canary", code)
		}
		for _, want := range []string{"Canary analysis: INCONCLUSIVE after 8s, 2 looks", "too few requests to judge",
			"warning: the deploy went on without a verdict", "inconclusive after 4s"} {
			if !strings.Contains(stdout+stderr, want) {
				t.Errorf("output lacks %q", want)
			}
		}
		if got := canaryVersions(t, st); got != "v1,v1" {
			t.Errorf("versions after v1 at low traffic: %s", got)
		}
	})

	t.Run("low traffic under on_inconclusive: rollback rolls the canary back", func(t *testing.T) {
		stop := canaryStartLoad(ctx, 2, 25)
		stdout, stderr, code := run(t, "--stack", strictAlt, "deploy", "--artifact", v2, "--version", "v2", "-o", "json")
		load := stop()
		t.Logf("deploy v2 over v1 at 2 requests/s, strict (exit %d), load %d requests; progress:\n%s", code, load.Requests, stderr)
		var rep deploy.Report
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("report: %v\n%s", err, stdout)
		}
		canaryLogAnalysis(t, "strict low traffic", rep.Canary)
		if code != ExitError || rep.Canary == nil || rep.Canary.Verdict != canary.Inconclusive || rep.Canary.Config.OnInconclusive != "rollback" {
			t.Fatalf("exit %d, analysis %+v; want 1 and inconclusive under on_inconclusive rollback", code, rep.Canary)
		}
		if h := rep.Hosts[0]; h.State != deploy.OutcomeRolledBack || h.Stage != deploy.StageCanary || rep.Hosts[1].State != deploy.OutcomeNotStarted {
			t.Errorf("hosts %+v; want the canary rolled back at the canary stage, the other not started", rep.Hosts)
		}
		if !strings.Contains(stderr, "the canary analysis stayed inconclusive (deploy.canary.on_inconclusive: rollback)") {
			t.Errorf("stderr lacks why the canary was rolled back")
		}
		if got := canaryVersions(t, st); got != "v1,v1" {
			t.Errorf("versions after the strict inconclusive canary: %s; want v1,v1", got)
		}
	})

	t.Run("a deploy killed during the analysis is judged by --resume", func(t *testing.T) {
		// The 5% error build again, killed (SIGKILL) while its canary is being compared: the
		// canary serves behind the LB without a verdict and the lock is stale. --resume
		// carries the canary, judges it over a fresh window, rolls it back and unlocks.
		bin := canaryBuildApp(t, "v-err", "errors=5%")
		stop := canaryStartLoad(ctx, 80, 26) // stopped after the resume, or by ctx at the test's end
		var runID string
		proc := deployStartHelper(t, []string{"--stack", alt, "deploy", "--artifact", bin, "--version", "v-err"},
			func(line string) bool {
				if m := regexp.MustCompile(`^deploy (\S+): release`).FindStringSubmatch(line); m != nil {
					runID = m[1]
				}
				return strings.Contains(line, "| canary start")
			})
		if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		proc.Wait()
		if runID == "" {
			t.Fatal("the killed deploy never printed its run id")
		}
		if got := canaryVersions(t, st); got != "v-err,v1" {
			t.Fatalf("versions after the kill: %s; want the canary on v-err, the baseline on v1", got)
		}
		stdout, stderr, code := run(t, "--stack", alt, "deploy", "--resume", runID, "-o", "json")
		load := stop()
		t.Logf("resume of %s (exit %d), load %d requests, %d errors; progress:\n%s", runID, code, load.Requests, load.Errors, stderr)
		var rep deploy.Report
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("report: %v\n%s", err, stdout)
		}
		canaryLogAnalysis(t, "resumed 5% errors", rep.Canary)
		if code != ExitError || rep.Resumes != 1 || rep.Canary == nil || rep.Canary.Verdict != canary.Fail {
			t.Fatalf("exit %d, resumes %d, analysis %+v; want 1, 1 and fail", code, rep.Resumes, rep.Canary)
		}
		if h := rep.Hosts[0]; h.State != deploy.OutcomeRolledBack || h.Stage != deploy.StageCanary || rep.Hosts[1].State != deploy.OutcomeNotStarted {
			t.Errorf("hosts %+v; want the canary rolled back at the canary stage, the other not started", rep.Hosts)
		}
		if got := canaryVersions(t, st); got != "v1,v1" {
			t.Errorf("versions after the resumed failed canary: %s; want v1,v1", got)
		}
		if stdout, _, code := run(t, "--stack", alt, "lock", "status"); code != 0 || !strings.Contains(stdout, "is free") {
			t.Errorf("lock after the resume: exit %d %s", code, stdout)
		}
	})
	t.Logf("whole test %s", time.Since(start).Round(time.Second))
}
