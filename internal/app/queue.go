package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Queue is a durable job queue on Redis lists. Enqueue LPUSHes onto the pending list; a worker
// BLMOVEs the oldest job into its own processing list, runs it, and LREMs it. Workers heartbeat a
// key with a TTL; Recover moves the processing lists of workers whose heartbeat expired back to
// the pending list, so a job survives its worker's death (it may then run twice: handlers must
// be idempotent).
type Queue struct {
	rdb         *redis.Client
	name        string
	heartbeat   time.Duration
	maxAttempts int
}

// Job is one queued unit of work.
type Job struct {
	Kind     string          `json:"kind"`
	Payload  json.RawMessage `json:"payload"`
	Attempts int             `json:"attempts,omitempty"`
	// Nonce keeps identical jobs distinct in the lists (LREM removes by value).
	Nonce int64 `json:"nonce"`
}

// NewQueue returns the queue name on rdb; workers silent for three heartbeats are dead.
func NewQueue(rdb *redis.Client, name string, heartbeat time.Duration) *Queue {
	return &Queue{rdb: rdb, name: name, heartbeat: heartbeat, maxAttempts: 5}
}

func (q *Queue) pendingKey() string            { return "q:" + q.name + ":pending" }
func (q *Queue) deadKey() string               { return "q:" + q.name + ":dead" }
func (q *Queue) workersKey() string            { return "q:" + q.name + ":workers" }
func (q *Queue) processingKey(w string) string { return "q:" + q.name + ":processing:" + w }
func (q *Queue) aliveKey(w string) string      { return "q:" + q.name + ":alive:" + w }

// Enqueue adds a job.
func (q *Queue) Enqueue(ctx context.Context, kind string, payload any) error {
	b, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("enqueue %s: %w", kind, err)
	}
	j, _ := json.Marshal(Job{Kind: kind, Payload: b, Nonce: time.Now().UnixNano()})
	if err := q.rdb.LPush(ctx, q.pendingKey(), j).Err(); err != nil {
		return fmt.Errorf("enqueue %s: %w", kind, err)
	}
	return nil
}

// Depth returns the number of pending jobs.
func (q *Queue) Depth(ctx context.Context) (int64, error) {
	return q.rdb.LLen(ctx, q.pendingKey()).Result()
}

// Recover moves jobs held by dead workers back to the front of the pending list and forgets
// those workers; it returns how many jobs it moved.
func (q *Queue) Recover(ctx context.Context) (int, error) {
	workers, err := q.rdb.SMembers(ctx, q.workersKey()).Result()
	if err != nil {
		return 0, fmt.Errorf("recover: list workers: %w", err)
	}
	moved := 0
	for _, w := range workers {
		n, err := q.rdb.Exists(ctx, q.aliveKey(w)).Result()
		if err != nil || n > 0 {
			continue
		}
		for {
			err := q.rdb.LMove(ctx, q.processingKey(w), q.pendingKey(), "RIGHT", "RIGHT").Err()
			if errors.Is(err, redis.Nil) {
				break
			}
			if err != nil {
				return moved, fmt.Errorf("recover jobs of %s: %w", w, err)
			}
			moved++
		}
		q.rdb.SRem(ctx, q.workersKey(), w)
	}
	return moved, nil
}

// Handler runs one job; an error requeues it (up to 5 attempts, then the dead list).
type Handler func(ctx context.Context, job Job) error

// Workers is a running pool of queue workers.
type Workers struct {
	q      *Queue
	ids    []string
	log    *slog.Logger
	stop   chan struct{}
	wg     sync.WaitGroup
	hbStop context.CancelFunc
	hbDone chan struct{}
}

// Start runs n workers on h until Stop (graceful) or ctx ends (treated as sudden death: nothing
// is acknowledged or cleaned up, as if the process was killed).
func (q *Queue) Start(ctx context.Context, n int, h Handler, log *slog.Logger) (*Workers, error) {
	host, _ := os.Hostname()
	w := &Workers{q: q, log: log, stop: make(chan struct{}), hbDone: make(chan struct{})}
	base := fmt.Sprintf("%s-%d-%d", host, os.Getpid(), time.Now().UnixNano())
	for i := range n {
		w.ids = append(w.ids, base+"-"+strconv.Itoa(i))
	}
	if err := w.beat(ctx); err != nil {
		return nil, err
	}
	if err := q.rdb.SAdd(ctx, q.workersKey(), w.ids).Err(); err != nil {
		return nil, fmt.Errorf("register workers: %w", err)
	}
	hbCtx, cancel := context.WithCancel(ctx)
	w.hbStop = cancel
	go w.heartbeat(hbCtx)
	for _, id := range w.ids {
		w.wg.Go(func() { w.run(ctx, id, h) })
	}
	return w, nil
}

