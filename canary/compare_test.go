package canary

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// bounds are the app's latency buckets (internal/app/metrics.go).
var bounds = []float64{.0005, .001, .0015, .002, .0025, .003, .004, .005, .0065, .008, .01, .0125, .015, .02, .025,
	.03, .04, .05, .065, .08, .1, .125, .15, .2, .25, .3, .4, .5, .75, 1, 1.5, 2, 2.5, 5, 10, math.Inf(1)}

// series draws n requests with latencies around median (log-normal, like request latency),
// plus delay, of which errors answer 5xx.
func series(rng *rand.Rand, n, errors int, median, delay float64) Series {
	s := Series{Requests: uint64(n), Errors: uint64(errors), Bounds: bounds, Counts: make([]uint64, len(bounds))}
	for range n {
		v := median*math.Exp(0.5*rng.NormFloat64()) + delay
		for i, b := range bounds {
			if v <= b {
				s.Counts[i]++
				break
			}
		}
	}
	return s
}

func snap(routes map[string]Series) Snapshot { return Snapshot{Routes: routes} }

func TestCompare(t *testing.T) {
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(7, 9))
	feed := "GET /users/{id}/feed"
	photo := "GET /photos/{id}"
	for _, tc := range []struct {
		name             string
		canary, baseline Snapshot
		want             Verdict
		reason           string
	}{
		{"healthy", snap(map[string]Series{feed: series(rng, 600, 0, 0.004, 0), photo: series(rng, 400, 0, 0.002, 0)}),
			snap(map[string]Series{feed: series(rng, 600, 0, 0.004, 0), photo: series(rng, 400, 0, 0.002, 0)}), Pass, "within tolerances"},
		{"5% errors", snap(map[string]Series{feed: series(rng, 600, 30, 0.004, 0), photo: series(rng, 400, 20, 0.002, 0)}),
			snap(map[string]Series{feed: series(rng, 600, 0, 0.004, 0), photo: series(rng, 400, 0, 0.002, 0)}), Fail, "more errors"},
		{"+50ms", snap(map[string]Series{feed: series(rng, 600, 0, 0.004, 0.05), photo: series(rng, 400, 0, 0.002, 0.05)}),
			snap(map[string]Series{feed: series(rng, 600, 0, 0.004, 0), photo: series(rng, 400, 0, 0.002, 0)}), Fail, "slower"},
		// Low traffic: 10% errors and +50 ms, but 60 requests: neither fail nor pass.
		{"low traffic, bad canary", snap(map[string]Series{feed: series(rng, 60, 6, 0.004, 0.05)}),
			snap(map[string]Series{feed: series(rng, 60, 0, 0.004, 0)}), Inconclusive, "too few requests"},
		{"low traffic, healthy canary", snap(map[string]Series{feed: series(rng, 60, 0, 0.004, 0)}),
			snap(map[string]Series{feed: series(rng, 60, 0, 0.004, 0)}), Inconclusive, "too few requests"},
		// One endpoint broken, hidden in the overall ratio (300 of 5300 = 5.7%... still
		// judged by its own row).
		{"one endpoint fails", snap(map[string]Series{feed: series(rng, 5000, 0, 0.004, 0), photo: series(rng, 300, 30, 0.002, 0)}),
			snap(map[string]Series{feed: series(rng, 5000, 0, 0.004, 0), photo: series(rng, 300, 0, 0.002, 0)}), Fail, photo + ": canary serves more errors"},
		// A 1-point error increase within tolerance 1 point passes even if significant.
		{"small increase within tolerance", snap(map[string]Series{feed: series(rng, 20000, 150, 0.004, 0)}),
			snap(map[string]Series{feed: series(rng, 20000, 10, 0.004, 0)}), Pass, "within tolerances"},
		// An increase beyond tolerance on few errors that the test is not sure of: 4 of 200
		// against 1 of 200 (z 1.35, p 0.089).
		{"worse but unsure", snap(map[string]Series{feed: series(rng, 200, 4, 0.004, 0)}),
			snap(map[string]Series{feed: series(rng, 200, 1, 0.004, 0)}), Inconclusive, "not sure"},
	} {
		a := Compare(tc.canary, tc.baseline, cfg)
		if a.Verdict != tc.want || !strings.Contains(a.Reason, tc.reason) {
			t.Errorf("%s: %s (%s); want %s mentioning %q", tc.name, a.Verdict, a.Reason, tc.want, tc.reason)
		}
		t.Logf("%s: %s: %s", tc.name, a.Verdict, a.Reason)
	}
}

