package shardmove

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/instactl/instactl/controldb"
)

// Move states recorded in shard_moves.state.
const (
	// StateRunning: a process is working on the move (or died doing so: see Locked).
	StateRunning = "running"
	// StateFailed: the move stopped before the cutover finished; resume or abort it.
	StateFailed = "failed"
	// StateMoved: the map points at the target; the old copy and the replication objects are
	// kept until Complete (or Rollback).
	StateMoved = "moved"
	// StateCompleted: the old copy and every replication object are gone.
	StateCompleted = "completed"
	// StateAborted: the move was undone; the source is authoritative and unfenced.
	StateAborted = "aborted"
	// StateRolledBack: a later rollback move carried the shard back to this move's source.
	StateRolledBack = "rolled_back"
)

// Step names recorded in shard_moves.step and shard_move_steps.step, in execution order.
const (
	StepPrepare      = "prepare_source"        // marker table on the source, map state "moving"
	StepCopySchema   = "copy_schema"           // shard DDL on the target, its fence enabled
	StepPublication  = "create_publication"    // FOR TABLES IN SCHEMA on the source
	StepCopyData     = "copy_data"             // CopySnapshot: slot + exported snapshot, parallel binary COPY
	StepIndexes      = "build_indexes"         // CopySnapshot: the target's indexes and key constraints
	StepSubscription = "create_subscription"   // on the target; creates the slot on the source (CopyLogical)
	StepWaitSync     = "wait_sync"             // every table in state 'r'
	StepVerify       = "verify"                // chunked checksums, source vs target
	StepSyncCommit   = "sync_commit_on"        // subscription synchronous_commit=on, then a lead time
	StepCutover      = "cutover"               // fence+marker, catch-up, sequence, clock, flip, unfence
	StepRevoke       = "revoke_source_nextval" // revoke next_id/sequence use on the old copy
	StepAbort        = "abort"
	StepComplete     = "complete"
	StepDropStale    = "drop_stale_copy" // rollback only: drop the old, fenced copy on the new target
)

// Kinds of moves recorded in shard_moves.kind.
const (
	KindMove     = "move"
	KindRollback = "rollback"
)

// InstallJournal makes sure the move journal tables exist in the control database: the
// control schema is owned and migrated by controldb (idempotent).
func InstallJournal(ctx context.Context, ctl *pgx.Conn) error {
	if _, err := controldb.Migrate(ctx, ctl); err != nil {
		return fmt.Errorf("install move journal: %w", err)
	}
	return nil
}

// MoveStatus is one move as the journal records it.
type MoveStatus struct {
	ID       int64  `json:"id"`
	Shard    int    `json:"shard"`
	From     string `json:"from"`
	To       string `json:"to"`
	Kind     string `json:"kind"`
	ParentID *int64 `json:"parent_id,omitempty"`
	State    string `json:"state"`
	Step     string `json:"step"`
	Error    string `json:"error,omitempty"`
	// FromEpoch is the shard's epoch when the move was planned; the flip compares-and-sets on it.
	FromEpoch int64 `json:"from_epoch"`
	// Window is the measured write-blocked window of the successful cutover.
	Window          time.Duration `json:"window_ns,omitempty"`
	CutoverAttempts int           `json:"cutover_attempts"`
	// Locked is true when a live process holds the move (it is running now).
	Locked     bool       `json:"locked"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	MovedAt    *time.Time `json:"moved_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Plan       MovePlan   `json:"plan"`
}

// StepRecord is one execution of one step of a move.
type StepRecord struct {
	Step       string          `json:"step"`
	Status     string          `json:"status"` // started, done, failed
	StartedAt  time.Time       `json:"started_at"`
	FinishedAt *time.Time      `json:"finished_at,omitempty"`
	Error      string          `json:"error,omitempty"`
	Details    json.RawMessage `json:"details,omitempty"`
}

// Open moves are those that still hold the shard.
func (s MoveStatus) open() bool {
	return s.State != StateCompleted && s.State != StateAborted && s.State != StateRolledBack
}

const moveCols = `id, shard, from_node, to_node, kind, parent_id, state, step, coalesce(error, ''),
	from_epoch, coalesce(window_ms, 0), cutover_attempts, created_at, updated_at, moved_at, finished_at, plan,
	EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = 7271 AND l.objid = shard_moves.id AND l.granted)`

