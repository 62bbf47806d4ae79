package stack

import (
	"time"
)

// Canary is deploy.canary: judge the first batch of a deploy by its metrics against as many
// hosts still on the previous release, over the same window (package canary). Without the
// section a deploy judges hosts by their health checks only.
type Canary struct {
	// Window is how long the canary and the baseline are observed before the first look.
	Window time.Duration `json:"window"`
	// MaxWindow bounds the observation: an inconclusive look extends the window by Window
	// until MaxWindow. Inconclusive at MaxWindow lets the deploy go on, with a warning.
	MaxWindow time.Duration `json:"max_window"`
	// MinRequests is the fewest requests each side must serve in the window to judge.
	MinRequests int `json:"min_requests"`
	// MaxErrorRatioIncrease is the tolerated increase of the 5xx ratio, absolute (0.01).
	MaxErrorRatioIncrease float64 `json:"max_error_ratio_increase"`
	// MaxLatencyIncrease is the tolerated relative increase of latency (0.2): the canary
	// fails when its latencies are surely larger than the baseline's times 1.2.
	MaxLatencyIncrease float64 `json:"max_latency_increase"`
	// Confidence is how sure a test must be to fail the canary (0.95).
	Confidence float64 `json:"confidence"`
	// OnInconclusive is what the deploy does when the verdict is still inconclusive at
	// MaxWindow: "continue" (the default: too little evidence is none against the release)
	// or "rollback" (stricter: only a pass lets the deploy go on).
	OnInconclusive string `json:"on_inconclusive"`
}

// canaryDefaults fills the keys of deploy.canary the file does not write (a written 0 is
// kept, for validation to judge: a zero tolerance is a choice).
func (s *Stack) canaryDefaults() {
	c := s.Deploy.Canary
	if c == nil {
		return
	}
	written := func(key string) bool { _, ok := s.pos["deploy.canary."+key]; return ok }
	if !written("window") {
		c.Window = 30 * time.Second
	}
	if !written("max_window") {
		c.MaxWindow = max(2*time.Minute, c.Window)
	}
	if !written("min_requests") {
		c.MinRequests = 200
	}
	if !written("max_error_ratio_increase") {
		c.MaxErrorRatioIncrease = 0.01
	}
	if !written("max_latency_increase") {
		c.MaxLatencyIncrease = 0.2
	}
	if !written("confidence") {
		c.Confidence = 0.95
	}
	if !written("on_inconclusive") {
		c.OnInconclusive = "continue"
	}
}

// canary checks deploy.canary.
func (v *validator) canary() {
	c := v.st.Deploy.Canary
	if c == nil {
		return
	}
	const p = "deploy.canary."
	if c.Window <= 0 {
		v.errorf(p+"window", "must be positive such as 30s (got %s)", c.Window)
	}
	if c.MaxWindow < c.Window {
		v.errorf(p+"max_window", "must be at least window (%s), such as 2m (got %s)", c.Window, c.MaxWindow)
	}
	if c.MinRequests < 1 {
		v.errorf(p+"min_requests", "must be >= 1 such as 200: fewer requests per side are no evidence (got %d)", c.MinRequests)
	}
	if c.MaxErrorRatioIncrease < 0 || c.MaxErrorRatioIncrease >= 1 {
		v.errorf(p+"max_error_ratio_increase", "must be a share 0 <= x < 1 such as 0.01 for one percentage point (got %g)", c.MaxErrorRatioIncrease)
	}
	if c.MaxLatencyIncrease < 0 {
		v.errorf(p+"max_latency_increase", "must be >= 0 such as 0.2 for 20%% slower (got %g)", c.MaxLatencyIncrease)
	}
	if c.Confidence <= 0.5 || c.Confidence >= 1 {
		v.errorf(p+"confidence", "must be between 0.5 and 1 such as 0.95 (got %g)", c.Confidence)
	}
	if c.OnInconclusive != "continue" && c.OnInconclusive != "rollback" {
		v.errorf(p+"on_inconclusive", "must be continue or rollback (got %q)", c.OnInconclusive)
	}
	// The baseline is as many hosts as the first batch, outside it.
	r := v.st.Role(v.st.Deploy.Role)
	if r == nil || len(v.st.Deploy.Batches) == 0 {
		return
	}
	n, pct, err := ParseCount(v.st.Deploy.Batches[0])
	if err != nil {
		return
	}
	if pct {
		n = (n*r.Count + 99) / 100
	}
	if n = max(n, 1); r.Count-n < n {
		v.errorf("deploy.canary", "needs a baseline as large as the first batch outside it: the first batch (%q) holds %d of %d %s hosts; "+
			"make it at most %d (deploy.batches), or remove deploy.canary", v.st.Deploy.Batches[0], n, r.Count, r.Name, r.Count/2)
	}
}
