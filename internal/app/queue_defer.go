package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// deferredKey holds jobs parked while their work is switched off (feed.fanout).
func (q *Queue) deferredKey() string { return "q:" + q.name + ":deferred" }

// Defer parks job on the deferred list, its attempts reset; Undefer queues it again.
func (q *Queue) Defer(ctx context.Context, job Job) error {
	job.Attempts = 0
	b, err := json.Marshal(job)
	if err != nil {
		return fmt.Errorf("defer %s job: %w", job.Kind, err)
	}
	if err := q.rdb.LPush(ctx, q.deferredKey(), b).Err(); err != nil {
		return fmt.Errorf("defer %s job: %w", job.Kind, err)
	}
	return nil
}

// Deferred returns the number of parked jobs.
func (q *Queue) Deferred(ctx context.Context) (int64, error) {
	return q.rdb.LLen(ctx, q.deferredKey()).Result()
}

// Undefer moves every parked job to the pending list, oldest first, one atomic LMOVE each (so
// servers undeferring at once never lose or double a job), and returns how many it moved.
func (q *Queue) Undefer(ctx context.Context) (int, error) {
	moved := 0
	for {
		err := q.rdb.LMove(ctx, q.deferredKey(), q.pendingKey(), "RIGHT", "LEFT").Err()
		if errors.Is(err, redis.Nil) {
			return moved, nil
		}
		if err != nil {
			return moved, fmt.Errorf("undefer: %w", err)
		}
		moved++
	}
}
