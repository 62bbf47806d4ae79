package shardmove

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/instactl/instactl/shardmap"
)

// KindRecover is the shard_moves.kind of a per-shard point-in-time recovery: one shard's
// schema copied back from a restored copy of its node into the live node, swapped in under a
// short fence while every other shard of the node keeps taking writes.
const KindRecover = "recover"

// Steps of a per-shard recovery, in execution order (shard_moves.step).
const (
	StepRecoverPrepare = "recover_prepare" // the live node owns the shard; the restored copy holds its schema
	StepRecoverSchema  = "recover_schema"  // the temporary schema on the live node, fenced
	StepRecoverCopy    = "recover_copy"    // binary COPY of every table from the restored copy
	StepRecoverVerify  = "recover_verify"  // row count and row-hash sum per table, both sides
	StepRecoverSwap    = "recover_swap"    // one fenced transaction: old schema aside, copy in, sequence past both
)

// recoverSteps is the order Recover and Resume run the steps in.
var recoverSteps = []string{StepRecoverPrepare, StepRecoverSchema, StepRecoverCopy, StepRecoverVerify, StepRecoverSwap}

// RecoverPlan is a per-shard recovery: shard Shard of the live node Node replaced by the same
// schema of a restored copy of that node (a point-in-time restore on a scratch host).
type RecoverPlan struct {
	Shard int `json:"shard"`
	// Node is the physical node that owns the shard now (the map must say so).
	Node string `json:"node"`
	// Source names the restored copy (the scratch host) for the journal and messages.
	Source string `json:"source"`
	// SourceDSN reaches the restored copy's shard database as a superuser. It is kept in the
	// journal so that resume finds the copy again.
	SourceDSN string `json:"source_dsn"`
	// Target, ReachedLSN and ReachedCommit describe the point the copy was restored to; they
	// are recorded, not used.
	Target        string    `json:"target,omitempty"`
	ReachedLSN    string    `json:"reached_lsn,omitempty"`
	ReachedCommit time.Time `json:"reached_commit,omitzero"`
}

// TempSchema is where the recovery copies the shard on the live node before the swap.
func TempSchema(shard int, id int64) string {
	return fmt.Sprintf("%s_recover_%d", shardmap.SchemaName(shard), id)
}

// AsideSchema is the name the damaged schema is kept under after the swap of recovery id.
// Nothing drops it: once the recovered shard is checked, drop it with
// DROP SCHEMA <name> CASCADE on the node.
func AsideSchema(shard int, id int64) string {
	return fmt.Sprintf("%s_before_recover_%d", shardmap.SchemaName(shard), id)
}

// RecoverTable is one table of a recovered shard.
type RecoverTable struct {
	Name string `json:"name"`
	Rows int64  `json:"rows"`
}

// SwapReport is the journal record of step recover_swap.
type SwapReport struct {
	Attempts int `json:"attempts"`
	// WindowMS is how long the shard's writes were blocked: from the lock request on the old
	// schema's tables to the commit of the swap.
	WindowMS float64 `json:"window_ms"`
	Aside    string  `json:"aside"`
	// Sequence is the recovered shard's sequence after the swap: past the old one's and the
	// restored one's.
	Sequence int64 `json:"sequence"`
	Resumed  bool  `json:"resumed,omitempty"`
}

// RecoverResult is what a finished recovery reports.
type RecoverResult struct {
	Move   MoveStatus     `json:"move"`
	Plan   RecoverPlan    `json:"plan"`
	Tables []RecoverTable `json:"tables"`
	Rows   int64          `json:"rows"`
	// CopySeconds is the time of the copy step.
	CopySeconds float64    `json:"copy_seconds"`
	Swap        SwapReport `json:"swap"`
	// Aside is the old schema, kept; DropAside the statement that drops it once checked.
	Aside     string `json:"aside"`
	DropAside string `json:"drop_aside"`
}

// recoverer carries one process's work on one recovery.
type recoverer struct {
	m        *Mover
	opt      Options
	st       MoveStatus
	plan     RecoverPlan
	j        journal
	ctl      *pgx.Conn
	src, dst *pgx.Conn
	schema   string // shard_NNNN
	tmp      string
	aside    string
}

