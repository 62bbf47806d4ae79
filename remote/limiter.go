package remote

import (
	"context"
	"sync"
	"time"
)

// aimdLimiter bounds concurrent connection attempts and adapts the bound the
// way TCP adapts its window: +1/limit per success (about +1 per round of
// successes), halved on a refusal, at most once per cool-down so one burst of
// refusals counts as one congestion signal.
type aimdLimiter struct {
	mu       sync.Mutex
	cond     chan struct{} // closed and replaced whenever a slot may be free
	inFlight int
	limit    float64
	max      float64
	lastCut  time.Time
	coolDown time.Duration

	stats DialStats
}

// DialStats counts what an [SSHDialer] has done, for tests and diagnostics.
type DialStats struct {
	// Attempts is the number of TCP+SSH handshakes started.
	Attempts int
	// Retries is the number of attempts that were refused and retried.
	Retries int
	// Decreases is the number of times the concurrency limit was cut.
	Decreases int
	// Limit is the current concurrency limit.
	Limit float64
}

func newAIMDLimiter(max int) *aimdLimiter {
	return &aimdLimiter{
		cond:     make(chan struct{}),
		limit:    float64(max),
		max:      float64(max),
		coolDown: 200 * time.Millisecond,
	}
}

// acquire waits for a slot.
func (l *aimdLimiter) acquire(ctx context.Context) error {
	for {
		l.mu.Lock()
		if float64(l.inFlight) < max(l.limit, 1) {
			l.inFlight++
			l.stats.Attempts++
			l.mu.Unlock()
			return nil
		}
		wake := l.cond
		l.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release frees a slot and feeds back how the attempt went.
func (l *aimdLimiter) release(outcome dialOutcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inFlight--
	switch outcome {
	case dialOK:
		l.limit = min(l.max, l.limit+1/l.limit)
	case dialRefused:
		l.stats.Retries++
		if now := time.Now(); now.Sub(l.lastCut) >= l.coolDown {
			l.limit = max(1, l.limit/2)
			l.lastCut = now
			l.stats.Decreases++
		}
	}
	close(l.cond)
	l.cond = make(chan struct{})
}

func (l *aimdLimiter) snapshot() DialStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	s.Limit = l.limit
	return s
}

type dialOutcome int

const (
	dialOK      dialOutcome = iota
	dialRefused             // sshd dropped us: back off and retry
	dialFailed              // anything else: no signal about congestion
)