func TestCompareRow(t *testing.T) {
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(3, 4))
	a := Compare(snap(map[string]Series{"GET /a": series(rng, 1000, 50, 0.004, 0.05), "GET /b": series(rng, 10, 0, 0.004, 0)}),
		snap(map[string]Series{"GET /a": series(rng, 1000, 0, 0.004, 0), "GET /b": series(rng, 10, 0, 0.004, 0)}), cfg)
	o := a.Overall
	if o.Canary.Requests != 1010 || o.Canary.Errors != 50 || o.Baseline.Errors != 0 || !near(o.Canary.ErrorRatio, 50.0/1010, 1e-12) {
		t.Errorf("overall sides: %+v %+v", o.Canary, o.Baseline)
	}
	if o.Canary.P50 < 0.05 || o.Baseline.P50 > 0.01 || o.LatencyIncrease < 5 {
		t.Errorf("overall p50 %g vs %g, increase %g", o.Canary.P50, o.Baseline.P50, o.LatencyIncrease)
	}
	if o.ErrorTest.P > 1e-6 || o.LatencyTest.P > 1e-6 || o.Alpha != 1-cfg.Confidence {
		t.Errorf("overall tests: %+v %+v alpha %g", o.ErrorTest, o.LatencyTest, o.Alpha)
	}
	if len(a.Endpoints) != 2 || a.Endpoints[0].Alpha != 1-cfg.Confidence || a.Endpoints[1].Verdict != Inconclusive {
		t.Errorf("endpoints (one judged, so alpha undivided; /b too small): %+v", a.Endpoints)
	}
	// An endpoint neither side served in the window is no row.
	a = Compare(snap(map[string]Series{"GET /a": series(rng, 300, 0, 0.004, 0), "GET /idle": {Bounds: bounds, Counts: make([]uint64, len(bounds))}}),
		snap(map[string]Series{"GET /a": series(rng, 300, 0, 0.004, 0), "GET /idle": {}}), cfg)
	if len(a.Endpoints) != 1 || a.Endpoints[0].Endpoint != "GET /a" {
		t.Errorf("endpoints %+v; want only GET /a", a.Endpoints)
	}
}

// TestCompareHealthyRarelyFails draws healthy canaries (both sides from one distribution)
// and counts how often the analysis fails them: with the tolerances it must be (almost)
// never, and a bad canary must fail (almost) always.
func TestCompareHealthyRarelyFails(t *testing.T) {
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(11, 12))
	var healthyFails, badPasses int
	for range 200 {
		mk := func(errs int, delay float64) Snapshot {
			return snap(map[string]Series{"GET /a": series(rng, 500, errs, 0.004, delay), "GET /b": series(rng, 300, 0, 0.010, delay)})
		}
		if a := Compare(mk(rng.IntN(3), 0), mk(rng.IntN(3), 0), cfg); a.Verdict == Fail {
			healthyFails++
		}
		if a := Compare(mk(40, 0), mk(0, 0), cfg); a.Verdict != Fail {
			badPasses++
		}
	}
	if healthyFails > 4 || badPasses > 0 {
		t.Errorf("of 200: %d healthy canaries failed, %d canaries with 5%% errors not failed", healthyFails, badPasses)
	}
}

