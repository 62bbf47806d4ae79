package shardmove

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/shardmap"
)

const markerTable = "move_marker"

// replName is the publication, subscription and slot name of a move.
func replName(id int64) string { return fmt.Sprintf("instactl_move_%d", id) }

// runner carries one process's work on one move.
type runner struct {
	m             *Mover
	opt           Options
	st            MoveStatus
	j             journal
	mp            shardmap.Map
	ctl, src, dst *pgx.Conn
	schema, name  string
}

type stepFunc func(ctx context.Context) (details any, err error)

type namedStep struct {
	name string
	fn   stepFunc
}

func (r *runner) steps() []namedStep {
	s := []namedStep{}
	if r.st.Kind == KindRollback {
		s = append(s, namedStep{StepDropStale, r.dropStale})
	}
	s = append(s,
		namedStep{StepPrepare, r.prepare},
		namedStep{StepCopySchema, r.copySchema},
		namedStep{StepPublication, r.publication})
	if r.st.Plan.Copy == CopySnapshot {
		s = append(s, namedStep{StepCopyData, r.copyData}, namedStep{StepIndexes, r.buildIndexes})
	}
	return append(s,
		namedStep{StepSubscription, r.subscription},
		namedStep{StepWaitSync, r.waitSync},
		namedStep{StepVerify, r.verify},
		namedStep{StepSyncCommit, r.syncCommit},
		namedStep{StepCutover, r.cutover},
		namedStep{StepRevoke, r.revoke},
	)
}

func (r *runner) progress(step, format string, args ...any) {
	if r.opt.Progress != nil {
		r.opt.Progress(Event{MoveID: r.st.ID, Step: step, Message: fmt.Sprintf(format, args...), Time: time.Now()})
	}
}

func (r *runner) hook(point string) {
	if r.opt.Hook != nil {
		r.opt.Hook(point)
	}
}

// Move runs plan: it records a new move in the journal and carries it through every step.
// On success the shard is served by plan.To and the move is in StateMoved (run Complete after
// the grace period). On failure or context cancellation it stops between steps (the cutover
// itself is never interrupted half way) and returns a *StuckError naming the next command.
func (m *Mover) Move(ctx context.Context, plan MovePlan, opt Options) (MoveStatus, error) {
	if err := refused(plan); err != nil {
		return MoveStatus{}, err
	}
	if len(plan.Steps) == 0 || plan.Schema == "" {
		return MoveStatus{}, errors.New("move: the plan was not made by PlanMove")
	}
	switch opt.Copy {
	case "":
	case CopyLogical, CopySnapshot:
		plan.Copy = opt.Copy
		plan.Steps = stepsFor(plan)
	default:
		return MoveStatus{}, fmt.Errorf("move: unknown copy method %q (want %s or %s)", opt.Copy, CopyLogical, CopySnapshot)
	}
	ctl, err := m.control(ctx)
	if err != nil {
		return MoveStatus{}, err
	}
	defer closeAll(ctl)
	id, err := createMove(ctx, ctl, plan)
	if err != nil {
		return MoveStatus{}, fmt.Errorf("move shard %d: %w", plan.Shard, err)
	}
	if err := lockMove(ctx, ctl, id); err != nil {
		return MoveStatus{}, err
	}
	defer unlockMove(ctl, id)
	return m.drive(ctx, ctl, id, opt)
}

// Resume continues move id from the step it stopped at, after a failure, a cancellation or a
// crash. Every step is idempotent; a cutover that was cut short before the map flip is undone
// (the source unfenced) and redone, one cut short after the flip is finished.
func (m *Mover) Resume(ctx context.Context, id int64, opt Options) (MoveStatus, error) {
	ctl, err := m.control(ctx)
	if err != nil {
		return MoveStatus{}, err
	}
	defer closeAll(ctl)
	if err := lockMove(ctx, ctl, id); err != nil {
		return MoveStatus{}, err
	}
	defer unlockMove(ctl, id)
	return m.drive(ctx, ctl, id, opt)
}

