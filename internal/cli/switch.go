package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/switches"
	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/topology"
)

// addSwitchCommands adds switch set, list and history.
func addSwitchCommands(root *cobra.Command, f *Factory, out func() Output) {
	cmd := &cobra.Command{
		Use:   "switch",
		Short: "Degradation switches (kill switches): shed load on purpose",
		Long: `Named switches the app servers consult on every request, stored in the control database,
pushed to every app server (LISTEN/NOTIFY, with a re-read every 10 s as a backstop) and kept
on each server's disk (/var/lib/instagram/switches/state.json), so a server restarted while the
control database is unreachable starts from the last state it knew.

Switches (default in brackets):
` + switchHelp() + `
Every change is audited (who, when, why, the value before and after: instactl switch
history). With --for the setting expires: each app server returns to the default the moment
it passes, on its own clock, with nothing written; instactl switch list shows it as expired.`,
		Example: `  instactl switch set feed.ranking off --reason "db overloaded, INC-42" --for 2h
  instactl switch set readonly on --reason "failover drill"
  instactl switch list
  instactl switch history uploads`,
	}
	cmd.AddCommand(NewCmdSwitchSet(f, out, nil), NewCmdSwitchList(f, out, nil), NewCmdSwitchHistory(f, out, nil))
	root.AddCommand(cmd)
}

func switchHelp() string {
	var b strings.Builder
	for _, d := range switches.Known {
		fmt.Fprintf(&b, "  %-13s [%s] %s\n", d.Name, switches.Word(d.Default), d.Help)
	}
	return b.String()
}

// SwitchSetOptions are the arguments and flags of `instactl switch set`.
type SwitchSetOptions struct {
	Change switches.Change
	// Wait bounds the wait for every app server's acknowledgement; 0: do not wait.
	Wait time.Duration
}

