package switches

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/instactl/instactl/controldb"
)

// Where the state an app server holds came from.
const (
	FromDefault  = "default"  // nothing known yet: every switch at its default
	FromDisk     = "disk"     // the state file, not yet confirmed by the control database
	FromDatabase = "database" // the control database
)

// Applied is the state an app server holds: what it applies to every request.
type Applied struct {
	State
	Source    string    `json:"source"`
	AppliedAt time.Time `json:"applied_at"`
}

// Board is an app server's copy of the switches. It starts from the state file, follows the
// control database (Watch), refuses a state older than the one it holds (a stale source), and
// writes every newer state to the file.
type Board struct {
	path string
	log  *slog.Logger

	cur      atomic.Pointer[Applied]
	applyMu  sync.Mutex // one apply at a time, so versions only grow
	onChange func(old, new Applied)

	loads, loadErrors, stale, writeErrors, connects atomic.Int64
}

// NewBoard returns a board holding the state in path (empty: no file), or every default when
// the file is missing or unreadable (logged). onChange, when set, runs after each newer state
// is installed.
func NewBoard(path string, log *slog.Logger, onChange func(old, new Applied)) *Board {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Board{path: path, log: log, onChange: onChange}
	a := &Applied{State: State{Settings: map[string]Setting{}}, Source: FromDefault, AppliedAt: time.Now()}
	if path != "" {
		s, err := ReadFile(path)
		switch {
		case err == nil:
			a = &Applied{State: s, Source: FromDisk, AppliedAt: time.Now()}
			log.Info("switches loaded from disk", "path", path, "version", s.Version)
		case errors.Is(err, os.ErrNotExist):
			log.Info("no switch state on disk yet; every switch at its default", "path", path)
		default:
			log.Warn("switch state on disk unreadable; every switch at its default until the control database answers", "err", err)
		}
	}
	b.cur.Store(a)
	return b
}

// Current returns the state held now.
func (b *Board) Current() Applied { return *b.cur.Load() }

// On returns the effective value of switch name now.
func (b *Board) On(name string) bool { return b.cur.Load().On(name, time.Now()) }

// Status returns switch name as it applies now.
func (b *Board) Status(name string) Status { return b.cur.Load().Status(name, time.Now()) }

// Counters for metrics: loads from the database, failed loads, stale states refused, failed
// writes of the state file, listener connects.
func (b *Board) Counters() (loads, loadErrors, stale, writeErrors, connects int64) {
	return b.loads.Load(), b.loadErrors.Load(), b.stale.Load(), b.writeErrors.Load(), b.connects.Load()
}

// Apply installs s read from the control database when it is newer than the state held (or
// the same version, confirming a state read from disk). It reports whether the version changed.
func (b *Board) Apply(s State) bool {
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	old := b.cur.Load()
	switch {
	case s.Version < old.Version:
		b.stale.Add(1)
		b.log.Warn("refusing switch state older than the one held", "version", s.Version, "held", old.Version, "held_from", old.Source)
		return false
	case s.Version == old.Version && old.Source == FromDatabase:
		return false
	}
	next := &Applied{State: s, Source: FromDatabase, AppliedAt: time.Now()}
	b.cur.Store(next)
	changed := s.Version != old.Version
	if changed {
		b.log.Info("switch state applied", "version", s.Version, "previous", old.Version, "from", old.Source)
	}
	// The request path already sees the new state; the file follows.
	if b.path != "" && (changed || old.Source != FromDatabase) {
		if err := WriteFile(b.path, s); err != nil {
			b.writeErrors.Add(1)
			b.log.Warn("cannot keep the switch state on disk; a restart without the control database would start from an older state", "err", err)
		}
	}
	if changed && b.onChange != nil {
		b.onChange(*old, *next)
	}
	return changed
}

// Refresh loads the state from db and applies it.
func (b *Board) Refresh(ctx context.Context, db DB) error {
	s, err := Load(ctx, db)
	if err != nil {
		b.loadErrors.Add(1)
		return err
	}
	b.loads.Add(1)
	b.Apply(s)
	return nil
}

// Watch follows the control database at dsn until ctx ends: one connection LISTENs on
// NotifyChannel, loads the state on every notification newer than the state held, and loads
// it again whenever interval passes without one (the backstop for a lost notification). When
// the connection fails it reconnects with a bounded backoff (controldb.Listener); meanwhile
// the state held (from the database or the disk) keeps applying.
func (b *Board) Watch(ctx context.Context, dsn string, interval time.Duration) {
	controldb.Listener{
		DSN:      dsn,
		Channels: []string{NotifyChannel},
		Idle:     interval,
		OnListen: func(ctx context.Context, conn *pgx.Conn) {
			b.connects.Add(1)
			b.load(ctx, conn)
		},
		OnNotify: func(ctx context.Context, conn *pgx.Conn, n *pgconn.Notification) {
			if v, err := strconv.ParseInt(n.Payload, 10, 64); err == nil && v <= b.cur.Load().Version && b.cur.Load().Source == FromDatabase {
				return // held already
			}
			b.load(ctx, conn)
		},
		OnIdle: func(ctx context.Context, conn *pgx.Conn) error {
			b.load(ctx, conn) // the backstop; it also proves the connection alive
			if conn.IsClosed() {
				return errors.New("control connection closed during the periodic re-read")
			}
			return nil
		},
		OnLost: func(err error, _ int, retryIn time.Duration) {
			b.log.Warn("switch listener lost; reconnecting", "err", err, "retry_in", retryIn)
		},
	}.Run(ctx)
}

// refreshTimeout bounds one load, so a control host that vanished cannot hang the listener.
const refreshTimeout = 10 * time.Second

func (b *Board) load(ctx context.Context, conn *pgx.Conn) {
	lctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	if err := b.Refresh(lctx, conn); err != nil && ctx.Err() == nil {
		b.log.Warn("load switches", "err", err)
	}
}
