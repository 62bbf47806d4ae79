package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/instactl/instactl/cloud/sandbox"
	"github.com/instactl/instactl/internal/sandboxctl"
	"github.com/instactl/instactl/internal/status"
	"github.com/instactl/instactl/stack"
	"github.com/spf13/cobra"
)

// addSandboxCommands adds `instactl sandbox up|down|status`.
func addSandboxCommands(root *cobra.Command, f *Factory, out func() Output) {
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Run the whole stack on this Linux machine",
		Long: `The sandbox is a local cloud on one Linux machine (root): every host is an OpenSSH sshd on its
own loopback address in its own mount namespace, volumes are loop-device XFS images, the load
balancer is nginx, and moto_server serves S3. Hosts bootstrap with the same user-data AWS hosts
run, so PostgreSQL primaries and streaming replicas, Redis master and replica, and memcached are
real. The stack file must say provider: sandbox.`,
		Example: `  instactl --stack examples/sandbox.yaml sandbox up
  instactl --stack examples/sandbox.yaml sandbox status
  ssh -F /var/lib/instactl/sandbox/instagram/ssh_config 127.0.10.3   # log into pg-0
  instactl --stack examples/sandbox.yaml sandbox down`,
	}
	cmd.AddCommand(newCmdSandboxUp(f, out), newCmdSandboxDown(f), newCmdSandboxStatus(f, out))
	root.AddCommand(cmd)
}

func sandboxStack(f *Factory) (*stack.Stack, *sandbox.Provider, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, nil, err
	}
	if st.Provider != "sandbox" {
		return nil, nil, usageErrorf("%s: provider is %q; the sandbox commands need provider: sandbox", st.Path, st.Provider)
	}
	p, err := newSandbox(st)
	if err != nil {
		return nil, nil, err
	}
	return st, p, nil
}

func newCmdSandboxUp(f *Factory, out func() Output) *cobra.Command {
	return &cobra.Command{
		Use:   "up",
		Short: "Bring the stack up on this machine (idempotent)",
		Long: `Start moto_server, create every host, volume and the load balancer through the same plan AWS
gets, and wait until every host has bootstrapped its services. Running it again changes nothing;
after a reboot it restarts the hosts that are recorded but no longer running. With
backup.wal_archive it then runs ` + "`instactl wal install`" + ` (bucket and archiver), so the WAL
archive runs from the start.`,
		Example: `  instactl --stack examples/sandbox.yaml sandbox up
  instactl sandbox up -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, p, err := sandboxStack(f)
			if err != nil {
				return err
			}
			rep, err := sandboxctl.Up(cmd.Context(), st, p, func(s string) { f.IO.Statusf("sandbox: %s", s) })
			if errors.Is(err, sandboxctl.ErrInUse) {
				return withCode(ExitUsage, err) // nothing was changed; the stack file must change
			}
			if err != nil {
				return err
			}
			if err := sandboxWALInstall(cmd.Context(), f, st); err != nil {
				return err
			}
			return render(f.IO, out(), rep, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Sandbox %s is up: %d hosts, load balancer %s, S3 %s (%s).\nState: %s\nNext: instactl sandbox status; instactl sandbox down removes everything.\n",
					rep.Stack, rep.Hosts, rep.LB, rep.S3, rep.Duration, rep.Dir)
				return err
			})
		},
	}
}

func newCmdSandboxDown(f *Factory) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove everything the sandbox made",
		Long: `Stop every host and every process in its namespace, detach and delete volumes and
snapshots, stop nginx and moto_server, and remove the sandbox directory.`,
		Example: `  instactl --stack examples/sandbox.yaml sandbox down`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, p, err := sandboxStack(f)
			if err != nil {
				return err
			}
			// The sandbox's hosts go away: so do the connections kept to them.
			if socks, err := stackKeeperSockets(cmd.Context(), st); err == nil {
				if _, err := stopKeepers(cmd.Context(), socks); err != nil {
					f.IO.Statusf("warning: %v", err)
				}
			}
			if err := sandboxctl.Down(cmd.Context(), st, p); err != nil {
				return err
			}
			f.IO.Statusf("Sandbox %s is down; nothing of it is left running.", st.Name)
			return nil
		},
	}
}

func newCmdSandboxStatus(f *Factory, out func() Output) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show every host and service of the sandbox and whether it is healthy",
		Example: `  instactl --stack examples/sandbox.yaml sandbox status
  instactl sandbox status -o json | jq '.hosts[] | select(.reachable | not)'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, p, err := sandboxStack(f)
			if err != nil {
				return err
			}
			pool, err := f.SSH(false)
			if err != nil {
				return err
			}
			defer pool.Close()
			topo, err := statusTopology(cmd.Context(), f, st)
			if err != nil {
				return err
			}
			rep, err := status.Collect(cmd.Context(), st, topo, p, pool)
			if err != nil {
				return err
			}
			if err := render(f.IO, out(), rep, func(w io.Writer) error { return renderStatus(w, rep) }); err != nil {
				return err
			}
			if !rep.Healthy {
				return silentExit{ExitError}
			}
			return nil
		},
	}
}

func renderStatus(w io.Writer, rep *status.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tADDRESS\tSTATE\tBOOTSTRAP\tSERVICES\tRELEASE\tHEALTH")
	for _, h := range rep.Hosts {
		var svcs []string
		for _, s := range h.Services {
			state := "up"
			if !s.Running {
				state = "down"
				if s.Name == "app" && h.Release == "" {
					state = "not deployed"
				}
			}
			svcs = append(svcs, s.Name+" "+state)
		}
		health := "ok"
		if !h.Healthy() {
			health = "UNHEALTHY"
			switch {
			case h.Error != "":
				health += ": " + h.Error
			case h.Replication != nil && h.Replication.State == "absent":
				health += ": " + h.Replication.Primary + " lists no replication from it"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Name, h.Address, h.State, h.Bootstrap,
			orDash(strings.Join(svcs, ", ")), orDash(h.Release), health)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, m := range rep.Missing {
		fmt.Fprintf(w, "missing: %s is declared but does not exist (run sandbox up)\n", m)
	}
	verdict := "healthy"
	if !rep.Healthy {
		verdict = "NOT healthy"
	}
	_, err := fmt.Fprintf(w, "%s: %d hosts, %s\n", rep.Stack, len(rep.Hosts), verdict)
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
