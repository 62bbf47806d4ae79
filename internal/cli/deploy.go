package cli

import "github.com/spf13/cobra"

// addDeployCommands adds deploy, rollback, releases, lock and run.
func addDeployCommands(root *cobra.Command, f *Factory, out func() Output) {}
