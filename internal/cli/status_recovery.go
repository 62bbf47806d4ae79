package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/instactl/instactl/monitor"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// EnvPrometheus overrides the Prometheus `instactl status` asks for backup age and the
// recoverable point (by default the stack's monitor host, port 9090).
const EnvPrometheus = "INSTACTL_PROMETHEUS"

// StatusRecovery is the recovery section of `instactl status`: per replication group the
// newest backup and the newest point a restore reaches, from the metrics the alerts read.
type StatusRecovery struct {
	Prometheus string                  `json:"prometheus"`
	Groups     []monitor.RecoveryPoint `json:"groups"`
	// MetricsFileAgeSeconds is how old the backup metrics file is; -1 when no node exporter
	// serves it (backup times are then unknown, not old).
	MetricsFileAgeSeconds float64 `json:"metrics_file_age_seconds"`
}

// statusRecovery asks the stack's Prometheus (or $INSTACTL_PROMETHEUS), within a few seconds.
func statusRecovery(ctx context.Context, st *stack.Stack, topo topology.Topology) (*StatusRecovery, error) {
	u := os.Getenv(EnvPrometheus)
	if u == "" {
		var err error
		if u, err = monitor.PrometheusURL(st); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	points, age, err := monitor.RecoveryPoints(ctx, monitor.NewPromClient(u), topo)
	if err != nil {
		return nil, err
	}
	return &StatusRecovery{Prometheus: u, Groups: points, MetricsFileAgeSeconds: age.Seconds()}, nil
}

// renderRecovery prints the recovery section; nothing for a stack without monitoring.
func renderRecovery(w io.Writer, r *StatusRecovery, errText string, now time.Time) {
	if r == nil && errText == "" {
		return
	}
	if r == nil {
		fmt.Fprintf(w, "\nRecovery:\n  unavailable: %s\n", errText)
		return
	}
	if r.MetricsFileAgeSeconds < 0 {
		fmt.Fprintf(w, "\nRecovery (%s):\n  backup times unknown: no node exporter serves %s (run backup create with --metrics-file %s on the monitoring host)\n",
			r.Prometheus, monitor.BackupMetricsFile, monitor.BackupMetricsFile)
	} else {
		fmt.Fprintf(w, "\nRecovery (%s; backup metrics written %s ago):\n", r.Prometheus,
			monitorAge(time.Duration(r.MetricsFileAgeSeconds*float64(time.Second))))
	}
	at := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339) + " (" + monitorAge(now.Sub(t)) + " ago)"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tLAST BACKUP\tOF\tWAL ARCHIVED TO\tRECOVERABLE TO")
	for _, g := range r.Groups {
		of, rec := g.BackupHost, at(g.RecoverableTo)
		if g.LastBackup.IsZero() {
			of, rec = "-", "nothing: no backup (instactl backup create)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", g.Group, at(g.LastBackup), of, at(g.ArchivedTo), rec)
	}
	tw.Flush()
}
