package backup

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// ackedWriter writes numbered rows (Postgres) or keys (Redis) to a primary, one at a time, and
// records each acknowledged write with the primary's position read after the acknowledgement
// (pg_current_wal_insert_lsn, or master_repl_offset): an upper bound of where the write ends in
// the WAL or replication stream. A copy taken at position P must hold every write recorded at
// or before P.
type ackedWriter struct {
	mu   sync.Mutex
	ids  []int64
	pos  []uint64
	at   []time.Time // when each write was acknowledged
	stop atomic.Bool
	done chan error
}

func (w *ackedWriter) record(id int64, pos uint64) {
	w.mu.Lock()
	w.ids = append(w.ids, id)
	w.pos = append(w.pos, pos)
	w.at = append(w.at, time.Now())
	w.mu.Unlock()
}

func (w *ackedWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ids)
}

// finish stops the writer and returns its error, if any.
func (w *ackedWriter) finish(t *testing.T) {
	t.Helper()
	w.stop.Store(true)
	if err := <-w.done; err != nil {
		t.Fatalf("writer: %v", err)
	}
}

// check fails t unless every write acknowledged at or before upTo is in present; it returns how
// many writes were acknowledged at or before upTo and after it.
func (w *ackedWriter) check(t *testing.T, upTo uint64, present map[int64]bool) (before, after int) {
	t.Helper()
	missing := 0
	for i, id := range w.ids {
		if w.pos[i] > upTo {
			after++
			continue
		}
		before++
		if !present[id] {
			if missing++; missing <= 5 {
				t.Errorf("write %d acknowledged at %d (<= %d) is missing from the restored copy", id, w.pos[i], upTo)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged writes up to %d missing", missing, before, upTo)
	}
	for id := range present {
		if id < 1 || id > int64(len(w.ids))+1 {
			t.Errorf("restored copy holds write %d, never attempted (%d attempted)", id, len(w.ids)+1)
		}
	}
	return before, after
}

// startPGWriter inserts rows 1, 2, ... into instagram.acked on the primary at addr.
func startPGWriter(t testing.TB, addr string) *ackedWriter {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, "postgres://postgres@"+addr+":5432/instagram?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	w := &ackedWriter{done: make(chan error, 1)}
	go func() {
		defer conn.Close(ctx)
		for id := int64(1); !w.stop.Load(); id++ {
			if _, err := conn.Exec(ctx, "INSERT INTO acked (id) VALUES ($1)", id); err != nil {
				w.done <- fmt.Errorf("insert %d: %w", id, err)
				return
			}
			var lsn string
			if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn); err != nil {
				w.done <- err
				return
			}
			pos, err := parseLSN(lsn)
			if err != nil {
				w.done <- err
				return
			}
			w.record(id, pos)
			time.Sleep(2 * time.Millisecond)
		}
		w.done <- nil
	}()
	return w
}

// startRedisWriter sets keys ack:1, ack:2, ... on the master at addr.
func startRedisWriter(t *testing.T, addr string) *ackedWriter {
	t.Helper()
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	w := &ackedWriter{done: make(chan error, 1)}
	go func() {
		defer rdb.Close()
		for id := int64(1); !w.stop.Load(); id++ {
			if err := rdb.Set(ctx, "ack:"+strconv.FormatInt(id, 10), id, 0).Err(); err != nil {
				w.done <- fmt.Errorf("set %d: %w", id, err)
				return
			}
			info, err := rdb.Info(ctx, "replication").Result()
			if err != nil {
				w.done <- err
				return
			}
			w.record(id, uint64(redisInt(parseInfo(info)["master_repl_offset"])))
			time.Sleep(2 * time.Millisecond)
		}
		w.done <- nil
	}()
	return w
}

// idSet parses one id per line, stripping prefix.
func idSet(out, prefix string) map[int64]bool {
	m := map[int64]bool{}
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), prefix); ok && rest != "" {
			if n, err := strconv.ParseInt(rest, 10, 64); err == nil {
				m[n] = true
			}
		}
	}
	return m
}
