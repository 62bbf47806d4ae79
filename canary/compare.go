package canary

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Verdict is the outcome of an analysis or of one row of it.
type Verdict string

// Verdicts.
const (
	// Pass: enough requests on both sides, and the canary is not worse beyond the
	// tolerances with the configured confidence.
	Pass Verdict = "pass"
	// Fail: the canary is worse than the baseline beyond a tolerance, and the test says so
	// with the configured confidence.
	Fail Verdict = "fail"
	// Inconclusive: too few requests on a side, or the canary looks worse beyond a tolerance
	// but the test is not sure enough. More traffic (a longer window) may decide.
	Inconclusive Verdict = "inconclusive"
)

// Config holds the thresholds and the window of an analysis (the stack file's
// deploy.canary).
type Config struct {
	// Window is how long both sides are observed before the first look.
	Window time.Duration `json:"window"`
	// MaxWindow bounds the observation: an inconclusive look extends it by Window up to
	// MaxWindow; inconclusive at MaxWindow is the final verdict.
	MaxWindow time.Duration `json:"max_window"`
	// MinRequests is the fewest requests each side must serve in the window (overall, and
	// per endpoint for that endpoint's row to decide anything).
	MinRequests int `json:"min_requests"`
	// MaxErrorRatioIncrease is the tolerated increase of the canary's 5xx ratio over the
	// baseline's, absolute (0.01: one percentage point).
	MaxErrorRatioIncrease float64 `json:"max_error_ratio_increase"`
	// MaxLatencyIncrease is the tolerated relative increase of the canary's latency (0.2:
	// 20% slower): the latency test compares the canary with the baseline's latencies
	// multiplied by 1+MaxLatencyIncrease, so a healthy canary is not failed by chance.
	MaxLatencyIncrease float64 `json:"max_latency_increase"`
	// Confidence is how sure a test must be to fail the canary (0.95: p-value below 0.05).
	Confidence float64 `json:"confidence"`
	// OnInconclusive is what the deploy does with a verdict still inconclusive at MaxWindow:
	// OnInconclusiveContinue (also "") or OnInconclusiveRollback.
	OnInconclusive string `json:"on_inconclusive,omitempty"`
}

// What a deploy does with a final inconclusive verdict (Config.OnInconclusive).
const (
	// OnInconclusiveContinue goes on: too little evidence is none against the release.
	OnInconclusiveContinue = "continue"
	// OnInconclusiveRollback rolls the canary back: only a pass lets the deploy go on.
	OnInconclusiveRollback = "rollback"
)

// DefaultConfig is used for every key the stack file leaves out.
func DefaultConfig() Config {
	return Config{Window: 30 * time.Second, MaxWindow: 2 * time.Minute, MinRequests: 200,
		MaxErrorRatioIncrease: 0.01, MaxLatencyIncrease: 0.2, Confidence: 0.95, OnInconclusive: OnInconclusiveContinue}
}

// Validate says what is wrong with c, naming the stack file key.
func (c Config) Validate() error {
	var errs []error
	if c.Window <= 0 {
		errs = append(errs, fmt.Errorf("window must be positive such as 30s (got %s)", c.Window))
	}
	if c.MaxWindow < c.Window {
		errs = append(errs, fmt.Errorf("max_window must be >= window (got %s < %s)", c.MaxWindow, c.Window))
	}
	if c.MinRequests < 1 {
		errs = append(errs, fmt.Errorf("min_requests must be >= 1 (got %d)", c.MinRequests))
	}
	if c.MaxErrorRatioIncrease < 0 || c.MaxErrorRatioIncrease >= 1 {
		errs = append(errs, fmt.Errorf("max_error_ratio_increase must be 0 <= x < 1 such as 0.01 (got %g)", c.MaxErrorRatioIncrease))
	}
	if c.MaxLatencyIncrease < 0 {
		errs = append(errs, fmt.Errorf("max_latency_increase must be >= 0 such as 0.2 (got %g)", c.MaxLatencyIncrease))
	}
	if c.Confidence <= 0.5 || c.Confidence >= 1 {
		errs = append(errs, fmt.Errorf("confidence must be 0.5 < x < 1 such as 0.95 (got %g)", c.Confidence))
	}
	switch c.OnInconclusive {
	case "", OnInconclusiveContinue, OnInconclusiveRollback:
	default:
		errs = append(errs, fmt.Errorf("on_inconclusive must be %s or %s (got %q)", OnInconclusiveContinue, OnInconclusiveRollback, c.OnInconclusive))
	}
	return errors.Join(errs...)
}

