package switches

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// Path is where an app server reports the switch state it applies (GET, JSON Report).
const Path = "/internal/switches"

// Report is an app server's answer on Path.
type Report struct {
	// Version is the global version the server applies.
	Version int64 `json:"version"`
	// Source says where that state came from: default, disk or database.
	Source    string    `json:"source"`
	AppliedAt time.Time `json:"applied_at"`
	// Switches is every known switch as the server applies it now.
	Switches []Status `json:"switches"`
}

// NewReport renders what a board holds at now.
func NewReport(a Applied, now time.Time) Report {
	return Report{Version: a.Version, Source: a.Source, AppliedAt: a.AppliedAt, Switches: a.Statuses(now)}
}

// Target is one app server to wait for.
type Target struct {
	Host string `json:"host"`
	// URL is the server's base URL, http://ADDR:PORT.
	URL string `json:"url"`
}

// Ack is one app server's acknowledgement: the version it reported and how long after since
// it first did (the time of the poll that saw it).
type Ack struct {
	Host string `json:"host"`
	// Version is the version the server reported last; Answered says whether it answered at all.
	Version  int64         `json:"version"`
	Answered bool          `json:"answered"`
	After    time.Duration `json:"after_ns"`
	// Error is the last failure when the server never acknowledged.
	Error string `json:"error,omitempty"`
}

// OK reports whether the server acknowledged.
func (a Ack) OK() bool { return a.Error == "" }

// Await polls every target's Path every poll until it reports version (or newer) or ctx ends,
// and returns one Ack per target, in targets' order.
func Await(ctx context.Context, client *http.Client, targets []Target, version int64, since time.Time, poll time.Duration) []Ack {
	out := make([]Ack, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() { out[i] = awaitOne(ctx, client, t, version, since, poll) })
	}
	wg.Wait()
	return out
}

func awaitOne(ctx context.Context, client *http.Client, t Target, version int64, since time.Time, poll time.Duration) Ack {
	ack := Ack{Host: t.Host}
	var lastErr error
	for {
		r, err := Fetch(ctx, client, t.URL)
		switch {
		case err != nil && ctx.Err() != nil && lastErr != nil:
			// The wait ended mid-request: what the server said last tells more than that.
		case err != nil:
			lastErr = err
		case r.Version >= version:
			ack.Version, ack.Answered, ack.After = r.Version, true, time.Since(since)
			return ack
		default:
			ack.Version, ack.Answered = r.Version, true
			lastErr = fmt.Errorf("%s still applies version %d (from %s)", t.Host, r.Version, r.Source)
		}
		select {
		case <-ctx.Done():
			ack.Error = fmt.Sprintf("not acknowledged: %v (%v)", lastErr, ctx.Err())
			return ack
		case <-time.After(poll):
		}
	}
}

// Fetch asks one app server for its Report.
func Fetch(ctx context.Context, client *http.Client, baseURL string) (Report, error) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, baseURL+Path, nil)
	if err != nil {
		return Report{}, fmt.Errorf("switch report: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return Report{}, fmt.Errorf("switch report: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Report{}, fmt.Errorf("switch report from %s: %w", baseURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Report{}, fmt.Errorf("switch report from %s: HTTP %d: %s", baseURL, resp.StatusCode, body)
	}
	var r Report
	if err := json.Unmarshal(body, &r); err != nil {
		return Report{}, fmt.Errorf("switch report from %s: %w", baseURL, err)
	}
	return r, nil
}
