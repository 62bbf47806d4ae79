package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/shardmove"
)

// ShardMoveIDOptions are the arguments and flags of shard resume, abort, complete and rollback.
type ShardMoveIDOptions struct {
	Move int64
	// Window bounds the cutover of resume and rollback.
	Window time.Duration
	// Grace is how long after the cutover complete waits before dropping the old copy.
	Grace time.Duration
}

func shardMoveIDArgs(o *ShardMoveIDOptions) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usageErrorf("%s needs exactly one MOVE id (see `instactl shard status`), got %d arguments", cmd.CommandPath(), len(args))
		}
		id, err := shardParseMoveID(args[0])
		o.Move = id
		return err
	}
}

// NewCmdShardResume builds `instactl shard resume`. runF replaces the run in tests.
func NewCmdShardResume(f *Factory, out func() Output, runF func(*ShardMoveIDOptions) error) *cobra.Command {
	o := &ShardMoveIDOptions{}
	cmd := &cobra.Command{
		Use:   "resume MOVE",
		Short: "Continue a stopped, failed or crashed move from the step it stopped at",
		Long: `Continue move MOVE from the step the journal recorded. Every step is idempotent: a cutover
cut short before the map flip is undone and redone, one cut short after it is finished.
Ctrl-C stops after the current step again. Exit codes are those of shard move.`,
		Example: `  instactl shard resume 7
  instactl shard resume 7 --window 1s`,
		Args: shardMoveIDArgs(o),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := shardCheckRunFlags(o.Window, 1); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return shardResumeRun(cmd.Context(), f, out(), o, false)
		},
	}
	cmd.Flags().DurationVar(&o.Window, "window", 2*time.Second, "longest write-blocked window the cutover may take")
	return cmd
}

// NewCmdShardRollback builds `instactl shard rollback`. runF replaces the run in tests.
func NewCmdShardRollback(f *Factory, out func() Output, runF func(*ShardMoveIDOptions) error) *cobra.Command {
	o := &ShardMoveIDOptions{}
	cmd := &cobra.Command{
		Use:   "rollback MOVE",
		Short: "Move a moved (not yet completed) shard back, online, with the same guarantees",
		Long: `Move the shard of MOVE back to where it came from while MOVE is moved but not completed. It is
a full online move in the other direction (journaled as a rollback with MOVE as its parent):
the old, fenced copy on the original node is dropped and copied afresh, so the copy serving
writes is never touched. Complete the rollback's own move id later to drop the copy it
leaves behind. Exit 2 when MOVE cannot be rolled back (not moved, or completed).`,
		Example: `  instactl shard rollback 7`,
		Args:    shardMoveIDArgs(o),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := shardCheckRunFlags(o.Window, 1); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return shardResumeRun(cmd.Context(), f, out(), o, true)
		},
	}
	cmd.Flags().DurationVar(&o.Window, "window", 2*time.Second, "longest write-blocked window the cutover may take")
	return cmd
}

func shardResumeRun(ctx context.Context, f *Factory, out Output, o *ShardMoveIDOptions, rollback bool) error {
	e, err := newShardEnv(ctx, f)
	if err != nil {
		return err
	}
	defer e.close()
	g := newShardGraceful(ctx, f.IO)
	defer g.close()
	var st shardmove.MoveStatus
	if rollback {
		st, err = e.mover.Rollback(g.ctx, o.Move, g.options(o.Window))
	} else {
		st, err = e.mover.Resume(g.ctx, o.Move, g.options(o.Window))
	}
	g.finished(st.ID)
	rep := &ShardMoveReport{}
	if st.ID != 0 {
		rep.Moves = []shardmove.MoveStatus{st}
	}
	return shardFinish(f, out, rep, []error{err})
}

// NewCmdShardAbort builds `instactl shard abort`. runF replaces the run in tests.
func NewCmdShardAbort(f *Factory, out func() Output, runF func(*ShardMoveIDOptions) error) *cobra.Command {
	o := &ShardMoveIDOptions{}
	cmd := &cobra.Command{
		Use:   "abort MOVE",
		Short: "Undo a move that has not cut over: the source keeps the shard, nothing is left behind",
		Long: `Undo move MOVE from whatever step it stopped at: lift the source's fence, drop the
subscription, publication and replication slots, the target's copy and the marker table.
It converges from any journaled step and can be run again. A move whose target already
takes writes cannot be aborted (it says so): resume it, then roll it back.`,
		Example: `  instactl shard abort 7`,
		Args:    shardMoveIDArgs(o),
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(o)
			}
			return shardAbortRun(cmd.Context(), f, out(), o)
		},
	}
	return cmd
}

func shardAbortRun(ctx context.Context, f *Factory, out Output, o *ShardMoveIDOptions) error {
	e, err := newShardEnv(ctx, f)
	if err != nil {
		return err
	}
	defer e.close()
	// An abort is short and must not be left half done by Ctrl-C; it converges when re-run anyway.
	st, err := e.mover.Abort(context.WithoutCancel(ctx), o.Move)
	if err != nil {
		return shardLockedError(err)
	}
	return render(f.IO, out, st, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "Aborted move %d: shard %d stays on %s, unfenced; nothing of the move is left on %s.\n",
			st.ID, st.Shard, st.From, st.To)
		return err
	})
}

// NewCmdShardComplete builds `instactl shard complete`. runF replaces the run in tests.
func NewCmdShardComplete(f *Factory, out func() Output, runF func(*ShardMoveIDOptions) error) *cobra.Command {
	o := &ShardMoveIDOptions{}
	cmd := &cobra.Command{
		Use:   "complete MOVE",
		Short: "Drop a moved shard's old copy and replication objects after the grace period",
		Long: `Finish move MOVE: drop the subscription, the publication, their slots and the old copy of
the shard on the source. After this the move cannot be rolled back. Before --grace has
passed since the cutover it refuses with exit 3 and changes nothing. Running it again on a
completed move changes nothing.`,
		Example: `  instactl shard complete 7
  instactl shard complete 7 --grace 0s   # right away: no rollback after this`,
		Args: shardMoveIDArgs(o),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Grace < 0 {
				return usageErrorf("--grace must be >= 0 (got %s)", o.Grace)
			}
			if runF != nil {
				return runF(o)
			}
			return shardCompleteRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().DurationVar(&o.Grace, "grace", 10*time.Minute, "how long after the cutover the old copy must be kept")
	return cmd
}

func shardCompleteRun(ctx context.Context, f *Factory, out Output, o *ShardMoveIDOptions) error {
	e, err := newShardEnv(ctx, f)
	if err != nil {
		return err
	}
	defer e.close()
	st, err := e.mover.Complete(context.WithoutCancel(ctx), o.Move, shardmove.CompleteOptions{Grace: o.Grace})
	if errors.Is(err, shardmove.ErrRefused) {
		return withCode(ExitUnsafe, err)
	}
	if err != nil {
		return shardLockedError(err)
	}
	return render(f.IO, out, st, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "Completed move %d: shard %d is on %s; the old copy and every replication object on %s are gone.\n",
			st.ID, st.Shard, st.To, st.From)
		return err
	})
}