func scanMove(row pgx.Row) (MoveStatus, error) {
	var s MoveStatus
	var windowMS float64
	var plan []byte
	err := row.Scan(&s.ID, &s.Shard, &s.From, &s.To, &s.Kind, &s.ParentID, &s.State, &s.Step, &s.Error,
		&s.FromEpoch, &windowMS, &s.CutoverAttempts, &s.CreatedAt, &s.UpdatedAt, &s.MovedAt, &s.FinishedAt,
		&plan, &s.Locked)
	if err != nil {
		return s, err
	}
	s.Window = time.Duration(windowMS * float64(time.Millisecond))
	if err := json.Unmarshal(plan, &s.Plan); err != nil {
		return s, fmt.Errorf("decode plan of move %d: %w", s.ID, err)
	}
	return s, nil
}

func loadMove(ctx context.Context, ctl *pgx.Conn, id int64) (MoveStatus, error) {
	s, err := scanMove(ctl.QueryRow(ctx, "SELECT "+moveCols+" FROM shard_moves WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return s, fmt.Errorf("move %d not found (see `instactl shard status`)", id)
	}
	if err != nil {
		return s, fmt.Errorf("load move %d: %w", id, err)
	}
	return s, nil
}

func openMoveOf(ctx context.Context, ctl *pgx.Conn, shard int) (*MoveStatus, error) {
	rows, err := ctl.Query(ctx, "SELECT "+moveCols+` FROM shard_moves
		WHERE shard = $1 AND state NOT IN ('completed', 'aborted', 'rolled_back') ORDER BY id LIMIT 1`, shard)
	if err != nil {
		return nil, fmt.Errorf("find open moves of shard %d: %w", shard, err)
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, rows.Err()
	}
	s, err := scanMove(rows)
	if err != nil {
		return nil, err
	}
	return &s, nil
}

func createMove(ctx context.Context, ctl *pgx.Conn, p MovePlan) (int64, error) {
	plan, err := json.Marshal(p)
	if err != nil {
		return 0, fmt.Errorf("encode plan: %w", err)
	}
	kind, first := KindMove, StepPrepare
	var parent *int64
	if p.ParentID != 0 {
		kind, first, parent = KindRollback, StepDropStale, &p.ParentID
	}
	var id int64
	err = ctl.QueryRow(ctx, `INSERT INTO shard_moves (shard, from_node, to_node, from_epoch, kind, parent_id, state, step, plan)
		VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8) RETURNING id`,
		p.Shard, p.From, p.To, p.FromEpoch, kind, parent, first, plan).Scan(&id)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return 0, fmt.Errorf("shard %d already has an open move (see `instactl shard status`): %w", p.Shard, ErrRefused)
	}
	if err != nil {
		return 0, fmt.Errorf("record move: %w", err)
	}
	return id, nil
}

