package shardmove

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/shardmap"
)

// CutoverReport is the journal record of a finished cutover (the details of step "cutover").
type CutoverReport struct {
	Attempts int `json:"attempts"`
	// WindowMS is the write-blocked window: from the fence's lock request on the source to the
	// map flip (the target's fence is lifted just before it).
	WindowMS  float64 `json:"window_ms"`
	FenceMS   float64 `json:"fence_ms"`   // fence + marker transaction on the source
	MarkerMS  float64 `json:"marker_ms"`  // until the marker was visible on the target
	CheckMS   float64 `json:"check_ms"`   // hot chunks compared while both sides were frozen
	SetvalMS  float64 `json:"setval_ms"`  // target sequence + clock guard
	FlipMS    float64 `json:"flip_ms"`    // map compare-and-set + NOTIFY
	UnfenceMS float64 `json:"unfence_ms"` // lifting the target's fence
	HotChunks int     `json:"hot_chunks"`
	SourceSeq int64   `json:"source_seq"`
	TargetSeq int64   `json:"target_seq"`
	MaxID     int64   `json:"max_id"`
	// ClockLeadMS is how far the target's clock was past the newest id's timestamp.
	ClockLeadMS float64 `json:"clock_lead_ms"`
	// Resumed is set when the cutover was finished by Resume after a crash past the flip; the
	// window then includes the time the process was down.
	Resumed bool `json:"resumed,omitempty"`
}

// errRetry marks a cutover attempt that was abandoned before the flip with the source
// unfenced: nothing changed, it may be tried again.
var errRetry = errors.New("cutover attempt abandoned, source unfenced")

// flipReserve is the time kept in the window budget for the flip and the target unfence.
const flipReserve = 50 * time.Millisecond

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (r *runner) cutover(ctx context.Context) (any, error) {
	a, err := r.owner(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case a.Node == r.st.To && a.Epoch == r.st.FromEpoch+1:
		// A previous run flipped the map and died: go forward.
		rep, err := r.finishAfterFlip(ctx, time.Now())
		if err != nil {
			return nil, err
		}
		rep.Resumed = true
		return rep, r.recordWindow(ctx, rep)
	case a.Node != r.st.From || a.Epoch != r.st.FromEpoch:
		return nil, fmt.Errorf("shard %d is on %s at epoch %d, the move expected %s at epoch %d: %w",
			r.st.Shard, a.Node, a.Epoch, r.st.From, r.st.FromEpoch, shardmap.ErrConflict)
	}
	// Not flipped: a crashed attempt changed nothing. Fence the target again (an attempt lifts
	// it just before the flip) and lift the source's fence.
	if err := r.setFenceRetry(context.WithoutCancel(ctx), r.dst, true); err != nil {
		return nil, fmt.Errorf("fence %s: %w", r.st.To, err)
	}
	if err := r.unfenceSource(ctx); err != nil {
		return nil, err
	}
	if err := r.ensureSyncCommit(ctx); err != nil {
		return nil, err
	}
	hot, err := r.loadHot(ctx)
	if err != nil {
		return nil, err
	}
	if len(hot) > 0 {
		reset, err := rangeScans(ctx, r.src, r.dst)
		if err != nil {
			return nil, err
		}
		defer reset()
	}
	var last error
	for attempt := 1; attempt <= r.opt.CutoverAttempts; attempt++ {
		if attempt > 1 {
			if err := sleepCtx(ctx, time.Duration(attempt)*500*time.Millisecond); err != nil {
				return nil, fmt.Errorf("%w (after: %w)", err, last)
			}
		}
		rep, err := r.cutoverAttempt(ctx, attempt, hot)
		if err == nil {
			rep.Attempts = attempt
			return rep, r.recordWindow(ctx, rep)
		}
		if !errors.Is(err, errRetry) {
			return nil, err
		}
		last = err
		r.progress(StepCutover, "attempt %d abandoned: %v", attempt, err)
	}
	return nil, fmt.Errorf("%d attempts: %w: %w", r.opt.CutoverAttempts, ErrWindowExceeded, last)
}

func (r *runner) recordWindow(ctx context.Context, rep CutoverReport) error {
	_, err := r.ctl.Exec(context.WithoutCancel(ctx), "UPDATE shard_moves SET window_ms = $2 WHERE id = $1", r.st.ID, rep.WindowMS)
	if err != nil {
		return fmt.Errorf("record window: %w", err)
	}
	return nil
}

func (r *runner) loadHot(ctx context.Context) ([]keyRange, error) {
	var raw []byte
	if err := r.ctl.QueryRow(ctx, "SELECT hot_ranges FROM shard_moves WHERE id = $1", r.st.ID).Scan(&raw); err != nil {
		return nil, fmt.Errorf("load hot chunks: %w", err)
	}
	var hot []keyRange
	if raw != nil {
		if err := json.Unmarshal(raw, &hot); err != nil {
			return nil, fmt.Errorf("decode hot chunks: %w", err)
		}
	}
	return hot, nil
}