// drive runs the steps of a locked move from the one recorded in the journal.
func (m *Mover) drive(ctx context.Context, ctl *pgx.Conn, id int64, opt Options) (MoveStatus, error) {
	st, err := loadMove(ctx, ctl, id)
	if err != nil {
		return st, err
	}
	if st.Kind == KindRecover {
		res, err := m.driveRecover(ctx, ctl, st, opt)
		return res.Move, err
	}
	if st.State != StateRunning && st.State != StateFailed {
		return st, fmt.Errorf("move %d is %s at step %s: nothing to resume", id, st.State, st.Step)
	}
	r := &runner{m: m, opt: opt.withDefaults(), st: st, j: journal{ctl: ctl, id: id}, ctl: ctl,
		schema: shardmap.SchemaName(st.Shard), name: replName(id)}
	steps := r.steps()
	start := slices.IndexFunc(steps, func(s namedStep) bool { return s.name == st.Step })
	if start < 0 {
		return st, fmt.Errorf("move %d: journal step %q cannot be resumed; run `instactl shard abort %d`", id, st.Step, id)
	}
	stuck := func(step string, err error) (MoveStatus, error) {
		s, lerr := loadMove(context.WithoutCancel(ctx), ctl, id)
		if lerr != nil {
			s = st
		}
		return s, &StuckError{MoveID: id, Step: step, Err: err}
	}
	if r.mp, err = shardmap.Load(ctx, ctl); err != nil {
		r.j.fail(ctx, 0, err)
		return stuck(st.Step, err)
	}
	if r.src, err = r.connect(ctx, st.From); err != nil {
		r.j.fail(ctx, 0, err)
		return stuck(st.Step, err)
	}
	defer closeAll(r.src)
	if r.dst, err = r.connect(ctx, st.To); err != nil {
		r.j.fail(ctx, 0, err)
		return stuck(st.Step, err)
	}
	defer closeAll(r.dst)
	if err := r.evictOrphans(ctx); err != nil {
		r.j.fail(ctx, 0, err)
		return stuck(st.Step, err)
	}
	for _, s := range steps[start:] {
		if err := ctx.Err(); err != nil {
			err = fmt.Errorf("stopped before %s: %w", s.name, err)
			r.j.stopped(ctx, s.name, err)
			return stuck(s.name, err)
		}
		sid, err := r.j.start(ctx, s.name)
		if err != nil {
			return stuck(s.name, err)
		}
		r.progress(s.name, "started")
		details, err := s.fn(ctx)
		if err != nil {
			err = fmt.Errorf("%s: %w", s.name, err)
			r.j.fail(ctx, sid, err)
			return stuck(s.name, err)
		}
		if err := r.j.done(ctx, sid, details); err != nil {
			return stuck(s.name, err)
		}
		r.progress(s.name, "done")
		r.hook(s.name)
	}
	if err := r.j.setState(ctx, StateMoved); err != nil {
		return stuck(StepRevoke, err)
	}
	if st.Kind == KindRollback && st.ParentID != nil {
		if err := (journal{ctl: ctl, id: *st.ParentID}).setState(ctx, StateRolledBack); err != nil {
			return stuck(StepRevoke, err)
		}
	}
	return loadMove(context.WithoutCancel(ctx), ctl, id)
}

// expectOwner fails unless the map says node holds the shard; destructive steps call it right
// before acting, so no step ever touches the authoritative copy.
func (r *runner) owner(ctx context.Context) (shardmap.Assignment, error) {
	mp, err := shardmap.Load(ctx, r.ctl)
	if err != nil {
		return shardmap.Assignment{}, err
	}
	if r.st.Shard >= len(mp.Shards) {
		return shardmap.Assignment{}, fmt.Errorf("shard %d not in the map", r.st.Shard)
	}
	return mp.Shards[r.st.Shard], nil
}

func (r *runner) prepare(ctx context.Context) (any, error) {
	if _, err := r.src.Exec(ctx, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.%s (
		token text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT clock_timestamp())`, r.schema, markerTable)); err != nil {
		return nil, fmt.Errorf("create marker table on %s: %w", r.st.From, err)
	}
	a, err := r.owner(ctx)
	if err != nil {
		return nil, err
	}
	if a.Node != r.st.From || a.Epoch != r.st.FromEpoch {
		return nil, fmt.Errorf("shard %d is on %s at epoch %d, the plan expected %s at epoch %d: %w",
			r.st.Shard, a.Node, a.Epoch, r.st.From, r.st.FromEpoch, shardmap.ErrConflict)
	}
	if a.State != shardmap.StateMoving {
		if err := shardmap.SetState(ctx, r.ctl, r.st.Shard, r.st.From, r.st.FromEpoch, shardmap.StateMoving); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

func (r *runner) copySchema(ctx context.Context) (any, error) {
	a, err := r.owner(ctx)
	if err != nil {
		return nil, err
	}
	if a.Node == r.st.To {
		return nil, fmt.Errorf("refusing to write the schema on %s: it already owns shard %d", r.st.To, r.st.Shard)
	}
	// One implicit transaction: the schema appears with its fence enabled, so nothing but the
	// apply worker (session_replication_role=replica skips the fence) writes there early.
	sql := shardmap.ShardSchemaSQL(r.st.Shard) + shardmap.FenceSQL(r.st.Shard, true) +
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.%s (token text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT clock_timestamp());`,
			r.schema, markerTable)
	if _, err := r.dst.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		return nil, fmt.Errorf("create %s on %s: %w", r.schema, r.st.To, err)
	}
	return nil, nil
}

