package app

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/internal/testenv"
)

// TestQueueRecoversDeadWorker kills a worker holding a job (its context ends mid-job, as when
// the process dies: no ack, no cleanup) and checks that a live worker pool recovers and runs it.
func TestQueueRecoversDeadWorker(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t)})
	defer rdb.Close()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	q := NewQueue(rdb, "t", 100*time.Millisecond)
	if err := q.Enqueue(ctx, "fanout", fanoutJob{PhotoID: 42}); err != nil {
		t.Fatal(err)
	}
	taken := make(chan struct{})
	dying, kill := context.WithCancel(ctx)
	w1, err := q.Start(dying, 1, func(ctx context.Context, j Job) error {
		close(taken)
		<-ctx.Done()
		return ctx.Err()
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	<-taken
	kill()
	time.Sleep(50 * time.Millisecond)
	if n, _ := rdb.LLen(ctx, q.processingKey(w1.ids[0])).Result(); n != 1 {
		t.Fatalf("dead worker holds %d jobs, want 1", n)
	}

	got := make(chan int64, 2)
	w2, err := q.Start(ctx, 2, func(ctx context.Context, j Job) error {
		var f fanoutJob
		json.Unmarshal(j.Payload, &f)
		got <- f.PhotoID
		return nil
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id != 42 {
			t.Fatalf("recovered job for photo %d", id)
		}
	case <-time.After(time.Minute):
		t.Fatal("job of the dead worker was never recovered")
	}
	if err := w2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.SCard(ctx, q.workersKey()).Result(); n != 0 {
		t.Fatalf("%d workers still registered after stop", n)
	}
	if d, _ := q.Depth(ctx); d != 0 {
		t.Fatalf("queue depth %d after recovery", d)
	}
}

// TestQueueRetriesThenDeadLetters checks that a failing job is retried and parked after five
// attempts.
func TestQueueRetriesThenDeadLetters(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t)})
	defer rdb.Close()
	ctx := context.Background()
	q := NewQueue(rdb, "t", 100*time.Millisecond)
	var calls atomic.Int32
	w, err := q.Start(ctx, 1, func(context.Context, Job) error {
		calls.Add(1)
		return errors.New("boom")
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	q.Enqueue(ctx, "fanout", fanoutJob{PhotoID: 7})
	deadline := time.Now().Add(time.Minute)
	for rdb.LLen(ctx, q.deadKey()).Val() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("job not dead-lettered after %d calls", calls.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.Stop(ctx)
	if calls.Load() != 5 {
		t.Fatalf("handler called %d times, want 5", calls.Load())
	}
}