// lockMove takes the session advisory lock that keeps a second process off move id. It is
// released when the connection closes, including when the process is killed.
// A session that just ended (or a killed process's) releases the lock only when its backend
// has exited, a moment later: lockMove tries for lockWait before refusing.
func lockMove(ctx context.Context, ctl *pgx.Conn, id int64) error {
	deadline := time.Now().Add(lockWait)
	for {
		var ok bool
		if err := ctl.QueryRow(ctx, "SELECT pg_try_advisory_lock(7271, $1::int)", id).Scan(&ok); err != nil {
			return fmt.Errorf("lock move %d: %w", id, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return &LockedError{MoveID: id}
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

const lockWait = 3 * time.Second

// evictOrphans ends the sessions that an earlier process working on the move left on the source
// and the target, and waits until they are gone. A process killed with SIGKILL loses its
// connections, yet each statement it had sent runs on in its backend until that backend next
// talks to the client: a schema copy, an index build or a fence sent just before the kill can
// still commit while the next process works on the move, and collide with it (a duplicate
// schema, a fence turned back on after the cutover was redone). The caller holds the move's
// lock, so every other session named for the move belongs to a process that is gone; ending
// one rolls its open transaction back.
func (r *runner) evictOrphans(ctx context.Context) error {
	app := moveAppName(r.st.ID)
	for _, c := range []struct {
		node string
		conn *pgx.Conn
	}{{r.st.From, r.src}, {r.st.To, r.dst}} {
		ours := []int32{int32(r.src.PgConn().PID()), int32(r.dst.PgConn().PID())}
		deadline := time.Now().Add(orphanWait)
		for {
			// The select list runs only for the rows the WHERE clause kept: never our own.
			var left int
			err := c.conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE application_name = $1 AND pid <> ALL($2::int[])`, app, ours).Scan(&left)
			if err != nil {
				return fmt.Errorf("end the sessions a stopped process left on %s: %w", c.node, err)
			}
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d sessions of a stopped process (application_name %s) are still running on %s after %s; "+
					"end them with pg_terminate_backend and run the command again", left, app, c.node, orphanWait)
			}
			if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// orphanWait bounds how long a backend may take to exit once it is told to.
const orphanWait = time.Minute

// unlockMove releases the lock explicitly, so the next caller need not wait for the backend
// of this session to exit.
func unlockMove(ctl *pgx.Conn, id int64) {
	_, _ = ctl.Exec(context.Background(), "SELECT pg_advisory_unlock(7271, $1::int)", id)
}

// journal writes go through a context that ignores cancellation: a stopped move must still
// record where it stopped.
type journal struct {
	ctl *pgx.Conn
	id  int64
}

func (j journal) start(ctx context.Context, step string) (int64, error) {
	ctx = context.WithoutCancel(ctx)
	var sid int64
	if _, err := j.ctl.Exec(ctx, `UPDATE shard_moves SET step = $2, state = 'running', error = NULL, updated_at = now()
		WHERE id = $1`, j.id, step); err != nil {
		return 0, fmt.Errorf("journal step %s: %w", step, err)
	}
	if err := j.ctl.QueryRow(ctx, `INSERT INTO shard_move_steps (move_id, step, status) VALUES ($1, $2, 'started') RETURNING id`,
		j.id, step).Scan(&sid); err != nil {
		return 0, fmt.Errorf("journal step %s: %w", step, err)
	}
	return sid, nil
}

func (j journal) done(ctx context.Context, sid int64, details any) error {
	var raw []byte
	if details != nil {
		var err error
		if raw, err = json.Marshal(details); err != nil {
			return fmt.Errorf("encode step details: %w", err)
		}
	}
	_, err := j.ctl.Exec(context.WithoutCancel(ctx), `UPDATE shard_move_steps SET status = 'done', finished_at = clock_timestamp(), details = $2
		WHERE id = $1`, sid, raw)
	if err != nil {
		return fmt.Errorf("journal step done: %w", err)
	}
	return nil
}

func (j journal) fail(ctx context.Context, sid int64, cause error) {
	ctx = context.WithoutCancel(ctx)
	if sid != 0 {
		_, _ = j.ctl.Exec(ctx, `UPDATE shard_move_steps SET status = 'failed', finished_at = clock_timestamp(), error = $2
			WHERE id = $1`, sid, cause.Error())
	}
	_, _ = j.ctl.Exec(ctx, `UPDATE shard_moves SET state = 'failed', error = $2, updated_at = now() WHERE id = $1`, j.id, cause.Error())
}

// stopped records that the move stopped before step (which is where Resume starts).
func (j journal) stopped(ctx context.Context, step string, cause error) {
	_, _ = j.ctl.Exec(context.WithoutCancel(ctx), `UPDATE shard_moves SET state = 'failed', step = $2, error = $3, updated_at = now()
		WHERE id = $1`, j.id, step, cause.Error())
}

func (j journal) setState(ctx context.Context, state string) error {
	extra := ""
	switch state {
	case StateMoved:
		extra = ", moved_at = now()"
	case StateCompleted, StateAborted, StateRolledBack:
		extra = ", finished_at = now()"
	}
	_, err := j.ctl.Exec(context.WithoutCancel(ctx), `UPDATE shard_moves SET state = $2, error = NULL, updated_at = now()`+extra+
		` WHERE id = $1`, j.id, state)
	if err != nil {
		return fmt.Errorf("journal state %s: %w", state, err)
	}
	return nil
}

// Status lists every move in the journal, newest first.
func (m *Mover) Status(ctx context.Context) ([]MoveStatus, error) {
	ctl, err := m.control(ctx)
	if err != nil {
		return nil, err
	}
	defer closeAll(ctl)
	rows, err := ctl.Query(ctx, "SELECT "+moveCols+" FROM shard_moves ORDER BY id DESC")
	if err != nil {
		return nil, fmt.Errorf("list moves: %w", err)
	}
	defer rows.Close()
	var out []MoveStatus
	for rows.Next() {
		s, err := scanMove(rows)
		if err != nil {
			return nil, fmt.Errorf("list moves: %w", err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list moves: %w", err)
	}
	return out, nil
}

// Steps returns the journaled step executions of move id, oldest first.
func (m *Mover) Steps(ctx context.Context, id int64) ([]StepRecord, error) {
	ctl, err := m.control(ctx)
	if err != nil {
		return nil, err
	}
	defer closeAll(ctl)
	rows, err := ctl.Query(ctx, `SELECT step, status, started_at, finished_at, coalesce(error, ''), details
		FROM shard_move_steps WHERE move_id = $1 ORDER BY id`, id)
	if err != nil {
		return nil, fmt.Errorf("steps of move %d: %w", id, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (StepRecord, error) {
		var s StepRecord
		var d []byte
		err := r.Scan(&s.Step, &s.Status, &s.StartedAt, &s.FinishedAt, &s.Error, &d)
		s.Details = d
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("steps of move %d: %w", id, err)
	}
	return out, nil
}
