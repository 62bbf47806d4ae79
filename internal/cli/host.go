package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
)

// HostPowerView is what `instactl host stop|start` did.
type HostPowerView struct {
	Host  string `json:"host"`
	ID    string `json:"id"`
	Force bool   `json:"force,omitempty"`
	State string `json:"state"`
}

// addHostCommands adds `instactl host stop|start`.
func addHostCommands(root *cobra.Command, f *Factory, out func() Output) {
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Stop and start one host through the provider",
		Long: `Stop and start an instance of the stack without terminating it: its volumes, address and tags
stay. On AWS this is StopInstances/StartInstances; on the sandbox a stop ends every process of the
host. "host stop --force" is a power cut: nothing on the host gets to shut down cleanly, which is
how a failover drill kills a primary. A stopped host is still the stack's: plan shows no change.`,
		Example: `  instactl host stop pg-0 --force    # the power cut a failover drill needs
  instactl failover pg-0              # then: promote its standby
  instactl host start pg-0            # it comes back fenced: its postgres does not start as primary
  instactl rejoin pg-0                # and becomes the new primary's standby`,
	}
	stop := &cobra.Command{
		Use:   "stop HOST",
		Short: "Stop a host (--force: a power cut, no clean shutdown)",
		Example: `  instactl host stop app-2            # clean shutdown; volumes and address stay
  instactl host stop pg-0 --force    # a power cut, for a failover drill`,
		Args: exactlyOneHost,
	}
	force := stop.Flags().Bool("force", false, "skip the clean shutdown (AWS Force; on the sandbox every process dies at once)")
	stop.RunE = func(cmd *cobra.Command, args []string) error {
		return hostPower(cmd.Context(), f, out(), args[0], true, *force)
	}
	start := &cobra.Command{
		Use:   "start HOST",
		Short: "Start a stopped host and wait until it answers",
		Example: `  instactl host start pg-0           # a former primary boots fenced
  instactl rejoin pg-0               # then becomes the new primary's standby`,
		Args: exactlyOneHost,
		RunE: func(cmd *cobra.Command, args []string) error {
			return hostPower(cmd.Context(), f, out(), args[0], false, false)
		},
	}
	cmd.AddCommand(stop, start)
	root.AddCommand(cmd)
}

func exactlyOneHost(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageErrorf("%s takes one host name, such as pg-0 (got %d arguments)", cmd.CommandPath(), len(args))
	}
	return nil
}

func hostPower(ctx context.Context, f *Factory, o Output, name string, stop, force bool) error {
	st, err := f.Stack()
	if err != nil {
		return err
	}
	p, err := f.Provider(ctx)
	if err != nil {
		return err
	}
	h, err := findInventoryHost(ctx, f, st, name)
	if err != nil {
		return err
	}
	v := HostPowerView{Host: stack.HostName(h.Role, h.Index), ID: h.ID, Force: force}
	if stop {
		err = p.StopInstances(ctx, []string{h.ID}, force)
		v.State = "stopped"
	} else {
		err = p.StartInstances(ctx, []string{h.ID})
		v.State = "running"
	}
	if err != nil {
		return fmt.Errorf("host %s (%s): %w", v.Host, h.ID, err)
	}
	return render(f.IO, o, v, func(w io.Writer) error {
		how := ""
		if force {
			how = " (forced: no clean shutdown)"
		}
		_, err := fmt.Fprintf(w, "Host %s (%s) is %s%s.\n", v.Host, v.ID, v.State, how)
		return err
	})
}

// findInventoryHost finds the stack's instance called name: its host name (pg-0) or its
// instance name (instagram-pg-0). An unknown name is bad input that lists the known ones.
func findInventoryHost(ctx context.Context, f *Factory, st *stack.Stack, name string) (provision.Host, error) {
	p, err := f.Provider(ctx)
	if err != nil {
		return provision.Host{}, err
	}
	inv, err := provision.Inventory(ctx, p, st.Name)
	if err != nil {
		return provision.Host{}, err
	}
	var known []string
	for _, h := range inv {
		hn := stack.HostName(h.Role, h.Index)
		if name == hn || name == h.Name || name == h.ID {
			return h, nil
		}
		known = append(known, hn)
	}
	sort.Strings(known)
	if len(known) == 0 {
		return provision.Host{}, usageErrorf("no host %q: stack %s has no instances (run instactl apply)", name, st.Name)
	}
	return provision.Host{}, usageErrorf("no host %q in stack %s (known: %s)", name, st.Name, strings.Join(known, ", "))
}
