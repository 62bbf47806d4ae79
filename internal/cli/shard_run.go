package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/instactl/instactl/shardmove"
)

// ShardMoveReport is what shard move, resume, rollback and rebalance --apply report.
type ShardMoveReport struct {
	DryRun bool                   `json:"dry_run,omitempty"`
	Plans  []shardmove.MovePlan   `json:"plans,omitempty"`
	Moves  []shardmove.MoveStatus `json:"moves,omitempty"`
	Errors []string               `json:"errors,omitempty"`
}

// shardInterruptible says a step may be cut short at once on SIGINT: it only waits or reads,
// and resume repeats it. Every other step is let finish.
func shardInterruptible(step string) bool {
	switch step {
	case "", shardmove.StepWaitSync, shardmove.StepVerify, shardmove.StepSyncCommit:
		return true
	}
	return false
}

// shardGraceful turns the command's context (cancelled by SIGINT/SIGTERM) into one for moves
// that is cancelled only between steps, or at once while every running move is in a step
// that only waits (shardInterruptible). It also prints progress events to stderr.
type shardGraceful struct {
	io          *IOStreams
	parent      context.Context
	ctx         context.Context
	cancel      context.CancelFunc
	mu          sync.Mutex
	running     map[int64]string
	interrupted bool
}

func newShardGraceful(parent context.Context, io *IOStreams) *shardGraceful {
	g := &shardGraceful{io: io, parent: parent, running: map[int64]string{}}
	g.ctx, g.cancel = context.WithCancel(context.WithoutCancel(parent))
	go func() {
		select {
		case <-parent.Done():
			g.mu.Lock()
			defer g.mu.Unlock()
			g.interrupted = true
			g.io.Statusf("shard: interrupted; stopping after the current step (the journal records where)")
			g.stopIfIdle()
		case <-g.ctx.Done():
		}
	}()
	return g
}

func (g *shardGraceful) stopIfIdle() {
	for _, s := range g.running {
		if !shardInterruptible(s) {
			return
		}
	}
	g.cancel()
}

func (g *shardGraceful) progress(ev shardmove.Event) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch ev.Message {
	case "started":
		g.running[ev.MoveID] = ev.Step
	case "done":
		g.running[ev.MoveID] = ""
	}
	g.io.Statusf("move %d: %s: %s", ev.MoveID, ev.Step, ev.Message)
	if g.interrupted {
		g.stopIfIdle()
	}
}

func (g *shardGraceful) finished(id int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.running, id)
}

// stopped reports whether the operator asked to stop.
func (g *shardGraceful) stopped() bool { return g.parent.Err() != nil }

func (g *shardGraceful) close() { g.cancel() }

func (g *shardGraceful) options(window time.Duration) shardmove.Options {
	return shardmove.Options{WindowBound: window, Progress: g.progress}
}

// shardLockedError maps a move held by another process to exit 4.
func shardLockedError(err error) error {
	var locked *shardmove.LockedError
	if errors.As(err, &locked) {
		return withCode(ExitLocked, err)
	}
	return err
}

// shardMoveError maps a move's error to an exit code and adds the exact next commands.
func shardMoveError(f *Factory, err error) error {
	var stuck *shardmove.StuckError
	var locked *shardmove.LockedError
	switch {
	case errors.As(err, &locked):
		return withCode(ExitLocked, err)
	case errors.As(err, &stuck):
		code := ExitError
		if errors.Is(err, shardmove.ErrWindowExceeded) {
			code = ExitUnsafe
		}
		return withCode(code, fmt.Errorf("%w\n  to continue: %s\n  to undo:     %s", err,
			shardCmdLine(f, "shard", "resume", strconv.FormatInt(stuck.MoveID, 10)),
			shardCmdLine(f, "shard", "abort", strconv.FormatInt(stuck.MoveID, 10))))
	case errors.Is(err, shardmove.ErrRefused):
		return withCode(ExitUsage, err)
	}
	return err
}

// shardRunMoves runs plans with at most parallel moves at a time and returns each one's
// status and error, in plan order. After an interrupt no further move starts.
func shardRunMoves(e *shardEnv, g *shardGraceful, plans []shardmove.MovePlan, parallel int, window time.Duration) ([]shardmove.MoveStatus, []error) {
	sts := make([]shardmove.MoveStatus, len(plans))
	errs := make([]error, len(plans))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, p := range plans {
		sem <- struct{}{}
		if g.stopped() {
			<-sem
			errs[i] = fmt.Errorf("move of shard %d not started: interrupted; nothing changed for it", p.Shard)
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			sts[i], errs[i] = e.mover.Move(g.ctx, p, g.options(window))
			g.finished(sts[i].ID)
		})
	}
	wg.Wait()
	return sts, errs
}

// shardFinish renders a report of moves and returns the command's error: the single error
// mapped to its exit code, or for several moves exit 5 when some succeeded.
func shardFinish(f *Factory, out Output, rep *ShardMoveReport, errs []error) error {
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, shardMoveError(f, err))
			rep.Errors = append(rep.Errors, err.Error())
		}
	}
	if err := render(f.IO, out, rep, func(w io.Writer) error {
		for _, st := range rep.Moves {
			if st.ID != 0 && st.State == shardmove.StateMoved {
				shardRenderMoved(w, f, st)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	switch {
	case len(failed) == 0:
		return nil
	case len(errs) == 1:
		return failed[0]
	case len(failed) < len(errs):
		for _, err := range failed {
			f.IO.Statusf("error: %v", err)
		}
		return withCode(ExitPartial, fmt.Errorf("%d of %d moves failed (above); the others succeeded", len(failed), len(errs)))
	}
	for _, err := range failed[1:] {
		f.IO.Statusf("error: %v", err)
	}
	return failed[0]
}

func shardRenderMoved(w io.Writer, f *Factory, st shardmove.MoveStatus) {
	what := "Moved"
	if st.Kind == shardmove.KindRollback {
		what = "Rolled back"
	}
	id := strconv.FormatInt(st.ID, 10)
	fmt.Fprintf(w, "%s shard %d %s -> %s (move %d, epoch %d -> %d): writes were blocked for %s (cutover attempts: %d).\n",
		what, st.Shard, st.From, st.To, st.ID, st.FromEpoch, st.FromEpoch+1, st.Window.Round(time.Microsecond*100), st.CutoverAttempts)
	fmt.Fprintf(w, "The old copy on %s is kept. Next: %s after the grace period, or %s to move it back.\n",
		st.From, shardCmdLine(f, "shard", "complete", id), shardCmdLine(f, "shard", "rollback", id))
}
