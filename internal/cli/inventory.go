package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
	"github.com/spf13/cobra"
)

// InventoryOptions are the inputs of `instactl inventory`.
type InventoryOptions struct {
	// Role limits the listing to one role; empty: every role.
	Role string
}

// InventoryReport is the stack's live hosts, by role then index.
type InventoryReport struct {
	Stack string           `json:"stack"`
	Hosts []provision.Host `json:"hosts"`
	// Missing are hosts the stack file declares that do not exist (yet).
	Missing []string `json:"missing,omitempty"`
}

// NewCmdInventory lists the stack's live hosts. runF replaces the run in tests.
func NewCmdInventory(f *Factory, out func() Output, runF func(*InventoryOptions) error) *cobra.Command {
	opts := &InventoryOptions{}
	cmd := &cobra.Command{
		Use:   "inventory",
		Short: "List the stack's live hosts by role: ids, addresses, volumes, load balancer",
		Long: `List every host tagged with the stack, by role and index: instance id, private and public
address, SSH port, state, attached data volumes (device:id:size) and the load balancers it is
registered with. Hosts the stack file declares that do not exist are reported after the table.`,
		Example: `  instactl inventory
  instactl inventory --role pg
  instactl inventory -o json | jq -r '.hosts[] | select(.role == "app") | .private_address'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return provisionInventoryRun(cmd.Context(), f, out(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.Role, "role", "", "list only the hosts of `ROLE`")
	return cmd
}

func provisionInventoryRun(ctx context.Context, f *Factory, out Output, opts *InventoryOptions) error {
	st, err := f.Stack()
	if err != nil {
		return err
	}
	if opts.Role != "" && st.Role(opts.Role) == nil {
		var roles []string
		for _, r := range st.Roles {
			roles = append(roles, r.Name)
		}
		return usageErrorf("--role %q: stack %s has no such role (roles: %s)", opts.Role, st.Name, strings.Join(roles, ", "))
	}
	p, err := f.Provider(ctx)
	if err != nil {
		return err
	}
	hosts, err := provision.Inventory(ctx, p, st.Name)
	if err != nil {
		return err
	}
	rep := &InventoryReport{Stack: st.Name, Hosts: []provision.Host{}}
	live := map[stack.HostRef]bool{}
	for _, h := range hosts {
		if opts.Role == "" || h.Role == opts.Role {
			rep.Hosts = append(rep.Hosts, h)
			live[stack.HostRef{Role: h.Role, Index: h.Index}] = true
		}
	}
	for _, h := range st.Hosts() {
		if (opts.Role == "" || h.Role == opts.Role) && !live[h] {
			rep.Missing = append(rep.Missing, h.Name())
		}
	}
	return render(f.IO, out, rep, func(w io.Writer) error { return provisionRenderInventory(w, rep) })
}

func provisionRenderInventory(w io.Writer, rep *InventoryReport) error {
	if len(rep.Hosts) == 0 {
		fmt.Fprintf(w, "No hosts of stack %s exist.\n", rep.Stack)
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ROLE\tHOST\tID\tPRIVATE\tPUBLIC\tSSH\tSTATE\tVOLUMES\tLB")
		for _, h := range rep.Hosts {
			var vols []string
			for _, v := range h.Volumes {
				vols = append(vols, fmt.Sprintf("%s:%s:%dG", strings.TrimPrefix(v.Device, "/dev/"), v.ID, v.SizeGiB))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", h.Role, stack.HostName(h.Role, h.Index), h.ID,
				orDash(h.PrivateAddress), orDash(h.PublicAddress), h.SSHPort, h.State,
				orDash(strings.Join(vols, ",")), orDash(strings.Join(h.LoadBalancers, ",")))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(rep.Missing) > 0 {
		fmt.Fprintf(w, "missing: %s declared in the stack file but not provisioned (run instactl plan)\n", strings.Join(rep.Missing, ", "))
	}
	return nil
}