func (w *Workers) beat(ctx context.Context) error {
	_, err := w.q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range w.ids {
			p.Set(ctx, w.q.aliveKey(id), "1", 3*w.q.heartbeat)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("worker heartbeat: %w", err)
	}
	return nil
}

func (w *Workers) heartbeat(ctx context.Context) {
	defer close(w.hbDone)
	t := time.NewTicker(w.q.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := w.beat(ctx); err != nil && ctx.Err() == nil {
				w.log.Warn("queue heartbeat", "err", err)
			}
			if _, err := w.q.Recover(ctx); err != nil && ctx.Err() == nil {
				w.log.Warn("queue recovery", "err", err)
			}
		}
	}
}

func (w *Workers) stopping() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

func (w *Workers) run(ctx context.Context, id string, h Handler) {
	q := w.q
	for !w.stopping() && ctx.Err() == nil {
		raw, err := q.rdb.BLMove(ctx, q.pendingKey(), q.processingKey(id), "RIGHT", "LEFT", time.Second).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				w.log.Warn("queue take", "worker", id, "err", err)
				time.Sleep(200 * time.Millisecond)
			}
			continue
		}
		var job Job
		if err := json.Unmarshal([]byte(raw), &job); err != nil {
			w.log.Error("queue: malformed job moved to dead list", "job", raw, "err", err)
			w.finish(ctx, id, raw, q.deadKey())
			continue
		}
		herr := h(ctx, job)
		if ctx.Err() != nil {
			return // killed: leave the job in our processing list for Recover
		}
		if herr == nil {
			w.finish(ctx, id, raw, "")
			continue
		}
		job.Attempts++
		dest := q.pendingKey()
		if job.Attempts >= q.maxAttempts {
			dest = q.deadKey()
		}
		w.log.Warn("queue job failed", "kind", job.Kind, "attempt", job.Attempts, "err", herr)
		next, _ := json.Marshal(job)
		w.finishReplace(ctx, id, raw, string(next), dest)
	}
}

// finish removes raw from the processing list and, with dest set, pushes it there, atomically.
func (w *Workers) finish(ctx context.Context, id, raw, dest string) {
	w.finishReplace(ctx, id, raw, raw, dest)
}

func (w *Workers) finishReplace(ctx context.Context, id, raw, next, dest string) {
	_, err := w.q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.LRem(ctx, w.q.processingKey(id), 1, raw)
		if dest != "" {
			p.LPush(ctx, dest, next)
		}
		return nil
	})
	if err != nil {
		w.log.Warn("queue ack", "worker", id, "err", err)
	}
}

// Stop asks workers to finish their current job and exit, waiting until they do or ctx ends;
// then it deregisters them. Jobs still pending stay in Redis for other servers.
func (w *Workers) Stop(ctx context.Context) error {
	close(w.stop)
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		// Leave heartbeats to expire: Recover elsewhere will requeue what is still held.
		w.hbStop()
		return fmt.Errorf("fan-out workers still busy at shutdown deadline: %w", ctx.Err())
	}
	w.hbStop()
	<-w.hbDone
	bg := context.WithoutCancel(ctx)
	for _, id := range w.ids {
		// Anything left (a failed ack) goes back to pending before we disappear.
		var err error
		for err == nil {
			err = w.q.rdb.LMove(bg, w.q.processingKey(id), w.q.pendingKey(), "RIGHT", "RIGHT").Err()
		}
		if !errors.Is(err, redis.Nil) {
			// Redis is unreachable: our heartbeats expire and another server's Recover requeues.
			return fmt.Errorf("deregister fan-out workers: %w", err)
		}
		w.q.rdb.Del(bg, w.q.aliveKey(id))
		w.q.rdb.SRem(bg, w.q.workersKey(), id)
	}
	return nil
}