// Side is what one side (canary or baseline) served in the window.
type Side struct {
	Requests   uint64  `json:"requests"`
	Errors     uint64  `json:"errors"`
	ErrorRatio float64 `json:"error_ratio"`
	// P50 and P99 are latency quantiles in seconds from the histogram (0: no requests).
	P50 float64 `json:"p50_seconds"`
	P99 float64 `json:"p99_seconds"`
}

// Comparison is one row of the table: the canary against the baseline on one endpoint, or
// on every endpoint together ("overall").
type Comparison struct {
	Endpoint string `json:"endpoint"`
	Canary   Side   `json:"canary"`
	Baseline Side   `json:"baseline"`
	// ErrorTest is the two-proportion z-test of "the canary's 5xx ratio is higher than the
	// baseline's by more than max_error_ratio_increase".
	ErrorTest ProportionTest `json:"error_test"`
	// LatencyTest is the Mann–Whitney U test of "the canary's latencies are larger than the
	// baseline's multiplied by 1+max_latency_increase", over the histogram buckets
	// (ScaleBuckets); its Effect above 0.5 says the canary looks slower than tolerated.
	LatencyTest RankTest `json:"latency_test"`
	// ErrorIncrease is the canary's error ratio minus the baseline's; LatencyIncrease the
	// larger relative increase of p50 and p99 (0.25: 25% slower), shown, not judged: a
	// quantile of a few hundred requests is too noisy to judge by.
	ErrorIncrease   float64 `json:"error_increase"`
	LatencyIncrease float64 `json:"latency_increase"`
	// Alpha is the significance level the row was judged at: 1-confidence overall, divided
	// by the number of endpoints judged for an endpoint row (Bonferroni).
	Alpha   float64 `json:"alpha"`
	Verdict Verdict `json:"verdict"`
	Reason  string  `json:"reason"`
}

// Overall names the row of every endpoint together.
const Overall = "overall"

// Analysis is the result of comparing the canary hosts with the baseline hosts.
type Analysis struct {
	Verdict Verdict `json:"verdict"`
	// Reason says why in one sentence.
	Reason   string   `json:"reason"`
	Canary   []string `json:"canary_hosts"`
	Baseline []string `json:"baseline_hosts"`
	// WindowMS is how long the sides were observed; Looks how many times they were compared
	// (more than one: the window was extended).
	WindowMS int64  `json:"window_ms"`
	Looks    int    `json:"looks"`
	Config   Config `json:"config"`
	// Overall compares all endpoints together; it alone can be inconclusive for the whole.
	Overall Comparison `json:"overall"`
	// Endpoints compare each endpoint (route pattern) either side served in the window.
	Endpoints []Comparison `json:"endpoints,omitempty"`
}

// Compare judges the canary's window against the baseline's (each side merged over its
// hosts: Merge of each host's Sub). The verdict is fail when the overall row or an endpoint
// row with enough requests fails, else inconclusive when the overall row is, else pass.
// Endpoint rows are judged at alpha divided by the number of endpoints with enough requests
// on both sides, so many endpoints do not multiply the chance of failing a healthy canary.
func Compare(canary, baseline Snapshot, cfg Config) Analysis {
	alpha := 1 - cfg.Confidence
	a := Analysis{Config: cfg}
	a.Overall = compareRow(Overall, canary.Total(), baseline.Total(), alpha, cfg)
	// Endpoints neither side served in the window (known only from before it) are no rows.
	var routes []string
	for _, r := range Merge(canary, baseline).RouteNames() {
		if canary.Routes[r].Requests > 0 || baseline.Routes[r].Requests > 0 {
			routes = append(routes, r)
		}
	}
	judged := 0
	for _, r := range routes {
		if enough(canary.Routes[r], baseline.Routes[r], cfg) {
			judged++
		}
	}
	for _, r := range routes {
		a.Endpoints = append(a.Endpoints, compareRow(r, canary.Routes[r], baseline.Routes[r], alpha/float64(max(judged, 1)), cfg))
	}
	a.Verdict, a.Reason = a.Overall.Verdict, a.Overall.Reason
	if a.Verdict != Fail {
		for _, e := range a.Endpoints {
			if e.Verdict == Fail {
				a.Verdict, a.Reason = Fail, e.Endpoint+": "+e.Reason
				break
			}
		}
	}
	return a
}

func enough(c, b Series, cfg Config) bool {
	return c.Requests >= uint64(cfg.MinRequests) && b.Requests >= uint64(cfg.MinRequests)
}