// recoverAppName is the application_name of every session of recovery id.
func recoverAppName(id int64) string { return fmt.Sprintf("instactl-shardrecover-%d", id) }

// Recover replaces shard plan.Shard on plan.Node with the same schema of the restored copy at
// plan.SourceDSN: the copy goes into a temporary schema on the live node (fenced, so nothing
// but the copy writes there), is compared table by table with the restored copy, then swapped
// in by one transaction that locks the old schema's tables (the shard's only write-blocked
// window), renames the old schema aside (kept, never dropped) and the copy to the shard's name,
// and sets the sequence past both. Every other shard of the node takes writes throughout.
// Each step is journaled in shard_moves (kind recover); after a failure or a crash Resume
// finishes it and Abort (before the swap) drops the temporary schema.
func (m *Mover) Recover(ctx context.Context, plan RecoverPlan, opt Options) (RecoverResult, error) {
	if plan.SourceDSN == "" || plan.Node == "" || plan.Source == "" {
		return RecoverResult{}, errors.New("recover: the plan needs the live node, the restored copy's name and its DSN")
	}
	ctl, err := m.control(ctx)
	if err != nil {
		return RecoverResult{}, err
	}
	defer closeAll(ctl)
	id, err := createRecover(ctx, ctl, plan)
	if err != nil {
		return RecoverResult{}, fmt.Errorf("recover shard %d: %w", plan.Shard, err)
	}
	if err := lockMove(ctx, ctl, id); err != nil {
		return RecoverResult{}, err
	}
	defer unlockMove(ctl, id)
	st, err := loadMove(ctx, ctl, id)
	if err != nil {
		return RecoverResult{}, err
	}
	return m.driveRecover(ctx, ctl, st, opt)
}

// createRecover records a new recovery, refusing while the shard is not on plan.Node or has
// an open move or recovery.
func createRecover(ctx context.Context, ctl *pgx.Conn, p RecoverPlan) (int64, error) {
	// The owner is read before the transaction (Load runs its own) and checked again by the
	// first step.
	mp, err := shardmap.Load(ctx, ctl)
	if err != nil {
		return 0, err
	}
	tx, err := ctl.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	// Two recoveries of one shard started at once: the second waits here, then sees the first.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(7272, $1)", p.Shard); err != nil {
		return 0, fmt.Errorf("lock shard %d: %w", p.Shard, err)
	}
	if p.Shard < 0 || p.Shard >= len(mp.Shards) {
		return 0, fmt.Errorf("shard %d is not in the map (0..%d): %w", p.Shard, len(mp.Shards)-1, ErrRefused)
	}
	a := mp.Shards[p.Shard]
	if a.Node != p.Node {
		return 0, fmt.Errorf("shard %d is on %s, not %s: restore %s instead: %w", p.Shard, a.Node, p.Node, a.Node, ErrRefused)
	}
	var open int64
	err = tx.QueryRow(ctx, `SELECT id FROM shard_moves WHERE shard = $1 AND state NOT IN ('completed', 'aborted', 'rolled_back')
		ORDER BY id LIMIT 1`, p.Shard).Scan(&open)
	if err == nil {
		return 0, fmt.Errorf("shard %d has open move %d: finish it first (`instactl shard resume %d` or `instactl shard abort %d`): %w",
			p.Shard, open, open, open, ErrRefused)
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("look for open moves of shard %d: %w", p.Shard, err)
	}
	raw, err := json.Marshal(map[string]any{"shard": p.Shard, "schema": shardmap.SchemaName(p.Shard), "from": p.Source,
		"to": p.Node, "from_epoch": a.Epoch, "steps": recoverSteps, "recover": p})
	if err != nil {
		return 0, fmt.Errorf("encode plan: %w", err)
	}
	var id int64
	if err := tx.QueryRow(ctx, `INSERT INTO shard_moves (shard, from_node, to_node, from_epoch, kind, state, step, plan)
		VALUES ($1, $2, $3, $4, $5, 'running', $6, $7) RETURNING id`,
		p.Shard, p.Source, p.Node, a.Epoch, KindRecover, StepRecoverPrepare, raw).Scan(&id); err != nil {
		return 0, fmt.Errorf("record recovery: %w", err)
	}
	return id, tx.Commit(ctx)
}

