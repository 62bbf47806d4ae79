package shardmove

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/shardmap"
)

// open loads and locks move id and connects to both of its nodes.
func (m *Mover) open(ctx context.Context, id int64) (*runner, func(), error) {
	ctl, err := m.control(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := lockMove(ctx, ctl, id); err != nil {
		closeAll(ctl)
		return nil, nil, err
	}
	st, err := loadMove(ctx, ctl, id)
	if err != nil {
		unlockMove(ctl, id)
		closeAll(ctl)
		return nil, nil, err
	}
	r := &runner{m: m, opt: Options{}.withDefaults(), st: st, j: journal{ctl: ctl, id: id}, ctl: ctl,
		schema: shardmap.SchemaName(st.Shard), name: replName(id)}
	if r.mp, err = shardmap.Load(ctx, ctl); err != nil {
		unlockMove(ctl, id)
		closeAll(ctl)
		return nil, nil, err
	}
	if r.src, err = r.connect(ctx, st.From); err == nil {
		r.dst, err = r.connect(ctx, st.To)
	}
	if err == nil {
		err = r.evictOrphans(ctx)
	}
	done := func() { unlockMove(ctl, id); closeAll(r.src, r.dst, ctl) }
	if err != nil {
		done()
		return nil, nil, err
	}
	return r, done, nil
}

// Abort undoes move id, which must not be cut over yet (or cut over with the target's fence
// still on, which means the target never took a write: the map is flipped back). It lifts the
// source's fence, drops the subscription, the publication, their slots, the target's copy and
// the marker table. It is idempotent and converges from any journaled step.
func (m *Mover) Abort(ctx context.Context, id int64) (MoveStatus, error) {
	if kind, err := m.moveKind(ctx, id); err == nil && kind == KindRecover {
		return m.abortRecover(ctx, id)
	}
	r, done, err := m.open(ctx, id)
	if err != nil {
		return MoveStatus{}, fmt.Errorf("abort move %d: %w", id, err)
	}
	defer done()
	switch r.st.State {
	case StateAborted:
		return r.st, nil
	case StateRunning, StateFailed:
	default:
		return r.st, fmt.Errorf("abort move %d: it is %s; a moved shard goes back with `instactl shard rollback %d`", id, r.st.State, id)
	}
	// Refuse before journaling anything, so a refused abort leaves the move resumable.
	if err := r.abortable(ctx); err != nil {
		return r.st, fmt.Errorf("abort move %d: %w", id, err)
	}
	sid, err := r.j.start(ctx, StepAbort)
	if err != nil {
		return r.st, err
	}
	if err := r.abort(ctx); err != nil {
		err = fmt.Errorf("abort move %d: %w", id, err)
		r.j.fail(ctx, sid, err)
		return r.st, fmt.Errorf("%w; run `instactl shard abort %d` again once fixed", err, id)
	}
	if err := r.j.done(ctx, sid, nil); err != nil {
		return r.st, err
	}
	if err := r.j.setState(ctx, StateAborted); err != nil {
		return r.st, err
	}
	return loadMove(context.WithoutCancel(ctx), r.ctl, id)
}

// abortable refuses an abort once the map is flipped and the target may have taken writes
// (its fence is off): only a rollback can bring the shard back then.
func (r *runner) abortable(ctx context.Context) error {
	a, err := r.owner(ctx)
	if err != nil {
		return err
	}
	if a.Node != r.st.To {
		return nil
	}
	on, err := fenced(ctx, r.dst, r.schema)
	if err != nil {
		return err
	}
	if !on {
		return fmt.Errorf("shard %d is cut over to %s and takes writes there; finish with `instactl shard resume %d`, then `instactl shard rollback %d`",
			r.st.Shard, r.st.To, r.st.ID, r.st.ID)
	}
	return nil
}

func (r *runner) abort(ctx context.Context) error {
	if err := r.abortable(ctx); err != nil {
		return err
	}
	a, err := r.owner(ctx)
	if err != nil {
		return err
	}
	switch {
	case a.Node == r.st.To:
		// Flipped with the target still fenced: no write reached it, flip back.
		if err := shardmap.Flip(ctx, r.ctl, r.st.Shard, r.st.To, r.st.From, a.Epoch); err != nil {
			return fmt.Errorf("flip back: %w", err)
		}
		if a, err = r.owner(ctx); err != nil {
			return err
		}
	case a.Node != r.st.From:
		return fmt.Errorf("shard %d is on %s, neither source %s nor target %s of the move", r.st.Shard, a.Node, r.st.From, r.st.To)
	}
	if err := r.unfenceSource(ctx); err != nil {
		return err
	}
	if a.State != shardmap.StateActive {
		if err := shardmap.SetState(ctx, r.ctl, r.st.Shard, r.st.From, a.Epoch, shardmap.StateActive); err != nil {
			return err
		}
	}
	if err := r.dropReplication(ctx); err != nil {
		return err
	}
	// The target's copy: never the owner here (checked again right before dropping).
	if a, err = r.owner(ctx); err != nil {
		return err
	}
	if a.Node == r.st.To {
		return fmt.Errorf("refusing to drop %s on %s: the map says it owns shard %d", r.schema, r.st.To, r.st.Shard)
	}
	if _, err := r.dst.Exec(ctx, "DROP SCHEMA IF EXISTS "+r.schema+" CASCADE"); err != nil {
		return fmt.Errorf("drop %s on %s: %w", r.schema, r.st.To, err)
	}
	if _, err := r.src.Exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %s.%s", r.schema, markerTable)); err != nil {
		return fmt.Errorf("drop marker table on %s: %w", r.st.From, err)
	}
	return nil
}

