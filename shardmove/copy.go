package shardmove

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Copy methods of a move (MovePlan.Copy).
const (
	// CopyLogical lets the subscription make its slot and copy the tables (PostgreSQL's
	// built-in initial sync into fully indexed tables): simple, about 2.6x slower than
	// CopySnapshot on large shards.
	CopyLogical = "logical"
	// CopySnapshot creates the slot on a replication connection with an exported snapshot,
	// copies every table with parallel binary COPY under that snapshot into tables without
	// indexes, builds the indexes, then subscribes to the existing slot without a copy.
	CopySnapshot = "snapshot"
)

// DefaultSnapshotCopyBytes is the shard size from which PlanMove picks CopySnapshot.
const DefaultSnapshotCopyBytes = 64 << 20

// copyMethodFor is the method PlanMove picks for a shard of size bytes.
func (m *Mover) copyMethodFor(bytes int64) string {
	min := m.cfg.SnapshotCopyBytes
	if min == 0 {
		min = DefaultSnapshotCopyBytes
	}
	if min > 0 && bytes >= min {
		return CopySnapshot
	}
	return CopyLogical
}

// CopyReport is the journal record of step copy_data.
type CopyReport struct {
	Tables  int     `json:"tables"`
	Rows    int64   `json:"rows"`
	Bytes   int64   `json:"bytes"` // heap size of the copied tables on the source
	Seconds float64 `json:"seconds"`
	// SlotSeconds is the time spent creating the slot (it waits for running transactions).
	SlotSeconds float64 `json:"slot_seconds"`
	Snapshot    string  `json:"snapshot"`
	LSN         string  `json:"consistent_lsn"`
}

// IndexReport is the journal record of step build_indexes.
type IndexReport struct {
	Built   int     `json:"built"`
	Seconds float64 `json:"seconds"`
}

type copyTable struct {
	name  string
	cols  string // quoted, comma-separated, in attnum order
	bytes int64
}

// copyData is step copy_data of CopySnapshot. It starts afresh every time it runs: a slot
// left by a crashed run is dropped (its snapshot died with its connection), the target's
// indexes are dropped and every table is truncated and copied again.
func (r *runner) copyData(ctx context.Context) (any, error) {
	start := time.Now()
	a, err := r.owner(ctx)
	if err != nil {
		return nil, err
	}
	if a.Node == r.st.To {
		return nil, fmt.Errorf("refusing to copy into %s on %s: it owns shard %d", r.schema, r.st.To, r.st.Shard)
	}
	var subExists bool
	if err := r.dst.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)", r.name).Scan(&subExists); err != nil {
		return nil, fmt.Errorf("look for subscription: %w", err)
	}
	if subExists {
		return nil, fmt.Errorf("subscription %s already exists on %s: the copy would race it; run `instactl shard abort %d`", r.name, r.st.To, r.st.ID)
	}
	if err := dropSlot(ctx, r.src, r.name); err != nil {
		return nil, fmt.Errorf("drop the slot of an earlier attempt on %s: %w", r.st.From, err)
	}
	tables, err := copyTables(ctx, r.src, r.schema)
	if err != nil {
		return nil, err
	}
	if err := dropIndexes(ctx, r.dst, r.schema); err != nil {
		return nil, fmt.Errorf("drop indexes on %s: %w", r.st.To, err)
	}
	dsn, err := r.m.nodeDSN(r.mp, r.st.From)
	if err != nil {
		return nil, err
	}
	rep := CopyReport{Tables: len(tables)}
	ts := time.Now()
	repl, snap, err := createSlot(ctx, dsn, r.name)
	if err != nil {
		return nil, fmt.Errorf("create slot on %s: %w", r.st.From, err)
	}
	// The snapshot lives as long as the replication connection stays idle and open.
	defer repl.Close(context.WithoutCancel(ctx))
	rep.SlotSeconds, rep.Snapshot, rep.LSN = time.Since(ts).Seconds(), snap.name, snap.lsn
	r.progress(StepCopyData, "slot %s at %s, snapshot %s; copying %d tables with %d sessions", r.name, snap.lsn, snap.name,
		len(tables), r.opt.CopyWorkers)

	var rows, bytes atomic.Int64
	work := make(chan copyTable)
	errs := make(chan error, r.opt.CopyWorkers)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range r.opt.CopyWorkers {
		wg.Go(func() {
			if err := r.copyWorker(cctx, snap.name, work, func(t copyTable, n int64) {
				rows.Add(n)
				bytes.Add(t.bytes)
				r.progress(StepCopyData, "%s: %d rows; %d rows, %s in %s", t.name, n, rows.Load(),
					humanBytes(bytes.Load()), time.Since(ts).Round(100*time.Millisecond))
				r.hook(StepCopyData + ".table")
			}); err != nil {
				errs <- err
				cancel()
			}
		})
	}
