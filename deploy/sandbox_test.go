package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/sandbox"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/templates"
)

// The integration tests run on a sandbox at 127.0.40.x: real sshd hosts bootstrapped with the
// app role's user-data (instactl-svc, app.env), a real nginx load balancer, and a stand-in app
// binary (testdata/standin) built here, because the real app server needs the whole data tier.

const (
	testStack   = "deploytest"
	testAppPort = 18481
)

// env is one sandbox with app hosts behind a load balancer.
type env struct {
	t      *testing.T
	p      *sandbox.Provider
	hosts  []Host
	insts  []cloud.Instance
	lbAddr string
	dialer *remote.SSHDialer
	state  string
	bins   string
}

func requireSandbox(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("sandbox integration test")
	}
	testenv.RequireRoot(t)
	for bin, pkg := range map[string]string{"sshd": "openssh-server", "nginx": "nginx", "unshare": "util-linux", "nsenter": "util-linux"} {
		testenv.Require(t, bin, pkg)
	}
}

func newEnv(t *testing.T, n int) *env {
	t.Helper()
	requireSandbox(t)
	return newEnvAt(t, n, "127.0.40", testenv.FreePort(t, "127.0.0.1"))
}

// newEnvAt is newEnv on addresses net.1, net.2, ... with the load balancer on lbPort.
func newEnvAt(t *testing.T, n int, net string, lbPort int) *env {
	t.Helper()
	dir := t.TempDir()
	p, err := sandbox.New(sandbox.Config{Dir: filepath.Join(dir, "sandbox"), AddressBase: netip.MustParseAddr(net + ".0"),
		LBPort: lbPort, DataMounts: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := p.Down(ctx); err != nil {
			t.Errorf("sandbox down: %v", err)
		}
	})
	e := &env{t: t, p: p, state: filepath.Join(dir, "state"), bins: filepath.Join(dir, "bins")}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tags := map[string]string{cloud.TagStack: testStack}
	for i := range n {
		addr := fmt.Sprintf("%s.%d", net, i+1)
		ud, err := templates.UserData(templates.RoleApp, templates.Data{Stack: testStack, Role: templates.RoleApp, Index: i,
			Address: addr, ServiceManager: templates.ServiceManagerSandbox, Port: testAppPort})
		if err != nil {
			t.Fatal(err)
		}
		in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: fmt.Sprintf("app-%d", i), Role: "app", Index: i,
			Address: addr, UserData: ud, Tags: tags})
		if err != nil {
			t.Fatal(err)
		}
		e.insts = append(e.insts, in)
	}
	for _, in := range e.insts {
		if err := p.WaitBootstrap(ctx, in.ID); err != nil {
			log, _ := p.HostPath(ctx, in.ID, templates.LogFile)
			b, _ := os.ReadFile(log)
			t.Fatalf("%v\n%s", err, b)
		}
	}
	lb, err := p.CreateLoadBalancer(ctx, cloud.LoadBalancer{Name: testStack, ListenerPort: 80, TargetPort: testAppPort,
		HealthCheck: "/healthz", DrainTimeout: 3 * time.Second, Tags: tags})
	if err != nil {
		t.Fatal(err)
	}
	e.lbAddr = lb.DNSName
	res, err := p.Describe(ctx, testStack)
	if err != nil {
		t.Fatal(err)
	}
	e.hosts = HostsFromInstances(res.Instances, "app")
	e.dialer = e.newDialer(p.KnownHostsPath())
	return e
}

func (e *env) newDialer(knownHosts string) *remote.SSHDialer {
	d, err := remote.NewDialer(remote.Config{User: "root", Port: e.p.Config().SSHPort, IdentityFiles: []string{e.p.KeyPath()},
		KnownHostsFile: knownHosts, ConnectTimeout: 5 * time.Second, KeepAliveInterval: 2 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *env) config() Config {
	return Config{Stack: testStack, Role: "app", Path: "/opt/instagram", ServiceManager: templates.ServiceManagerSandbox,
		Batches: []string{"1", "50%", "100%"}, MaxFail: "0", HealthPort: testAppPort, HealthTimeout: 4 * time.Second,
		HealthPasses: 2, HealthInterval: 100 * time.Millisecond, VerifyVersion: true, LoadBalancer: testStack,
		DrainTimeout: 3 * time.Second, StateDir: e.state, Operator: "tester@sandbox", KeepReleases: 2}
}

// build compiles the stand-in app with version stamped in (healthy=false: a broken release).
func (e *env) build(version string, healthy bool) Artifact {
	e.t.Helper()
	out := filepath.Join(e.bins, version, "instagram-app")
	ld := fmt.Sprintf("-s -w -X main.version=%s -X main.healthy=%t", version, healthy)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ld, "-o", out, "./testdata/standin")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("build stand-in: %v\n%s", err, b)
	}
	a, err := OpenArtifact(out)
	if err != nil {
		e.t.Fatal(err)
	}
	a.Version = version
	return a
}