// compareRow runs both tests on one row and judges it.
func compareRow(name string, c, b Series, alpha float64, cfg Config) Comparison {
	row := Comparison{Endpoint: name, Canary: side(c), Baseline: side(b), Alpha: alpha,
		ErrorTest: TwoProportionZ(c.Errors, c.Requests, b.Errors, b.Requests, cfg.MaxErrorRatioIncrease)}
	if len(c.Bounds) > 0 && len(b.Bounds) > 0 {
		// Against the baseline slowed by the tolerance: the test is then of "slower than
		// tolerated", not of "slower at all", which a large enough sample always finds.
		bounds := CommonBounds(c.Bounds, b.Bounds)
		row.LatencyTest = MannWhitneyWeighted(floats(Rebucket(c.Bounds, c.Counts, bounds)),
			ScaleBuckets(bounds, Rebucket(b.Bounds, b.Counts, bounds), 1+cfg.MaxLatencyIncrease))
	} else {
		row.LatencyTest = RankTest{P: 1}
	}
	row.ErrorIncrease = row.Canary.ErrorRatio - row.Baseline.ErrorRatio
	row.LatencyIncrease = max(increase(row.Canary.P50, row.Baseline.P50), increase(row.Canary.P99, row.Baseline.P99))

	if !enough(c, b, cfg) {
		row.Verdict = Inconclusive
		row.Reason = fmt.Sprintf("too few requests to judge: canary %d, baseline %d (min_requests %d each)",
			c.Requests, b.Requests, cfg.MinRequests)
		return row
	}
	errWorse := row.ErrorIncrease > cfg.MaxErrorRatioIncrease
	latWorse := row.LatencyTest.Effect > 0.5
	errText := fmt.Sprintf("error ratio %.2f%% vs %.2f%% (%+.2f points, tolerance %.2f; z %.2f, p %s)",
		100*row.Canary.ErrorRatio, 100*row.Baseline.ErrorRatio, 100*row.ErrorIncrease, 100*cfg.MaxErrorRatioIncrease,
		row.ErrorTest.Z, FormatP(row.ErrorTest.P))
	latText := fmt.Sprintf("latency p50 %s vs %s, p99 %s vs %s (%+.0f%%; Mann-Whitney against the baseline +%.0f%% tolerance: "+
		"P(canary slower) %.2f, z %.2f, p %s)",
		ms(row.Canary.P50), ms(row.Baseline.P50), ms(row.Canary.P99), ms(row.Baseline.P99), 100*row.LatencyIncrease,
		100*cfg.MaxLatencyIncrease, row.LatencyTest.Effect, row.LatencyTest.Z, FormatP(row.LatencyTest.P))
	sure := fmt.Sprintf("at %.4g%% confidence", 100*(1-alpha))
	switch {
	case errWorse && row.ErrorTest.P < alpha:
		row.Verdict, row.Reason = Fail, "canary serves more errors "+sure+": "+errText
	case latWorse && row.LatencyTest.P < alpha:
		row.Verdict, row.Reason = Fail, "canary is slower "+sure+": "+latText
	case errWorse:
		row.Verdict, row.Reason = Inconclusive, "canary may serve more errors, not sure "+sure+": "+errText
	case latWorse:
		row.Verdict, row.Reason = Inconclusive, "canary may be slower, not sure "+sure+": "+latText
	default:
		row.Verdict, row.Reason = Pass, "within tolerances: "+errText+"; "+latText
	}
	return row
}

func side(s Series) Side {
	out := Side{Requests: s.Requests, Errors: s.Errors}
	if s.Requests > 0 {
		out.ErrorRatio = float64(s.Errors) / float64(s.Requests)
	}
	out.P50, out.P99 = finite(Quantile(0.5, s.Bounds, s.Counts)), finite(Quantile(0.99, s.Bounds, s.Counts))
	return out
}

func finite(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	return x
}

// increase is the relative increase of c over b (0 when b is unknown).
func increase(c, b float64) float64 {
	if b <= 0 || c <= 0 {
		return 0
	}
	return c/b - 1
}

func ms(sec float64) string {
	return fmt.Sprintf("%.1fms", sec*1000)
}

// FormatP renders a p-value: three significant digits, and "<1e-12" for the ones the
// normal approximation cannot tell from zero.
func FormatP(p float64) string {
	if p < 1e-12 {
		return "<1e-12"
	}
	return fmt.Sprintf("%.3g", p)
}
