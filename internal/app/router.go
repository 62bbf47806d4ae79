package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/instactl/instactl/controldb"
	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/topology"
)

// Router caches the shard map and holds one pgx pool per physical node. Pools use
// QueryExecModeExec (no prepared-statement cache, no session state) so they work through
// PgBouncer in transaction mode; every statement names its shard schema explicitly.
//
// It also follows the replication topology (package topology): per group it holds the highest
// epoch seen, resets a node's pool when its group gets a new primary, points the Redis client
// at the Redis group's primary, and refuses a topology older than the one it holds.
type Router struct {
	control  *pgxpool.Pool
	maxConns int32
	pooler   string
	redis    *RedisTarget
	log      *slog.Logger

	cur atomic.Pointer[shardmap.Map]

	mu      sync.Mutex // guards pools, changed
	pools   map[string]*nodePool
	changed chan struct{} // closed and replaced whenever a new map or topology is installed

	refreshMu   sync.Mutex // one Load at a time
	lastRefresh time.Time

	topoMu       sync.Mutex // one topology load at a time
	lastTopo     time.Time
	epochMu      sync.Mutex // guards epochs
	epochs       map[string]int64
	noTopoLogged atomic.Bool

	fenceRetries     atomic.Int64
	failoverRetries  atomic.Int64
	staleRefused     atomic.Int64
	listenerConnects atomic.Int64
}

// RouterConfig is what OpenRouter needs.
type RouterConfig struct {
	// ControlDSN reaches the control database; it may list every member of the control group
	// with target_session_attrs=read-write.
	ControlDSN string
	// MaxConns caps each node's pool (0: pgx's default).
	MaxConns int32
	// PgBouncer is ADDR:PORT of the local PgBouncer; when set, node pools connect through it
	// to the database named after the node (see PoolerDSN). Empty: the node DSNs as they are.
	PgBouncer string
	// Redis, when set, is pointed at the primary of the topology's Redis group.
	Redis *RedisTarget
	Log   *slog.Logger
	// StartWithoutMap lets OpenRouter return when the control database does not answer: the
	// map is empty (Loaded is false) until Watch loads it. The app server uses it so that a
	// restart while the control database is unreachable still serves what needs no map (its
	// switch state from disk, /metrics).
	StartWithoutMap bool
}

type nodePool struct {
	dsn  string // the shard map's DSN, before any pooler rewrite
	pool *pgxpool.Pool
}

// newPool opens a PgBouncer-safe pool.
func newPool(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse dsn: %w", err)
	}
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// A host that vanished (failover) must not hold a connect for minutes.
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
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

// connectTimeout bounds a connect when the DSN sets no connect_timeout.
const connectTimeout = 5 * time.Second

// NewRouter loads the map from the control database and opens pools for its nodes, connecting
// to them directly (no pooler) and following no Redis.
func NewRouter(ctx context.Context, controlDSN string, maxConns int32, log *slog.Logger) (*Router, error) {
	return OpenRouter(ctx, RouterConfig{ControlDSN: controlDSN, MaxConns: maxConns, Log: log})
}

// OpenRouter loads the map and the topology from the control database and opens pools for the
// map's nodes.
func OpenRouter(ctx context.Context, cfg RouterConfig) (*Router, error) {
	if cfg.PgBouncer != "" {
		if _, _, err := net.SplitHostPort(cfg.PgBouncer); err != nil {
			return nil, fmt.Errorf("pgbouncer address %q: want ADDR:PORT: %w", cfg.PgBouncer, err)
		}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	control, err := newPool(ctx, cfg.ControlDSN, 4)
	if err != nil {
		return nil, fmt.Errorf("control database: %w", err)
	}
	r := &Router{control: control, maxConns: cfg.MaxConns, pooler: cfg.PgBouncer, redis: cfg.Redis, log: log,
		pools: map[string]*nodePool{}, changed: make(chan struct{}), epochs: map[string]int64{}}
	if err := r.Refresh(ctx); err != nil {
		if !cfg.StartWithoutMap {
			r.Close()
			return nil, err
		}
		log.Warn("shard map not loaded at start; data requests answer 503 until the control database answers", "err", err)
		r.cur.Store(&shardmap.Map{})
	}
	if err := r.RefreshTopology(ctx); err != nil {
		// The map is enough to serve; the listener and the timer load the topology again.
		log.Warn("topology not loaded at start; keeping the configured addresses", "err", err)
	}
	if cfg.PgBouncer != "" {
		log.Info("shard nodes are reached through PgBouncer", "pgbouncer", cfg.PgBouncer)
	}
	return r, nil
}

// Loaded reports whether a shard map was loaded (see RouterConfig.StartWithoutMap).
func (r *Router) Loaded() bool { return len(r.cur.Load().Shards) > 0 }

// Map returns the cached shard map.
func (r *Router) Map() *shardmap.Map { return r.cur.Load() }

// ListenerConnects returns how many times the listener connected to the control database and
// listened (more than once: it reconnected, e.g. after the control primary moved).
func (r *Router) ListenerConnects() int64 { return r.listenerConnects.Load() }

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
		// Through the pooler a new primary changes the node's DSN but not the pooler's, so
		// compare what the pool connects to: the pool stays, and the new epoch resets it.
		dsn := n.DSN
		if r.pooler != "" {
			if dsn, err = PoolerDSN(n.DSN, r.pooler, name); err != nil {
				return fmt.Errorf("node %s: %w", name, err)
			}
		}
		if np, ok := r.pools[name]; ok && np.dsn == dsn {
			continue
		}
		pool, err := newPool(ctx, dsn, r.maxConns)
		if err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		if old, ok := r.pools[name]; ok {
			go func() { time.Sleep(30 * time.Second); old.pool.Close() }()
		}
		r.pools[name] = &nodePool{dsn: dsn, pool: pool}
	}
	r.cur.Store(&m)
	r.signalLocked()
	r.log.Info("shard map loaded", "version", m.Version, "shards", m.LogicalShards(), "nodes", len(m.Nodes))
	return nil
}

