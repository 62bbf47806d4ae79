package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/instactl/instactl/monitor"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
	"github.com/spf13/cobra"
)

// newCmdMonitor is the `instactl monitor` parent command. `monitor rules` lives here; the
// commands that run the monitoring host (`monitor up`, `monitor status`) are added beside it.
func newCmdMonitor(f *Factory, out func() Output) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Prometheus and Alertmanager generated from the stack: rules, configuration, the monitoring host",
		Long: `The stack's monitoring is generated from the stack file, so it always matches the topology:
one scrape target per exporter and host (port plan: node 9100, postgres 9187, redis 9121,
pgbouncer 9127, the app on its port, blackbox 9115, prometheus 9090, alertmanager 9093), alert
rules per host, replication group, backup target and for the app's SLOs, and an Alertmanager
configuration. Every alert names the instactl command that answers it.

Declare the monitoring host in the stack file as a role: monitor: {count: 1}.`,
	}
	cmd.AddCommand(NewCmdMonitorRules(f, out, nil), NewCmdMonitorUp(f, out, nil), NewCmdMonitorStatus(f, out))
	return cmd
}

// addMonitorCommands adds `monitor` (with `monitor rules`), `alerts` and `silence`.
func addMonitorCommands(root *cobra.Command, f *Factory, out func() Output) {
	root.AddCommand(newCmdMonitor(f, out), NewCmdAlerts(f, out, nil), NewCmdSilence(f, out, nil))
}

// MonitorRulesOptions are the flags of `instactl monitor rules`.
type MonitorRulesOptions struct {
	// Dir is where the files go (default: the stack's state directory, subdirectory monitor).
	Dir     string
	Options monitor.Options
}

// MonitorRulesResult is what `monitor rules` reports.
type MonitorRulesResult struct {
	Dir   string            `json:"dir"`
	Files []MonitorRuleFile `json:"files"`
	// Alerts counts the alerting rules, Records the recording rules.
	Alerts  int `json:"alerts"`
	Records int `json:"records"`
}

// MonitorRuleFile is one written file.
type MonitorRuleFile struct {
	Name    string `json:"name"`
	Path    string `json:"path"`
	Bytes   int    `json:"bytes"`
	Changed bool   `json:"changed"`
}

// NewCmdMonitorRules builds `instactl monitor rules`. runF replaces the run in tests.
func NewCmdMonitorRules(f *Factory, out func() Output, runF func(*MonitorRulesOptions) error) *cobra.Command {
	o := &MonitorRulesOptions{}
	cmd := &cobra.Command{
		Use:   "rules",
		Short: "Write Prometheus's configuration and rules and Alertmanager's configuration from the stack",
		Long: `Write, from the stack file and its replication groups, into one directory:

  ` + monitor.FilePrometheus + `               scrape jobs, one static target per host and exporter
  ` + monitor.FileRules + `           alerting and recording rules
  ` + monitor.FileAlertmanager + `             routes, the webhook receiver, inhibitions
  ` + monitor.FilePostgresQueries + `  postgres_exporter queries (replication on the primary, heartbeat)

Files whose content is unchanged are left alone. Check them with:
  promtool check config DIR/` + monitor.FilePrometheus + `
  amtool check-config DIR/` + monitor.FileAlertmanager + `

The alerts rely on instactl writing two metrics files: backup create run with
--metrics-file ` + monitor.BackupMetricsFile + ` on the monitoring host, and the freeze
marker ` + monitor.FreezeMetricsFile + ` on a host whose volumes a backup freezes.`,
		Example: `  instactl monitor rules
  instactl monitor rules --dir ./monitoring --webhook https://pager.example/hook
  instactl monitor rules --backup-interval 6h --availability 0.995`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(o)
			}
			return monitorRulesRun(cmd.Context(), f, out(), o)
		},
	}
	cmd.Flags().StringVar(&o.Dir, "dir", "", "directory to write into (default: the stack's state directory/monitor)")
	addMonitorOptionFlags(cmd, &o.Options)
	return cmd
}