// TestCompareHeavyTail is the app's latency shape (p99 some 20 times p50): a p99 of a few
// hundred requests rests on a handful of them and swings by far more than the tolerance, so
// a healthy canary must still almost never fail nor stay inconclusive, while one twice as
// slow always fails.
func TestCompareHeavyTail(t *testing.T) {
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(21, 22))
	heavy := func(n int, k float64) Snapshot {
		s := Series{Requests: uint64(n), Bounds: bounds, Counts: make([]uint64, len(bounds))}
		for range n {
			v := k * 0.0014 * math.Exp(1.2*rng.NormFloat64())
			for i, b := range bounds {
				if v <= b {
					s.Counts[i]++
					break
				}
			}
		}
		return snap(map[string]Series{"GET /a": s})
	}
	got := map[Verdict]int{}
	var slowNotFailed int
	for range 300 {
		got[Compare(heavy(400, 1), heavy(400, 1), cfg).Verdict]++
		if Compare(heavy(400, 2), heavy(400, 1), cfg).Verdict != Fail {
			slowNotFailed++
		}
	}
	if got[Fail] > 1 || got[Inconclusive] > 20 || slowNotFailed > 0 {
		t.Errorf("of 300 healthy canaries %v; of 300 twice as slow, %d not failed", got, slowNotFailed)
	}
}

// TestCompareErrorsAtTheMargin: a baseline that serves 2% errors itself makes the observed
// increase of a healthy canary swing past one point often; the test against the tolerance
// must still (almost) never fail it, and a canary 4 points worse must (almost) always fail.
func TestCompareErrorsAtTheMargin(t *testing.T) {
	cfg := DefaultConfig()
	rng := rand.New(rand.NewPCG(31, 32))
	draw := func(n int, ratio float64) Snapshot {
		s := series(rng, n, 0, 0.004, 0)
		for range n {
			if rng.Float64() < ratio {
				s.Errors++
			}
		}
		return snap(map[string]Series{"GET /a": s})
	}
	var healthyFails, badNotFailed int
	for range 300 {
		if Compare(draw(400, 0.02), draw(400, 0.02), cfg).Verdict == Fail {
			healthyFails++
		}
		if Compare(draw(1000, 0.06), draw(1000, 0.02), cfg).Verdict != Fail {
			badNotFailed++
		}
	}
	if healthyFails > 1 || badNotFailed > 3 {
		t.Errorf("of 300: %d healthy canaries failed, %d canaries 4 points worse not failed", healthyFails, badNotFailed)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := Config{Window: 0, MaxWindow: -1, MinRequests: 0, MaxErrorRatioIncrease: 1, MaxLatencyIncrease: -1, Confidence: 1, OnInconclusive: "stop"}
	err := c.Validate()
	for _, want := range []string{"window must", "max_window", "min_requests", "max_error_ratio_increase", "max_latency_increase", "confidence",
		`on_inconclusive must be continue or rollback (got "stop")`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v; want it to name %s", err, want)
		}
	}
}

const exposition = `# HELP instagram_http_requests_total HTTP requests by route pattern, method and status code.
# TYPE instagram_http_requests_total counter
instagram_http_requests_total{code="200",method="GET",route="GET /users/{id}/feed"} %d
instagram_http_requests_total{code="500",method="GET",route="GET /users/{id}/feed"} %d
instagram_http_requests_total{code="404",method="GET",route="GET /users/{id}/feed"} 3
instagram_http_requests_total{code="200",method="GET",route="GET /healthz"} 1000
# HELP instagram_http_request_duration_seconds HTTP request latency by route pattern.
# TYPE instagram_http_request_duration_seconds histogram
instagram_http_request_duration_seconds_bucket{route="GET /users/{id}/feed",le="0.005"} %d
instagram_http_request_duration_seconds_bucket{route="GET /users/{id}/feed",le="0.05"} %d
instagram_http_request_duration_seconds_bucket{route="GET /users/{id}/feed",le="+Inf"} %d
instagram_http_request_duration_seconds_sum{route="GET /users/{id}/feed"} 1.5
instagram_http_request_duration_seconds_count{route="GET /users/{id}/feed"} %d
instagram_http_request_duration_seconds_bucket{route="GET /healthz",le="0.005"} 1000
instagram_http_request_duration_seconds_bucket{route="GET /healthz",le="0.05"} 1000
instagram_http_request_duration_seconds_bucket{route="GET /healthz",le="+Inf"} 1000
instagram_http_request_duration_seconds_sum{route="GET /healthz"} 1
instagram_http_request_duration_seconds_count{route="GET /healthz"} 1000
`