// deploy plans and runs a deploy, collecting its events.
func (e *env) deploy(ctx context.Context, cfg Config, a Artifact, onEvent func(Event)) (*Report, []Event, error) {
	e.t.Helper()
	p, err := NewPlan(KindDeploy, cfg, e.hosts, a, "", NewRunID(time.Now()))
	if err != nil {
		e.t.Fatal(err)
	}
	var mu sync.Mutex
	var evs []Event
	d := &Deployer{Dialer: e.dialer, LB: e.p, OnEvent: func(ev Event) {
		mu.Lock()
		evs = append(evs, ev)
		mu.Unlock()
		if onEvent != nil {
			onEvent(ev)
		}
	}}
	rep, err := d.Deploy(ctx, p)
	return rep, evs, err
}

// versions GETs every host's health endpoint and returns the versions they report.
func (e *env) versions() []string {
	var out []string
	for _, h := range e.hosts {
		resp, err := http.Get(h.healthURL(e.config().withDefaults()))
		if err != nil {
			out = append(out, "down")
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		v := string(b)
		if i := strings.Index(v, `"version":"`); i >= 0 {
			v = v[i+len(`"version":"`):]
			v = v[:strings.IndexByte(v, '"')]
		}
		out = append(out, v)
	}
	return out
}

// load sends requests through the load balancer until stopped and counts failures.
type load struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	stop       chan struct{}
	wg         sync.WaitGroup
}

func (e *env) startLoad(workers int) *load {
	l := &load{stop: make(chan struct{})}
	client := &http.Client{Timeout: 5 * time.Second}
	for range workers {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				resp, err := client.Get("http://" + e.lbAddr + "/")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					l.failed.Add(1)
					l.firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				l.ok.Add(1)
			}
		})
	}
	return l
}

func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if l.failed.Load() > 0 || l.ok.Load() == 0 {
		t.Errorf("through the LB: %d ok, %d failed (first: %v); want zero failures", l.ok.Load(), l.failed.Load(), l.firstErr.Load())
	} else {
		t.Logf("through the LB: %d requests, 0 failed", l.ok.Load())
	}
}

func outcomes(rep *Report) string {
	var s []string
	for _, h := range rep.Hosts {
		s = append(s, h.Host+"="+string(h.State))
	}
	return strings.Join(s, " ")
}

