package shardmove

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/shardmap"
)

// Config says where the control database is and how the mover reaches the nodes.
type Config struct {
	// ControlDSN is the control database holding the shard map and the move journal.
	ControlDSN string
	// AdminDSN optionally overrides, per node name, the registry DSN for the mover's own
	// connections and for the subscription's connection to the source. Use it when the
	// registry DSN points at PgBouncer: replication and DDL need a direct connection.
	AdminDSN map[string]string
	// FreeBytes optionally reports the free disk space of a node; PlanMove uses it to refuse
	// a move to a node without room. When nil the room check is reported as not done.
	FreeBytes func(ctx context.Context, node string) (int64, error)
	// SnapshotCopyBytes is the shard size from which PlanMove picks CopySnapshot over
	// CopyLogical (0 means DefaultSnapshotCopyBytes, negative never).
	SnapshotCopyBytes int64
}

// Mover plans and runs shard moves. It holds no connections between calls; it is safe to use
// from several goroutines, and the journal's locks keep two processes off the same move.
type Mover struct {
	cfg Config
}

// New returns a Mover for cfg.
func New(cfg Config) *Mover { return &Mover{cfg: cfg} }

// Options tunes a move. The zero value means the defaults documented on each field.
type Options struct {
	// WindowBound is the longest the shard may be write-blocked during the cutover (default
	// 2 s). If the cutover would exceed it before the map flip, the source is unfenced and
	// the attempt is abandoned; nothing has changed.
	WindowBound time.Duration
	// LockTimeout bounds the wait for the fence's table locks (default 300 ms), so a long
	// writer makes the fence fail fast instead of queueing every other writer.
	LockTimeout time.Duration
	// CutoverAttempts is how many times a cutover that hit a bound is retried (default 3).
	CutoverAttempts int
	// SyncCommitLead is how long before the cutover the subscription is switched to
	// synchronous_commit=on (default 2 s; see DESIGN: it cuts the catch-up wait ~10x).
	SyncCommitLead time.Duration
	// SyncTimeout bounds the initial copy (default 1 h).
	SyncTimeout time.Duration
	// Copy, when set (CopyLogical or CopySnapshot), overrides the copy method PlanMove chose
	// by size. Move records it in the journal; Resume ignores it.
	Copy string
	// CopyWorkers is how many sessions copy tables and build indexes at once with
	// CopySnapshot (default 2).
	CopyWorkers int
	// ChunkRows is the verification chunk size in rows (default 20000).
	ChunkRows int
	// VerifyWorkers is how many chunks are compared at once (default 2).
	VerifyWorkers int
	// VerifyAttempts is how many times a differing chunk is compared again (default 10).
	VerifyAttempts int
	// MaxHotRanges is how many chunks may still differ after VerifyAttempts (they are being
	// written) and be compared again inside the cutover, when both sides are frozen
	// (default 32). More than that fails verification.
	MaxHotRanges int
	// SequenceMargin is added to the source sequence's last value when the target's is set
	// (default 1024).
	SequenceMargin int64
	// Progress, when set, receives one event per step and notable progress. Parallel copy
	// sessions may call it from several goroutines at once.
	Progress func(Event)
	// Hook, when set, is called with the name of each journaled point just after it is
	// reached (a step name, or "cutover.fenced", "cutover.flipped"). Crash tests use it to
	// stop the process at a chosen point.
	Hook func(point string)
}

func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.WindowBound, 2*time.Second)
	def(&o.LockTimeout, 300*time.Millisecond)
	def(&o.SyncCommitLead, 2*time.Second)
	def(&o.SyncTimeout, time.Hour)
	if o.CutoverAttempts <= 0 {
		o.CutoverAttempts = 3
	}
	if o.ChunkRows <= 0 {
		o.ChunkRows = 20000
	}
	if o.CopyWorkers <= 0 {
		o.CopyWorkers = 2
	}
	if o.VerifyWorkers <= 0 {
		o.VerifyWorkers = 2
	}
	if o.VerifyAttempts <= 0 {
		o.VerifyAttempts = 10
	}
	if o.MaxHotRanges <= 0 {
		o.MaxHotRanges = 32
	}
	if o.SequenceMargin <= 0 {
		o.SequenceMargin = 1024
	}
	return o
}

