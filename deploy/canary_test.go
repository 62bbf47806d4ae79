package deploy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/instactl/instactl/canary"
)

func canaryTestPlan(t *testing.T, kind Kind, n int) *Plan {
	t.Helper()
	cfg := testConfig(t.TempDir())
	cfg.Canary = &canary.Config{Window: 50 * time.Millisecond, MaxWindow: 100 * time.Millisecond, MinRequests: 100,
		MaxErrorRatioIncrease: 0.01, MaxLatencyIncrease: 0.2, Confidence: 0.95}
	a := Artifact{ID: "abcdef012345", SHA256: "00", Size: 1, Path: "/dev/null"}
	release := ""
	if kind == KindRollback {
		a = Artifact{}
	}
	p, err := NewPlan(kind, cfg, testHosts(n), a, release, "R1")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCanarySides(t *testing.T) {
	p := canaryTestPlan(t, KindDeploy, 6) // batches app-0 | app-1..app-3 | app-4 app-5
	r := newRun(&Deployer{}, p, nil, nil)
	set := func(name string, fn func(h *HostReport)) { fn(r.byName[name]) }
	set("app-0", func(h *HostReport) { h.State, h.Flipped = OutcomeActivated, true })
	set("app-1", func(h *HostReport) { h.State, h.WasCurrent = OutcomeStaged, true }) // already on the release
	set("app-2", func(h *HostReport) { h.State = OutcomeStaged })
	set("app-3", func(h *HostReport) { h.State = OutcomeStaged })
	c, b, ok := r.canarySides(p.Batches[0])
	if !ok || strings.Join(c, ",") != "app-0" || strings.Join(b, ",") != "app-2" {
		t.Errorf("sides %v %v %v; want canary app-0 against app-2 (app-1 already runs the release)", c, b, ok)
	}
	if _, _, ok := r.canarySides(p.Batches[1]); ok {
		t.Error("the analysis applies to a later batch")
	}
	set("app-0", func(h *HostReport) { h.Flipped = false }) // already current: not switched by this run
	if _, _, ok := r.canarySides(p.Batches[0]); ok {
		t.Error("the analysis applies to a batch this run switched no host of")
	}

	rb := canaryTestPlan(t, KindRollback, 6)
	r = newRun(&Deployer{}, rb, nil, nil)
	r.byName["app-0"].State, r.byName["app-0"].Flipped = OutcomeActivated, true
	if _, _, ok := r.canarySides(rb.Batches[0]); ok {
		t.Error("the analysis applies to a rollback")
	}
}

// metricsHost serves an app server's /metrics on addr:port whose request counter grows by
// rate per scrape, errPct percent of them 500s.
func metricsHost(t *testing.T, addr string, port, rate, errPct int) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, fmt.Sprint(port)))
	if err != nil {
		t.Skipf("listen on %s: %v", addr, err)
	}
	var n atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := n.Add(1) * int64(rate)
		errs := k * int64(errPct) / 100
		fmt.Fprintf(w, "# TYPE instagram_http_requests_total counter\n# TYPE instagram_http_request_duration_seconds histogram\n")
		fmt.Fprintf(w, "instagram_http_requests_total{code=\"200\",method=\"GET\",route=\"GET /a\"} %d\n", k-errs)
		fmt.Fprintf(w, "instagram_http_requests_total{code=\"500\",method=\"GET\",route=\"GET /a\"} %d\n", errs)
		fmt.Fprintf(w, "instagram_http_request_duration_seconds_bucket{route=\"GET /a\",le=\"0.005\"} %d\n", k/2)
		fmt.Fprintf(w, "instagram_http_request_duration_seconds_bucket{route=\"GET /a\",le=\"0.01\"} %d\n", k)
		fmt.Fprintf(w, "instagram_http_request_duration_seconds_bucket{route=\"GET /a\",le=\"+Inf\"} %d\n", k)
		fmt.Fprintf(w, "instagram_http_request_duration_seconds_sum{route=\"GET /a\"} 1\n")
		fmt.Fprintf(w, "instagram_http_request_duration_seconds_count{route=\"GET /a\"} %d\n", k)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// The analysis after batch 1 scrapes the canary and the baseline over HTTP and records its
// verdict; a pass lets the run go on.
func TestAnalyzeCanaryPass(t *testing.T) {
	p := canaryTestPlan(t, KindDeploy, 2)
	p.Hosts[0].Address, p.Hosts[1].Address = "127.0.154.201", "127.0.154.202"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	p.Config.HealthPort = port
	metricsHost(t, "127.0.154.201", port, 400, 0)
	metricsHost(t, "127.0.154.202", port, 400, 0)
	var mu sync.Mutex
	var evs []string
	r := newRun(&Deployer{OnEvent: func(ev Event) {
		mu.Lock()
		evs = append(evs, fmt.Sprintf("%s %s %s", ev.Stage, ev.Status, ev.Message))
		mu.Unlock()
	}}, p, nil, nil)
	r.byName["app-0"].State, r.byName["app-0"].Flipped = OutcomeActivated, true
	r.byName["app-1"].State = OutcomeStaged
	if err := r.analyzeCanary(context.Background(), p.Batches[0]); err != nil {
		t.Fatal(err)
	}
	a := r.rep.Canary
	if a == nil || a.Verdict != canary.Pass || a.Overall.Canary.Requests != 400 || strings.Join(a.Baseline, ",") != "app-1" {
		t.Fatalf("analysis %+v; want pass on 400 requests a side against app-1", a)
	}
	if got := strings.Join(evs, "\n"); !strings.Contains(got, "canary start comparing app-0 with app-1") || !strings.Contains(got, "canary ok pass after") {
		t.Errorf("events:\n%s", got)
	}
	_, j, err := LoadJournal(p.Config.StateDir, "R1")
	if err != nil || j.Canary == nil || j.Canary.Verdict != canary.Pass {
		t.Errorf("journal lacks the analysis: %v %+v", err, j)
	}
}