// killSSHD kills, by PID, every sshd process of the host (the listener the sandbox recorded and
// the sessions in its mount namespace), the way a crashed daemon vanishes; the app keeps running.
func (e *env) killSSHD(t *testing.T, host string) {
	var id string
	for i, h := range e.hosts {
		if h.Name == host {
			id = e.insts[i].ID
		}
	}
	root, err := e.p.HostPath(context.Background(), id, "/")
	if err != nil {
		t.Fatalf("kill sshd of %s: %v", host, err)
	}
	listener, err := strconv.Atoi(strings.Split(root, "/")[2]) // /proc/PID/root/
	if err != nil {
		t.Fatalf("kill sshd of %s: %s: %v", host, root, err)
	}
	ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", listener))
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + ent.Name() + "/comm")
		pns, _ := os.Readlink("/proc/" + ent.Name() + "/ns/mnt")
		if pns == ns && strings.HasPrefix(string(comm), "sshd") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func TestSandboxDeploy(t *testing.T) {
	e := newEnv(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	v1, v2, v3, v4 := e.build("v1", true), e.build("v2", true), e.build("v3", false), e.build("v4", true)

	t.Run("first deploy", func(t *testing.T) {
		rep, _, err := e.deploy(ctx, e.config(), v1, nil)
		if err != nil || rep.Result != ResultOK {
			for _, f := range []string{"/var/log/instagram/app.log", templates.AppEnvFile, "/etc/instagram/services/app.env"} {
				p, _ := e.p.HostPath(ctx, e.insts[0].ID, f)
				b, _ := os.ReadFile(p)
				t.Logf("%s:\n%s", f, b)
			}
			t.Fatalf("deploy v1: %v (%s)", err, outcomes(rep))
		}
		if got := strings.Join(e.versions(), ","); got != "v1,v1,v1" {
			t.Fatalf("versions after v1 = %s", got)
		}
	})

	t.Run("rolling deploy under load", func(t *testing.T) {
		l := e.startLoad(4)
		time.Sleep(300 * time.Millisecond)
		rep, evs, err := e.deploy(ctx, e.config(), v2, nil)
		time.Sleep(300 * time.Millisecond)
		l.finish(t)
		if err != nil || rep.Result != ResultOK || rep.Count(OutcomeActivated) != 3 {
			t.Fatalf("deploy v2: %v (%s)", err, outcomes(rep))
		}
		if got := strings.Join(e.versions(), ","); got != "v2,v2,v2" {
			t.Errorf("versions after v2 = %s", got)
		}
		for _, h := range rep.Hosts {
			if !h.Uploaded || h.Previous != v1.ID {
				t.Errorf("%s: uploaded %v previous %q; want an upload and previous %s", h.Host, h.Uploaded, h.Previous, v1.ID)
			}
		}
		var batches []string
		for _, ev := range evs {
			if ev.Stage == StageBatch && ev.Status == StatusOK {
				batches = append(batches, strconv.Itoa(ev.Batch))
			}
		}
		if strings.Join(batches, ",") != "1,2" {
			t.Errorf("batches completed: %v; want 1,2 (1 host, then 2)", batches)
		}
		// Audit: one line per run locally, and on the hosts.
		local, _ := os.ReadFile(AuditLogPath(e.state))
		if n := strings.Count(string(local), "\n"); n != 2 || !strings.Contains(string(local), `"release":"`+v2.ID+`"`) {
			t.Errorf("local audit log has %d lines:\n%s", n, local)
		}
		hostLog, err := e.p.HostPath(ctx, e.insts[1].ID, DefaultAuditPath)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(hostLog); strings.Count(string(b), "\n") != 2 {
			t.Errorf("audit log on app-1 = %q", b)
		}
	})

	t.Run("redeploy uploads nothing", func(t *testing.T) {
		start := time.Now()
		cfg := e.config()
		cfg.LoadBalancer = ""
		cfg.Batches = []string{"100%"}
		hostLog, err := e.p.HostPath(ctx, e.insts[1].ID, DefaultAuditPath)
		if err != nil {
			t.Fatal(err)
		}
		auditBefore, _ := os.ReadFile(hostLog)
		localBefore, _ := os.ReadFile(AuditLogPath(e.state))
		rep, evs, err := e.deploy(ctx, cfg, v2, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range rep.Hosts {
			if h.Uploaded || h.Flipped || h.State != OutcomeActivated {
				t.Errorf("%s: uploaded %v, flipped %v, %s; want left alone and activated", h.Host, h.Uploaded, h.Flipped, h.State)
			}
		}
		// Nothing changes and the lock is free: the lock is not taken, the hosts' audit logs
		// stay as they were, the local one gets the run.
		var lockEvents []string
		for _, ev := range evs {
			if ev.Stage == StageLock {
				lockEvents = append(lockEvents, string(ev.Status))
			}
		}
		if strings.Join(lockEvents, ",") != "skip" {
			t.Errorf("lock events = %v; want one skip (not taken)", lockEvents)
		}
		if b, _ := os.ReadFile(hostLog); !bytes.Equal(b, auditBefore) {
			t.Errorf("an unchanged redeploy wrote app-1's audit log:\n%s", b)
		}
		if b, _ := os.ReadFile(AuditLogPath(e.state)); strings.Count(string(b), "\n") != strings.Count(string(localBefore), "\n")+1 {
			t.Errorf("local audit log did not get the unchanged redeploy's line:\n%s", b)
		}
		if rep.Result != ResultOK || rep.BatchesDone != 1 {
			t.Errorf("result %s, batches done %d; want ok, 1", rep.Result, rep.BatchesDone)
		}
		t.Logf("redeploy of the same artifact: %v", time.Since(start))
	})

	t.Run("unchanged redeploy meets a held lock", func(t *testing.T) {
		// Someone else holds the lock (written as LockCommand would): a redeploy that would
		// change nothing is still refused with the holder, as a locked run would be.
		cfg := e.config()
		cfg.LoadBalancer = ""
		cfg.Batches = []string{"100%"}
		dir, err := e.p.HostPath(ctx, e.insts[0].ID, LockDir(cfg.Path))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		info := `{"holder":"carol@elsewhere","run_id":"20261201T000000Z-c0ffee","kind":"deploy","release":"x","stack":"` + testStack + `"}`
		if err := os.WriteFile(filepath.Join(dir, "info.json"), []byte(info+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		rep, _, err := e.deploy(ctx, cfg, v2, nil)
		var le *LockedError
		if !errors.As(err, &le) || le.Info.Holder != "carol@elsewhere" {
			t.Fatalf("redeploy with the lock held = %v (%s); want *LockedError naming carol", err, outcomes(rep))
		}
		if _, err := os.Stat(filepath.Join(dir, "info.json")); err != nil {
			t.Errorf("the holder's lock is gone: %v", err)
		}
	})

	t.Run("failing canary is rolled back", func(t *testing.T) {
		l := e.startLoad(4)
		time.Sleep(300 * time.Millisecond)
		rep, _, err := e.deploy(ctx, e.config(), v3, nil)
		time.Sleep(300 * time.Millisecond)
		l.finish(t)
		var mf *MaxFailError
		if !errors.As(err, &mf) || mf.Batch != 1 {
			t.Fatalf("deploy v3 = %v; want a max-fail stop in batch 1", err)
		}
		h := rep.Hosts[0]
		if h.State != OutcomeRolledBack || h.Stage != StageHealth || !strings.Contains(h.Error, "status 500") {
			t.Errorf("canary = %+v; want rolled back after a failed health check", h)
		}
		if rep.Hosts[1].State != OutcomeNotStarted || rep.Hosts[2].State != OutcomeNotStarted {
			t.Errorf("outcomes = %s; want the other batches not started", outcomes(rep))
		}
		if got := strings.Join(e.versions(), ","); got != "v2,v2,v2" {
			t.Errorf("versions after the failed v3 = %s", got)
		}
		d := &Deployer{Dialer: e.dialer}
		rels, err := d.Releases(ctx, e.config(), e.hosts)
		if err != nil || rels[0].Current != v2.ID || rels[0].Previous != v1.ID {
			t.Errorf("releases on the canary = %+v, %v; want current v2, previous v1", rels[0], err)
		}
	})

	t.Run("concurrent deploy refused by the lock", func(t *testing.T) {
		var second error
		var once sync.Once
		cfg := e.config()
		cfg.LoadBalancer = ""
		rep, _, err := e.deploy(ctx, cfg, v4, func(ev Event) {
			if ev.Stage == StageFlip && ev.Status == StatusStart {
				once.Do(func() {
					other := cfg
					other.Operator = "bob@elsewhere"
					_, _, second = e.deploy(ctx, other, v1, nil)
				})
			}
		})
		if err != nil {
			t.Fatalf("first deploy: %v (%s)", err, outcomes(rep))
		}
		var le *LockedError
		if !errors.As(second, &le) || le.Info.Holder != "tester@sandbox" || le.Info.RunID != rep.RunID || le.Info.Release != v4.ID {
			t.Fatalf("second deploy = %v; want *LockedError naming the first run", second)
		}
		t.Logf("refused: %v", second)
		info, _, err := (&Deployer{Dialer: e.dialer}).LockStatus(ctx, cfg, e.hosts)
		if err != nil || info != nil {
			t.Errorf("lock after the run = %+v, %v; want free", info, err)
		}
	})

	t.Run("interrupted deploy resumes", func(t *testing.T) {
		cfg := e.config()
		cfg.Batches = []string{"1"}
		rctx, stop := context.WithCancel(ctx)
		var once sync.Once
		rep, _, err := e.deploy(rctx, cfg, v2, func(ev Event) {
			if ev.Stage == StageBatch && ev.Status == StatusStart && ev.Batch == 2 {
				once.Do(stop)
			}
		})
		stop()
		if !errors.Is(err, ErrInterrupted) || rep.Result != ResultInterrupted {
			t.Fatalf("interrupted deploy = %v (%s)", err, rep.Result)
		}
		info, _, _ := (&Deployer{Dialer: e.dialer}).LockStatus(ctx, cfg, e.hosts)
		if info == nil || info.RunID != rep.RunID {
			t.Fatalf("lock after interruption = %+v; want still held by %s", info, rep.RunID)
		}
		var flipped []string
		d := &Deployer{Dialer: e.dialer, LB: e.p, OnEvent: func(ev Event) {
			if ev.Stage == StageFlip && ev.Status == StatusStart {
				flipped = append(flipped, ev.Host)
			}
		}}
		rep2, err := d.Resume(ctx, e.state, rep.RunID)
		if err != nil || rep2.Result != ResultOK || rep2.Resumes != 1 {
			t.Fatalf("resume = %v (%s)", err, outcomes(rep2))
		}
		if strings.Join(flipped, ",") != "app-1,app-2" {
			t.Errorf("resume flipped %v; want only the unfinished app-1,app-2", flipped)
		}
		if got := strings.Join(e.versions(), ","); got != "v2,v2,v2" {
			t.Errorf("versions after resume = %s", got)
		}
		if _, err := d.Resume(ctx, e.state, rep.RunID); err == nil {
			t.Error("resuming a finished run succeeded")
		}
	})

	t.Run("rollback to previous", func(t *testing.T) {
		d := &Deployer{Dialer: e.dialer, LB: e.p}
		p, err := NewPlan(KindRollback, e.config(), e.hosts, Artifact{}, "", NewRunID(time.Now()))
		if err != nil {
			t.Fatal(err)
		}
		l := e.startLoad(2)
		rep, err := d.Rollback(ctx, p)
		l.finish(t)
		if err != nil || rep.Result != ResultOK {
			t.Fatalf("rollback: %v (%s)", err, outcomes(rep))
		}
		if got := strings.Join(e.versions(), ","); got != "v4,v4,v4" {
			t.Errorf("versions after rollback = %s; want v4 (the release before v2)", got)
		}
	})

	t.Run("sshd killed mid-deploy", func(t *testing.T) {
		cfg := e.config()
		cfg.MaxFail = "1"
		var once sync.Once
		l := e.startLoad(2)
		rep, _, err := e.deploy(ctx, cfg, v1, func(ev Event) {
			if ev.Host == "app-2" && ev.Stage == StageUpload && ev.Status == StatusProgress {
				once.Do(func() { e.killSSHD(t, "app-2") })
			}
		})
		l.finish(t)
		if err != nil || rep.Result != ResultPartial {
			t.Fatalf("deploy with a dead host = %v (%s); want success within max-fail 1", err, outcomes(rep))
		}
		h := rep.Hosts[2]
		if h.State != OutcomeFailed || !strings.Contains(h.Error, "app-2") {
			t.Errorf("app-2 = %+v; want failed with an error naming it", h)
		}
		t.Logf("app-2: %s at %s: %s", h.State, h.Stage, h.Error)
		if rep.Hosts[0].State != OutcomeActivated || rep.Hosts[1].State != OutcomeActivated {
			t.Errorf("outcomes = %s", outcomes(rep))
		}
	})
}

func TestSandboxHostKeys(t *testing.T) {
	e := newEnv(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := e.build("v1", true)
	dir := t.TempDir()

	empty := filepath.Join(dir, "empty_known_hosts")
	os.WriteFile(empty, nil, 0o644)
	e.dialer = e.newDialer(empty)
	_, _, err := e.deploy(ctx, e.config(), a, nil)
	var hk *remote.HostKeyError
	if !errors.As(err, &hk) || hk.Kind != remote.HostKeyUnknown {
		t.Errorf("unknown host key: deploy = %v; want a HostKeyError (unknown)", err)
	}

	known, _ := os.ReadFile(e.p.KnownHostsPath())
	other := e.newOtherKey(t)
	changed := filepath.Join(dir, "changed_known_hosts")
	fields := strings.Fields(string(known))
	os.WriteFile(changed, []byte(fields[0]+" "+other+"\n"), 0o644)
	e.dialer = e.newDialer(changed)
	_, _, err = e.deploy(ctx, e.config(), a, nil)
	if !errors.As(err, &hk) || hk.Kind != remote.HostKeyChanged {
		t.Errorf("changed host key: deploy = %v; want a HostKeyError (changed)", err)
	}
}

// newOtherKey returns "ssh-ed25519 AAAA..." of a fresh key no host has.
func (e *env) newOtherKey(t *testing.T) string {
	f := filepath.Join(t.TempDir(), "k")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	b, _ := os.ReadFile(f + ".pub")
	fs := strings.Fields(string(b))
	return fs[0] + " " + fs[1]
}

// A deploy interrupted mid-batch after one host took the release, resumed with another host
// of the batch dead: max-fail 0 is breached, and the host the interrupted run activated goes
// back to the previous release with the one the resumed run activated.
func TestSandboxResumeBreach(t *testing.T) {
	e := newEnv(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	v1, v2 := e.build("v1", true), e.build("v2", true)
	if rep, _, err := e.deploy(ctx, e.config(), v1, nil); err != nil {
		t.Fatalf("deploy v1: %v (%s)", err, outcomes(rep))
	}

	cfg := e.config()
	cfg.Batches, cfg.Parallel = []string{"1", "100%"}, 1
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	// One host at a time: when the second host of batch 2 is about to flip, the first is
	// activated and journaled. The journal then is what a SIGKILL leaves behind (a cancelled
	// run goes on to record the hosts it did not reach), so it is put back after the run.
	var first string
	var killed []byte
	rep, _, err := e.deploy(rctx, cfg, v2, func(ev Event) {
		if ev.Batch != 2 || ev.Stage != StageFlip || ev.Status != StatusStart || killed != nil {
			return
		}
		if first == "" {
			first = ev.Host
			return
		}
		b, err := os.ReadFile(JournalPath(e.state, ev.RunID))
		if err != nil {
			t.Errorf("journal: %v", err)
		}
		killed = b
		stop()
	})
	if !errors.Is(err, ErrInterrupted) || killed == nil {
		t.Fatalf("interrupted deploy = %v (%s); journal saved: %v", err, outcomes(rep), killed != nil)
	}
	if err := os.WriteFile(JournalPath(e.state, rep.RunID), killed, 0o644); err != nil {
		t.Fatal(err)
	}
	_, j, err := LoadJournal(e.state, rep.RunID)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range j.Hosts {
		if want := h.Host == first || h.Host == "app-0"; (h.State == OutcomeActivated && h.Flipped) != want {
			t.Fatalf("journal of the killed run: %s; want app-0 and %s activated", outcomes(j), first)
		}
	}
	var dead, third string
	for _, n := range []string{"app-1", "app-2", "app-3"} {
		switch {
		case n == first:
		case dead == "":
			dead = n
		default:
			third = n
		}
	}
	e.killSSHD(t, dead)

	d := &Deployer{Dialer: e.dialer, LB: e.p}
	rep2, err := d.Resume(ctx, e.state, rep.RunID)
	var mf *MaxFailError
	if !errors.As(err, &mf) || mf.Batch != 2 {
		t.Fatalf("resume = %v (%s); want a max-fail stop in batch 2", err, outcomes(rep2))
	}
	by := map[string]HostReport{}
	for _, h := range rep2.Hosts {
		by[h.Host] = h
	}
	if h := by[first]; h.State != OutcomeRolledBack || !strings.Contains(h.Note, earlierNote) {
		t.Errorf("%s (activated by the interrupted run) = %+v; want rolled back with a note saying so", first, h)
	}
	if h := by[third]; h.State != OutcomeRolledBack || strings.Contains(h.Note, earlierNote) {
		t.Errorf("%s (activated by the resumed run) = %+v; want rolled back", third, h)
	}
	vs := e.versions()
	for i, h := range e.hosts {
		if (h.Name == first || h.Name == third) && vs[i] != "v1" {
			t.Errorf("%s runs %s after the breach; want v1 (versions %v)", h.Name, vs[i], vs)
		}
	}
	t.Logf("after the breach: %s; versions %v", outcomes(rep2), vs)
}
