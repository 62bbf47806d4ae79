package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/instactl/instactl/errtext"
	"github.com/instactl/instactl/monitor"
	"github.com/instactl/instactl/monitorhost"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// MonitorUpOptions are the flags of `instactl monitor up`.
type MonitorUpOptions struct {
	ScrapeInterval time.Duration
	AlertFor       time.Duration
	// ArchiveMaxAge overrides how old a primary's newest archived WAL segment may get (0: the
	// default of package monitor).
	ArchiveMaxAge     time.Duration
	AcceptNewHostKeys bool
}

// NewCmdMonitorUp installs the generated configuration on the monitor host. runF, when set,
// receives the parsed options instead of running (tests).
func NewCmdMonitorUp(f *Factory, out func() Output, runF func(*MonitorUpOptions) error) *cobra.Command {
	o := &MonitorUpOptions{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Install the generated Prometheus and Alertmanager configuration and (re)start them",
		Long: `Generate the Prometheus configuration (every exporter of every host, the app servers' /metrics,
the blackbox probes), the alert rules and the Alertmanager configuration from the stack file and
the topology (the files ` + "`instactl monitor rules`" + ` writes), copy them to the monitor
host over SSH, check them there with promtool and amtool, and only then replace the old ones;
start Prometheus, Alertmanager and blackbox_exporter if they are stopped and reload the running
ones. A configuration the tools reject changes nothing (exit 1, their words on stderr).
Works the same on the sandbox and on AWS: everything goes through SSH to the monitor host.`,
		Example: `  instactl monitor up
  instactl monitor up --scrape-interval 30s
  # a drill: no alert waits longer than 10 s once its condition holds
  instactl monitor up --scrape-interval 2s --alert-for 10s
  # a drill of the WAL archive (its archive_timeout of seconds): a stopped archive fires after 30 s
  instactl monitor up --scrape-interval 2s --alert-for 10s --archive-max-age 30s`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.ScrapeInterval < time.Second || o.ScrapeInterval > 10*time.Minute {
				return usageErrorf("--scrape-interval must be 1s-10m (got %s)", o.ScrapeInterval)
			}
			if o.AlertFor < 0 || o.AlertFor%time.Second != 0 {
				return usageErrorf("--alert-for must be whole seconds such as 30s (got %s)", o.AlertFor)
			}
			if o.ArchiveMaxAge != 0 && (o.ArchiveMaxAge < 10*time.Second || o.ArchiveMaxAge%time.Second != 0) {
				return usageErrorf("--archive-max-age must be whole seconds from 10s, such as 15m (got %s)", o.ArchiveMaxAge)
			}
			if runF != nil {
				return runF(o)
			}
			return monitorUpRun(cmd.Context(), f, out(), o)
		},
	}
	fl := cmd.Flags()
	fl.DurationVar(&o.ScrapeInterval, "scrape-interval", monitor.DefaultOptions().ScrapeInterval, "how often every target is scraped and the rules evaluated")
	fl.DurationVar(&o.AlertFor, "alert-for", 0, "cap every alert's for: duration (drills and tests; default: each rule's own)")
	fl.DurationVar(&o.ArchiveMaxAge, "archive-max-age", 0, "how old a primary's newest archived WAL segment may get (drills; default: "+monitor.DefaultOptions().ArchiveMaxAge.String()+")")
	fl.BoolVar(&o.AcceptNewHostKeys, "accept-new-host-keys", false, "record the monitor host's key if it is not known yet (never a changed one)")
	return cmd
}

func monitorUpRun(ctx context.Context, f *Factory, out Output, opts *MonitorUpOptions) error {
	st, err := f.Stack()
	if err != nil {
		return err
	}
	h, err := monitorhost.HostOf(st)
	if err != nil {
		return usageErrorf("%v", err)
	}
	topo, err := statusTopology(ctx, f, st)
	if err != nil {
		return err
	}
	o := monitor.DefaultOptions()
	o.ScrapeInterval, o.MaxFor = opts.ScrapeInterval, opts.AlertFor
	if opts.ArchiveMaxAge != 0 {
		o.ArchiveMaxAge = opts.ArchiveMaxAge
	}
	files, err := monitorConfig(st, topo, o)
	if err != nil {
		return err
	}
	pool, err := f.SSH(opts.AcceptNewHostKeys)
	if err != nil {
		return err
	}
	defer pool.Close()
	res, err := monitorhost.Up(ctx, pool, h, files)
	if err != nil {
		return err
	}
	return render(f.IO, out, res, func(w io.Writer) error {
		fmt.Fprintf(w, "%s: installed %s\n", res.Host, strings.Join(res.Files, ", "))
		if len(res.Started) > 0 {
			fmt.Fprintf(w, "%s: started %s\n", res.Host, strings.Join(res.Started, ", "))
		}
		fmt.Fprintf(w, "%s: reloaded %s\n", res.Host, strings.Join(res.Reloaded, ", "))
		fmt.Fprintf(w, "Prometheus   %s\nAlertmanager %s\n", res.PrometheusURL, res.AlertmanagerURL)
		return nil
	})
}