feed:
	for _, t := range tables {
		select {
		case work <- t:
		case <-cctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := errors.Join(collect(errs)...); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rep.Rows, rep.Bytes, rep.Seconds = rows.Load(), bytes.Load(), time.Since(start).Seconds()
	return rep, nil
}

func collect(errs <-chan error) []error {
	var out []error
	for err := range errs {
		out = append(out, err)
	}
	return out
}

// copyWorker copies tables from work, each as one binary COPY pipe from a source transaction
// under snapshot into a target transaction that truncates the table first (FREEZE: the copy
// needs no hint-bit pass on its first read).
func (r *runner) copyWorker(ctx context.Context, snapshot string, work <-chan copyTable, done func(copyTable, int64)) error {
	src, err := r.connect(ctx, r.st.From)
	if err != nil {
		return err
	}
	defer closeAll(src)
	dst, err := r.connect(ctx, r.st.To)
	if err != nil {
		return err
	}
	defer closeAll(dst)
	if _, err := src.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT "+quoteLiteral(snapshot),
		pgx.QueryExecModeSimpleProtocol); err != nil {
		return fmt.Errorf("import snapshot on %s: %w", r.st.From, err)
	}
	// replica: the target's fence (statement triggers, also on TRUNCATE) lets this session by,
	// as it does the apply worker.
	if _, err := dst.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		return fmt.Errorf("copy session on %s: %w", r.st.To, err)
	}
	for t := range work {
		n, err := copyOne(ctx, src, dst, r.schema, r.schema, t)
		if err != nil {
			return fmt.Errorf("copy %s.%s: %w", r.schema, t.name, err)
		}
		done(t, n)
	}
	return nil
}

// copyOne copies table t of srcSchema on src into the same table of dstSchema on dst (a move
// copies into the same schema name, a per-shard recovery into a temporary one).
func copyOne(ctx context.Context, src, dst *pgx.Conn, srcSchema, dstSchema string, t copyTable) (int64, error) {
	qt := dstSchema + "." + pgx.Identifier{t.name}.Sanitize()
	qs := srcSchema + "." + pgx.Identifier{t.name}.Sanitize()
	tx, err := dst.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, "TRUNCATE "+qt); err != nil {
		return 0, fmt.Errorf("truncate: %w", err)
	}
	pr, pw := io.Pipe()
	var wg sync.WaitGroup
	var errOut error
	wg.Go(func() {
		// CopyTo writes one CopyData message (about one row) per Write; buffered, the pipe hands
		// the writer side large chunks instead of a goroutine switch per row.
		bw := bufio.NewWriterSize(pw, 256<<10)
		_, errOut = src.PgConn().CopyTo(ctx, bw, fmt.Sprintf("COPY %s (%s) TO STDOUT (FORMAT binary)", qs, t.cols))
		if errOut == nil {
			errOut = bw.Flush()
		}
		pw.CloseWithError(errOut)
	})
	tag, errIn := dst.PgConn().CopyFrom(ctx, pr, fmt.Sprintf("COPY %s (%s) FROM STDIN (FORMAT binary, FREEZE)", qt, t.cols))
	pr.CloseWithError(errIn)
	wg.Wait()
	if errOut != nil {
		return 0, fmt.Errorf("read: %w", errOut)
	}
	if errIn != nil {
		return 0, fmt.Errorf("write: %w", errIn)
	}
	return tag.RowsAffected(), tx.Commit(ctx)
}

// copyTables lists the tables of schema on the source with their columns, biggest first.
func copyTables(ctx context.Context, src *pgx.Conn, schema string) ([]copyTable, error) {
	rows, err := src.Query(ctx, `SELECT c.relname,
			string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum), pg_relation_size(c.oid)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		WHERE n.nspname = $1 AND c.relkind = 'r'
		GROUP BY c.oid, c.relname ORDER BY 3 DESC, 1`, schema)
	if err != nil {
		return nil, fmt.Errorf("list tables to copy: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (copyTable, error) {
		var t copyTable
		return t, r.Scan(&t.name, &t.cols, &t.bytes)
	})
	if err != nil {
		return nil, fmt.Errorf("list tables to copy: %w", err)
	}
	return out, nil
}

type slotSnapshot struct{ name, lsn string }

// createSlot creates logical slot name with pgoutput on a replication connection and returns
// the connection (which must stay open and idle while the snapshot is used) and the snapshot.
func createSlot(ctx context.Context, dsn, name string) (*pgconn.PgConn, slotSnapshot, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, slotSnapshot{}, err
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "instactl-shardmove"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, slotSnapshot{}, err
	}
	res, err := conn.Exec(ctx, fmt.Sprintf("CREATE_REPLICATION_SLOT %s LOGICAL pgoutput EXPORT_SNAPSHOT",
		pgx.Identifier{name}.Sanitize())).ReadAll()
	if err == nil && (len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3) {
		err = errors.New("unexpected answer to CREATE_REPLICATION_SLOT")
	}
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, slotSnapshot{}, err
	}
	row := res[0].Rows[0]
	return conn, slotSnapshot{lsn: string(row[1]), name: string(row[2])}, nil
}

