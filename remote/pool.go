package remote

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Pool keeps one connection per target and hands it to every step of a job,
// so a deploy pays one handshake per host. Concurrent Gets for the same
// target share one dial. A connection that has died is dialled again on the
// next Get. Pool is itself a Dialer.
type Pool struct {
	dialer Dialer

	mu      sync.Mutex
	entries map[Target]*poolEntry
	closed  bool
}

type poolEntry struct {
	ready chan struct{} // closed when the dial finished
	c     *Client
	err   error
}

var _ Dialer = (*Pool)(nil)

// NewPool returns an empty pool that dials with d.
func NewPool(d Dialer) *Pool {
	return &Pool{dialer: d, entries: map[Target]*poolEntry{}}
}

// Dial is Get, so a Pool can stand wherever a Dialer is expected.
func (p *Pool) Dial(ctx context.Context, t Target) (*Client, error) { return p.Get(ctx, t) }

// Get returns the open connection to t, dialling it if needed. The client
// belongs to the pool: do not Close it; Close the pool.
func (p *Pool) Get(ctx context.Context, t Target) (*Client, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, fmt.Errorf("dial %s: connection pool is closed", t)
		}
		e, ok := p.entries[t]
		if !ok {
			e = &poolEntry{ready: make(chan struct{})}
			p.entries[t] = e
			p.mu.Unlock()
			p.dial(ctx, t, e)
			return e.c, e.err
		}
		p.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("dial %s: %w", t, ctx.Err())
		}
		if e.err != nil {
			// The dialler removed the failed entry; a dial cancelled by its
			// own caller's context should not fail this caller.
			if ctx.Err() == nil && (errors.Is(e.err, context.Canceled) || errors.Is(e.err, context.DeadlineExceeded)) {
				continue
			}
			return nil, e.err
		}
		select {
		case <-e.c.Done():
			p.forget(t, e)
			continue
		default:
			return e.c, nil
		}
	}
}

func (p *Pool) dial(ctx context.Context, t Target, e *poolEntry) {
	e.c, e.err = p.dialer.Dial(ctx, t)
	p.mu.Lock()
	if e.err != nil {
		delete(p.entries, t)
	} else if p.closed {
		e.c.Close()
		e.c, e.err = nil, fmt.Errorf("dial %s: connection pool is closed", t)
	}
	p.mu.Unlock()
	close(e.ready)
}

func (p *Pool) forget(t Target, e *poolEntry) {
	p.mu.Lock()
	if p.entries[t] == e {
		delete(p.entries, t)
	}
	p.mu.Unlock()
}

// Close closes every connection in the pool. Later Gets fail.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	entries := p.entries
	p.entries = map[Target]*poolEntry{}
	p.mu.Unlock()
	var errs []error
	for _, e := range entries {
		<-e.ready
		if e.c != nil {
			if err := e.c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", e.c.Target(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// HostResult is what FanOut reports for one host.
type HostResult struct {
	Target   Target
	Err      error
	Duration time.Duration
}

// FanOut runs fn on every target with at most parallel hosts at a time
// (parallel <= 0 means all at once), on the pool's connections. A host that
// fails to connect or whose fn fails does not stop the others. Results are in
// the order of targets; a host not started because ctx ended carries ctx's
// error.
func (p *Pool) FanOut(ctx context.Context, targets []Target, parallel int, fn func(ctx context.Context, c *Client, t Target) error) []HostResult {
	if parallel <= 0 || parallel > len(targets) {
		parallel = len(targets)
	}
	results := make([]HostResult, len(targets))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, t := range targets {
		results[i].Target = t
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			results[i].Err = fmt.Errorf("%s: not started: %w", t, ctx.Err())
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			start := time.Now()
			results[i].Err = p.runOne(ctx, t, fn)
			results[i].Duration = time.Since(start)
		})
	}
	wg.Wait()
	return results
}

func (p *Pool) runOne(ctx context.Context, t Target, fn func(context.Context, *Client, Target) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: panic: %v", t, r)
		}
	}()
	c, err := p.Get(ctx, t)
	if err != nil {
		return err
	}
	return fn(ctx, c, t)
}
