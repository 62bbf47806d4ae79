package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/switches"
)

// Build identifies the binary; cmd/instagram-app stamps it with -ldflags.
type Build struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	// Fault, set only in fault-injection builds for tests (-X main.fault=errors=5%), makes
	// the server misbehave on purpose; see Faults.
	Fault string `json:"fault,omitempty"`
}

// App is one app server: its connections, background loops and HTTP handler.
type App struct {
	cfg     Config
	build   Build
	log     *slog.Logger
	router  *Router
	store   *Store
	rdb     *redis.Client
	mc      *memcache.Client
	blobs   *Blobs
	cache   PhotoCache
	owners  OwnerIndex
	feeds   Feeds
	queue   *Queue
	workers *Workers
	metrics *metrics
	handler http.Handler

	switches      *switches.Board
	switchChanged chan struct{}

	bgCancel     context.CancelFunc
	shuttingDown atomic.Bool
}

// New connects to every component, loads the shard map, and starts the map watcher and the
// fan-out workers. Close (or Serve's shutdown) stops them.
func New(ctx context.Context, cfg Config, build Build, log *slog.Logger) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &App{cfg: cfg, build: build, log: log, switchChanged: make(chan struct{}, 1)}
	faults, err := ParseFaults(build.Fault)
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	// The switches first, from disk: they apply from the first request on.
	a.switches = switches.NewBoard(cfg.SwitchesFile, log, a.switchApplied)
	// The Redis client dials whatever the target says: the topology's Redis primary once known.
	redisTarget := NewRedisTarget(cfg.RedisAddr)
	if a.router, err = OpenRouter(ctx, RouterConfig{ControlDSN: cfg.ControlDSN, MaxConns: int32(cfg.PoolMaxConns),
		PgBouncer: cfg.PgBouncer, Redis: redisTarget, Log: log, StartWithoutMap: true}); err != nil {
		return nil, err
	}
	a.store = &Store{r: a.router, fenceWait: cfg.FenceWait}
	a.rdb = redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, Dialer: redisTarget.Dial, DialTimeout: 2 * time.Second,
		ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, PoolSize: 4*cfg.Workers + 32})
	a.mc = memcache.New(cfg.MemcachedAddrs...)
	a.mc.Timeout = 500 * time.Millisecond
	a.cache = PhotoCache{mc: a.mc}
	a.owners = OwnerIndex{rdb: a.rdb}
	a.feeds = Feeds{rdb: a.rdb, length: cfg.FeedLength}
	if a.blobs, err = NewBlobs(ctx, cfg.S3Bucket); err != nil {
		a.router.Close()
		return nil, err
	}
	a.queue = NewQueue(a.rdb, "fanout", cfg.QueueHeartbeat)
	a.metrics = newMetrics(a, build, cfg.Release)
	// Faults inside the gate: a switch that refuses a request refuses it before any fault.
	a.handler = a.metrics.instrument(a.gate(withFaults(faults, a.routes())))

	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.bgCancel = cancel
	go a.router.Watch(bg, cfg.ControlDSN, cfg.MapRefresh)
	a.startSwitches(bg)
	if a.workers, err = a.queue.Start(bg, cfg.Workers, a.fanout, log); err != nil {
		cancel()
		a.router.Close()
		return nil, fmt.Errorf("start fan-out workers: %w", err)
	}
	return a, nil
}

// Handler returns the HTTP API.
func (a *App) Handler() http.Handler { return a.handler }

// Router returns the shard router (tests and operators inspect the cached map).
func (a *App) Router() *Router { return a.router }

// Serve serves HTTP on ln until ctx ends, then shuts down gracefully within
// Config.ShutdownTimeout: /healthz turns 503, the listener closes, in-flight requests finish,
// fan-out workers finish their current job, and connections close.
func (a *App) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: a.handler, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	a.log.Info("serving", "addr", ln.Addr().String(), "version", a.build.Version, "release", a.cfg.Release)
	select {
	case err := <-errc:
		a.Close()
		return fmt.Errorf("serve http: %w", err)
	case <-ctx.Done():
	}
	a.log.Info("shutting down", "timeout", a.cfg.ShutdownTimeout)
	a.shuttingDown.Store(true)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ShutdownTimeout)
	defer cancel()
	var errs []error
	if err := srv.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
	}
	if err := a.workers.Stop(sctx); err != nil {
		errs = append(errs, err)
	}
	a.Close()
	a.log.Info("stopped")
	return errors.Join(errs...)
}

// Close stops background loops and closes every connection, without draining.
func (a *App) Close() {
	a.bgCancel()
	a.router.Close()
	a.rdb.Close()
	a.mc.Close()
}
