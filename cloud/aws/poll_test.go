package aws

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestPollerSharesRounds: thirty waiters on one poller cost one describe per round, not one
// each; two rounds are never closer than PollMin; every waiter ends when its id is ready, and
// a waiter whose context ends gets the context's error.
func TestPollerSharesRounds(t *testing.T) {
	const lo = 200 * time.Millisecond
	var mu sync.Mutex
	var calls []time.Time
	var sizes []int
	polled := map[string]int{}
	pl := newPoller(func(_ context.Context, ids []string) map[string]idResult[int] {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, time.Now())
		sizes = append(sizes, len(ids))
		out := map[string]idResult[int]{}
		for _, id := range ids {
			polled[id]++
			out[id] = idResult[int]{item: polled[id], found: true}
		}
		return out
	}, lo, 4*lo)

	// Each id is ready at its third poll.
	ready := func(id string) func(map[string]idResult[int]) (bool, error) {
		return func(res map[string]idResult[int]) (bool, error) { return res[id].item >= 3, nil }
	}
	var wg sync.WaitGroup
	errs := make([]error, 30)
	for i := range 30 {
		wg.Go(func() {
			id := fmt.Sprintf("i-%02d", i)
			errs[i] = pl.wait(context.Background(), []string{id}, ready(id))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("waiter %d: %v", i, err)
		}
	}
	mu.Lock()
	if len(calls) >= 30 {
		t.Errorf("%d describe calls for 30 waiters of 3 polls each (sizes %v), want them shared", len(calls), sizes)
	}
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].Sub(calls[i-1]); gap < lo {
			t.Errorf("rounds %d and %d %s apart, less than PollMin %s", i-1, i, gap, lo)
		}
	}
	mu.Unlock()

	// A waiter that never gets there ends with its context.
	ctx, cancel := context.WithTimeout(context.Background(), 3*lo)
	defer cancel()
	err := pl.wait(ctx, []string{"i-never"}, func(map[string]idResult[int]) (bool, error) { return false, nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("never-ready waiter: err = %v, want the context's deadline", err)
	}
}

// TestPollDelay: PollMin three times, then doubling every three polls, never above PollMax.
func TestPollDelay(t *testing.T) {
	var got []time.Duration
	for n := range 10 {
		got = append(got, pollDelay(time.Second, 5*time.Second, n))
	}
	want := []time.Duration{1, 1, 1, 2, 2, 2, 4, 4, 4, 5}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("delays %v, want %v seconds", got, want)
		}
	}
	if d := pollDelay(time.Second, 20*time.Second, 1000); d != 20*time.Second {
		t.Errorf("delay after 1000 polls = %s, want PollMax", d)
	}
}