// cutoverAttempt runs one fenced cutover. Before the flip every failure re-fences the target
// and unfences the source (errRetry when a bound was hit); after it, the move can only go
// forward.
func (r *runner) cutoverAttempt(ctx context.Context, attempt int, hot []keyRange) (CutoverReport, error) {
	var rep CutoverReport
	// The cutover is never interrupted half way: cancellation is honoured between attempts.
	bg := context.WithoutCancel(ctx)
	if _, err := r.ctl.Exec(bg, "UPDATE shard_moves SET cutover_attempts = cutover_attempts + 1 WHERE id = $1", r.st.ID); err != nil {
		return rep, fmt.Errorf("journal cutover attempt: %w", err)
	}
	token := fmt.Sprintf("move-%d-attempt-%d-%d", r.st.ID, attempt, time.Now().UnixNano())
	seq := shardmap.SequenceName(r.st.Shard)
	t0 := time.Now()
	deadline := t0.Add(r.opt.WindowBound)
	targetOpen := false
	giveUp := func(cause error) (CutoverReport, error) {
		if targetOpen {
			if err := r.setFenceRetry(bg, r.dst, true); err != nil {
				return rep, fmt.Errorf("%w; and then fencing %s: %w", cause, r.st.To, err)
			}
		}
		if err := r.unfenceSource(bg); err != nil {
			return rep, fmt.Errorf("%w; and then: %w", cause, err)
		}
		return rep, cause
	}

	// 1. Fence and marker in one source transaction: once it commits, no write to the shard
	// can commit on the source, and the marker's commit is after every write that did.
	if err := r.fenceWithMarker(bg, token); err != nil {
		return rep, fmt.Errorf("fence %s: %w: %w", r.st.From, err, errRetry)
	}
	rep.FenceMS = ms(time.Since(t0))
	r.hook("cutover.fenced")
	if err := r.src.QueryRow(bg, "SELECT last_value FROM "+seq).Scan(&rep.SourceSeq); err != nil {
		return giveUp(fmt.Errorf("read source sequence: %w", err))
	}

	// 2. Wait for the marker on the target: then it has applied every write of the source.
	tm := time.Now()
	for {
		var arrived bool
		if err := r.dst.QueryRow(bg, fmt.Sprintf("SELECT EXISTS (SELECT 1 FROM %s.%s WHERE token = $1)", r.schema, markerTable),
			token).Scan(&arrived); err != nil {
			return giveUp(fmt.Errorf("look for the marker on %s: %w", r.st.To, err))
		}
		if arrived {
			break
		}
		if time.Now().Add(flipReserve).After(deadline) {
			return giveUp(fmt.Errorf("marker not applied on %s within the %s window bound: %w", r.st.To, r.opt.WindowBound, errRetry))
		}
		time.Sleep(time.Millisecond)
	}
	rep.MarkerMS = ms(time.Since(tm))

	// 3. Chunks that were being written during verification, compared now that both are frozen.
	tc := time.Now()
	rep.HotChunks = len(hot)
	for _, k := range hot {
		same, a, b, err := compareRange(bg, r.src, r.dst, r.schema, k)
		if err != nil {
			return giveUp(fmt.Errorf("compare %s: %w", k, err))
		}
		if !same {
			return giveUp(fmt.Errorf("chunk %s differs with both sides frozen (source %s, target %s): the copy is not exact; abort the move", k, a, b))
		}
	}
	rep.CheckMS = ms(time.Since(tc))

	// 4. Sequence past the source's, and the target's clock past the newest id.
	ts := time.Now()
	if err := r.setSequenceAndClock(bg, &rep, deadline); err != nil {
		return giveUp(err)
	}
	rep.SetvalMS = ms(time.Since(ts))
	if time.Now().Add(flipReserve).After(deadline) {
		return giveUp(fmt.Errorf("window bound %s reached before the flip: %w", r.opt.WindowBound, errRetry))
	}

	// 5. Lift the target's fence just before the flip: nothing routes there until the flip,
	// and a client that retries as soon as it sees the new epoch must find it writable.
	tu := time.Now()
	if err := r.setFenceRetry(bg, r.dst, false); err != nil {
		targetOpen = true
		return giveUp(fmt.Errorf("unfence %s: %w", r.st.To, err))
	}
	targetOpen = true
	rep.UnfenceMS = ms(time.Since(tu))

	// 6. Flip: the commit point.
	tf := time.Now()
	if err := shardmap.Flip(bg, r.ctl, r.st.Shard, r.st.From, r.st.To, r.st.FromEpoch); err != nil {
		a, lerr := r.owner(bg)
		if lerr != nil || a.Node != r.st.To || a.Epoch != r.st.FromEpoch+1 {
			if errors.Is(err, shardmap.ErrConflict) {
				// Someone else changed the map: leave the source fenced for the operator.
				return rep, fmt.Errorf("flip: %w (the source stays fenced; check `instactl shard map`)", err)
			}
			return giveUp(fmt.Errorf("flip: %w", err))
		}
		// The flip committed although the call failed (lost connection after COMMIT).
	}
	rep.FlipMS = ms(time.Since(tf))
	rep.WindowMS = ms(time.Since(t0))
	r.hook("cutover.flipped")
	return rep, nil
}