// dropReplication removes the move's subscription (on the target), publication (on the
// source) and every slot they left on the source. Idempotent.
func (r *runner) dropReplication(ctx context.Context) error {
	var subOID uint32
	err := r.dst.QueryRow(ctx, "SELECT oid FROM pg_subscription WHERE subname = $1", r.name).Scan(&subOID)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("look for subscription on %s: %w", r.st.To, err)
	default:
		if _, err := r.dst.Exec(ctx, "DROP SUBSCRIPTION IF EXISTS "+r.name); err != nil {
			// The source is unreachable or the slot is gone: detach the slot, drop locally,
			// and drop the slot on the source below.
			for _, q := range []string{"ALTER SUBSCRIPTION %s DISABLE", "ALTER SUBSCRIPTION %s SET (slot_name = NONE)", "DROP SUBSCRIPTION %s"} {
				if _, err2 := r.dst.Exec(ctx, fmt.Sprintf(q, r.name)); err2 != nil {
					return fmt.Errorf("drop subscription on %s: %w (then: %w)", r.st.To, err, err2)
				}
			}
		}
	}
	if _, err := r.src.Exec(ctx, "DROP PUBLICATION IF EXISTS "+r.name); err != nil {
		return fmt.Errorf("drop publication on %s: %w", r.st.From, err)
	}
	// Slots: the subscription's (left if it was never committed or was detached) and
	// table-sync slots pg_<suboid>_sync_<relid>_<sysid>. A walsender may take a moment to exit.
	pattern := fmt.Sprintf(`pg\_%d\_sync\_%%`, subOID)
	for i := 0; ; i++ {
		var left int
		err := r.src.QueryRow(ctx, `WITH gone AS (
				SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
				WHERE NOT active AND (slot_name = $1 OR ($2 AND slot_name LIKE $3)))
			SELECT (SELECT count(*) FROM gone) * 0 + (SELECT count(*) FROM pg_replication_slots
				WHERE active AND (slot_name = $1 OR ($2 AND slot_name LIKE $3)))`,
			r.name, subOID != 0, pattern).Scan(&left)
		if err != nil {
			return fmt.Errorf("drop slots on %s: %w", r.st.From, err)
		}
		if left == 0 {
			return nil
		}
		if i == 100 {
			return fmt.Errorf("%d slots of %s still active on %s", left, r.name, r.st.From)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CompleteOptions tunes Complete.
type CompleteOptions struct {
	// Grace is how long after the cutover the old copy must be kept (rollback stays possible
	// until then). Complete refuses before it has passed.
	Grace time.Duration
}

// Complete finalises a moved shard once the grace period has passed: it drops the
// subscription, the publication, their slots and the old copy on the source.
func (m *Mover) Complete(ctx context.Context, id int64, opt CompleteOptions) (MoveStatus, error) {
	r, done, err := m.open(ctx, id)
	if err != nil {
		return MoveStatus{}, fmt.Errorf("complete move %d: %w", id, err)
	}
	defer done()
	switch {
	case r.st.State == StateCompleted:
		return r.st, nil
	case r.st.State != StateMoved:
		return r.st, fmt.Errorf("complete move %d: it is %s at step %s, not moved", id, r.st.State, r.st.Step)
	case r.st.MovedAt != nil && time.Since(*r.st.MovedAt) < opt.Grace:
		return r.st, fmt.Errorf("complete move %d: grace period of %s has %s left: %w", id, opt.Grace,
			(opt.Grace - time.Since(*r.st.MovedAt)).Round(time.Second), ErrRefused)
	}
	sid, err := r.j.start(ctx, StepComplete)
	if err != nil {
		return r.st, err
	}
	if err := r.complete(ctx); err != nil {
		err = fmt.Errorf("complete move %d: %w", id, err)
		r.j.fail(ctx, sid, err)
		// The state stays moved so that Complete can run again.
		_ = r.j.setState(ctx, StateMoved)
		return r.st, fmt.Errorf("%w; run `instactl shard complete %d` again once fixed", err, id)
	}
	if err := r.j.done(ctx, sid, nil); err != nil {
		return r.st, err
	}
	if err := r.j.setState(ctx, StateCompleted); err != nil {
		return r.st, err
	}
	return loadMove(context.WithoutCancel(ctx), r.ctl, id)
}

func (r *runner) complete(ctx context.Context) error {
	if err := r.dropReplication(ctx); err != nil {
		return err
	}
	a, err := r.owner(ctx)
	if err != nil {
		return err
	}
	if a.Node != r.st.To {
		return fmt.Errorf("refusing to drop the copy on %s: the map says shard %d is on %s", r.st.From, r.st.Shard, a.Node)
	}
	if _, err := r.src.Exec(ctx, "DROP SCHEMA IF EXISTS "+r.schema+" CASCADE"); err != nil {
		return fmt.Errorf("drop old copy on %s: %w", r.st.From, err)
	}
	if _, err := r.dst.Exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %s.%s", r.schema, markerTable)); err != nil {
		return fmt.Errorf("drop marker table on %s: %w", r.st.To, err)
	}
	if a.State != shardmap.StateActive {
		return shardmap.SetState(ctx, r.ctl, r.st.Shard, a.Node, a.Epoch, shardmap.StateActive)
	}
	return nil
}

// Rollback moves shard of move id back to its source while that move is moved but not
// completed. It runs a full move in the other direction (journaled as kind "rollback" with
// the original as parent) with the same guarantees: the fenced old copy on the original
// source is dropped first and copied afresh, so the shard's authoritative copy is never
// touched. On success the original move becomes rolled_back; Complete the rollback move to
// drop the copy it left behind.
func (m *Mover) Rollback(ctx context.Context, id int64, opt Options) (MoveStatus, error) {
	ctl, err := m.control(ctx)
	if err != nil {
		return MoveStatus{}, err
	}
	st, err := loadMove(ctx, ctl, id)
	closeAll(ctl)
	if err != nil {
		return st, err
	}
	if st.State != StateMoved || st.Kind != KindMove {
		return st, fmt.Errorf("rollback move %d: only a moved (not completed) move can be rolled back; it is a %s in state %s: %w",
			id, st.Kind, st.State, ErrRefused)
	}
	plan, err := m.plan(ctx, st.Shard, st.From, id)
	if err != nil {
		return MoveStatus{}, fmt.Errorf("rollback move %d: %w", id, err)
	}
	return m.Move(ctx, plan, opt)
}

// dropStale is the first step of a rollback: retire the parent move's replication objects
// and drop the old (fenced) copy on the rollback's target.
func (r *runner) dropStale(ctx context.Context) (any, error) {
	if r.st.ParentID == nil {
		return nil, errors.New("rollback without a parent move")
	}
	a, err := r.owner(ctx)
	if err != nil {
		return nil, err
	}
	if a.Node != r.st.From {
		return nil, fmt.Errorf("refusing to drop %s on %s: the map says shard %d is on %s", r.schema, r.st.To, r.st.Shard, a.Node)
	}
	// The parent replicated To -> From of this move; same connections, other direction.
	parent := &runner{st: MoveStatus{ID: *r.st.ParentID, From: r.st.To, To: r.st.From}, src: r.dst, dst: r.src,
		schema: r.schema, name: replName(*r.st.ParentID)}
	if err := parent.dropReplication(ctx); err != nil {
		return nil, fmt.Errorf("retire move %d: %w", *r.st.ParentID, err)
	}
	if _, err := r.dst.Exec(ctx, "DROP SCHEMA IF EXISTS "+r.schema+" CASCADE"); err != nil {
		return nil, fmt.Errorf("drop old copy on %s: %w", r.st.To, err)
	}
	return nil, nil
}