func loadRecoverPlan(ctx context.Context, ctl *pgx.Conn, id int64) (RecoverPlan, error) {
	var raw []byte
	var p RecoverPlan
	if err := ctl.QueryRow(ctx, "SELECT plan->'recover' FROM shard_moves WHERE id = $1", id).Scan(&raw); err != nil {
		return p, fmt.Errorf("load recovery plan %d: %w", id, err)
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return p, fmt.Errorf("decode recovery plan %d: %w", id, err)
	}
	return p, nil
}

// moveKind returns shard_moves.kind of id.
func (m *Mover) moveKind(ctx context.Context, id int64) (string, error) {
	ctl, err := m.control(ctx)
	if err != nil {
		return "", err
	}
	defer closeAll(ctl)
	var kind string
	if err := ctl.QueryRow(ctx, "SELECT kind FROM shard_moves WHERE id = $1", id).Scan(&kind); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return "", fmt.Errorf("move %d not found (see `instactl shard status`)", id)
		}
		return "", fmt.Errorf("load move %d: %w", id, err)
	}
	return kind, nil
}

// openRecoverer connects a recoverer for the locked recovery st; withSource also connects to
// the restored copy.
func (m *Mover) openRecoverer(ctx context.Context, ctl *pgx.Conn, st MoveStatus, opt Options, withSource bool) (*recoverer, error) {
	plan, err := loadRecoverPlan(ctx, ctl, st.ID)
	if err != nil {
		return nil, err
	}
	r := &recoverer{m: m, opt: opt.withDefaults(), st: st, plan: plan, j: journal{ctl: ctl, id: st.ID}, ctl: ctl,
		schema: shardmap.SchemaName(st.Shard), tmp: TempSchema(st.Shard, st.ID), aside: AsideSchema(st.Shard, st.ID)}
	mp, err := shardmap.Load(ctx, ctl)
	if err != nil {
		return nil, err
	}
	if r.dst, err = m.connectNodeAs(ctx, mp, plan.Node, recoverAppName(st.ID)); err != nil {
		return nil, err
	}
	if err := r.evictOrphans(ctx); err != nil {
		r.close()
		return nil, err
	}
	if withSource {
		if r.src, err = connectDSN(ctx, plan.SourceDSN, recoverAppName(st.ID)); err != nil {
			r.close()
			return nil, fmt.Errorf("connect to the restored copy on %s (is it still running? restore it again with the same target, "+
				"or run `instactl shard abort %d`): %w", plan.Source, st.ID, err)
		}
	}
	return r, nil
}

func (r *recoverer) close() { closeAll(r.src, r.dst) }

// connectDSN connects like connectNodeAs, to a DSN outside the registry.
func connectDSN(ctx context.Context, dsn, app string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse dsn: %w", err)
	}
	cfg.RuntimeParams["TimeZone"] = "UTC"
	cfg.RuntimeParams["DateStyle"] = "ISO, MDY"
	cfg.RuntimeParams["application_name"] = app
	return pgx.ConnectConfig(ctx, cfg)
}