// addMonitorOptionFlags adds the flags of the generated configuration that the stack file does
// not hold; zero values take monitor.DefaultOptions.
func addMonitorOptionFlags(cmd *cobra.Command, o *monitor.Options) {
	d := monitor.DefaultOptions()
	fl := cmd.Flags()
	fl.DurationVar(&o.ScrapeInterval, "scrape-interval", d.ScrapeInterval, "Prometheus scrape and rule evaluation interval")
	fl.DurationVar(&o.BackupInterval, "backup-interval", d.BackupInterval, "how often backup create runs; a target without a set newer than 1.5× this alerts")
	fl.DurationVar(&o.ArchiveMaxAge, "archive-max-age", d.ArchiveMaxAge, "how old a primary's newest archived WAL segment may get")
	fl.Float64Var(&o.Availability, "availability", d.Availability, "availability SLO: fraction of requests that must not answer 5xx")
	fl.Float64Var(&o.LatencyTarget, "latency-target", d.LatencyTarget, "latency SLO: fraction of requests within --latency-threshold")
	fl.Float64Var(&o.LatencyThreshold, "latency-threshold", d.LatencyThreshold, "latency SLO bound in seconds (a bucket of the app's histogram)")
	fl.Float64Var(&o.MinRequestRate, "min-request-rate", d.MinRequestRate, "requests per second below which burn-rate alerts stay quiet")
	fl.IntVar(&o.PgBouncerMaxClientConn, "pgbouncer-max-client-conn", d.PgBouncerMaxClientConn, "PgBouncer's max_client_conn (the exporter does not report it)")
	fl.StringVar(&o.WebhookURL, "webhook", d.WebhookURL, "URL that receives critical alerts (a pager's webhook)")
}

// monitorRulesDir is where `monitor rules` writes by default.
func monitorRulesDir(st *stack.Stack) string { return filepath.Join(stateDir(st), "monitor") }

func monitorRulesRun(_ context.Context, f *Factory, out Output, o *MonitorRulesOptions) error {
	st, err := f.Stack()
	if err != nil {
		return err
	}
	if _, _, err := monitor.MonitorHost(st); err != nil {
		return withCode(ExitUsage, err)
	}
	// Groups and their members are the stack's; which member is primary now does not change
	// the rules (they find the primary from the metrics).
	topo, err := topology.FromStack(st)
	if err != nil {
		return err
	}
	files, err := monitor.Files(st, topo, o.Options)
	if err != nil {
		return usageErrorf("monitor rules: %v", err)
	}
	rf, err := monitor.Rules(st, topo, o.Options)
	if err != nil {
		return usageErrorf("monitor rules: %v", err)
	}
	dir := o.Dir
	if dir == "" {
		dir = monitorRulesDir(st)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("monitor rules: %w", err)
	}
	res := MonitorRulesResult{Dir: dir}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				res.Alerts++
			} else {
				res.Records++
			}
		}
	}
	for _, fl := range files {
		path := filepath.Join(dir, fl.Name)
		changed, err := writeIfChanged(path, fl.Data)
		if err != nil {
			return fmt.Errorf("monitor rules: %w", err)
		}
		res.Files = append(res.Files, MonitorRuleFile{Name: fl.Name, Path: path, Bytes: len(fl.Data), Changed: changed})
	}
	return render(f.IO, out, res, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, fl := range res.Files {
			state := "unchanged"
			if fl.Changed {
				state = "written"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", state, fl.Path, humanBytes(int64(fl.Bytes)))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		_, err := fmt.Fprintf(w, "%d alerting and %d recording rules for stack %s.\n", res.Alerts, res.Records, st.Name)
		return err
	})
}

// writeIfChanged replaces path with data atomically (a temporary file renamed over it) unless
// it already holds exactly data: a Prometheus watching the file reloads only on real changes.
func writeIfChanged(path string, data []byte) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, err
	}
	return true, nil
}

// monitorAge is a short "for how long" for views: 45s, 12m, 3h5m, 2d4h.
func monitorAge(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		h := int(d.Hours())
		if m := int(d.Minutes()) % 60; m != 0 {
			return fmt.Sprintf("%dh%dm", h, m)
		}
		return fmt.Sprintf("%dh", h)
	}
	days := int(d.Hours()) / 24
	if h := int(d.Hours()) % 24; h != 0 {
		return fmt.Sprintf("%dd%dh", days, h)
	}
	return fmt.Sprintf("%dd", days)
}
