package aws

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/instactl/instactl/cloud"
)

// poller waits for many resources of one kind at once. Every waiter is polled on its own
// schedule (at once, then pollDelay: PollMin twice, then doubling every three polls up to
// PollMax), but the ids of all
// waiters due within half of PollMin go out in one describe call (chunks of maxBatch, with the
// batcher's per-id fallback), and two calls of one kind are at least PollMin apart. So thirty
// instances waiting to run cost one DescribeInstances per round, and however many waiters
// there are, a kind is never polled more than once per PollMin.
type poller[T any] struct {
	describe func(ctx context.Context, ids []string) map[string]idResult[T]
	min, max time.Duration

	mu      sync.Mutex
	waiters map[*pollWaiter[T]]struct{}
	running bool
	kick    chan struct{}
}

type pollWaiter[T any] struct {
	ids   []string
	due   time.Time
	polls int
	// check looks at one round's answers: done, or a failure that ends the wait. It runs on
	// the poller's goroutine, one at a time.
	check func(map[string]idResult[T]) (bool, error)
	done  chan error
}

func newPoller[T any](describe func(context.Context, []string) map[string]idResult[T], min, max time.Duration) *poller[T] {
	return &poller[T]{describe: describe, min: min, max: max, waiters: map[*pollWaiter[T]]struct{}{}, kick: make(chan struct{}, 1)}
}

// pollDelay is the delay before poll n+1 of one waiter (n polls done): min for the first three
// polls, then doubling every three polls, at most max. Against AWS an instance runs after
// 10-60 s: about 8-12 polls, each shared with every other waiter of the kind.
func pollDelay(lo, hi time.Duration, n int) time.Duration {
	d := lo << min(n/3, 16)
	if d > hi || d <= 0 {
		return hi
	}
	return d
}

// wait polls ids until check says done or fails, or ctx ends (the caller puts its deadline in
// ctx). While it waits, ctx's cloud.Waiting hook knows (Apply gives the caller's slot to
// another change). The first poll is due at once (a resource may be ready already, as on moto),
// but shares the kind's rounds like any other.
func (p *poller[T]) wait(ctx context.Context, ids []string, check func(map[string]idResult[T]) (bool, error)) error {
	resume := cloud.Waiting(ctx)
	defer resume()
	w := &pollWaiter[T]{ids: ids, due: time.Now(), check: check, done: make(chan error, 1)}
	p.mu.Lock()
	p.waiters[w] = struct{}{}
	if !p.running {
		p.running = true
		go p.loop()
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		p.mu.Lock()
		delete(p.waiters, w)
		p.mu.Unlock()
		select {
		case err := <-w.done: // it ended in the same instant
			return err
		default:
		}
		return ctx.Err()
	}
}

// loop runs the rounds while anyone waits.
func (p *poller[T]) loop() {
	var last time.Time
	for {
		p.mu.Lock()
		if len(p.waiters) == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		next := time.Time{}
		for w := range p.waiters {
			if next.IsZero() || w.due.Before(next) {
				next = w.due
			}
		}
		p.mu.Unlock()
		if !last.IsZero() && next.Before(last.Add(p.min)) {
			next = last.Add(p.min)
		}
		if d := time.Until(next); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-p.kick: // a new waiter may be due sooner
				t.Stop()
				continue
			}
		}
		now := time.Now()
		var round []*pollWaiter[T]
		var ids []string
		p.mu.Lock()
		for w := range p.waiters {
			if !w.due.After(now.Add(p.min / 2)) {
				round = append(round, w)
				for _, id := range w.ids {
					if !slices.Contains(ids, id) {
						ids = append(ids, id)
					}
				}
			}
		}
		p.mu.Unlock()
		if len(round) == 0 {
			continue
		}
		last = now
		// The call serves every waiter: no one waiter's context may end it.
		res := p.describe(context.Background(), ids)
		p.mu.Lock()
		for _, w := range round {
			if _, ok := p.waiters[w]; !ok {
				continue // gave up meanwhile
			}
			done, err := w.check(res)
			if done || err != nil {
				delete(p.waiters, w)
				w.done <- err
				continue
			}
			w.polls++
			w.due = time.Now().Add(pollDelay(p.min, p.max, w.polls))
		}
		p.mu.Unlock()
	}
}