// evictOrphans ends the live node's sessions a killed process left working on this recovery
// (see runner.evictOrphans: a statement sent before the kill still runs in its backend).
func (r *recoverer) evictOrphans(ctx context.Context) error {
	deadline := time.Now().Add(orphanWait)
	for {
		var left int
		err := r.dst.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name = $1 AND pid <> $2`, recoverAppName(r.st.ID), r.dst.PgConn().PID()).Scan(&left)
		if err != nil {
			return fmt.Errorf("end the sessions a stopped process left on %s: %w", r.plan.Node, err)
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d sessions of a stopped process are still running on %s after %s", left, r.plan.Node, orphanWait)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

func (r *recoverer) progress(step, format string, args ...any) {
	if r.opt.Progress != nil {
		r.opt.Progress(Event{MoveID: r.st.ID, Step: step, Message: fmt.Sprintf(format, args...), Time: time.Now()})
	}
}

// driveRecover runs the steps of the locked recovery st from the one the journal recorded.
func (m *Mover) driveRecover(ctx context.Context, ctl *pgx.Conn, st MoveStatus, opt Options) (RecoverResult, error) {
	res := RecoverResult{Move: st}
	if st.State != StateRunning && st.State != StateFailed {
		return res, fmt.Errorf("recovery %d is %s at step %s: nothing to resume", st.ID, st.State, st.Step)
	}
	stuck := func(step string, err error) (RecoverResult, error) {
		if s, lerr := loadMove(context.WithoutCancel(ctx), ctl, st.ID); lerr == nil {
			res.Move = s
		}
		return res, &StuckError{MoveID: st.ID, Step: step, Err: err}
	}
	j := journal{ctl: ctl, id: st.ID}
	start := slices.Index(recoverSteps, st.Step)
	if start < 0 {
		return res, fmt.Errorf("recovery %d: journal step %q cannot be resumed; run `instactl shard abort %d`", st.ID, st.Step, st.ID)
	}
	r, err := m.openRecoverer(ctx, ctl, st, opt, st.Step != StepRecoverSwap)
	if err != nil {
		j.fail(ctx, 0, err)
		return stuck(st.Step, err)
	}
	defer r.close()
	res.Plan = r.plan
	fns := map[string]stepFunc{StepRecoverPrepare: r.prepare, StepRecoverSchema: r.createSchema, StepRecoverCopy: r.copy,
		StepRecoverVerify: r.verify, StepRecoverSwap: r.swap}
	for _, name := range recoverSteps[start:] {
		if err := ctx.Err(); err != nil {
			err = fmt.Errorf("stopped before %s: %w", name, err)
			j.stopped(ctx, name, err)
			return stuck(name, err)
		}
		sid, err := j.start(ctx, name)
		if err != nil {
			return stuck(name, err)
		}
		r.progress(name, "started")
		details, err := fns[name](ctx)
		if err != nil {
			err = fmt.Errorf("%s: %w", name, err)
			j.fail(ctx, sid, err)
			return stuck(name, err)
		}
		if err := j.done(ctx, sid, details); err != nil {
			return stuck(name, err)
		}
		r.progress(name, "done")
		if r.opt.Hook != nil {
			r.opt.Hook(name)
		}
	}
	if err := j.setState(ctx, StateCompleted); err != nil {
		return stuck(StepRecoverSwap, err)
	}
	return m.recoverResult(context.WithoutCancel(ctx), ctl, st.ID, res)
}

// recoverResult fills res from the journal's step records.
func (m *Mover) recoverResult(ctx context.Context, ctl *pgx.Conn, id int64, res RecoverResult) (RecoverResult, error) {
	var err error
	if res.Move, err = loadMove(ctx, ctl, id); err != nil {
		return res, err
	}
	rows, err := ctl.Query(ctx, `SELECT DISTINCT ON (step) step, details, extract(epoch FROM finished_at - started_at)
		FROM shard_move_steps WHERE move_id = $1 AND status = 'done' ORDER BY step, id DESC`, id)
	if err != nil {
		return res, fmt.Errorf("read recovery %d: %w", id, err)
	}
	defer rows.Close()
	for rows.Next() {
		var step string
		var raw []byte
		var secs float64
		if err := rows.Scan(&step, &raw, &secs); err != nil {
			return res, err
		}
		switch step {
		case StepRecoverVerify:
			if err := json.Unmarshal(raw, &res.Tables); err != nil {
				return res, fmt.Errorf("decode verify record: %w", err)
			}
		case StepRecoverSwap:
			if err := json.Unmarshal(raw, &res.Swap); err != nil {
				return res, fmt.Errorf("decode swap record: %w", err)
			}
		case StepRecoverCopy:
			res.CopySeconds = secs
		}
	}
	if err := rows.Err(); err != nil {
		return res, err
	}
	for _, t := range res.Tables {
		res.Rows += t.Rows
	}
	res.Aside = AsideSchema(res.Move.Shard, id)
	res.DropAside = "DROP SCHEMA " + res.Aside + " CASCADE"
	return res, nil
}

// namespaceExists reports whether schema exists on conn's node.
func namespaceExists(ctx context.Context, conn *pgx.Conn, schema string) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&ok)
	return ok, err
}

// swapped reports whether the swap of this recovery committed: the temporary schema is gone
// and the old one is aside (the swap renames both in one transaction).
func (r *recoverer) swapped(ctx context.Context) (bool, error) {
	tmp, err := namespaceExists(ctx, r.dst, r.tmp)
	if err != nil {
		return false, fmt.Errorf("read schemas on %s: %w", r.plan.Node, err)
	}
	aside, err := namespaceExists(ctx, r.dst, r.aside)
	if err != nil {
		return false, fmt.Errorf("read schemas on %s: %w", r.plan.Node, err)
	}
	return !tmp && aside, nil
}

// recoverTables are the tables a recovery copies: the shard's own (shardmap.Tables). A move's
// marker table is left out; any other table in the restored schema is refused, since the
// temporary schema would not have it.
func (r *recoverer) recoverTables(ctx context.Context) ([]copyTable, error) {
	all, err := copyTables(ctx, r.src, r.schema)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.plan.Source, err)
	}
	var out, unknown []copyTable
	for _, t := range all {
		switch {
		case slices.Contains(shardmap.Tables, t.name):
			out = append(out, t)
		case t.name != markerTable:
			unknown = append(unknown, t)
		}
	}
	if len(unknown) > 0 {
		var names []string
		for _, t := range unknown {
			names = append(names, t.name)
		}
		return nil, fmt.Errorf("the restored %s on %s has tables a shard does not (%s): copy them by hand",
			r.schema, r.plan.Source, strings.Join(names, ", "))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the restored copy on %s has no schema %s (was the shard on %s at the target?)", r.plan.Source, r.schema, r.plan.Node)
	}
	return out, nil
}

func (r *recoverer) prepare(ctx context.Context) (any, error) {
	mp, err := shardmap.Load(ctx, r.ctl)
	if err != nil {
		return nil, err
	}
	if a := mp.Shards[r.st.Shard]; a.Node != r.plan.Node {
		return nil, fmt.Errorf("shard %d is on %s now, not %s: %w", r.st.Shard, a.Node, r.plan.Node, shardmap.ErrConflict)
	}
	// The restored copy must be a copy that was promoted, not a standby still replaying.
	var inRecovery bool
	if err := r.src.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return nil, fmt.Errorf("restored copy on %s: %w", r.plan.Source, err)
	}
	if inRecovery {
		return nil, fmt.Errorf("the copy on %s is still in recovery: wait for the restore to promote it", r.plan.Source)
	}
	ts, err := r.recoverTables(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]int{"tables": len(ts)}, nil
}

// tempSchemaSQL is the shard's DDL under the temporary name, with every fence enabled: only the
// copy (session_replication_role = replica) writes there until the swap.
func (r *recoverer) tempSchemaSQL() string {
	ddl := strings.ReplaceAll(shardmap.ShardSchemaSQL(r.st.Shard), r.schema+".", r.tmp+".")
	ddl = strings.ReplaceAll(ddl, "CREATE SCHEMA IF NOT EXISTS "+r.schema+";", "CREATE SCHEMA "+r.tmp+";")
	return ddl + strings.ReplaceAll(shardmap.FenceSQL(r.st.Shard, true), r.schema+".", r.tmp+".")
}

func (r *recoverer) createSchema(ctx context.Context) (any, error) {
	if done, err := r.swapped(ctx); err != nil || done {
		return nil, err
	}
	// The temporary schema holds nothing but an earlier attempt's copy: start afresh.
	sql := "DROP SCHEMA IF EXISTS " + r.tmp + " CASCADE;\n" + r.tempSchemaSQL()
	if _, err := r.dst.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		return nil, fmt.Errorf("create %s on %s: %w", r.tmp, r.plan.Node, err)
	}
	return map[string]string{"schema": r.tmp}, nil
}

func (r *recoverer) copy(ctx context.Context) (any, error) {
	start := time.Now()
	tables, err := r.recoverTables(ctx)
	if err != nil {
		return nil, err
	}
	// The restored copy takes no writes; one snapshot still makes the tables agree.
	if _, err := r.src.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return nil, fmt.Errorf("snapshot on %s: %w", r.plan.Source, err)
	}
	defer r.src.Exec(context.WithoutCancel(ctx), "ROLLBACK") //nolint:errcheck // read-only
	// replica: the temporary schema's fence (statement triggers, also on TRUNCATE) lets the
	// copy by.
	if _, err := r.dst.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		return nil, fmt.Errorf("copy session on %s: %w", r.plan.Node, err)
	}
	defer r.dst.Exec(context.WithoutCancel(ctx), "RESET session_replication_role") //nolint:errcheck // the session ends soon
	rep := CopyReport{Tables: len(tables)}
	for _, t := range tables {
		n, err := copyOne(ctx, r.src, r.dst, r.schema, r.tmp, t)
		if err != nil {
			return nil, fmt.Errorf("copy %s.%s from %s: %w", r.schema, t.name, r.plan.Source, err)
		}
		rep.Rows += n
		rep.Bytes += t.bytes
		r.progress(StepRecoverCopy, "%s: %d rows", t.name, n)
	}
	var last *int64
	if err := r.src.QueryRow(ctx, `SELECT last_value FROM pg_sequences WHERE schemaname = $1 AND sequencename = 'global_id_seq'`,
		r.schema).Scan(&last); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("read the restored sequence on %s: %w", r.plan.Source, err)
	}
	if last != nil {
		if _, err := r.dst.Exec(ctx, "SELECT setval($1, $2)", r.tmp+".global_id_seq", *last); err != nil {
			return nil, fmt.Errorf("set the copy's sequence on %s: %w", r.plan.Node, err)
		}
	}
	if _, err := r.dst.Exec(ctx, "ANALYZE "+r.tableList(r.tmp)); err != nil {
		return nil, fmt.Errorf("analyze the copy on %s: %w", r.plan.Node, err)
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

func (r *recoverer) tableList(schema string) string {
	parts := make([]string, len(shardmap.Tables))
	for i, t := range shardmap.Tables {
		parts[i] = schema + "." + t
	}
	return strings.Join(parts, ", ")
}

// tableDigest is a table's row count and the sum of its rows' text hashes: equal on both sides
// when the rows are (both sessions render rows alike, see connectNodeAs).
func tableDigest(ctx context.Context, conn *pgx.Conn, schema, table string) (rows, sum int64, err error) {
	q := fmt.Sprintf("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric) %% 9223372036854775807, 0)::bigint FROM %s.%s t",
		schema, pgx.Identifier{table}.Sanitize())
	err = conn.QueryRow(ctx, q).Scan(&rows, &sum)
	return rows, sum, err
}

func (r *recoverer) verify(ctx context.Context) (any, error) {
	tables, err := r.recoverTables(ctx)
	if err != nil {
		return nil, err
	}
	var out []RecoverTable
	for _, t := range tables {
		n1, s1, err := tableDigest(ctx, r.src, r.schema, t.name)
		if err != nil {
			return nil, fmt.Errorf("digest %s.%s on %s: %w", r.schema, t.name, r.plan.Source, err)
		}
		n2, s2, err := tableDigest(ctx, r.dst, r.tmp, t.name)
		if err != nil {
			return nil, fmt.Errorf("digest %s.%s on %s: %w", r.tmp, t.name, r.plan.Node, err)
		}
		if n1 != n2 || s1 != s2 {
			return nil, fmt.Errorf("%s differs: %d rows on %s, %d in the copy on %s (row hashes %d, %d); resume copies it again",
				t.name, n1, r.plan.Source, n2, r.plan.Node, s1, s2)
		}
		out = append(out, RecoverTable{Name: t.name, Rows: n1})
	}
	return out, nil
}

// swap is the recovery's cutover: one transaction on the live node that takes the old schema's
// tables' locks (the fence: running writers finish, new ones wait), renames the old schema
// aside and the copy to the shard's name, rewrites next_id() for the name, sets the sequence
// past both, opens the copy and fences the old schema. Writers waiting on the locks look the
// table up again after the commit (PostgreSQL does when a relation changed while it waited)
// and write into the recovered schema. A lock timeout rolls it all back and is retried.
func (r *recoverer) swap(ctx context.Context) (any, error) {
	if done, err := r.swapped(ctx); err != nil {
		return nil, err
	} else if done {
		var seq int64
		if err := r.dst.QueryRow(ctx, "SELECT coalesce(last_value, 0) FROM pg_sequences WHERE schemaname = $1 AND sequencename = 'global_id_seq'",
			r.schema).Scan(&seq); err != nil {
			return nil, fmt.Errorf("read sequence on %s: %w", r.plan.Node, err)
		}
		return SwapReport{Aside: r.aside, Sequence: seq, Resumed: true}, nil
	}
	if ok, err := namespaceExists(ctx, r.dst, r.tmp); err != nil || !ok {
		if err == nil {
			err = fmt.Errorf("the copy %s is gone from %s and %s was not swapped in: run `instactl shard abort %d` and recover again",
				r.tmp, r.plan.Node, r.schema, r.st.ID)
		}
		return nil, err
	}
	bg := context.WithoutCancel(ctx) // the swap is never cut short half way
	var last error
	for attempt := 1; attempt <= r.opt.CutoverAttempts; attempt++ {
		if attempt > 1 {
			if err := sleepCtx(ctx, time.Duration(attempt)*500*time.Millisecond); err != nil {
				return nil, fmt.Errorf("%w (after: %w)", err, last)
			}
		}
		rep, err := r.swapOnce(bg)
		if err == nil {
			rep.Attempts = attempt
			// shard status shows it in the WINDOW column, as a move's cutover.
			if _, err := r.ctl.Exec(bg, "UPDATE shard_moves SET window_ms = $2, cutover_attempts = $3 WHERE id = $1",
				r.st.ID, rep.WindowMS, attempt); err != nil {
				return nil, fmt.Errorf("record the swap's window (the swap committed; resume finishes the recovery): %w", err)
			}
			r.progress(StepRecoverSwap, "swapped in; writes to the shard blocked %.1f ms; old schema kept as %s", rep.WindowMS, r.aside)
			return rep, nil
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55P03" { // lock_not_available
			return nil, err
		}
		last = err
		r.progress(StepRecoverSwap, "attempt %d: lock timeout, nothing changed", attempt)
	}
	return nil, fmt.Errorf("%d attempts: %w: %w", r.opt.CutoverAttempts, ErrWindowExceeded, last)
}

// oldTables lists the tables of the live shard schema: a damaged schema may lack some.
func (r *recoverer) oldTables(ctx context.Context) ([]string, error) {
	rows, err := r.dst.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1`, r.schema)
	if err != nil {
		return nil, fmt.Errorf("list tables of %s on %s: %w", r.schema, r.plan.Node, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (r *recoverer) swapOnce(ctx context.Context) (SwapReport, error) {
	rep := SwapReport{Aside: r.aside}
	old, err := r.oldTables(ctx)
	if err != nil {
		return rep, err
	}
	var lock, fenceAside strings.Builder
	for _, t := range old {
		q := pgx.Identifier{t}.Sanitize()
		fmt.Fprintf(&lock, "LOCK TABLE %s.%s IN ACCESS EXCLUSIVE MODE;\n", r.schema, q)
		if t != markerTable {
			fmt.Fprintf(&fenceAside, "DO $do$ BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = '%[1]s.%[2]s'::regclass AND tgname = '%[3]s') THEN "+
				"ALTER TABLE %[1]s.%[2]s ENABLE TRIGGER %[3]s; END IF; END $do$;\n", r.aside, q, shardmap.FenceTrigger)
		}
	}
	if ok, err := namespaceExists(ctx, r.dst, r.schema); err != nil {
		return rep, err
	} else if !ok {
		// The whole schema was dropped: nothing to lock or keep aside but an empty schema.
		lock.WriteString("CREATE SCHEMA " + r.schema + ";\n")
	}
	// Each lock wait is bounded (LockTimeout, at most WindowBound): a long writer makes the
	// swap give up and retry instead of queueing every writer of the shard behind it.
	sql := fmt.Sprintf("SET LOCAL lock_timeout = %d;\n%sALTER SCHEMA %s RENAME TO %s;\nALTER SCHEMA %s RENAME TO %s;\n%s%s%s",
		min(r.opt.LockTimeout, r.opt.WindowBound).Milliseconds(), lock.String(), r.schema, r.aside, r.tmp, r.schema,
		shardmap.ShardSchemaSQL(r.st.Shard), shardmap.FenceSQL(r.st.Shard, false), fenceAside.String())
	seqSQL := fmt.Sprintf(`SELECT setval('%s.global_id_seq', (SELECT coalesce(max(last_value), 0) FROM pg_sequences
		WHERE schemaname IN ($1, $2) AND sequencename = 'global_id_seq') + $3)`, r.schema)
	t0 := time.Now()
	tx, err := r.dst.Begin(ctx)
	if err != nil {
		return rep, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		return rep, fmt.Errorf("swap on %s: %w", r.plan.Node, err)
	}
	if err := tx.QueryRow(ctx, seqSQL, r.schema, r.aside, r.opt.SequenceMargin).Scan(&rep.Sequence); err != nil {
		return rep, fmt.Errorf("set sequence on %s: %w", r.plan.Node, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return rep, fmt.Errorf("commit the swap on %s: %w", r.plan.Node, err)
	}
	rep.WindowMS = ms(time.Since(t0))
	if r.opt.Hook != nil {
		r.opt.Hook(StepRecoverSwap + ".committed")
	}
	return rep, nil
}

// abortRecover undoes recovery id before its swap: the temporary schema is dropped. After the
// swap there is nothing to undo (the old schema is kept aside; swap it back by hand).
func (m *Mover) abortRecover(ctx context.Context, id int64) (MoveStatus, error) {
	ctl, err := m.control(ctx)
	if err != nil {
		return MoveStatus{}, err
	}
	defer closeAll(ctl)
	if err := lockMove(ctx, ctl, id); err != nil {
		return MoveStatus{}, err
	}
	defer unlockMove(ctl, id)
	st, err := loadMove(ctx, ctl, id)
	if err != nil {
		return st, err
	}
	switch st.State {
	case StateAborted:
		return st, nil
	case StateCompleted:
		return st, fmt.Errorf("abort recovery %d: it is done; the recovered shard takes writes and the old schema is kept as %s",
			id, AsideSchema(st.Shard, id))
	}
	r, err := m.openRecoverer(ctx, ctl, st, Options{}, false)
	if err != nil {
		return st, fmt.Errorf("abort recovery %d: %w", id, err)
	}
	defer r.close()
	if done, err := r.swapped(ctx); err != nil {
		return st, err
	} else if done {
		return st, fmt.Errorf("abort recovery %d: the swap committed (the old schema is %s): run `instactl shard resume %d` to finish it",
			id, r.aside, id)
	}
	sid, err := r.j.start(ctx, StepAbort)
	if err != nil {
		return st, err
	}
	if _, err := r.dst.Exec(ctx, "DROP SCHEMA IF EXISTS "+r.tmp+" CASCADE"); err != nil {
		err = fmt.Errorf("abort recovery %d: drop %s on %s: %w", id, r.tmp, r.plan.Node, err)
		r.j.fail(ctx, sid, err)
		return st, err
	}
	if err := r.j.done(ctx, sid, nil); err != nil {
		return st, err
	}
	if err := r.j.setState(ctx, StateAborted); err != nil {
		return st, err
	}
	return loadMove(context.WithoutCancel(ctx), ctl, id)
}
