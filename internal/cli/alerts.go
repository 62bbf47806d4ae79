package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/instactl/instactl/monitor"
	"github.com/spf13/cobra"
)

// EnvAlertmanager overrides the Alertmanager instactl talks to (by default the stack's monitor
// host, port 9093): alerts, silence, and the silences deploy, switchover and backup set.
const EnvAlertmanager = "INSTACTL_ALERTMANAGER"

// AlertsOptions are the flags of `instactl alerts`.
type AlertsOptions struct {
	// All includes silenced and inhibited alerts.
	All bool
	// Alertmanager is the base URL (default: $INSTACTL_ALERTMANAGER, then the monitor host).
	Alertmanager string
}

// AlertView is one alert as `instactl alerts` shows it.
type AlertView struct {
	Name     string `json:"name"`
	Severity string `json:"severity"`
	Group    string `json:"group,omitempty"`
	Host     string `json:"host,omitempty"`
	// State is active, or suppressed when silenced or inhibited (only with --all).
	State      string            `json:"state"`
	SilencedBy []string          `json:"silenced_by,omitempty"`
	Since      time.Time         `json:"since"`
	Summary    string            `json:"summary"`
	Command    string            `json:"command"`
	Labels     map[string]string `json:"labels"`
}

// NewCmdAlerts builds `instactl alerts`. runF replaces the run in tests.
func NewCmdAlerts(f *Factory, out func() Output, runF func(*AlertsOptions) error) *cobra.Command {
	o := &AlertsOptions{}
	cmd := &cobra.Command{
		Use:   "alerts",
		Short: "List the alerts firing now, each with the instactl command that answers it",
		Long: `List what is firing now, from the stack's Alertmanager (API v2), critical first, each with
its summary and the instactl command that answers it. Silenced and inhibited alerts are left
out unless --all (an inhibited alert is one a bigger one explains: a host down hides the rest
of that host's alerts, a group without a primary hides its replication alerts).

Alertmanager is the monitor host's, port 9093; --alertmanager or $` + EnvAlertmanager + ` name
another.`,
		Example: `  instactl alerts
  instactl alerts --all
  instactl alerts -o json | jq -r '.[] | select(.severity == "critical") | .command'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(o)
			}
			return alertsRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().BoolVar(&o.All, "all", false, "include silenced and inhibited alerts")
	addAlertmanagerFlag(cmd, &o.Alertmanager)
	return cmd
}

func addAlertmanagerFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "alertmanager", "", "Alertmanager base URL (default $"+EnvAlertmanager+", then the stack's monitor host)")
}

// alertmanagerURL picks the Alertmanager: the flag, then $INSTACTL_ALERTMANAGER, then the
// stack's monitor host.
func alertmanagerURL(f *Factory, flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if env := os.Getenv(EnvAlertmanager); env != "" {
		return env, nil
	}
	st, err := f.Stack()
	if err != nil {
		return "", err
	}
	u, err := monitor.AlertmanagerURL(st)
	if err != nil {
		return "", withCode(ExitUsage, fmt.Errorf("%w (or name one with --alertmanager or $%s)", err, EnvAlertmanager))
	}
	return u, nil
}

func alertsRun(ctx context.Context, f *Factory, out Output, o *AlertsOptions) error {
	u, err := alertmanagerURL(f, o.Alertmanager)
	if err != nil {
		return err
	}
	as, err := monitor.NewClient(u).Alerts(ctx, o.All)
	if err != nil {
		return alertmanagerHint(err)
	}
	views := alertViews(as)
	return render(f.IO, out, views, func(w io.Writer) error { return renderAlerts(w, views, time.Now()) })
}

// alertViews orders alerts critical first, then by how long they fire (longest first).
func alertViews(as []monitor.Alert) []AlertView {
	views := make([]AlertView, 0, len(as))
	for _, a := range as {
		views = append(views, AlertView{Name: a.Name(), Severity: a.Labels[monitor.LabelSeverity],
			Group: a.Labels[monitor.LabelGroup], Host: a.Labels[monitor.LabelHost], State: a.Status.State,
			SilencedBy: a.Status.SilencedBy, Since: a.StartsAt, Summary: a.Annotations[monitor.AnnotationSummary],
			Command: a.Command(), Labels: a.Labels})
	}
	rank := func(s string) int {
		switch s {
		case monitor.SeverityCritical:
			return 0
		case monitor.SeverityWarning:
			return 1
		}
		return 2
	}
	sort.SliceStable(views, func(i, j int) bool {
		a, b := views[i], views[j]
		if rank(a.Severity) != rank(b.Severity) {
			return rank(a.Severity) < rank(b.Severity)
		}
		if !a.Since.Equal(b.Since) {
			return a.Since.Before(b.Since)
		}
		return a.Name+a.Group+a.Host < b.Name+b.Group+b.Host
	})
	return views
}

func renderAlerts(w io.Writer, views []AlertView, now time.Time) error {
	if len(views) == 0 {
		_, err := fmt.Fprintln(w, "No alerts firing.")
		return err
	}
	for _, v := range views {
		where := "group " + v.Group
		if v.Host != "" {
			where = "host " + v.Host
		}
		state := ""
		if v.State != "" && v.State != "active" {
			state = " (" + v.State
			if len(v.SilencedBy) > 0 {
				state += " by silence " + strings.Join(v.SilencedBy, ", ")
			}
			state += ")"
		}
		fmt.Fprintf(w, "%-8s  %s  %s  firing for %s%s\n", v.Severity, v.Name, where, monitorAge(now.Sub(v.Since)), state)
		if v.Summary != "" {
			fmt.Fprintf(w, "          %s\n", v.Summary)
		}
		cmd := v.Command
		if cmd == "" {
			cmd = "(this alert names no command)"
		}
		if _, err := fmt.Fprintf(w, "          answer: %s\n", cmd); err != nil {
			return err
		}
	}
	return nil
}

// alertmanagerHint adds what to check to an Alertmanager that does not answer.
func alertmanagerHint(err error) error {
	if strings.Contains(err.Error(), "unreachable") {
		return fmt.Errorf("%w\nis the monitoring host up? see instactl monitor status", err)
	}
	return err
}