// signalLocked wakes every waiter on changed; r.mu is held.
func (r *Router) signalLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
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
// and runs fn exactly once more on the new route. The same holds when fn fails because the
// node's primary went away under it (see primaryLost): Do waits up to fenceWait for the node's
// replication group to reach a newer epoch (or the map to change) and runs fn once more. fn
// must be safe to run twice when its first run failed that way (nothing it did was committed).
func (r *Router) Do(ctx context.Context, shard int, fenceWait time.Duration, fn func(ctx context.Context, db *pgxpool.Pool) error) error {
	a, pool, err := r.route(shard)
	if err != nil {
		return err
	}
	epoch, version := r.GroupEpoch(a.Node), r.cur.Load().Version
	err = fn(ctx, pool)
	switch {
	case err == nil:
		return nil
	case shardMoved(err):
		r.fenceRetries.Add(1)
		if werr := r.awaitMove(ctx, shard, a.Epoch, fenceWait); werr != nil {
			return fmt.Errorf("shard %d: %w (and %w)", shard, err, werr)
		}
	case primaryLost(err):
		r.failoverRetries.Add(1)
		r.log.Info("primary lost under a statement; waiting for the topology to change", "node", a.Node, "err", err)
		if werr := r.awaitTopology(ctx, a.Node, epoch, version, fenceWait); werr != nil {
			return fmt.Errorf("node %s: %w (and %w)", a.Node, err, werr)
		}
	default:
		return err
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

// Watch keeps the map and the topology fresh until ctx ends: LISTEN on a dedicated control
// connection plus a timer refresh every interval. When the listening connection is lost (the
// control primary shut down or moved) it reconnects with a bounded backoff to whichever host
// of the DSN is read-write now (controldb.Listener), and reloads both once listening again.
func (r *Router) Watch(ctx context.Context, controlDSN string, interval time.Duration) {
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				r.reload(ctx, "timer")
			}
		}
	}()
	controldb.Listener{
		DSN:      controlDSN,
		Channels: []string{shardmap.NotifyChannel, topology.NotifyChannel},
		Idle:     listenIdle,
		OnListen: func(ctx context.Context, conn *pgx.Conn) {
			r.log.Info("listening for shard map and topology changes", "server", conn.PgConn().Conn().RemoteAddr().String())
			// Reload once listening: a change made while we were not listening sent us nothing.
			r.reload(ctx, "listen")
			r.listenerConnects.Add(1)
		},
		OnNotify: func(ctx context.Context, _ *pgx.Conn, n *pgconn.Notification) { r.notified(ctx, n) },
		// A control host that vanished without closing the connection must not leave the app
		// deaf: a silent connection is pinged.
		OnIdle: func(ctx context.Context, conn *pgx.Conn) error {
			pctx, cancel := context.WithTimeout(ctx, connectTimeout)
			defer cancel()
			if err := conn.Ping(pctx); err != nil {
				return fmt.Errorf("control connection silent for %s and ping failed: %w", listenIdle, err)
			}
			return nil
		},
		OnLost: func(err error, attempt int, retryIn time.Duration) {
			r.log.Warn("control database listener lost; reconnecting", "err", err, "attempt", attempt, "retry_in", retryIn)
		},
	}.Run(ctx)
}

// listenIdle is how long the listener waits for a notification before it pings the server.
const listenIdle = 10 * time.Second

// notified handles one notification from the control database.
func (r *Router) notified(ctx context.Context, n *pgconn.Notification) {
	rctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	switch n.Channel {
	case shardmap.NotifyChannel:
		if err := r.Refresh(rctx); err != nil {
			r.log.Warn("notify refresh of shard map", "err", err)
		}
	case topology.NotifyChannel:
		group, e, _ := strings.Cut(n.Payload, " ")
		epoch, err := strconv.ParseInt(e, 10, 64)
		if err == nil {
			if held := r.GroupEpoch(group); epoch < held {
				r.refuseStale(group, epoch, held, "notification")
				return
			} else if epoch == held {
				return // ours already
			}
		}
		if err := r.RefreshTopology(rctx); err != nil {
			r.log.Warn("notify refresh of topology", "err", err)
		}
	}
}

// refreshTimeout bounds one reload, so a control host that vanished cannot hang it.
const refreshTimeout = 15 * time.Second

// reload refreshes the map and the topology, logging failures.
func (r *Router) reload(ctx context.Context, why string) {
	rctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	if err := r.Refresh(rctx); err != nil && ctx.Err() == nil {
		r.log.Warn("refresh of shard map", "on", why, "err", err)
	}
	if err := r.RefreshTopology(rctx); err != nil && ctx.Err() == nil {
		r.log.Warn("refresh of topology", "on", why, "err", err)
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
