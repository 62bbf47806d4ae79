package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/instactl/instactl/backup"
	"github.com/instactl/instactl/monitor"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
	"github.com/spf13/cobra"
)

// SilenceOptions are the flags of `instactl silence TARGET`.
type SilenceOptions struct {
	// Target is a replication group (pg-0, redis-0), a role of hosts in none (app, memcached,
	// monitor) or a host (pg-1).
	Target string
	// HostOnly reads Target as a host even when a group has its name (group pg-0's first host
	// is pg-0).
	HostOnly bool
	// Alerts narrows the silence to these alert names.
	Alerts       []string
	For          time.Duration
	Reason       string
	Alertmanager string
}

// SilenceView is one silence as `instactl silence` shows it.
type SilenceView struct {
	ID        string    `json:"id"`
	State     string    `json:"state"`
	Matchers  string    `json:"matchers"`
	StartsAt  time.Time `json:"starts_at"`
	EndsAt    time.Time `json:"ends_at"`
	CreatedBy string    `json:"created_by"`
	Comment   string    `json:"comment"`
}

// NewCmdSilence builds `instactl silence` with its list and expire subcommands. runF replaces
// the run of the parent in tests.
func NewCmdSilence(f *Factory, out func() Output, runF func(*SilenceOptions) error) *cobra.Command {
	o := &SilenceOptions{}
	cmd := &cobra.Command{
		Use:   "silence TARGET --for DURATION --reason TEXT",
		Short: "Silence the alerts of a host or a group for a while; list and expire silences",
		Long: `Silence, in the stack's Alertmanager, every alert about TARGET until --for has passed:

  a replication group (pg-0, redis-0)   every alert of its members and of the group
  a role of hosts in no group (app)      every alert of those hosts
  a host (pg-1)                          every alert about that host

A group's first host has the group's name: silence only that host with --host. --alert narrows
the silence to some alerts (repeat it). Silences expire by themselves; end one early with
` + "`instactl silence expire ID`" + `.

deploy, switchover and backup create silence what they are expected to trip, for exactly as
long as they run, on their own: no silence is needed for them.`,
		Example: `  instactl silence pg-1 --for 2h --reason "replacing the disk"
  instactl silence app --alert ProbeFailed --for 30m --reason "load balancer maintenance"
  instactl silence pg-0 --host --for 1h --reason "kernel update on pg-0 only"
  instactl silence list
  instactl silence expire 1f4c0a2e-...`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("%s takes one TARGET: a group, a role or a host (got %d arguments); see --help", cmd.CommandPath(), len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Target = args[0]
			if o.For <= 0 {
				return usageErrorf("--for must be a positive duration such as 30m or 2h (got %s)", o.For)
			}
			if strings.TrimSpace(o.Reason) == "" {
				return usageErrorf("--reason is required: say why, for whoever sees the silence (--reason \"replacing the disk\")")
			}
			if runF != nil {
				return runF(o)
			}
			return silenceRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().DurationVar(&o.For, "for", time.Hour, "how long the silence lasts")
	cmd.Flags().StringVar(&o.Reason, "reason", "", "why (required; shown with the silence)")
	cmd.Flags().BoolVar(&o.HostOnly, "host", false, "TARGET is a host, even when a group has its name")
	cmd.Flags().StringArrayVar(&o.Alerts, "alert", nil, "silence only this alert (repeatable), such as PostgresReplicationLagBytes")
	addAlertmanagerFlag(cmd, &o.Alertmanager)
	cmd.AddCommand(newCmdSilenceList(f, out), newCmdSilenceExpire(f, out))
	return cmd
}

func newCmdSilenceList(f *Factory, out func() Output) *cobra.Command {
	var all bool
	var am string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the silences that are active or pending (--all: expired too)",
		Example: `  instactl silence list
  instactl silence list --all -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return silenceListRun(cmd.Context(), f, out(), am, all)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "include expired silences")
	addAlertmanagerFlag(cmd, &am)
	return cmd
}

func newCmdSilenceExpire(f *Factory, out func() Output) *cobra.Command {
	var am string
	cmd := &cobra.Command{
		Use:     "expire ID...",
		Short:   "End silences now",
		Example: `  instactl silence expire 1f4c0a2e-8d0b-4c57-a3f5-6f0e2b1f9d11`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf("%s needs the id of a silence (see `instactl silence list`)", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			u, err := alertmanagerURL(f, am)
			if err != nil {
				return err
			}
			c := monitor.NewClient(u)
			for _, id := range args {
				if err := c.ExpireSilence(cmd.Context(), id); err != nil {
					return alertmanagerHint(fmt.Errorf("expire silence %s: %w", id, err))
				}
				f.IO.Statusf("expired silence %s", id)
			}
			return nil
		},
	}
	addAlertmanagerFlag(cmd, &am)
	return cmd
}

func silenceRun(ctx context.Context, f *Factory, out Output, o *SilenceOptions) error {
	st, err := f.Stack()
	if err != nil {
		return err
	}
	ms, err := silenceMatchers(st, o.Target, o.HostOnly, o.Alerts)
	if err != nil {
		return err
	}
	u, err := alertmanagerURL(f, o.Alertmanager)
	if err != nil {
		return err
	}
	now := time.Now()
	s := monitor.Silence{Matchers: ms, StartsAt: now, EndsAt: now.Add(o.For), CreatedBy: silenceAuthor(), Comment: o.Reason}
	id, err := monitor.NewClient(u).PutSilence(ctx, s)
	if err != nil {
		return alertmanagerHint(err)
	}
	s.ID = id
	s.Status.State = "active"
	v := silenceView(s)
	return render(f.IO, out, v, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "Silenced %s until %s (%s): %s\nEnd it early with: instactl silence expire %s\n",
			v.Matchers, v.EndsAt.Local().Format("2006-01-02 15:04 MST"), monitorAge(o.For), id, id)
		return err
	})
}

// silenceMatchers resolves TARGET against the stack: a group (group label), a role of
// ungrouped hosts (their group label is the role), or a host (host label); alerts, checked
// against the stack's rules, narrow it. Unknown names are bad input that list the known ones.
func silenceMatchers(st *stack.Stack, target string, hostOnly bool, alerts []string) ([]monitor.Matcher, error) {
	topo, err := topology.FromStack(st)
	if err != nil {
		return nil, err
	}
	groups := map[string]bool{}
	hosts := map[string]bool{}
	var groupNames, hostNames []string
	for _, h := range st.Hosts() {
		g := h.Role
		if tg, ok := topo.GroupOf(h.Name()); ok {
			g = tg.Name
		}
		if !groups[g] {
			groups[g] = true
			groupNames = append(groupNames, g)
		}
		hosts[h.Name()] = true
		hostNames = append(hostNames, h.Name())
	}
	var ms []monitor.Matcher
	switch {
	case hostOnly && hosts[target]:
		ms = append(ms, monitor.Equal(monitor.LabelHost, target))
	case hostOnly:
		return nil, usageErrorf("no host %q in stack %s (hosts: %s)", target, st.Name, strings.Join(hostNames, ", "))
	case groups[target]:
		ms = append(ms, monitor.Equal(monitor.LabelGroup, target))
	case hosts[target]:
		ms = append(ms, monitor.Equal(monitor.LabelHost, target))
	default:
		return nil, usageErrorf("no group or host %q in stack %s (groups: %s; hosts: %s)", target, st.Name,
			strings.Join(groupNames, ", "), strings.Join(hostNames, ", "))
	}
	if len(alerts) == 0 {
		return ms, nil
	}
	known, err := stackAlertNames(st, topo)
	if err != nil {
		return nil, err
	}
	for _, a := range alerts {
		if !known[a] {
			names := make([]string, 0, len(known))
			for n := range known {
				names = append(names, n)
			}
			sort.Strings(names)
			return nil, usageErrorf("--alert %q is no alert of stack %s (alerts: %s)", a, st.Name, strings.Join(names, ", "))
		}
	}
	if len(alerts) == 1 {
		return append(ms, monitor.Equal("alertname", alerts[0])), nil
	}
	return append(ms, monitor.Regex("alertname", strings.Join(alerts, "|"))), nil
}

// stackAlertNames are the alert names the stack's generated rules hold.
func stackAlertNames(st *stack.Stack, topo topology.Topology) (map[string]bool, error) {
	rf, err := monitor.Rules(st, topo, monitor.Options{})
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out[r.Alert] = true
			}
		}
	}
	return out, nil
}

// silenceAuthor is who a silence says created it: user@host.
func silenceAuthor() string {
	name := "instactl"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		name += "@" + h
	}
	return name
}

func silenceView(s monitor.Silence) SilenceView {
	var parts []string
	for _, m := range s.Matchers {
		parts = append(parts, m.String())
	}
	return SilenceView{ID: s.ID, State: s.Status.State, Matchers: "{" + strings.Join(parts, ",") + "}",
		StartsAt: s.StartsAt, EndsAt: s.EndsAt, CreatedBy: s.CreatedBy, Comment: s.Comment}
}

func silenceListRun(ctx context.Context, f *Factory, out Output, am string, all bool) error {
	u, err := alertmanagerURL(f, am)
	if err != nil {
		return err
	}
	ss, err := monitor.NewClient(u).Silences(ctx)
	if err != nil {
		return alertmanagerHint(err)
	}
	views := []SilenceView{}
	for _, s := range ss {
		if all || s.Status.State != "expired" {
			views = append(views, silenceView(s))
		}
	}
	sort.SliceStable(views, func(i, j int) bool { return views[i].EndsAt.Before(views[j].EndsAt) })
	return render(f.IO, out, views, func(w io.Writer) error {
		if len(views) == 0 {
			_, err := fmt.Fprintln(w, "No silences.")
			return err
		}
		now := time.Now()
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tENDS\tMATCHERS\tBY\tREASON")
		for _, v := range views {
			ends := "in " + monitorAge(v.EndsAt.Sub(now))
			if !v.EndsAt.After(now) {
				ends = monitorAge(now.Sub(v.EndsAt)) + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", v.ID, v.State, ends, v.Matchers, v.CreatedBy, v.Comment)
		}
		return tw.Flush()
	})
}

// operationAlertmanager is the Alertmanager the silences of deploy, switchover and backup go
// to: $INSTACTL_ALERTMANAGER, else the stack's monitor host; nil (silence nothing) for a stack
// without one.
func operationAlertmanager(f *Factory) monitor.API {
	u := os.Getenv(EnvAlertmanager)
	if u == "" {
		st, err := f.Stack()
		if err != nil {
			return nil
		}
		if u, err = monitor.AlertmanagerURL(st); err != nil {
			return nil
		}
	}
	return monitor.NewClient(u)
}

// silenceOperation runs fn with matchers silenced for exactly as long as it runs
// (monitor.SilenceDuring). Alertmanager trouble never stops the operation: it is a warning on
// stderr. It returns fn's error.
func silenceOperation(ctx context.Context, f *Factory, matchers []monitor.Matcher, reason string, fn func() error) error {
	warnings, err := monitor.SilenceDuring(ctx, operationAlertmanager(f), matchers, reason, fn)
	for _, w := range warnings {
		f.IO.Statusf("warning: %v", w)
	}
	return err
}

// groupOpSilence is what a switchover of group silences (monitor.SwitchoverSilence). A failover
// answers an outage and a rejoin a broken standby: their alerts stay loud.
func groupOpSilence(op, group string) []monitor.Matcher {
	if op != "switchover" {
		return nil
	}
	return monitor.SwitchoverSilence(group)
}

// backupSilence is what backup create of target silences (monitor.BackupSilence): the lag of
// the Postgres standbys it freezes. A Redis-only backup (a BGSAVE) trips nothing.
func backupSilence(target string) []monitor.Matcher {
	if target == backup.TargetRedis {
		return nil
	}
	return monitor.BackupSilence()
}
