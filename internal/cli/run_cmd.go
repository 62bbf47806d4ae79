package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/remote"
)

// deployRunTargets picks the hosts of `instactl run`: a role, named hosts, or all of them.
func deployRunTargets(ctx context.Context, f *Factory, o *RunOptions) ([]deploy.Host, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, err
	}
	if o.Role != "" && st.Role(o.Role) == nil {
		return nil, usageErrorf("--role %q: the stack has no such role (roles: %s)", o.Role, strings.Join(deployRoleNames(st), ", "))
	}
	prov, err := f.Provider(ctx)
	if err != nil {
		return nil, err
	}
	res, err := prov.Describe(ctx, st.Name)
	if err != nil {
		return nil, fmt.Errorf("list the hosts of stack %s: %w", st.Name, err)
	}
	var all []deploy.Host
	for _, r := range st.Roles {
		if o.Role == "" || o.Role == r.Name {
			all = append(all, deploy.HostsFromInstances(res.Instances, r.Name)...)
		}
	}
	if len(o.Hosts) == 0 {
		if len(all) == 0 {
			return nil, fmt.Errorf("stack %s has no matching hosts running; create them first (instactl apply, or instactl sandbox up)", st.Name)
		}
		return all, nil
	}
	sel, unknown := deploy.MatchHosts(all, st.Name, o.Hosts)
	if unknown != "" {
		var names []string
		for _, h := range all {
			names = append(names, h.Name)
		}
		return nil, usageErrorf("--hosts: no running host %q in stack %s (hosts: %s)", unknown, st.Name, strings.Join(names, ", "))
	}
	return sel, nil
}

// deployRunCmdRun is `instactl run`.
func deployRunCmdRun(ctx context.Context, f *Factory, out Output, o *RunOptions) error {
	hosts, err := deployRunTargets(ctx, f, o)
	if err != nil {
		return err
	}
	pool, err := f.SSH(o.AcceptNew)
	if err != nil {
		return err
	}
	defer pool.Close()
	var streams func(deploy.Host) (io.WriteCloser, io.WriteCloser)
	if out != OutputJSON {
		stdout, stderr := remote.NewSharedWriter(f.IO.Out), remote.NewSharedWriter(f.IO.ErrOut)
		streams = func(h deploy.Host) (io.WriteCloser, io.WriteCloser) {
			return remote.NewPrefixWriter(stdout, h.Name), remote.NewPrefixWriter(stderr, h.Name)
		}
	}
	d := &deploy.Deployer{Dialer: pool}
	results, failed := d.RunOnHosts(ctx, hosts, deploy.RunCommand(o.Command), o.Parallel, out == OutputJSON, streams)
	if out == OutputJSON {
		if err := render(f.IO, out, results, nil); err != nil {
			return err
		}
	} else {
		deployRunSummary(f.IO.ErrOut, results, failed)
	}
	if failed > 0 {
		return deployRunExit(failed, len(results))
	}
	return nil
}

// deployRunExit ends `run` after its summary: 5 if some hosts failed, 1 if all did.
func deployRunExit(failed, total int) error {
	if failed == total {
		return silentExit{ExitError}
	}
	return silentExit{ExitPartial}
}

// deployRunSummary is the table of exit codes after the hosts' output.
func deployRunSummary(w io.Writer, results []deploy.HostRun, failed int) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tEXIT\tTIME\tERROR")
	for _, r := range results {
		code := fmt.Sprint(r.ExitCode)
		if r.ExitCode < 0 {
			code = "-"
		} else if r.Signal != "" {
			code += " (SIG" + r.Signal + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Host, code, deployMS(r.DurationMS), orDash(r.Error))
	}
	tw.Flush()
	if failed == 0 {
		fmt.Fprintf(w, "%d hosts: all exited 0\n", len(results))
		return
	}
	fmt.Fprintf(w, "%d hosts: %d ok, %d failed\n", len(results), len(results)-failed, failed)
}
