package canary

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/instactl/instactl/errtext"
)

// Target is one app server to scrape.
type Target struct {
	// Name labels the host in the analysis ("app-0").
	Name string `json:"name"`
	// URL is its metrics endpoint (http://10.0.0.5:8080/metrics).
	URL string `json:"url"`
}

// ScrapeFunc reads one app server's metrics now.
type ScrapeFunc func(ctx context.Context, t Target) (Snapshot, error)

// HTTPScrape is a ScrapeFunc that GETs the target's URL with client.
func HTTPScrape(client *http.Client) ScrapeFunc {
	return func(ctx context.Context, t Target) (Snapshot, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
		if err != nil {
			return Snapshot{}, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return Snapshot{}, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			return Snapshot{}, fmt.Errorf("GET %s: status %d: %s", t.URL, resp.StatusCode, errtext.OneLine(string(b)))
		}
		s, err := ParseSnapshot(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return Snapshot{}, fmt.Errorf("GET %s: %w", t.URL, err)
		}
		return s, nil
	}
}

// Runner observes the canary and the baseline hosts over one window and compares them.
type Runner struct {
	Config Config
	Scrape ScrapeFunc
	// OnLook is called after every inconclusive look that extends the window (optional).
	OnLook func(Analysis)
	// Sleep waits d or until ctx ends (default: a timer).
	Sleep func(ctx context.Context, d time.Duration) error
}

// Run scrapes every host at the start of the window and again at its end, and compares what
// each side served in between (Compare). An inconclusive look extends the window by
// Config.Window, measured from the same start, until Config.MaxWindow; the last look's
// verdict is final, inconclusive included. A canary host that cannot be scraped fails the
// analysis (a canary that cannot say what it serves is no healthy canary); a baseline host
// that cannot be scraped makes it inconclusive (the canary is not to blame). The error is
// only ctx's.
func (r Runner) Run(ctx context.Context, canary, baseline []Target) (Analysis, error) {
	cfg := r.Config
	a := Analysis{Config: cfg, Canary: names(canary), Baseline: names(baseline)}
	c0, err := r.scrapeAll(ctx, canary)
	if err != nil {
		return r.broken(ctx, a, Fail, "canary", err)
	}
	b0, err := r.scrapeAll(ctx, baseline)
	if err != nil {
		return r.broken(ctx, a, Inconclusive, "baseline", err)
	}
	var elapsed time.Duration
	for look := 1; ; look++ {
		wait := min(cfg.Window, cfg.MaxWindow-elapsed)
		if err := r.sleep(ctx, wait); err != nil {
			return a, err
		}
		elapsed += wait
		a.WindowMS, a.Looks = elapsed.Milliseconds(), look
		c1, err := r.scrapeAll(ctx, canary)
		if err != nil {
			return r.broken(ctx, a, Fail, "canary", err)
		}
		b1, err := r.scrapeAll(ctx, baseline)
		if err != nil {
			return r.broken(ctx, a, Inconclusive, "baseline", err)
		}
		res := Compare(window(c1, c0), window(b1, b0), cfg)
		res.Canary, res.Baseline, res.WindowMS, res.Looks = a.Canary, a.Baseline, a.WindowMS, a.Looks
		a = res
		if a.Verdict != Inconclusive || elapsed >= cfg.MaxWindow {
			return a, nil
		}
		if r.OnLook != nil {
			r.OnLook(a)
		}
	}
}

// broken ends the analysis on a scrape failure (or returns ctx's error if it ended).
func (r Runner) broken(ctx context.Context, a Analysis, v Verdict, side string, err error) (Analysis, error) {
	if ctx.Err() != nil {
		return a, ctx.Err()
	}
	a.Verdict, a.Reason = v, fmt.Sprintf("cannot read the metrics of a %s host: %v", side, err)
	return a, nil
}

// window merges each host's difference between the end and the start of the window.
func window(end, start []Snapshot) Snapshot {
	diffs := make([]Snapshot, len(end))
	for i := range end {
		diffs[i] = end[i].Sub(start[i])
	}
	return Merge(diffs...)
}

// scrapeAll scrapes the targets at once; the first error names its host.
func (r Runner) scrapeAll(ctx context.Context, ts []Target) ([]Snapshot, error) {
	out := make([]Snapshot, len(ts))
	errs := make([]error, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Go(func() {
			if out[i], errs[i] = r.Scrape(ctx, t); errs[i] != nil {
				errs[i] = fmt.Errorf("%s: %w", t.Name, errs[i])
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (r Runner) sleep(ctx context.Context, d time.Duration) error {
	if r.Sleep != nil {
		return r.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func names(ts []Target) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Name
	}
	return out
}