// NewCmdSwitchSet builds `instactl switch set NAME on|off`. runF replaces the run in tests.
func NewCmdSwitchSet(f *Factory, out func() Output, runF func(*SwitchSetOptions) error) *cobra.Command {
	o := &SwitchSetOptions{}
	cmd := &cobra.Command{
		Use:   "set NAME on|off --reason TEXT [--for DURATION]",
		Short: "Set a switch, then wait until every app server applies it",
		Long: `Set switch NAME on or off in the control database, with the reason recorded in its audit, and
wait until every running app server reports the new state on GET ` + switches.Path + `: the
time each took is printed (per server and the slowest). A server that does not acknowledge
within --wait makes the command exit 5; the switch stays set (the server applies it when it
reads the control database again).

Like the shard and failover commands, it talks to the control database and to the app servers
at their private addresses: on AWS run it from inside the VPC (a bastion host or a VPN). With
--wait 0 it needs only the control database.

Known switches: ` + strings.Join(switches.Names(), ", ") + ` (see instactl switch --help).`,
		Example: `  instactl switch set uploads off --reason "S3 errors, INC-7" --for 30m
  instactl switch set uploads on --reason "S3 recovered"
  instactl switch set readonly on --reason "maintenance" -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageErrorf("switch set takes NAME and on|off (got %d arguments); known switches: %s", len(args), strings.Join(switches.Names(), ", "))
			}
			on, err := switches.ParseValue(args[1])
			if err != nil {
				return usageErrorf("%v", err)
			}
			o.Change.Name, o.Change.On = args[0], on
			o.Change.By = operator()
			if err := o.Change.Validate(); err != nil {
				return usageErrorf("%v", err)
			}
			if o.Wait < 0 {
				return usageErrorf("--wait must be >= 0 (got %s)", o.Wait)
			}
			if runF != nil {
				return runF(o)
			}
			return switchSetRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().StringVar(&o.Change.Reason, "reason", "", "why (required; recorded in the audit)")
	cmd.Flags().DurationVar(&o.Change.For, "for", 0, "expire after this long (e.g. 2h); default: until set again")
	cmd.Flags().DurationVar(&o.Wait, "wait", 30*time.Second, "how long to wait for every app server to acknowledge (0: do not wait)")
	return cmd
}

// operator names who runs instactl: user@host.
func operator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// SwitchSetView is the result of `instactl switch set`.
type SwitchSetView struct {
	Event switches.Event `json:"event"`
	// Acks has one entry per running app server.
	Acks []switches.Ack `json:"acks"`
	// Slowest is the longest time from the commit to a server's acknowledgement.
	Slowest time.Duration `json:"slowest_ns"`
	Waited  bool          `json:"waited"`
}

func switchSetRun(ctx context.Context, f *Factory, out Output, o *SwitchSetOptions) error {
	st, err := f.Stack()
	if err != nil {
		return err
	}
	conn, err := switchControl(ctx, st)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var targets []switches.Target
	if o.Wait > 0 {
		// Before the change: a server list that cannot be read fails with nothing changed.
		if targets, err = switchTargets(ctx, f, st); err != nil {
			return err
		}
	}
	// A control database made before the switches existed gets their tables here; the app
	// servers' role must be able to read them (shard init grants it on a new site).
	if err := switches.Prepare(ctx, conn, shardAppRole); err != nil {
		return err
	}
	ev, err := switches.Set(ctx, conn, o.Change)
	if err != nil {
		return err
	}
	committed := time.Now()
	v := SwitchSetView{Event: ev, Acks: []switches.Ack{}}
	if o.Wait > 0 {
		v.Waited = true
		wctx, cancel := context.WithTimeout(ctx, o.Wait)
		v.Acks = switches.Await(wctx, &http.Client{}, targets, ev.Version, committed, 5*time.Millisecond)
		cancel()
	}
	var failed []string
	for _, a := range v.Acks {
		if a.OK() {
			v.Slowest = max(v.Slowest, a.After)
		} else {
			failed = append(failed, a.Host+": "+a.Error)
		}
	}
	if err := render(f.IO, out, v, func(w io.Writer) error { return renderSwitchSet(w, v) }); err != nil {
		return err
	}
	if len(failed) > 0 {
		return withCode(ExitPartial, fmt.Errorf("switch %s is set (version %d) but %d of %d app servers did not acknowledge within %s; they apply it when they next read the control database:\n  %s",
			ev.Name, ev.Version, len(failed), len(v.Acks), o.Wait, strings.Join(failed, "\n  ")))
	}
	return nil
}

func renderSwitchSet(w io.Writer, v SwitchSetView) error {
	e := v.Event
	fmt.Fprintf(w, "Switch %s: %s -> %s (version %d", e.Name, switches.Word(e.Before), switches.Word(e.After), e.Version)
	if e.ExpiresAt != nil {
		fmt.Fprintf(w, ", expires %s", e.ExpiresAt.UTC().Format("2006-01-02 15:04:05Z"))
	}
	fmt.Fprintf(w, "), set by %s: %s\n", e.SetBy, e.Reason)
	if !v.Waited {
		_, err := fmt.Fprintln(w, "Not waiting for the app servers (--wait 0).")
		return err
	}
	ok := 0
	for _, a := range v.Acks {
		if a.OK() {
			ok++
		}
	}
	fmt.Fprintf(w, "Acknowledged by %d of %d app servers; slowest %s.\n", ok, len(v.Acks), v.Slowest.Round(100*time.Microsecond))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, a := range v.Acks {
		if a.OK() {
			fmt.Fprintf(tw, "  %s\tversion %d\t%s\n", a.Host, a.Version, a.After.Round(100*time.Microsecond))
		} else if a.Answered {
			fmt.Fprintf(tw, "  %s\tversion %d\tNOT ACKNOWLEDGED\n", a.Host, a.Version)
		} else {
			fmt.Fprintf(tw, "  %s\tno answer\tNOT ACKNOWLEDGED\n", a.Host)
		}
	}
	return tw.Flush()
}

// switchControl connects to the control database on whichever member is primary now.
func switchControl(ctx context.Context, st *stack.Stack) (*pgx.Conn, error) {
	topo, err := topology.Resolve(ctx, st, "postgres")
	if err != nil && len(topo.Groups) == 0 {
		return nil, err
	}
	dsn, err := topology.ControlDSN(topo, "postgres", st.Shards.ControlDatabase)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to the control database (run instactl shard init first if it does not exist): %w", err)
	}
	return conn, nil
}

// switchTargets lists the running app servers: their name and HTTP address.
func switchTargets(ctx context.Context, f *Factory, st *stack.Stack) ([]switches.Target, error) {
	r := st.Role(templates.RoleApp)
	if r == nil || r.Count == 0 {
		return nil, nil
	}
	prov, err := f.Provider(ctx)
	if err != nil {
		return nil, err
	}
	hosts, err := provision.Inventory(ctx, prov, st.Name)
	if err != nil {
		return nil, err
	}
	var out []switches.Target
	for _, h := range hosts {
		if h.Role != r.Name || h.State != "running" {
			continue
		}
		a, err := netip.ParseAddr(h.PrivateAddress)
		if err != nil {
			return nil, fmt.Errorf("app host %s: address %q: %w", stack.HostName(h.Role, h.Index), h.PrivateAddress, err)
		}
		out = append(out, switches.Target{Host: stack.HostName(h.Role, h.Index),
			URL: "http://" + netip.AddrPortFrom(a, uint16(r.Port)).String()})
	}
	return out, nil
}

// SwitchListOptions are the flags of `instactl switch list`.
type SwitchListOptions struct{}

// SwitchListView is what `instactl switch list` shows.
type SwitchListView struct {
	Version  int64             `json:"version"`
	At       time.Time         `json:"at"`
	Switches []switches.Status `json:"switches"`
}

// NewCmdSwitchList builds `instactl switch list`.
func NewCmdSwitchList(f *Factory, out func() Output, runF func(*SwitchListOptions) error) *cobra.Command {
	o := &SwitchListOptions{}
	return &cobra.Command{
		Use:   "list",
		Short: "Show every switch: its value now, who set it, why, and when it expires",
		Long: `Show every known switch as the control database has it, evaluated now: on or off, whether
that is its default, was set (by whom, when, why, until when) or was set and has expired
(back at the default).`,
		Example: `  instactl switch list
  instactl switch list -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(o)
			}
			st, err := f.Stack()
			if err != nil {
				return err
			}
			conn, err := switchControl(cmd.Context(), st)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(cmd.Context()))
			s, err := switches.Load(cmd.Context(), conn)
			if err != nil {
				return err
			}
			now := time.Now()
			v := SwitchListView{Version: s.Version, At: now.UTC(), Switches: s.Statuses(now)}
			return render(f.IO, out(), v, func(w io.Writer) error { return renderSwitchList(w, v) })
		},
	}
}

