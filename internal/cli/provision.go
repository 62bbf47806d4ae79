package cli

import "github.com/spf13/cobra"

// addProvisionCommands adds plan, apply, destroy and inventory.
func addProvisionCommands(root *cobra.Command, f *Factory, out func() Output) {}
