package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/shardmove"
)

// ShardInitOptions are the inputs of `instactl shard init`.
type ShardInitOptions struct {
	// Batch is how many shard schemas are created per statement batch.
	Batch int
}

// ShardInitResult is what `instactl shard init` reports.
type ShardInitResult struct {
	ControlDatabase string          `json:"control_database"`
	ControlNode     string          `json:"control_node"`
	LogicalShards   int             `json:"logical_shards"`
	Created         int             `json:"created"`
	Existing        int             `json:"existing"`
	Nodes           []ShardNodeInfo `json:"nodes"`
}

// ShardNodeInfo is one physical node as shard init and shard map report it.
type ShardNodeInfo = shardmove.NodeLoad

// NewCmdShardInit builds `instactl shard init`. runF replaces the run in tests.
func NewCmdShardInit(f *Factory, out func() Output, runF func(*ShardInitOptions) error) *cobra.Command {
	o := &ShardInitOptions{}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the control database, the shard map and every logical shard (idempotent)",
		Long: `Create the control database (shards.control_database, owned by the app role) on the first
node, install the shard map, the node registry and the move journal in it, and create every
logical shard's schema (tables, next_id(), sequence, disabled fence) on the node the map
assigns it to: shards.logical shards round robin over the primaries of shards.role.

Shard schemas are owned by postgres; default privileges give the app role read/write on them
and on every copy a later move creates. The registry records the DSNs app servers use
(postgres://app@NODE:PORT/DATABASE).

Running it again changes nothing: existing assignments are kept (a moved shard stays where
it is) and existing schemas are left alone. The number of logical shards cannot change.`,
		Example: `  instactl shard init
  instactl shard init -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Batch < 1 {
				return usageErrorf("--batch must be >= 1 (got %d)", o.Batch)
			}
			if runF != nil {
				return runF(o)
			}
			return shardInitRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().IntVar(&o.Batch, "batch", 64, "shard schemas created per statement batch")
	return cmd
}

func shardInitRun(ctx context.Context, f *Factory, out Output, o *ShardInitOptions) error {
	e, err := newShardEnv(ctx, f)
	if err != nil {
		return err
	}
	defer e.close()
	st := e.st
	f.IO.Statusf("shard init: %d logical shards over %s", st.Shards.Logical, strings.Join(e.site.NodeNames(), ", "))
	ir, err := shardmove.InitSite(ctx, e.site, st.Shards.Logical, o.Batch)
	if err != nil {
		return err
	}
	mp := ir.Map
	res := ShardInitResult{ControlDatabase: st.Shards.ControlDatabase, ControlNode: e.site.ControlNode(),
		LogicalShards: mp.LogicalShards(), Created: ir.Created, Existing: ir.Existing}
	for _, name := range shardmove.SortedNodes(mp) {
		res.Nodes = append(res.Nodes, ShardNodeInfo{Name: name, DSN: mp.Nodes[name].DSN, Shards: len(mp.ShardsOn(name))})
	}
	return render(f.IO, out, res, func(w io.Writer) error {
		fmt.Fprintf(w, "Shard map: %d logical shards over %d nodes (control database %s on %s).\n",
			res.LogicalShards, len(res.Nodes), res.ControlDatabase, res.ControlNode)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tSHARDS\tDSN")
		for _, n := range res.Nodes {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", n.Name, n.Shards, n.DSN)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		_, err := fmt.Fprintf(w, "Created %d shard schemas, %d already existed.\n", res.Created, res.Existing)
		return err
	})
}
