package deploy

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/canary"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
)

// StageCanary is the canary analysis of the first batch (Config.Canary).
const StageCanary Stage = "canary"

// CanaryError is returned when the canary analysis failed the first batch (or left it
// inconclusive under on_inconclusive: rollback): its hosts were rolled back like hosts
// failing their health check, and the run stopped before the next batch.
type CanaryError struct {
	Batch    int
	Analysis canary.Analysis
	// Hosts are the canary hosts that were rolled back.
	Hosts []string
}

func (e *CanaryError) Error() string {
	what := "failed"
	if e.Analysis.Verdict == canary.Inconclusive {
		what = "stayed inconclusive (deploy.canary.on_inconclusive: rollback) for"
	}
	return fmt.Sprintf("deploy stopped in batch %d: the canary analysis %s %s against %s after %s: %s",
		e.Batch, what, strings.Join(e.Analysis.Canary, " "), strings.Join(e.Analysis.Baseline, " "),
		time.Duration(e.Analysis.WindowMS)*time.Millisecond, e.Analysis.Reason)
}

// canaryConfig turns the stack's deploy.canary into the analysis' thresholds (nil: none).
func canaryConfig(c *stack.Canary) *canary.Config {
	if c == nil {
		return nil
	}
	return &canary.Config{Window: c.Window, MaxWindow: c.MaxWindow, MinRequests: c.MinRequests,
		MaxErrorRatioIncrease: c.MaxErrorRatioIncrease, MaxLatencyIncrease: c.MaxLatencyIncrease, Confidence: c.Confidence,
		OnInconclusive: c.OnInconclusive}
}

// metricsURL is where the host's app server exposes its Prometheus metrics: the health
// check's address and port.
func (h Host) metricsURL(c Config) string {
	addr := h.HealthAddress
	if addr == "" {
		addr = h.Address
	}
	return "http://" + net.JoinHostPort(addr, strconv.Itoa(c.HealthPort)) + "/metrics"
}

