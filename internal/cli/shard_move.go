package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/shardmove"
)

// ShardMoveOptions are the arguments and flags of `instactl shard move`.
type ShardMoveOptions struct {
	Shards   []int
	To       string
	DryRun   bool
	Window   time.Duration
	Parallel int
}

// NewCmdShardMove builds `instactl shard move`. runF replaces the run in tests.
func NewCmdShardMove(f *Factory, out func() Output, runF func(*ShardMoveOptions) error) *cobra.Command {
	o := &ShardMoveOptions{}
	cmd := &cobra.Command{
		Use:   "move SHARD... --to NODE",
		Short: "Move logical shards to another node online, with a bounded write-blocked window",
		Long: `Plan first: for every shard print the pre-checks and the steps. A failed check (unknown shard
or node, the shard already on NODE, a table without a key, wal_level not logical, no free
replication slots or workers, not enough disk on NODE, another move of the shard open)
refuses the whole command with exit 2 before anything changes. --dry-run stops after the plan.

Then each shard is moved online: schema copy with the fence on, publication and
subscription, initial sync, chunked checksum verification, and the cutover: fence the source,
wait for the marker on the target, set the sequence past the source's, flip the map epoch,
lift the target's fence. If the cutover would block writes longer than --window, it is
abandoned with the source unfenced (retried up to 3 times, then exit 3: nothing changed,
resume or abort). Progress goes to stderr, one line per step.

Ctrl-C stops after the current step (waiting steps stop at once) and prints the exact resume
and abort commands; so does any failure (exit 1). Several shards move --parallel at a time;
if only some succeed the exit code is 5.

On success the write-blocked window is printed; the old copy stays on the source until
"shard complete MOVE", so "shard rollback MOVE" can undo the move until then.`,
		Example: `  # Show the checks and steps; change nothing
  instactl shard move 42 --to pg-2 --dry-run

  # Move it, blocking writes at most 500ms
  instactl shard move 42 --to pg-2 --window 500ms

  # Several shards, two at a time
  instactl shard move 3 5 7 11 --to pg-2 --parallel 2`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf("shard move needs at least one SHARD (a logical shard number, see `instactl shard map`)")
			}
			o.Shards = o.Shards[:0]
			for _, a := range args {
				n, err := shardParseShard(a)
				if err != nil {
					return err
				}
				if slices.Contains(o.Shards, n) {
					return usageErrorf("shard %d is given twice", n)
				}
				o.Shards = append(o.Shards, n)
			}
			if o.To == "" {
				return usageErrorf("--to NODE is required: the node to move to (see `instactl shard map`)")
			}
			if err := shardCheckRunFlags(o.Window, o.Parallel); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return shardMoveRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().StringVar(&o.To, "to", "", "node to move the shards to (a host name such as pg-2)")
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "print the plan and change nothing")
	cmd.Flags().DurationVar(&o.Window, "window", 2*time.Second, "longest write-blocked window a cutover may take")
	cmd.Flags().IntVar(&o.Parallel, "parallel", 2, "moves running at the same time")
	return cmd
}

func shardCheckRunFlags(window time.Duration, parallel int) error {
	if window <= 0 {
		return usageErrorf("--window must be > 0 (got %s)", window)
	}
	if parallel < 1 {
		return usageErrorf("--parallel must be >= 1 (got %d)", parallel)
	}
	return nil
}

// shardParseShard reads a logical shard number ("42" or "shard_0042").
func shardParseShard(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(s, "shard_"))
	if err != nil || n < 0 || n >= shardmap.MaxShards {
		return 0, usageErrorf("SHARD must be a logical shard number in [0,%d) such as 42 or shard_0042 (got %q)", shardmap.MaxShards, s)
	}
	return n, nil
}

func shardParseMoveID(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, usageErrorf("MOVE must be a move id as `instactl shard status` lists them (got %q)", s)
	}
	return n, nil
}

// shardPlanAll plans every move; text output prints each plan as it is made. Any refusal
// refuses the whole command (exit 2) before anything changes.
func shardPlanAll(ctx context.Context, f *Factory, out Output, e *shardEnv, wants []shardmove.PlannedMove) ([]shardmove.MovePlan, error) {
	var plans []shardmove.MovePlan
	var refusals []error
	for _, w := range wants {
		p, err := e.mover.PlanMove(ctx, w.Shard, w.To)
		if err != nil && !errors.Is(err, shardmove.ErrRefused) {
			return plans, err
		}
		if err != nil {
			refusals = append(refusals, err)
		}
		plans = append(plans, p)
		if out == OutputText {
			fmt.Fprintln(f.IO.Out, p.String())
		}
	}
	if len(refusals) > 0 {
		if out == OutputJSON {
			_ = render(f.IO, out, ShardMoveReport{DryRun: true, Plans: plans}, nil)
		}
		return plans, withCode(ExitUsage, fmt.Errorf("%w\nnothing was changed", errors.Join(refusals...)))
	}
	return plans, nil
}

func shardMoveRun(ctx context.Context, f *Factory, out Output, o *ShardMoveOptions) error {
	e, err := newShardEnv(ctx, f)
	if err != nil {
		return err
	}
	defer e.close()
	wants := make([]shardmove.PlannedMove, len(o.Shards))
	for i, s := range o.Shards {
		wants[i] = shardmove.PlannedMove{Shard: s, To: o.To}
	}
	return shardPlanAndRun(ctx, f, out, e, wants, o.DryRun, o.Parallel, o.Window)
}

func shardPlanAndRun(ctx context.Context, f *Factory, out Output, e *shardEnv, wants []shardmove.PlannedMove, dryRun bool, parallel int, window time.Duration) error {
	plans, err := shardPlanAll(ctx, f, out, e, wants)
	if err != nil {
		return err
	}
	if dryRun {
		return render(f.IO, out, ShardMoveReport{DryRun: true, Plans: plans}, func(w io.Writer) error {
			_, err := fmt.Fprintln(w, "Dry run: nothing was changed. Run the same command without --dry-run to move.")
			return err
		})
	}
	g := newShardGraceful(ctx, f.IO)
	defer g.close()
	sts, errs := shardRunMoves(e, g, plans, parallel, window)
	return shardFinish(f, out, &ShardMoveReport{Plans: plans, Moves: sts}, errs)
}
