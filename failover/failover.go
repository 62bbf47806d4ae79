package failover

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/instactl/instactl/topology"
)

// Sentinel errors, one per exit code of docs/failover.md. Returned errors wrap one of them.
var (
	// ErrBadInput: unknown group, a host that is not the primary, a group without a standby.
	// Nothing changed.
	ErrBadInput = errors.New("bad input")
	// ErrPrecondition: the group is not fit for the operation now (lag, a standby that does
	// not stream, no wal_log_hints nor checksums, a host fence that failed). Nothing changed.
	ErrPrecondition = errors.New("precondition failed")
	// ErrBusy: another operation holds the group's lock, or one stopped half way and its
	// journal waits for resume or abort.
	ErrBusy = errors.New("another operation holds the group")
	// ErrRolledBack: the operation failed before promotion and was undone: the old primary
	// serves and the pooler is resumed; the topology is unchanged.
	ErrRolledBack = errors.New("rolled back")
	// ErrHalfDone: the operation stopped half way; the journal says what resume and abort
	// will do.
	ErrHalfDone = errors.New("stopped half way")
	// ErrRebuildNeeded: pg_rewind could not make the host a standby; it must be rebuilt from
	// the newest snapshot set.
	ErrRebuildNeeded = errors.New("rebuild needed")
)

// Pooler holds and repoints the application's writes to a group: in production PgBouncer
// beside every app server, where db is the group's name in each [databases] section.
type Pooler interface {
	// Pause waits until no server connection of db is in use and holds new queries; ctx's
	// deadline bounds the wait (PgBouncer's PAUSE has no timeout of its own).
	Pause(ctx context.Context, db string) error
	// Resume lets the held queries of db run. Resuming a db that is not paused is no error.
	Resume(ctx context.Context, db string) error
	// Repoint makes db's new server connections go to the address to (and closes the old ones
	// once released).
	Repoint(ctx context.Context, db string, to netip.AddrPort) error
	// Kill drops every client and server connection of db at once and holds new ones until
	// Resume: the pooler's fence when the primary is lost.
	Kill(ctx context.Context, db string) error
}

// Fencer stops a host for good, so an old primary that still runs cannot take a write: in
// production the cloud provider stops the instance (StopInstances with Force on AWS).
type Fencer interface {
	Fence(ctx context.Context, host string) error
}

// Server is one member's PostgreSQL server, reached over SSH in production ([SSHServer]).
// Every method is idempotent: stopping a stopped server or starting a running one is no error.
type Server interface {
	// Stop shuts the server down fast (a shutdown checkpoint, every walsender flushed) and
	// returns once it is stopped.
	Stop(ctx context.Context) error
	// Start starts the server and returns once it accepts connections.
	Start(ctx context.Context) error
	// ControlData reads pg_controldata.
	ControlData(ctx context.Context) (ControlData, error)
	// Follow configures the stopped server as a standby of primary (standby.signal and
	// primary_conninfo with application_name = the server's host name); it does not start it.
	Follow(ctx context.Context, primary topology.Member) error
	// Rewind runs pg_rewind against source, so a server whose WAL forked from the source's
	// timeline can follow it.
	Rewind(ctx context.Context, source topology.Member) error
}

// Deps are what every operation needs, wired once by the caller.
type Deps struct {
	// ControlDSN reaches the control database wherever it is primary (topology.ControlDSN).
	ControlDSN string
	// Pooler holds and repoints the group's writes.
	Pooler Pooler
	// Server returns the Server of a member.
	Server func(m topology.Member) (Server, error)
	// Fencer stops a lost primary's host (Failover only).
	Fencer Fencer
	// JournalDir holds <group>.json and <group>.lock (the stack's state dir + /failover).
	JournalDir string
	// SQLUser and SQLDatabase are used to connect to members directly (default postgres,
	// postgres); the user must be a superuser (pg_promote, pg_read_file).
	SQLUser, SQLDatabase string
	// Log, when set, receives one line per step (progress for stderr).
	Log func(format string, args ...any)
	// StopAfter, used by tests, makes the operation return ErrHalfDone right after the named
	// step succeeded, as if instactl had been killed there.
	StopAfter string
	// AfterStep, used by tests, is called after each step succeeded (to break something
	// between two steps).
	AfterStep func(step string)
}

func (d Deps) logf(format string, args ...any) {
	if d.Log != nil {
		d.Log(format, args...)
	}
}

func (d Deps) sqlUser() string { return defaultString(d.SQLUser, "postgres") }
func (d Deps) sqlDB() string   { return defaultString(d.SQLDatabase, "postgres") }

func defaultString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func defaultDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Report says what an operation did.
type Report struct {
	Op         string `json:"op"`
	Group      string `json:"group"`
	OldPrimary string `json:"old_primary"`
	NewPrimary string `json:"new_primary"`
	// OldEpoch and NewEpoch are the group's epochs before and after (equal when nothing was
	// recorded).
	OldEpoch int64 `json:"old_epoch"`
	NewEpoch int64 `json:"new_epoch"`
	// ShutdownLSN is the old primary's shutdown checkpoint (switchover).
	ShutdownLSN LSN `json:"shutdown_lsn,omitempty"`
	// ReceiveLSN is what the promoted standby had received when it was promoted.
	ReceiveLSN LSN `json:"receive_lsn,omitempty"`
	// LastKnownLSN is the old primary's last WAL position known (failover); zero if unknown.
	LastKnownLSN LSN `json:"last_known_lsn,omitempty"`
	// LossWindowBytes is LastKnownLSN - ReceiveLSN (never negative) when LossWindowKnown: the
	// WAL the old primary may have acknowledged that the new primary does not have.
	LossWindowBytes int64 `json:"loss_window_bytes"`
	LossWindowKnown bool  `json:"loss_window_known"`
	// WriteBlock is the measured time from PAUSE (or KILL) to RESUME on the pooler.
	WriteBlock time.Duration `json:"write_block"`
	// Steps are the steps run, in order, with their durations.
	Steps []StepResult `json:"steps"`
	// Rewound says whether Rejoin needed pg_rewind.
	Rewound bool `json:"rewound,omitempty"`
	// Notes are things the operator should know (a forced fence, a rejoin left to do).
	Notes []string `json:"notes,omitempty"`
}

// StepResult is one step of a Report.
type StepResult struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration"`
	Err      string        `json:"error,omitempty"`
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}