// Without a host still on the previous release to compare with, the analysis is
// inconclusive and the run goes on.
func TestAnalyzeCanaryNoBaseline(t *testing.T) {
	p := canaryTestPlan(t, KindDeploy, 2)
	r := newRun(&Deployer{}, p, nil, nil)
	r.byName["app-0"].State, r.byName["app-0"].Flipped = OutcomeActivated, true
	r.byName["app-1"].State, r.byName["app-1"].WasCurrent = OutcomeStaged, true
	if err := r.analyzeCanary(context.Background(), p.Batches[0]); err != nil {
		t.Fatal(err)
	}
	if a := r.rep.Canary; a == nil || a.Verdict != canary.Inconclusive || !strings.Contains(a.Reason, "no baseline") {
		t.Fatalf("analysis %+v; want inconclusive: no baseline", a)
	}
}

func TestCanaryPlanLine(t *testing.T) {
	p := canaryTestPlan(t, KindDeploy, 4)
	var b strings.Builder
	if err := p.Render(&b); err != nil {
		t.Fatal(err)
	}
	want := "canary analysis after batch 1: its hosts against as many hosts of later batches, over 50ms (up to 100ms), " +
		"min 100 requests a side, tolerances +0.01 error ratio, +20% latency, at 95% confidence; fail rolls batch 1 back\n"
	if !strings.Contains(b.String(), want) {
		t.Errorf("plan lacks %q:\n%s", want, b.String())
	}
	p.Config.Canary.OnInconclusive = canary.OnInconclusiveRollback
	b.Reset()
	p.Render(&b)
	if !strings.Contains(b.String(), "confidence; fail or inconclusive rolls batch 1 back\n") {
		t.Errorf("a plan with on_inconclusive: rollback does not say so:\n%s", b.String())
	}
	p.Config.Canary = nil
	b.Reset()
	p.Render(&b)
	if strings.Contains(b.String(), "canary analysis") {
		t.Errorf("a plan without deploy.canary mentions it:\n%s", b.String())
	}
}

func TestCanaryError(t *testing.T) {
	e := &CanaryError{Batch: 1, Hosts: []string{"app-0"}, Analysis: canary.Analysis{Canary: []string{"app-0"}, Baseline: []string{"app-3"},
		WindowMS: 30000, Reason: "canary serves more errors"}}
	if got := e.Error(); got != "deploy stopped in batch 1: the canary analysis failed app-0 against app-3 after 30s: canary serves more errors" {
		t.Errorf("Error() = %q", got)
	}
	e.Analysis.Verdict, e.Analysis.Reason = canary.Inconclusive, "too few requests to judge"
	if got := e.Error(); got != "deploy stopped in batch 1: the canary analysis stayed inconclusive (deploy.canary.on_inconclusive: rollback) for app-0 against app-3 after 30s: too few requests to judge" {
		t.Errorf("Error() = %q", got)
	}
}

// A deploy killed during the analysis left batch 1 activated without a verdict; the
// resumed run, from the journal, carries batch 1's host and judges it against the same
// baseline before going on.
func TestAnalyzeCanaryAfterResume(t *testing.T) {
	p := canaryTestPlan(t, KindDeploy, 2)
	p.Hosts[0].Address, p.Hosts[1].Address = "127.0.154.203", "127.0.154.204"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	p.Config.HealthPort = port
	metricsHost(t, "127.0.154.203", port, 400, 10)
	metricsHost(t, "127.0.154.204", port, 400, 0)

	killed := newRun(&Deployer{}, p, nil, nil)
	killed.update("app-0", func(hr *HostReport) { hr.State, hr.Flipped, hr.Previous = OutcomeActivated, true, "old000000000" })
	killed.update("app-1", func(hr *HostReport) { hr.State = OutcomeStaged })
	killed.rep.Result = ResultInterrupted
	killed.save()

	p2, prior, err := LoadJournal(p.Config.StateDir, "R1")
	if err != nil {
		t.Fatal(err)
	}
	prior.Resumes++
	r := newRun(&Deployer{}, p2, prior, nil)
	b := p2.Batches[0]
	if got := r.carried(b, r.todo(b)); strings.Join(got, ",") != "app-0" || !r.canaryUndecided() {
		t.Fatalf("carried %v, undecided %v; want app-0 carried without a verdict", got, r.canaryUndecided())
	}
	c, base, ok := r.canarySides(b)
	if !ok || strings.Join(c, ",") != "app-0" || strings.Join(base, ",") != "app-1" {
		t.Fatalf("sides after resume %v %v %v; want app-0 against app-1", c, base, ok)
	}
	// Judged now, the canary's 10% errors fail it; the rollback itself needs SSH and is the
	// sandbox test's part, so only the verdict is checked here.
	a, err := canary.Runner{Config: *p2.Config.Canary, Scrape: canary.HTTPScrape(r.d.httpClient())}.Run(context.Background(),
		[]canary.Target{{Name: "app-0", URL: r.hosts["app-0"].metricsURL(r.cfg)}}, []canary.Target{{Name: "app-1", URL: r.hosts["app-1"].metricsURL(r.cfg)}})
	if err != nil || a.Verdict != canary.Fail {
		t.Errorf("verdict %v (%v); want fail", a.Verdict, err)
	}
	r.recordCanary(a)
	if r.canaryUndecided() {
		t.Error("a recorded verdict is still undecided")
	}
}
