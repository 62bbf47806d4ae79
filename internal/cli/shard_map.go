package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/shardmove"
)

// ShardMapOptions are the flags of `instactl shard map`.
type ShardMapOptions struct {
	// Sample, when > 0, measures write rates over this long instead of reporting totals.
	Sample time.Duration
}

// ShardMapEntry is one logical shard in `instactl shard map`.
type ShardMapEntry struct {
	Shard  int    `json:"shard"`
	Schema string `json:"schema"`
	Node   string `json:"node"`
	Epoch  int64  `json:"epoch"`
	State  string `json:"state"`
	Bytes  int64  `json:"bytes"`
	Writes int64  `json:"writes"`
}

// ShardMapView is what `instactl shard map` reports.
type ShardMapView struct {
	Version       int64           `json:"version"`
	LogicalShards int             `json:"logical_shards"`
	Sample        string          `json:"sample,omitempty"`
	Nodes         []ShardNodeInfo `json:"nodes"`
	Shards        []ShardMapEntry `json:"shards"`
}

// NewCmdShardMap builds `instactl shard map`. runF replaces the run in tests.
func NewCmdShardMap(f *Factory, out func() Output, runF func(*ShardMapOptions) error) *cobra.Command {
	o := &ShardMapOptions{}
	cmd := &cobra.Command{
		Use:   "map",
		Short: "Show which node holds each logical shard, with epochs, sizes and writes",
		Long: `Print every logical shard with the node holding it, its epoch (bumped by every move) and
state (active, or moving while a move runs), its size and the rows written to it, then a
summary per node. Sizes are pg_total_relation_size of the shard's tables; writes are
n_tup_ins + n_tup_upd + n_tup_del since the node's statistics were reset, or with --sample
the rows written (and the rate) during the sample. A node that cannot be read is reported,
the map is still printed.`,
		Example: `  instactl shard map
  instactl shard map --sample 10s
  instactl shard map -o json | jq '.shards[] | select(.node == "pg-2") | .shard'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Sample < 0 {
				return usageErrorf("--sample must be >= 0 (got %s)", o.Sample)
			}
			if runF != nil {
				return runF(o)
			}
			return shardMapRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().DurationVar(&o.Sample, "sample", 0, "measure write rates over this long (0: totals since the statistics reset)")
	return cmd
}

func shardMapRun(ctx context.Context, f *Factory, out Output, o *ShardMapOptions) error {
	e, err := newShardEnv(ctx, f)
	if err != nil {
		return err
	}
	defer e.close()
	rep, err := shardLoads(ctx, e, o.Sample)
	if err != nil {
		return err
	}
	mp := rep.Map
	v := ShardMapView{Version: mp.Version, LogicalShards: mp.LogicalShards()}
	if o.Sample > 0 {
		v.Sample = o.Sample.String()
	}
	bytes := map[int]int64{}
	for _, l := range rep.Loads {
		bytes[l.Shard] = l.Bytes
	}
	for _, a := range mp.Shards {
		v.Shards = append(v.Shards, ShardMapEntry{Shard: a.Shard, Schema: shardmap.SchemaName(a.Shard), Node: a.Node,
			Epoch: a.Epoch, State: a.State, Bytes: bytes[a.Shard], Writes: rep.Writes[a.Shard]})
	}
	for _, name := range shardmove.SortedNodes(mp) {
		v.Nodes = append(v.Nodes, *rep.Nodes[name])
		if msg := rep.Nodes[name].Error; msg != "" {
			f.IO.Statusf("shard map: cannot read statistics of %s: %s", name, msg)
		}
	}
	return render(f.IO, out, v, func(w io.Writer) error { return shardRenderMap(w, v) })
}

func shardRenderMap(w io.Writer, v ShardMapView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tSCHEMA\tNODE\tEPOCH\tSTATE\tSIZE\tWRITES")
	for _, s := range v.Shards {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%d\n", s.Shard, s.Schema, s.Node, s.Epoch, s.State, humanBytes(s.Bytes), s.Writes)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSHARDS\tSIZE\tWRITES\tWRITES/S")
	for _, n := range v.Nodes {
		if n.Error != "" {
			fmt.Fprintf(tw, "%s\t%d\t-\t-\t-\n", n.Name, n.Shards)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%.1f\n", n.Name, n.Shards, humanBytes(n.Bytes), n.Writes, n.WritesPerSec)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	over := "since the statistics were reset"
	if v.Sample != "" {
		over = "during a " + v.Sample + " sample"
	}
	_, err := fmt.Fprintf(w, "Map version %d: %d logical shards over %d nodes; writes are rows written %s.\n",
		v.Version, v.LogicalShards, len(v.Nodes), over)
	return err
}

// shardLoads reads the shard map and every node's size and write statistics through its
// primary now.
func shardLoads(ctx context.Context, e *shardEnv, sample time.Duration) (*shardmove.LoadReport, error) {
	mp, err := shardLoadMap(ctx, e)
	if err != nil {
		return nil, err
	}
	if sample > 0 {
		e.f.IO.Statusf("shard: sampling write rates for %s", sample)
	}
	return shardmove.CollectLoads(ctx, mp, e.mover.AdminDSNs(), sample)
}