func renderSwitchList(w io.Writer, v SwitchListView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SWITCH\tNOW\tDEFAULT\tSTATE\tSET BY\tSET AT\tEXPIRES\tREASON")
	for _, s := range v.Switches {
		by, at, exp, reason := "-", "-", "-", "-"
		if s.Setting != nil {
			by, at, reason = s.Setting.SetBy, s.Setting.SetAt.UTC().Format("2006-01-02 15:04:05Z"), s.Setting.Reason
			if s.Setting.ExpiresAt != nil {
				exp = s.Setting.ExpiresAt.UTC().Format("2006-01-02 15:04:05Z")
			}
		}
		state := s.Source
		if s.Source == switches.SourceExpired {
			state = "expired (was " + switches.Word(s.Setting.On) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, switches.Word(s.On), switches.Word(s.Default), state, by, at, exp, reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "Version %d.\n", v.Version)
	return err
}

// SwitchHistoryOptions are the arguments and flags of `instactl switch history`.
type SwitchHistoryOptions struct {
	Name  string
	Limit int
}

// NewCmdSwitchHistory builds `instactl switch history [NAME]`.
func NewCmdSwitchHistory(f *Factory, out func() Output, runF func(*SwitchHistoryOptions) error) *cobra.Command {
	o := &SwitchHistoryOptions{}
	cmd := &cobra.Command{
		Use:   "history [NAME]",
		Short: "The audit of switch changes, newest first",
		Example: `  instactl switch history
  instactl switch history readonly --limit 5`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErrorf("switch history takes at most one switch name (got %q)", args)
			}
			if len(args) == 1 {
				if _, err := switches.Lookup(args[0]); err != nil {
					return usageErrorf("%v", err)
				}
				o.Name = args[0]
			}
			if o.Limit < 1 {
				return usageErrorf("--limit must be >= 1 (got %d)", o.Limit)
			}
			if runF != nil {
				return runF(o)
			}
			st, err := f.Stack()
			if err != nil {
				return err
			}
			conn, err := switchControl(cmd.Context(), st)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(cmd.Context()))
			evs, err := switches.History(cmd.Context(), conn, o.Name, o.Limit)
			if err != nil {
				return err
			}
			if evs == nil {
				evs = []switches.Event{}
			}
			return render(f.IO, out(), evs, func(w io.Writer) error { return renderSwitchHistory(w, evs) })
		},
	}
	cmd.Flags().IntVar(&o.Limit, "limit", 20, "how many changes to show")
	return cmd
}

func renderSwitchHistory(w io.Writer, evs []switches.Event) error {
	if len(evs) == 0 {
		_, err := fmt.Fprintln(w, "No switch was ever set.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tSWITCH\tCHANGE\tBY\tVERSION\tEXPIRES\tREASON")
	for _, e := range evs {
		exp := "-"
		if e.ExpiresAt != nil {
			exp = e.ExpiresAt.UTC().Format("2006-01-02 15:04:05Z")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s -> %s\t%s\t%s\t%s\t%s\n", e.At.UTC().Format("2006-01-02 15:04:05Z"), e.Name,
			switches.Word(e.Before), switches.Word(e.After), e.SetBy, strconv.FormatInt(e.Version, 10), exp, e.Reason)
	}
	return tw.Flush()
}