func (r *runner) publication(ctx context.Context) (any, error) {
	var exists bool
	if err := r.src.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", r.name).Scan(&exists); err != nil {
		return nil, fmt.Errorf("look for publication: %w", err)
	}
	if !exists {
		if _, err := r.src.Exec(ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLES IN SCHEMA %s", r.name, r.schema)); err != nil {
			return nil, fmt.Errorf("create publication on %s: %w", r.st.From, err)
		}
	}
	return nil, nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func (r *runner) subscription(ctx context.Context) (any, error) {
	var exists bool
	if err := r.dst.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)", r.name).Scan(&exists); err != nil {
		return nil, fmt.Errorf("look for subscription: %w", err)
	}
	if exists {
		return nil, nil
	}
	conninfo, err := r.m.nodeDSN(r.mp, r.st.From)
	if err != nil {
		return nil, err
	}
	if r.st.Plan.Copy == CopySnapshot {
		// Stream from the slot copy_data made: its snapshot is what the target holds.
		var slot bool
		if err := r.src.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", r.name).Scan(&slot); err != nil {
			return nil, fmt.Errorf("look for slot on %s: %w", r.st.From, err)
		}
		if !slot {
			return nil, fmt.Errorf("slot %s of the copy is gone from %s; the copy cannot be caught up: run `instactl shard abort %d` and move again",
				r.name, r.st.From, r.st.ID)
		}
		sql := fmt.Sprintf(`CREATE SUBSCRIPTION %[1]s CONNECTION %[2]s PUBLICATION %[1]s
			WITH (create_slot = false, slot_name = %[1]s, copy_data = false, synchronous_commit = 'off')`, r.name, quoteLiteral(conninfo))
		if _, err := r.dst.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("create subscription on %s: %w", r.st.To, err)
		}
		return nil, nil
	}
	// CREATE SUBSCRIPTION makes the slot on the source before it commits: a crash in between
	// leaves a slot with no subscription, which would make the retry fail. Nothing uses it.
	if _, err := r.src.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		WHERE slot_name = $1 AND NOT active`, r.name); err != nil {
		return nil, fmt.Errorf("drop orphan slot on %s: %w", r.st.From, err)
	}
	sql := fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION %s WITH (copy_data = true, synchronous_commit = 'off')",
		r.name, quoteLiteral(conninfo), r.name)
	if _, err := r.dst.Exec(ctx, sql); err != nil {
		return nil, fmt.Errorf("create subscription on %s: %w", r.st.To, err)
	}
	return nil, nil
}

type syncDetails struct {
	Tables  int     `json:"tables"`
	Seconds float64 `json:"seconds"`
}

func (r *runner) waitSync(ctx context.Context) (any, error) {
	start := time.Now()
	var want int
	if err := r.src.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind = 'r'`, r.schema).Scan(&want); err != nil {
		return nil, fmt.Errorf("count source tables: %w", err)
	}
	lastReport := time.Now()
	for {
		var total, ready int
		var syncErrors int64
		err := r.dst.QueryRow(ctx, `SELECT count(sr.*), count(*) FILTER (WHERE sr.srsubstate = 'r'),
			coalesce((SELECT sync_error_count + apply_error_count FROM pg_stat_subscription_stats WHERE subname = $1), 0)
			FROM pg_subscription s LEFT JOIN pg_subscription_rel sr ON sr.srsubid = s.oid WHERE s.subname = $1`, r.name).
			Scan(&total, &ready, &syncErrors)
		if err != nil {
			return nil, fmt.Errorf("read sync state: %w", err)
		}
		if total == want && ready == total && total > 0 {
			d := syncDetails{Tables: total, Seconds: time.Since(start).Seconds()}
			// Fresh copies have no statistics: without them the planner picks sequential scans
			// for the verification chunks (and for the app's first queries after the cutover).
			if _, err := r.dst.Exec(ctx, "ANALYZE "+r.analyzeList()); err != nil {
				return nil, fmt.Errorf("analyze the copy on %s: %w", r.st.To, err)
			}
			return d, nil
		}
		if time.Since(start) > r.opt.SyncTimeout {
			return nil, fmt.Errorf("initial copy not done after %s: %d of %d tables ready, %d sync/apply errors (see the target's log)",
				r.opt.SyncTimeout, ready, want, syncErrors)
		}
		if time.Since(lastReport) > 5*time.Second {
			r.progress(StepWaitSync, "%d of %d tables ready, %d sync/apply errors", ready, want, syncErrors)
			lastReport = time.Now()
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

func (r *runner) analyzeList() string {
	parts := make([]string, len(shardmap.Tables))
	for i, t := range shardmap.Tables {
		parts[i] = r.schema + "." + t
	}
	return strings.Join(parts, ", ")
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (r *runner) syncCommit(ctx context.Context) (any, error) {
	if err := r.ensureSyncCommit(ctx); err != nil {
		return nil, err
	}
	// The switch takes effect in the running apply worker; leave it the lead time before the cutover.
	return nil, sleepCtx(ctx, r.opt.SyncCommitLead)
}

// ensureSyncCommit switches the subscription to synchronous_commit=on: the subscriber then
// reports progress at once instead of after a wal_writer_delay (DESIGN: 0.56 s -> 0.14 s).
func (r *runner) ensureSyncCommit(ctx context.Context) error {
	if _, err := r.dst.Exec(ctx, fmt.Sprintf("ALTER SUBSCRIPTION %s SET (synchronous_commit = 'on')", r.name)); err != nil {
		return fmt.Errorf("set subscription synchronous_commit: %w", err)
	}
	return nil
}

type revokeDetails struct {
	SequenceGrantees []string `json:"sequence_grantees"`
	FunctionGrantees []string `json:"function_grantees"`
}

// revoke stops the old copy from handing out ids: the sequence and next_id() lose every grant
// but the owner's. (Superusers and the owner are not stopped; the fence still stops writes.)
func (r *runner) revoke(ctx context.Context) (any, error) {
	a, err := r.owner(ctx)
	if err != nil {
		return nil, err
	}
	if a.Node != r.st.To {
		return nil, fmt.Errorf("shard %d is on %s, not %s: not revoking on the old copy", r.st.Shard, a.Node, r.st.To)
	}
	var d revokeDetails
	grantees := func(catalog, acl, owner, oid string) ([]string, error) {
		rows, err := r.src.Query(ctx, fmt.Sprintf(`SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(g.rolname) END
			FROM %s x, aclexplode(x.%s) a LEFT JOIN pg_roles g ON g.oid = a.grantee
			WHERE x.oid = %s AND a.grantee <> x.%s`, catalog, acl, oid, owner))
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[string])
	}
	seq := shardmap.SequenceName(r.st.Shard)
	if d.SequenceGrantees, err = grantees("pg_class", "relacl", "relowner", quoteLiteral(seq)+"::regclass"); err != nil {
		return nil, fmt.Errorf("read sequence grants: %w", err)
	}
	fn := r.schema + ".next_id()"
	if d.FunctionGrantees, err = grantees("pg_proc", "proacl", "proowner", quoteLiteral(fn)+"::regprocedure"); err != nil {
		return nil, fmt.Errorf("read next_id grants: %w", err)
	}
	// A NULL proacl means the default, EXECUTE for PUBLIC.
	revokeFrom := func(gs []string) string {
		if !slices.Contains(gs, "PUBLIC") {
			gs = append([]string{"PUBLIC"}, gs...)
		}
		return strings.Join(gs, ", ")
	}
	sql := fmt.Sprintf("REVOKE ALL ON SEQUENCE %s FROM %s; REVOKE ALL ON FUNCTION %s FROM %s;",
		seq, revokeFrom(d.SequenceGrantees), fn, revokeFrom(d.FunctionGrantees))
	if _, err := r.src.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		return nil, fmt.Errorf("revoke on %s: %w", r.st.From, err)
	}
	return d, nil
}
