package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/shardmove"
)

// ShardRebalanceOptions are the flags of `instactl shard rebalance`.
type ShardRebalanceOptions struct {
	Apply      bool
	Target     float64
	SizeWeight float64
	Sample     time.Duration
	MaxMoves   int
	Window     time.Duration
	Parallel   int
}

// ShardRebalanceReport is what `instactl shard rebalance` reports.
type ShardRebalanceReport struct {
	Plan   shardmove.RebalancePlan `json:"plan"`
	Target float64                 `json:"target"`
	Sample string                  `json:"sample,omitempty"`
	Shards []shardmove.ShardLoad   `json:"shards"`
	Result *ShardMoveReport        `json:"result,omitempty"`
}

// NewCmdShardRebalance builds `instactl shard rebalance`. runF replaces the run in tests.
func NewCmdShardRebalance(f *Factory, out func() Output, runF func(*ShardRebalanceOptions) error) *cobra.Command {
	o := &ShardRebalanceOptions{}
	var plan bool
	cmd := &cobra.Command{
		Use:   "rebalance --plan|--apply",
		Short: "Propose (or carry out) moves that even out node load by size and write rate",
		Long: `Read every shard's size (pg_total_relation_size of its tables) and write rate (rows
inserted, updated and deleted during --sample, or since the statistics were reset with
--sample 0) from the nodes, and propose moves that bring the most loaded node to at most
--target times the mean. A shard's load is its share of the total size weighted by
--size-weight plus its share of the write rate weighted by the rest.

--plan (the default) prints the moves and changes nothing. --apply plans every move (any
refused check refuses all, exit 2) and carries them out like "shard move".`,
		Example: `  instactl shard rebalance --plan
  instactl shard rebalance --plan --sample 1m --target 1.1
  instactl shard rebalance --apply --parallel 2`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case plan && o.Apply:
				return usageErrorf("--plan and --apply exclude each other: --plan prints the moves, --apply carries them out")
			case o.Target < 1:
				return usageErrorf("--target must be >= 1 (max/mean node load; got %g)", o.Target)
			case o.SizeWeight < 0 || o.SizeWeight > 1:
				return usageErrorf("--size-weight must be in [0,1] (got %g)", o.SizeWeight)
			case o.Sample < 0:
				return usageErrorf("--sample must be >= 0 (got %s)", o.Sample)
			case o.MaxMoves < 1:
				return usageErrorf("--max-moves must be >= 1 (got %d)", o.MaxMoves)
			}
			if err := shardCheckRunFlags(o.Window, o.Parallel); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return shardRebalanceRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().BoolVar(&plan, "plan", false, "print the proposed moves and change nothing (the default)")
	cmd.Flags().BoolVar(&o.Apply, "apply", false, "carry the proposed moves out")
	cmd.Flags().Float64Var(&o.Target, "target", 1.15, "wanted max/mean node load")
	cmd.Flags().Float64Var(&o.SizeWeight, "size-weight", 0.5, "weight of size in a shard's load (write rate gets the rest)")
	cmd.Flags().DurationVar(&o.Sample, "sample", 10*time.Second, "measure write rates over this long (0: totals since the statistics reset)")
	cmd.Flags().IntVar(&o.MaxMoves, "max-moves", 64, "most moves to propose")
	cmd.Flags().DurationVar(&o.Window, "window", 2*time.Second, "longest write-blocked window a cutover may take (--apply)")
	cmd.Flags().IntVar(&o.Parallel, "parallel", 2, "moves running at the same time (--apply)")
	return cmd
}

func shardRebalanceRun(ctx context.Context, f *Factory, out Output, o *ShardRebalanceOptions) error {
	e, err := newShardEnv(ctx, f)
	if err != nil {
		return err
	}
	defer e.close()
	loads, err := shardLoads(ctx, e, o.Sample)
	if err != nil {
		return err
	}
	mp := loads.Map
	for _, name := range shardmove.SortedNodes(mp) {
		if msg := loads.Nodes[name].Error; msg != "" {
			return fmt.Errorf("cannot read the statistics of node %s, so no plan can be trusted: %s", name, msg)
		}
	}
	rp, err := shardmove.Rebalance(shardmove.SortedNodes(mp), loads.Loads,
		shardmove.RebalanceOptions{Target: o.Target, SizeWeight: o.SizeWeight, MaxMoves: o.MaxMoves})
	if err != nil {
		return err
	}
	rep := ShardRebalanceReport{Plan: rp, Target: o.Target, Shards: loads.Loads}
	if o.Sample > 0 {
		rep.Sample = o.Sample.String()
	}
	if !o.Apply || len(rp.Moves) == 0 {
		return render(f.IO, out, rep, func(w io.Writer) error { return shardRenderRebalance(w, f, rep, o.Apply) })
	}
	if out == OutputText {
		if err := shardRenderRebalance(f.IO.Out, f, rep, true); err != nil {
			return err
		}
	}
	// The moves' own plans and results follow; in JSON the report is the moves' report.
	return shardPlanAndRun(ctx, f, out, e, rp.Moves, false, o.Parallel, o.Window)
}

func shardRenderRebalance(w io.Writer, f *Factory, rep ShardRebalanceReport, apply bool) error {
	p := rep.Plan
	fmt.Fprintf(w, "Node load max/mean: %.3f now, %.3f after %d moves (target %.2f).\n", p.Before, p.After, len(p.Moves), rep.Target)
	if len(p.Moves) == 0 {
		if p.Reached {
			_, err := fmt.Fprintln(w, "No changes.")
			return err
		}
		_, err := fmt.Fprintln(w, "No move helps (a single shard may be above the target on its own).")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tFROM\tTO\tSIZE\tLOAD")
	for _, m := range p.Moves {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.4f\n", m.Shard, m.From, m.To, humanBytes(m.Bytes), m.Load)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	nodes := make([]string, 0, len(p.Loads))
	for n := range p.Loads {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	for _, n := range nodes {
		fmt.Fprintf(w, "  %s: load %.3f after the moves\n", n, p.Loads[n])
	}
	if !p.Reached {
		fmt.Fprintln(w, "The target is not reached with these moves (no further single move helps).")
	}
	if !apply {
		_, err := fmt.Fprintf(w, "Nothing was changed. Carry it out with: %s\n", shardCmdLine(f, "shard", "rebalance", "--apply"))
		return err
	}
	return nil
}
