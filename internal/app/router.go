package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/instactl/instactl/shardmap"
)

// Router caches the shard map and holds one pgx pool per physical node. Pools use
// QueryExecModeExec (no prepared-statement cache, no session state) so they work through
// PgBouncer in transaction mode; every statement names its shard schema explicitly.
type Router struct {
	control  *pgxpool.Pool
	maxConns int32
	log      *slog.Logger

	cur atomic.Pointer[shardmap.Map]

	mu      sync.Mutex // guards pools, changed
	pools   map[string]*nodePool
	changed chan struct{} // closed and replaced whenever a new map is installed

	refreshMu   sync.Mutex // one Load at a time
	lastRefresh time.Time

	fenceRetries atomic.Int64
}

type nodePool struct {
	dsn  string
	pool *pgxpool.Pool
}

// newPool opens a PgBouncer-safe pool.
func newPool(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse dsn: %w", err)
	}
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	cfg.MaxConnIdleTime = time.Minute
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	return pool, nil
}

// NewRouter loads the map from the control database and opens pools for its nodes.
func NewRouter(ctx context.Context, controlDSN string, maxConns int32, log *slog.Logger) (*Router, error) {
	control, err := newPool(ctx, controlDSN, 4)
	if err != nil {
		return nil, fmt.Errorf("control database: %w", err)
	}
	r := &Router{control: control, maxConns: maxConns, log: log, pools: map[string]*nodePool{},
		changed: make(chan struct{})}
	if err := r.Refresh(ctx); err != nil {
		control.Close()
		return nil, err
	}
	return r, nil
}

// Map returns the cached shard map.
func (r *Router) Map() *shardmap.Map { return r.cur.Load() }

// FenceRetries returns how many operations were retried after a fence error.
func (r *Router) FenceRetries() int64 { return r.fenceRetries.Load() }

// Refresh reloads the map now (concurrent callers share one load) and opens pools for new nodes.
func (r *Router) Refresh(ctx context.Context) error {
	start := time.Now()
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	if r.lastRefresh.After(start) {
		return nil // someone loaded a map after we asked
	}
	m, err := shardmap.Load(ctx, r.control)
	if err != nil {
		return fmt.Errorf("refresh shard map: %w", err)
	}
	r.lastRefresh = time.Now()
	if old := r.cur.Load(); old != nil && old.Version == m.Version {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, n := range m.Nodes {
		if np, ok := r.pools[name]; ok && np.dsn == n.DSN {
			continue
		}
		pool, err := newPool(ctx, n.DSN, r.maxConns)
		if err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		if old, ok := r.pools[name]; ok {
			go func() { time.Sleep(30 * time.Second); old.pool.Close() }()
		}
		r.pools[name] = &nodePool{dsn: n.DSN, pool: pool}
	}
	r.cur.Store(&m)
	close(r.changed)
	r.changed = make(chan struct{})
	r.log.Info("shard map loaded", "version", m.Version, "shards", m.LogicalShards(), "nodes", len(m.Nodes))
	return nil
}

func (r *Router) changedCh() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// route returns the assignment and pool for shard under the cached map.
func (r *Router) route(shard int) (shardmap.Assignment, *pgxpool.Pool, error) {
	m := r.cur.Load()
	a, _, err := m.Route(shard)
	if err != nil {
		return a, nil, err
	}
	r.mu.Lock()
	np := r.pools[a.Node]
	r.mu.Unlock()
	if np == nil {
		return a, nil, fmt.Errorf("shard %d: no pool for node %s", shard, a.Node)
	}
	return a, np.pool, nil
}

// Do runs fn on the pool of the node holding shard. This is the fence/retry contract: if fn fails
// because the shard moved (fence error IG001, or its schema is gone from that node), Do refreshes
// the map, waits up to fenceWait for the shard's epoch to change (woken by NOTIFY or polling),
// and runs fn exactly once more on the new route. fn must be safe to run twice when its first
// run failed (a fenced statement writes nothing).
func (r *Router) Do(ctx context.Context, shard int, fenceWait time.Duration, fn func(ctx context.Context, db *pgxpool.Pool) error) error {
	a, pool, err := r.route(shard)
	if err != nil {
		return err
	}
	err = fn(ctx, pool)
	if err == nil || !shardMoved(err) {
		return err
	}
	r.fenceRetries.Add(1)
	if werr := r.awaitMove(ctx, shard, a.Epoch, fenceWait); werr != nil {
		return fmt.Errorf("shard %d: %w (and %w)", shard, err, werr)
	}
	_, pool, rerr := r.route(shard)
	if rerr != nil {
		return rerr
	}
	return fn(ctx, pool)
}

// awaitMove returns once the cached map shows shard past epoch, or an error after wait.
func (r *Router) awaitMove(ctx context.Context, shard int, epoch int64, wait time.Duration) error {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		ch := r.changedCh()
		if err := r.Refresh(ctx); err != nil {
			r.log.Warn("refresh after fence", "err", err)
		}
		if m := r.cur.Load(); shard < len(m.Shards) && m.Shards[shard].Epoch != epoch {
			return nil
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline.C:
			return fmt.Errorf("shard map did not move shard %d within %s: %w", shard, wait, errStillFenced)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

var errStillFenced = errors.New("shard still fenced")

// shardMoved reports whether err means the shard is no longer writable (or present) on the node
// the cached map sent us to.
func shardMoved(err error) bool {
	if shardmap.IsFenced(err) {
		return true
	}
	var pgErr *pgconn.PgError
	// 3F000 invalid_schema_name, 42P01 undefined_table: the old node dropped the shard.
	return errors.As(err, &pgErr) && (pgErr.Code == "3F000" || pgErr.Code == "42P01")
}

// Watch keeps the map fresh until ctx ends: LISTEN on a dedicated control connection
// (reconnecting with backoff) plus a timer refresh every interval.
func (r *Router) Watch(ctx context.Context, controlDSN string, interval time.Duration) {
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := r.Refresh(ctx); err != nil && ctx.Err() == nil {
					r.log.Warn("timer refresh of shard map", "err", err)
				}
			}
		}
	}()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		conn, err := pgx.Connect(ctx, controlDSN)
		if err == nil {
			backoff = 100 * time.Millisecond
			// Reload once listening, so a change between our last load and LISTEN is not missed.
			go func() { time.Sleep(50 * time.Millisecond); _ = r.Refresh(ctx) }()
			err = shardmap.Listen(ctx, conn, func(int64) {
				if err := r.Refresh(ctx); err != nil {
					r.log.Warn("notify refresh of shard map", "err", err)
				}
			})
			conn.Close(context.Background())
		}
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("shard map listener", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// Ping checks the control database and every node.
func (r *Router) Ping(ctx context.Context) map[string]error {
	out := map[string]error{"control": r.control.Ping(ctx)}
	r.mu.Lock()
	pools := make(map[string]*pgxpool.Pool, len(r.pools))
	for name, np := range r.pools {
		pools[name] = np.pool
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for name, p := range pools {
		wg.Go(func() {
			err := p.Ping(ctx)
			mu.Lock()
			out["node:"+name] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// Stats returns the pool statistics per node (and "control").
func (r *Router) Stats() map[string]*pgxpool.Stat {
	out := map[string]*pgxpool.Stat{"control": r.control.Stat()}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, np := range r.pools {
		out[name] = np.pool.Stat()
	}
	return out
}

// Close closes every pool.
func (r *Router) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, np := range r.pools {
		np.pool.Close()
	}
	r.control.Close()
}
