package shardmove

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// keyRange is a verification chunk: rows of Table with Lo <= Col < Hi (nil bounds are open).
// A table without a usable integer key is one chunk (Col empty).
type keyRange struct {
	Table string `json:"table"`
	Col   string `json:"col,omitempty"`
	Lo    *int64 `json:"lo,omitempty"`
	Hi    *int64 `json:"hi,omitempty"`
}

// String names the chunk in errors and progress.
func (k keyRange) String() string {
	b := func(p *int64, inf string) string {
		if p == nil {
			return inf
		}
		return fmt.Sprint(*p)
	}
	if k.Col == "" {
		return k.Table
	}
	return fmt.Sprintf("%s[%s %s..%s)", k.Table, k.Col, b(k.Lo, "-inf"), b(k.Hi, "+inf"))
}

// hashSQL is an order-independent digest of the rows of a chunk: the count and the sum of a
// 64-bit hash of each row's text form (hashtextextended: several times cheaper than md5 and
// its hex decoding, and as good for telling copies apart).
func (k keyRange) hashSQL(schema string) (string, []any) {
	sql := fmt.Sprintf(`SELECT count(*)::text || ':' || coalesce(sum(hashtextextended(t::text, 0)), 0)::text
		FROM %s.%s AS t WHERE true`, schema, pgx.Identifier{k.Table}.Sanitize())
	var args []any
	if k.Lo != nil {
		args = append(args, *k.Lo)
		sql += fmt.Sprintf(" AND %s >= $%d", pgx.Identifier{k.Col}.Sanitize(), len(args))
	}
	if k.Hi != nil {
		args = append(args, *k.Hi)
		sql += fmt.Sprintf(" AND %s < $%d", pgx.Identifier{k.Col}.Sanitize(), len(args))
	}
	return sql, args
}

// rangeScans makes the sessions of src and dst read chunks by key range: with stale statistics
// (a fresh copy, a bulk load) the planner would rather scan the whole table once per chunk.
// jit is off too: the penalty enable_seqscan=off puts on plans that must scan (a table without
// a key) would push them past jit_above_cost, and compiling costs ~0.4 s. The returned
// function restores the defaults.
func rangeScans(ctx context.Context, src, dst *pgx.Conn) (func(), error) {
	for _, c := range []*pgx.Conn{src, dst} {
		if _, err := c.Exec(ctx, "SET enable_seqscan = off; SET jit = off"); err != nil {
			return nil, fmt.Errorf("prepare verification session: %w", err)
		}
	}
	return func() {
		for _, c := range []*pgx.Conn{src, dst} {
			_, _ = c.Exec(context.WithoutCancel(ctx), "RESET enable_seqscan; RESET jit")
		}
	}, nil
}

// compareRange digests a chunk on both nodes at the same time.
func compareRange(ctx context.Context, src, dst *pgx.Conn, schema string, k keyRange) (same bool, a, b string, err error) {
	sql, args := k.hashSQL(schema)
	var errB error
	var wg sync.WaitGroup
	wg.Go(func() { errB = dst.QueryRow(ctx, sql, args...).Scan(&b) })
	err = src.QueryRow(ctx, sql, args...).Scan(&a)
	wg.Wait()
	if err != nil {
		return false, a, b, fmt.Errorf("source: %w", err)
	}
	if errB != nil {
		return false, a, b, fmt.Errorf("target: %w", errB)
	}
	return a == b, a, b, nil
}

// chunks splits every table of schema (but the marker table) into ranges of about chunkRows
// rows of its first primary-key column, read from the source.
func chunks(ctx context.Context, src *pgx.Conn, schema string, chunkRows int) ([]keyRange, error) {
	rows, err := src.Query(ctx, `SELECT c.relname, coalesce(a.attname, '')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
		LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
		WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> $2 ORDER BY c.relname`, schema, markerTable)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	type tk struct{ table, col string }
	tks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (tk, error) {
		var t tk
		return t, r.Scan(&t.table, &t.col)
	})
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	var out []keyRange
	for _, t := range tks {
		if t.col == "" {
			out = append(out, keyRange{Table: t.table})
			continue
		}
		col := pgx.Identifier{t.col}.Sanitize()
		rows, err := src.Query(ctx, fmt.Sprintf(`SELECT k FROM (SELECT %s::bigint AS k, row_number() OVER (ORDER BY %s) AS rn FROM %s.%s) s
			WHERE rn %% $1 = 0`, col, col, schema, pgx.Identifier{t.table}.Sanitize()), chunkRows)
		if err != nil {
			return nil, fmt.Errorf("chunk %s: %w", t.table, err)
		}
		bounds, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return nil, fmt.Errorf("chunk %s: %w", t.table, err)
		}
		bounds = slices.Compact(bounds)
		var lo *int64
		for i := range bounds {
			hi := bounds[i]
			out = append(out, keyRange{Table: t.table, Col: t.col, Lo: lo, Hi: &hi})
			lo = &bounds[i]
		}
		out = append(out, keyRange{Table: t.table, Col: t.col, Lo: lo})
	}
	return out, nil
}