// canarySides picks the hosts to compare after batch b: the canary is every host of b this
// run switched to the release and that passed its gate; the baseline is as many hosts of
// the later batches, in plan order, that still run the release before (not yet reached, and
// not already on this release). ok is false when the analysis does not apply: another run
// kind, a later batch, no Config.Canary, or no host switched.
func (r *run) canarySides(b Batch) (canaryHosts, baseline []string, ok bool) {
	if r.cfg.Canary == nil || r.plan.Kind != KindDeploy || b.Index != r.plan.Batches[0].Index {
		return nil, nil, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range b.Hosts {
		if h := r.byName[n]; h.State == OutcomeActivated && h.Flipped {
			canaryHosts = append(canaryHosts, n)
		}
	}
	for _, later := range r.plan.Batches[1:] {
		for _, n := range later.Hosts {
			if h := r.byName[n]; len(baseline) < len(canaryHosts) && h.State == OutcomeStaged && !h.WasCurrent {
				baseline = append(baseline, n)
			}
		}
	}
	return canaryHosts, baseline, len(canaryHosts) > 0
}

// analyzeCanary runs the canary analysis after the first batch is back behind the load
// balancer: fail rolls the canary hosts back (out of the LB, back to their previous release,
// in again) and returns a *CanaryError, and so does inconclusive under on_inconclusive:
// rollback; pass and inconclusive otherwise let the run go on, the verdict recorded in the
// report. No baseline to compare with is inconclusive and never rolls back (the canary is
// not to blame for the fleet's shape). The error is otherwise only ctx's.
func (r *run) analyzeCanary(ctx context.Context, b Batch) error {
	canaryHosts, baseline, ok := r.canarySides(b)
	if !ok {
		return nil
	}
	cfg := *r.cfg.Canary
	if len(baseline) < len(canaryHosts) {
		a := canary.Analysis{Verdict: canary.Inconclusive, Config: cfg, Canary: canaryHosts, Baseline: baseline,
			Reason: fmt.Sprintf("no baseline: %d canary hosts need as many hosts still on the previous release in the later batches, found %d",
				len(canaryHosts), len(baseline))}
		r.recordCanary(a)
		r.ev.emit(Event{Batch: b.Index, Stage: StageCanary, Status: StatusSkip, Message: a.Reason})
		return nil
	}
	targets := func(names []string) []canary.Target {
		out := make([]canary.Target, len(names))
		for i, n := range names {
			out[i] = canary.Target{Name: n, URL: r.hosts[n].metricsURL(r.cfg)}
		}
		return out
	}
	r.ev.emit(Event{Batch: b.Index, Stage: StageCanary, Status: StatusStart, Message: fmt.Sprintf("comparing %s with %s for %s (up to %s)",
		strings.Join(canaryHosts, " "), strings.Join(baseline, " "), cfg.Window, cfg.MaxWindow)})
	runner := canary.Runner{Config: cfg, Scrape: canary.HTTPScrape(r.d.httpClient()), OnLook: func(a canary.Analysis) {
		r.ev.emit(Event{Batch: b.Index, Stage: StageCanary, Status: StatusProgress, Message: fmt.Sprintf("inconclusive after %s (%s): extending the window",
			time.Duration(a.WindowMS)*time.Millisecond, a.Reason)})
	}}
	a, err := runner.Run(ctx, targets(canaryHosts), targets(baseline))
	if err != nil {
		return err
	}
	r.recordCanary(a)
	after := time.Duration(a.WindowMS) * time.Millisecond
	switch a.Verdict {
	case canary.Pass:
		r.ev.emit(Event{Batch: b.Index, Stage: StageCanary, Status: StatusOK, Message: fmt.Sprintf("pass after %s: %s", after, a.Reason)})
		return nil
	case canary.Inconclusive:
		if cfg.OnInconclusive != canary.OnInconclusiveRollback {
			r.ev.emit(Event{Batch: b.Index, Stage: StageCanary, Status: StatusOK, Message: fmt.Sprintf(
				"inconclusive after %s, going on (too little evidence is none against the release): %s", after, a.Reason)})
			return nil
		}
	}
	cause := fmt.Errorf("canary analysis failed after %s: %s", after, a.Reason)
	if a.Verdict == canary.Inconclusive {
		cause = fmt.Errorf("canary analysis inconclusive after %s, and on_inconclusive is rollback: %s", after, a.Reason)
	}
	r.ev.emit(Event{Batch: b.Index, Stage: StageCanary, Status: StatusFail, Err: cause})
	for _, n := range canaryHosts {
		r.update(n, func(h *HostReport) { h.Stage, h.Error = StageCanary, ErrorLine(cause) })
	}
	if err := r.deregister(ctx, b, canaryHosts); err != nil {
		return err
	}
	r.fanOut(ctx, canaryHosts, func(ctx context.Context, c *remote.Client, h Host) error {
		r.rollbackHost(ctx, c, h, b.Index, false)
		return nil
	})
	if err := r.register(ctx, b, canaryHosts); err != nil {
		return err
	}
	return &CanaryError{Batch: b.Index, Analysis: a, Hosts: canaryHosts}
}

// canaryUndecided says no analysis is recorded yet (a resumed run whose predecessor died
// before the verdict).
func (r *run) canaryUndecided() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rep.Canary == nil
}

func (r *run) recordCanary(a canary.Analysis) {
	r.mu.Lock()
	r.rep.Canary = &a
	r.mu.Unlock()
	r.save()
}

// canaryPlanLine says in the plan what the analysis will do ("" without one).
func (p *Plan) canaryPlanLine() string {
	c := p.Config.Canary
	if c == nil || p.Kind != KindDeploy {
		return ""
	}
	rollsBack := "fail rolls batch 1 back"
	if c.OnInconclusive == canary.OnInconclusiveRollback {
		rollsBack = "fail or inconclusive rolls batch 1 back"
	}
	return fmt.Sprintf("canary analysis after batch 1: its hosts against as many hosts of later batches, over %s (up to %s), "+
		"min %d requests a side, tolerances +%.2g error ratio, +%.0f%% latency, at %.3g%% confidence; %s\n",
		c.Window, c.MaxWindow, c.MinRequests, c.MaxErrorRatioIncrease, 100*c.MaxLatencyIncrease, 100*c.Confidence, rollsBack)
}