// dropSlot drops replication slot name on conn's node if it exists, waiting for the walsender
// of a dead process to let go of it.
func dropSlot(ctx context.Context, conn *pgx.Conn, name string) error {
	for i := 0; ; i++ {
		var exists, active bool
		err := conn.QueryRow(ctx, `SELECT count(*) > 0, coalesce(bool_or(active), false) FROM pg_replication_slots
			WHERE slot_name = $1`, name).Scan(&exists, &active)
		if err != nil {
			return err
		}
		if !exists {
			return nil
		}
		if !active {
			_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name)
			return err
		}
		if i == 100 {
			return fmt.Errorf("slot %s is still in use", name)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// indexDef is one index of a shard table, with the constraint it backs, if any.
type indexDef struct {
	Table, Index, Def string
	Constraint        string // name of the primary key or unique constraint using it
	Kind              string // "p" or "u"
}

func readIndexes(ctx context.Context, conn *pgx.Conn, schema string) ([]indexDef, error) {
	rows, err := conn.Query(ctx, `SELECT c.relname, i.relname, pg_get_indexdef(x.indexrelid),
			coalesce(k.conname, ''), coalesce(k.contype::text, '')
		FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_constraint k ON k.conindid = x.indexrelid AND k.conrelid = c.oid AND k.contype IN ('p', 'u')
		WHERE n.nspname = $1 AND c.relkind = 'r'
		ORDER BY pg_relation_size(c.oid) DESC, i.relname`, schema)
	if err != nil {
		return nil, fmt.Errorf("list indexes: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (indexDef, error) {
		var d indexDef
		return d, r.Scan(&d.Table, &d.Index, &d.Def, &d.Constraint, &d.Kind)
	})
	if err != nil {
		return nil, fmt.Errorf("list indexes: %w", err)
	}
	return out, nil
}

// dropIndexes drops every index (and the key constraints they back) of the tables of schema
// on conn's node, so the copy writes bare heaps.
func dropIndexes(ctx context.Context, conn *pgx.Conn, schema string) error {
	defs, err := readIndexes(ctx, conn, schema)
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, d := range defs {
		if d.Constraint != "" {
			fmt.Fprintf(&b, "ALTER TABLE %s.%s DROP CONSTRAINT IF EXISTS %s;\n", schema,
				pgx.Identifier{d.Table}.Sanitize(), pgx.Identifier{d.Constraint}.Sanitize())
		} else {
			fmt.Fprintf(&b, "DROP INDEX IF EXISTS %s.%s;\n", schema, pgx.Identifier{d.Index}.Sanitize())
		}
	}
	if b.Len() == 0 {
		return nil
	}
	_, err = conn.Exec(ctx, b.String(), pgx.QueryExecModeSimpleProtocol)
	return err
}

// buildIndexes is step build_indexes of CopySnapshot: every index of the source's tables that
// the target lacks is built (CopyWorkers at a time), then attached to its key constraint.
func (r *runner) buildIndexes(ctx context.Context) (any, error) {
	start := time.Now()
	want, err := readIndexes(ctx, r.src, r.schema)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.st.From, err)
	}
	have, err := readIndexes(ctx, r.dst, r.schema)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.st.To, err)
	}
	exists := map[string]indexDef{}
	for _, d := range have {
		exists[d.Index] = d
	}
	var todo []indexDef
	for _, d := range want {
		if _, ok := exists[d.Index]; !ok {
			todo = append(todo, d)
		}
	}
	work := make(chan indexDef, len(todo))
	for _, d := range todo {
		work <- d
	}
	close(work)
	errs := make(chan error, r.opt.CopyWorkers)
	var wg sync.WaitGroup
	for range r.opt.CopyWorkers {
		wg.Go(func() {
			conn, err := r.connect(ctx, r.st.To)
			if err != nil {
				errs <- err
				return
			}
			defer closeAll(conn)
			if _, err := conn.Exec(ctx, "SET maintenance_work_mem = '256MB'"); err != nil {
				errs <- err
				return
			}
			for d := range work {
				t := time.Now()
				if _, err := conn.Exec(ctx, d.Def); err != nil {
					errs <- fmt.Errorf("build %s on %s: %w", d.Index, r.st.To, err)
					return
				}
				r.progress(StepIndexes, "%s built in %s", d.Index, time.Since(t).Round(time.Millisecond))
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(collect(errs)...); err != nil {
		return nil, err
	}
	var b strings.Builder
	for _, d := range want {
		if d.Constraint == "" || exists[d.Index].Constraint != "" {
			continue
		}
		kind := "PRIMARY KEY"
		if d.Kind == "u" {
			kind = "UNIQUE"
		}
		fmt.Fprintf(&b, "ALTER TABLE %s.%s ADD CONSTRAINT %s %s USING INDEX %s;\n", r.schema, pgx.Identifier{d.Table}.Sanitize(),
			pgx.Identifier{d.Constraint}.Sanitize(), kind, pgx.Identifier{d.Index}.Sanitize())
	}
	if b.Len() > 0 {
		if _, err := r.dst.Exec(ctx, b.String(), pgx.QueryExecModeSimpleProtocol); err != nil {
			return nil, fmt.Errorf("attach key constraints on %s: %w", r.st.To, err)
		}
	}
	return IndexReport{Built: len(todo), Seconds: time.Since(start).Seconds()}, nil
}