func expo(ok, errs, le5ms, le50ms int) string {
	n := ok + errs + 3
	return fmt.Sprintf(exposition, ok, errs, le5ms, le50ms, n, n)
}

func TestParseSnapshotAndSub(t *testing.T) {
	s0, err := ParseSnapshot(strings.NewReader(expo(100, 2, 50, 100)))
	if err != nil {
		t.Fatal(err)
	}
	feed := s0.Routes["GET /users/{id}/feed"]
	if len(s0.Routes) != 1 || feed.Requests != 105 || feed.Errors != 2 {
		t.Fatalf("parsed %+v; want only the feed (health checks left out), 105 requests, 2 errors", s0.Routes)
	}
	if fmt.Sprint(feed.Bounds) != "[0.005 0.05 +Inf]" || fmt.Sprint(feed.Counts) != "[50 50 5]" {
		t.Errorf("histogram %v %v", feed.Bounds, feed.Counts)
	}
	s1, _ := ParseSnapshot(strings.NewReader(expo(300, 12, 200, 300)))
	d := s1.Sub(s0).Routes["GET /users/{id}/feed"]
	if d.Requests != 210 || d.Errors != 10 || fmt.Sprint(d.Counts) != "[150 50 10]" {
		t.Errorf("window: %+v", d)
	}
	// A restart in between: the later counters are all from after it.
	restarted, _ := ParseSnapshot(strings.NewReader(expo(10, 0, 10, 10)))
	if d := restarted.Sub(s1).Routes["GET /users/{id}/feed"]; d.Requests != 13 {
		t.Errorf("after a restart: %+v, want the later counts", d)
	}
	if _, err := ParseSnapshot(strings.NewReader("# just a comment\nother_metric 1\n")); err == nil {
		t.Error("metrics of another program parsed without error")
	}
	if _, err := ParseSnapshot(strings.NewReader(`instagram_http_requests_total{code="200",route="GET /a"} 5` + "\n")); err == nil ||
		!strings.Contains(err.Error(), "not a counter") {
		t.Errorf("an untyped request series: %v; want an error, not zero requests", err)
	}
}

// fakeFleet serves snapshots that grow by a fixed amount per scrape of each host.
type fakeFleet struct {
	mu    sync.Mutex
	calls map[string]int
	per   map[string]func(i int) Snapshot
	fail  map[string]bool
}

func (f *fakeFleet) scrape(_ context.Context, t Target) (Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail[t.Name] {
		return Snapshot{}, errors.New("connection refused")
	}
	f.calls[t.Name]++
	return f.per[t.Name](f.calls[t.Name]), nil
}

// growing is a host that serves rate requests between scrapes, errPct percent of them 5xx.
func growing(rate, errPct int, median float64) func(int) Snapshot {
	rng := rand.New(rand.NewPCG(5, 6))
	var total Series
	return func(int) Snapshot {
		total = add(total, series(rng, rate, rate*errPct/100, median, 0))
		return snap(map[string]Series{"GET /a": total})
	}
}