// monitorConfig renders the monitor host's configuration with package monitor (the files
// `instactl monitor rules` writes): Prometheus' configuration and rules and Alertmanager's.
// postgres_exporter's queries are left out: the Postgres hosts have them from their user data
// (templates renders the same text, TestMonitorTemplatesAgree checks it).
func monitorConfig(st *stack.Stack, topo topology.Topology, o monitor.Options) (monitorhost.Files, error) {
	gen, err := monitor.Files(st, topo, o)
	if err != nil {
		return nil, err
	}
	files := monitorhost.Files{}
	for _, f := range gen {
		if f.Name != monitor.FilePostgresQueries {
			files[f.Name] = string(f.Data)
		}
	}
	return files, nil
}

// MonitorStatusView is what `instactl monitor status` shows.
type MonitorStatusView struct {
	Host          string                  `json:"host"`
	PrometheusURL string                  `json:"prometheus_url"`
	Targets       []monitorhost.Target    `json:"targets"`
	RuleGroups    []monitorhost.RuleGroup `json:"rule_groups"`
	// Healthy is false when a target is down or a rule's last evaluation failed.
	Healthy bool `json:"healthy"`
}

// NewCmdMonitorStatus shows the targets and rule health Prometheus reports.
func NewCmdMonitorStatus(f *Factory, out func() Output) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Targets up or down and rule evaluation health, from Prometheus",
		Long: `Ask Prometheus on the monitor host (through SSH) for every scrape target with its health and
last error (/api/v1/targets), and for every rule group with the health of its last evaluation
and its firing and pending alerts (/api/v1/rules). Exits 1 when a target is down or a rule
failed to evaluate.`,
		Example: `  instactl monitor status
  instactl monitor status -o json | jq '.targets[] | select(.health != "up")'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := monitorStatusCollect(cmd.Context(), f)
			if err != nil {
				return err
			}
			if err := render(f.IO, out(), v, func(w io.Writer) error { return monitorStatusRender(w, v) }); err != nil {
				return err
			}
			if !v.Healthy {
				return silentExit{ExitError}
			}
			return nil
		},
	}
}

func monitorStatusCollect(ctx context.Context, f *Factory) (*MonitorStatusView, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, err
	}
	h, err := monitorhost.HostOf(st)
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	pool, err := f.SSH(false)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	c, err := pool.Get(ctx, h.Target)
	if err != nil {
		return nil, err
	}
	api := monitorhost.NewAPI(c, h)
	v := &MonitorStatusView{Host: h.Target.Name, PrometheusURL: h.PrometheusURL(), Healthy: true}
	if v.Targets, err = api.Targets(ctx); err != nil {
		return nil, err
	}
	if v.RuleGroups, err = api.RuleGroups(ctx); err != nil {
		return nil, err
	}
	sort.SliceStable(v.Targets, func(i, j int) bool {
		a, b := v.Targets[i], v.Targets[j]
		if a.Job != b.Job {
			return a.Job < b.Job
		}
		return a.Host < b.Host
	})
	for _, t := range v.Targets {
		if t.Health == "down" {
			v.Healthy = false
		}
	}
	for _, g := range v.RuleGroups {
		if g.Unhealthy > 0 {
			v.Healthy = false
		}
	}
	return v, nil
}

func monitorStatusRender(w io.Writer, v *MonitorStatusView) error {
	up := 0
	for _, t := range v.Targets {
		if t.Health == "up" {
			up++
		}
	}
	fmt.Fprintf(w, "Prometheus on %s (%s): %d of %d targets up\n\n", v.Host, v.PrometheusURL, up, len(v.Targets))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tHOST\tINSTANCE\tHEALTH\tLAST SCRAPE\tERROR")
	for _, t := range v.Targets {
		last := "-"
		if !t.LastScrape.IsZero() {
			last = time.Since(t.LastScrape).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Job, dash(t.Host), t.Instance, strings.ToUpper(t.Health), last, errtext.OneLine(t.LastError))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE GROUP\tRULES\tHEALTH\tFIRING\tPENDING\tLAST EVALUATION")
	for _, g := range v.RuleGroups {
		health := "ok"
		if g.Unhealthy > 0 {
			health = fmt.Sprintf("%d failing", g.Unhealthy)
		}
		last := "never"
		if !g.LastEvaluation.IsZero() {
			last = fmt.Sprintf("%s ago (%.3fs)", time.Since(g.LastEvaluation).Round(time.Second), g.EvaluationTime)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\n", g.Name, g.Rules, health, g.Firing, g.Pending, last)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, g := range v.RuleGroups {
		for _, e := range g.Errors {
			fmt.Fprintf(w, "%s: %s\n", g.Name, errtext.OneLine(e))
		}
	}
	return nil
}

// dash shows an empty cell as "-".
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