func (r *runner) fenceWithMarker(ctx context.Context, token string) error {
	tx, err := r.src.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	// synchronous_commit=on: the walsender only sends flushed WAL, so an asynchronous commit
	// would hold the marker back for up to a wal_writer_delay.
	sql := fmt.Sprintf("SET LOCAL lock_timeout = %d;\nSET LOCAL synchronous_commit = on;\n%sINSERT INTO %s.%s (token) VALUES (%s);",
		r.opt.LockTimeout.Milliseconds(), shardmap.FenceSQL(r.st.Shard, true), r.schema, markerTable, quoteLiteral(token))
	if _, err := tx.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// setSequenceAndClock sets the target sequence past the source's and waits (within the
// window) until the target's clock is past the newest id, so next_id() on the target makes
// ids that are unique and larger than every id the source made.
func (r *runner) setSequenceAndClock(ctx context.Context, rep *CutoverReport, deadline time.Time) error {
	seq := shardmap.SequenceName(r.st.Shard)
	var maxParts []string
	for _, t := range []string{"users", "photos", "comments"} {
		maxParts = append(maxParts, fmt.Sprintf("(SELECT max(id) FROM %s.%s)", r.schema, t))
	}
	var now time.Time
	err := r.dst.QueryRow(ctx, fmt.Sprintf(`SELECT setval('%[1]s', greatest($1::bigint, (SELECT last_value FROM %[1]s)), true),
		clock_timestamp(), coalesce(greatest(%[2]s), 0)`, seq, strings.Join(maxParts, ", ")),
		rep.SourceSeq+r.opt.SequenceMargin).Scan(&rep.TargetSeq, &now, &rep.MaxID)
	if err != nil {
		return fmt.Errorf("set sequence on %s: %w", r.st.To, err)
	}
	newest := shardmap.IDTime(rep.MaxID)
	// A new id must land in a later millisecond than the newest: its sequence bits (mod 1024)
	// alone do not order it.
	for now.Sub(newest) < time.Millisecond {
		wait := newest.Sub(now) + time.Millisecond
		if !deadline.IsZero() && time.Now().Add(wait+flipReserve).After(deadline) {
			return fmt.Errorf("clock of %s is %s behind the newest id of shard %d: %w", r.st.To, newest.Sub(now), r.st.Shard, errRetry)
		}
		time.Sleep(wait)
		if err := r.dst.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&now); err != nil {
			return fmt.Errorf("read clock of %s: %w", r.st.To, err)
		}
	}
	rep.ClockLeadMS = ms(now.Sub(newest))
	return nil
}

// finishAfterFlip completes a cutover whose flip committed: sequence, clock guard, unfence.
func (r *runner) finishAfterFlip(ctx context.Context, t0 time.Time) (CutoverReport, error) {
	var rep CutoverReport
	bg := context.WithoutCancel(ctx)
	if err := r.src.QueryRow(bg, "SELECT last_value FROM "+shardmap.SequenceName(r.st.Shard)).Scan(&rep.SourceSeq); err != nil {
		return rep, fmt.Errorf("read source sequence: %w", err)
	}
	if err := r.setSequenceAndClock(bg, &rep, time.Time{}); err != nil {
		return rep, err
	}
	if err := r.setFenceRetry(bg, r.dst, false); err != nil {
		return rep, fmt.Errorf("map flipped to %s but its fence is still on: %w", r.st.To, err)
	}
	rep.WindowMS = ms(time.Since(t0))
	return rep, nil
}

// fenced reports whether any fence trigger of the shard is enabled on conn's node.
func fenced(ctx context.Context, conn *pgx.Conn, schema string) (bool, error) {
	var n int
	err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
		JOIN pg_namespace s ON s.oid = c.relnamespace
		WHERE s.nspname = $1 AND t.tgname = $2 AND t.tgenabled <> 'D'`, schema, shardmap.FenceTrigger).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("read fence state: %w", err)
	}
	return n > 0, nil
}

// unfenceSource lifts the source's fence if it is on. Only for use while the map still points
// at the source.
func (r *runner) unfenceSource(ctx context.Context) error {
	on, err := fenced(ctx, r.src, r.schema)
	if err != nil {
		return err
	}
	if !on {
		return nil
	}
	if err := r.setFenceRetry(context.WithoutCancel(ctx), r.src, false); err != nil {
		return fmt.Errorf("the source %s is still fenced: %w", r.st.From, err)
	}
	return nil
}

// setFenceRetry sets the fence, retrying lock timeouts for a while: lifting a fence must win.
func (r *runner) setFenceRetry(ctx context.Context, conn *pgx.Conn, on bool) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = shardmap.SetFence(ctx, conn, r.st.Shard, on, r.opt.LockTimeout); err == nil {
			return nil
		}
		time.Sleep(time.Duration(i+1) * 10 * time.Millisecond)
	}
	return err
}
