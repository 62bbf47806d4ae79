package cli

import "github.com/spf13/cobra"

// addSandboxCommands adds `instactl sandbox up|down|status`.
func addSandboxCommands(root *cobra.Command, f *Factory, out func() Output) {}
