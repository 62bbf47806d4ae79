package cli

import (
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryCommandHasExamples keeps --help teaching: every runnable command shows examples.
func TestEveryCommandHasExamples(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" || !sub.IsAvailableCommand() && sub.Runnable() {
				continue
			}
			if sub.Runnable() && sub.Example == "" {
				t.Errorf("%s has no examples in --help", sub.CommandPath())
			}
			if sub.Short == "" {
				t.Errorf("%s has no short description", sub.CommandPath())
			}
			walk(sub)
		}
	}
	walk(NewCmdRoot(&IOStreams{}))
}