func TestRunner(t *testing.T) {
	cfg := Config{Window: 10 * time.Second, MaxWindow: 30 * time.Second, MinRequests: 200, MaxErrorRatioIncrease: 0.01,
		MaxLatencyIncrease: 0.2, Confidence: 0.95}
	var slept []time.Duration
	noSleep := func(_ context.Context, d time.Duration) error { slept = append(slept, d); return nil }
	targets := func(names ...string) []Target {
		var ts []Target
		for _, n := range names {
			ts = append(ts, Target{Name: n, URL: "http://" + n + "/metrics"})
		}
		return ts
	}

	t.Run("low traffic extends the window to the limit and stays inconclusive", func(t *testing.T) {
		slept = nil
		f := &fakeFleet{calls: map[string]int{}, per: map[string]func(int) Snapshot{"c": growing(30, 10, 0.004), "b": growing(30, 0, 0.004)}}
		var looks int
		r := Runner{Config: cfg, Scrape: f.scrape, Sleep: noSleep, OnLook: func(Analysis) { looks++ }}
		a, err := r.Run(context.Background(), targets("c"), targets("b"))
		if err != nil || a.Verdict != Inconclusive || a.Looks != 3 || a.WindowMS != 30000 || looks != 2 {
			t.Fatalf("%v: %s after %d looks, %d ms (%d extensions): %s", err, a.Verdict, a.Looks, a.WindowMS, looks, a.Reason)
		}
		if fmt.Sprint(slept) != "[10s 10s 10s]" {
			t.Errorf("slept %v", slept)
		}
	})
	t.Run("enough traffic decides at the first look", func(t *testing.T) {
		f := &fakeFleet{calls: map[string]int{}, per: map[string]func(int) Snapshot{
			"c1": growing(300, 5, 0.004), "c2": growing(300, 5, 0.004), "b1": growing(300, 0, 0.004), "b2": growing(300, 0, 0.004)}}
		a, err := Runner{Config: cfg, Scrape: f.scrape, Sleep: noSleep}.Run(context.Background(), targets("c1", "c2"), targets("b1", "b2"))
		if err != nil || a.Verdict != Fail || a.Looks != 1 || a.Overall.Canary.Requests != 600 || a.Overall.Canary.Errors != 30 {
			t.Fatalf("%v: %s after %d looks: %+v", err, a.Verdict, a.Looks, a.Overall)
		}
		if strings.Join(a.Canary, ",") != "c1,c2" || strings.Join(a.Baseline, ",") != "b1,b2" {
			t.Errorf("hosts %v %v", a.Canary, a.Baseline)
		}
	})
	t.Run("a canary that cannot be scraped fails, a baseline makes it inconclusive", func(t *testing.T) {
		per := map[string]func(int) Snapshot{"c": growing(300, 0, 0.004), "b": growing(300, 0, 0.004)}
		f := &fakeFleet{calls: map[string]int{}, per: per, fail: map[string]bool{"c": true}}
		a, _ := Runner{Config: cfg, Scrape: f.scrape, Sleep: noSleep}.Run(context.Background(), targets("c"), targets("b"))
		if a.Verdict != Fail || !strings.Contains(a.Reason, "canary host: c: connection refused") {
			t.Errorf("canary down: %s: %s", a.Verdict, a.Reason)
		}
		f = &fakeFleet{calls: map[string]int{}, per: per, fail: map[string]bool{"b": true}}
		a, _ = Runner{Config: cfg, Scrape: f.scrape, Sleep: noSleep}.Run(context.Background(), targets("c"), targets("b"))
		if a.Verdict != Inconclusive || !strings.Contains(a.Reason, "baseline host: b") {
			t.Errorf("baseline down: %s: %s", a.Verdict, a.Reason)
		}
	})
	t.Run("a cancelled context is an error", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		f := &fakeFleet{calls: map[string]int{}, per: map[string]func(int) Snapshot{"c": growing(30, 0, 0.004), "b": growing(30, 0, 0.004)}}
		if _, err := (Runner{Config: cfg, Scrape: f.scrape}).Run(ctx, targets("c"), targets("b")); !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	})
}