// VerifyReport is the journal record of step "verify".
type VerifyReport struct {
	Chunks int `json:"chunks"`
	// Rounds is how many comparison rounds ran; Rediffs counts chunk comparisons repeated
	// because the chunk was being written.
	Rounds  int     `json:"rounds"`
	Rediffs int     `json:"rediffs"`
	Hot     int     `json:"hot"`
	Seconds float64 `json:"seconds"`
}

// verify compares every chunk, then compares again the ones that differ (they are being
// written, or the target lags) until they match or VerifyAttempts rounds have run. Up to
// MaxHotRanges chunks may still differ: they are recorded and compared again inside the
// cutover, when neither side changes. VerifyWorkers pairs of sessions compare at once.
func (r *runner) verify(ctx context.Context) (any, error) {
	start := time.Now()
	all, err := chunks(ctx, r.src, r.schema, r.opt.ChunkRows)
	if err != nil {
		return nil, err
	}
	pairs, err := r.verifySessions(ctx)
	defer func() {
		for _, p := range pairs {
			closeAll(p[0], p[1])
		}
	}()
	if err != nil {
		return nil, err
	}
	rep := VerifyReport{Chunks: len(all)}
	pending := all
	for round := 0; len(pending) > 0 && round < r.opt.VerifyAttempts; round++ {
		if round > 0 {
			rep.Rediffs += len(pending)
			if err := sleepCtx(ctx, min(time.Duration(round)*100*time.Millisecond, time.Second)); err != nil {
				return nil, err
			}
		}
		rep.Rounds++
		if pending, err = compareAll(ctx, pairs, r.schema, pending); err != nil {
			return nil, err
		}
		r.progress(StepVerify, "round %d: %d of %d chunks differ", round+1, len(pending), len(all))
	}
	rep.Hot, rep.Seconds = len(pending), time.Since(start).Seconds()
	if len(pending) > r.opt.MaxHotRanges {
		return rep, fmt.Errorf("%d chunks still differ after %d rounds (first: %s); the target is not converging: check pg_stat_subscription_stats and the log of %s",
			len(pending), rep.Rounds, pending[0], r.st.To)
	}
	raw, err := json.Marshal(pending)
	if err != nil {
		return rep, err
	}
	if _, err := r.ctl.Exec(ctx, "UPDATE shard_moves SET hot_ranges = $2 WHERE id = $1", r.st.ID, raw); err != nil {
		return rep, fmt.Errorf("record hot chunks: %w", err)
	}
	return rep, nil
}

// verifySessions opens VerifyWorkers (source, target) session pairs set up for range scans.
func (r *runner) verifySessions(ctx context.Context) ([][2]*pgx.Conn, error) {
	var pairs [][2]*pgx.Conn
	for range r.opt.VerifyWorkers {
		src, err := r.connect(ctx, r.st.From)
		if err != nil {
			return pairs, err
		}
		dst, err := r.connect(ctx, r.st.To)
		if err != nil {
			closeAll(src)
			return pairs, err
		}
		pairs = append(pairs, [2]*pgx.Conn{src, dst})
		if _, err := rangeScans(ctx, src, dst); err != nil {
			return pairs, err
		}
	}
	return pairs, nil
}

// compareAll compares chunks with one goroutine per session pair and returns those that
// differ, in their original order.
func compareAll(ctx context.Context, pairs [][2]*pgx.Conn, schema string, chunks []keyRange) ([]keyRange, error) {
	differ := make([]bool, len(chunks))
	errs := make([]error, len(pairs))
	var next atomic.Int64
	var wg sync.WaitGroup
	for w, p := range pairs {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(chunks) || ctx.Err() != nil {
					return
				}
				same, _, _, err := compareRange(ctx, p[0], p[1], schema, chunks[i])
				if err != nil {
					errs[w] = fmt.Errorf("compare %s: %w", chunks[i], err)
					next.Store(int64(len(chunks)))
					return
				}
				differ[i] = !same
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []keyRange
	for i, d := range differ {
		if d {
			out = append(out, chunks[i])
		}
	}
	return out, nil
}
