package cli

import (
	"io"
	"strconv"
	"strings"

	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/spf13/cobra"
)

// RenderOptions are the inputs of `instactl render`.
type RenderOptions struct {
	Host stack.HostRef
}

// NewCmdRender prints a host's user-data: the exact bootstrap script it runs at first boot.
func NewCmdRender(f *Factory, runF func(*RenderOptions) error) *cobra.Command {
	opts := &RenderOptions{}
	cmd := &cobra.Command{
		Use:   "render ROLE[-INDEX]",
		Short: "Print the user-data (bootstrap script) of a role's host",
		Long: `Print the bootstrap script a host runs at first boot: cloud-init user-data on AWS, run inside
the host's namespace on the sandbox. It sets up volumes (RAID 0 on AWS, XFS, mount) and the
role's services (Postgres primary or replica, Redis master or replica, memcached, the app unit).`,
		Example: `  instactl render pg          # host pg-0, the first primary
  instactl render pg-1        # its replica
  instactl render app | less`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, err := parseHostArg(args[0])
			if err != nil {
				return err
			}
			opts.Host = h
			if runF != nil {
				return runF(opts)
			}
			st, err := f.Stack()
			if err != nil {
				return err
			}
			env, err := templates.AppEnv(st)
			if err != nil {
				return err
			}
			ud, err := templates.ForHost(st, h, env)
			if err != nil {
				return usageErrorf("%v", err)
			}
			_, err = io.WriteString(f.IO.Out, ud)
			return err
		},
	}
	return cmd
}

// parseHostArg reads "role" (index 0) or "role-N".
func parseHostArg(s string) (stack.HostRef, error) {
	if i := strings.LastIndex(s, "-"); i > 0 {
		if n, err := strconv.Atoi(s[i+1:]); err == nil {
			if n < 0 {
				return stack.HostRef{}, usageErrorf("host index must be >= 0 in %q", s)
			}
			return stack.HostRef{Role: s[:i], Index: n}, nil
		}
	}
	if s == "" {
		return stack.HostRef{}, usageErrorf("name a role such as pg or a host such as pg-1")
	}
	return stack.HostRef{Role: s}, nil
}