// Event is one progress report of a running move.
type Event struct {
	MoveID  int64     `json:"move_id"`
	Step    string    `json:"step"`
	Message string    `json:"message"`
	Time    time.Time `json:"time"`
}

// ErrRefused is wrapped by the error of PlanMove (and of Move, Rollback) when a pre-check
// fails; the error text lists every failed check.
var ErrRefused = errors.New("move refused")

// ErrWindowExceeded is wrapped when every cutover attempt would have blocked writes longer
// than Options.WindowBound; the source was unfenced each time.
var ErrWindowExceeded = errors.New("cutover window bound exceeded")

// LockedError is returned when another process is running the move right now (it holds the
// move's lock in the control database).
type LockedError struct {
	MoveID int64
}

// Error implements error.
func (e *LockedError) Error() string {
	return fmt.Sprintf("move %d is being run by another process right now (wait for it, or stop it first; `instactl shard status` shows it as locked)", e.MoveID)
}

// StuckError is returned when a move stops before it is done: it says at which step, why,
// and the exact commands that continue or undo it.
type StuckError struct {
	MoveID int64
	Step   string
	Err    error
}

// Error implements error.
func (e *StuckError) Error() string {
	return fmt.Sprintf("move %d stopped at step %s: %v; run `instactl shard resume %d` to continue or `instactl shard abort %d` to undo",
		e.MoveID, e.Step, e.Err, e.MoveID, e.MoveID)
}

// Unwrap returns the cause.
func (e *StuckError) Unwrap() error { return e.Err }

func (m *Mover) control(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, m.cfg.ControlDSN)
	if err != nil {
		return nil, fmt.Errorf("connect to control database: %w", err)
	}
	return conn, nil
}

// nodeDSN returns how the mover connects to node.
func (m *Mover) nodeDSN(mp shardmap.Map, node string) (string, error) {
	if dsn, ok := m.cfg.AdminDSN[node]; ok {
		return dsn, nil
	}
	n, ok := mp.Nodes[node]
	if !ok {
		return "", fmt.Errorf("node %q is not in the registry", node)
	}
	return n.DSN, nil
}

// moveAppName is the application_name of every session a process opens to work on move id:
// the next process that takes the move over finds the sessions a killed one left by it.
func moveAppName(id int64) string { return fmt.Sprintf("instactl-shardmove-%d", id) }

// connectNode connects to node for planning and setup, outside any move.
func (m *Mover) connectNode(ctx context.Context, mp shardmap.Map, node string) (*pgx.Conn, error) {
	return m.connectNodeAs(ctx, mp, node, "instactl-shardmove")
}

// connect connects to node for work on the runner's move.
func (r *runner) connect(ctx context.Context, node string) (*pgx.Conn, error) {
	return r.m.connectNodeAs(ctx, r.mp, node, moveAppName(r.st.ID))
}

func (m *Mover) connectNodeAs(ctx context.Context, mp shardmap.Map, node, app string) (*pgx.Conn, error) {
	dsn, err := m.nodeDSN(mp, node)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("node %s: parse dsn: %w", node, err)
	}
	// Row hashes compare the text form of rows: both sides must render timestamps alike.
	cfg.RuntimeParams["TimeZone"] = "UTC"
	cfg.RuntimeParams["DateStyle"] = "ISO, MDY"
	cfg.RuntimeParams["application_name"] = app
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to node %s: %w", node, err)
	}
	return conn, nil
}

func closeAll(conns ...*pgx.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close(context.Background())
		}
	}
}

// AdminDSNs returns, per node, the direct admin DSN the mover uses (Config.AdminDSN).
func (m *Mover) AdminDSNs() map[string]string { return maps.Clone(m.cfg.AdminDSN) }
