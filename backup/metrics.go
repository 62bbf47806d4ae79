package backup

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// MetricsFile is the default Prometheus text file, under Env.StateDir.
const MetricsFile = "backup.prom"

// metricsStateFile keeps the metrics between runs, under Env.StateDir.
const metricsStateFile = "backup-metrics.json"

// MetricsSeries is the metrics state of one target and host, kept between runs so a target that
// fails keeps reporting its last success.
type MetricsSeries struct {
	Target          string    `json:"target"`
	Host            string    `json:"host"`
	LastSuccess     time.Time `json:"last_success"`
	DurationSeconds float64   `json:"duration_seconds"`
	FreezeSeconds   float64   `json:"freeze_seconds"`
	LagBytes        int64     `json:"lag_bytes"`
	SizeBytes       int64     `json:"size_bytes"`
}

// MetricsState is every series and the last run, as kept between runs.
type MetricsState struct {
	Series          map[string]*MetricsSeries `json:"series"`
	LastRun         time.Time                 `json:"last_run"`
	LastRunSeconds  float64                   `json:"last_run_seconds"`
	LastRunExitCode int                       `json:"last_run_exit_code"`
}

// CreateRun is one finished run of Create, as the metrics record it.
type CreateRun struct {
	Result *CreateResult
	// Ended maps a set id to the time its manifest was recorded: the end of that replica's run
	// (the "manifest" progress event). Nil uses Result.Ended, which Create fills; a set missing
	// from it ends now.
	Ended map[string]time.Time
	Start time.Time
	// ExitCode is the run's exit code (0 ok, 3 unsafe, 4 locked, 5 partial, 1 failed).
	ExitCode int
}

// WriteMetrics adds run to the metrics state kept in env.StateDir and rewrites the Prometheus
// text file at path (default StateDir/backup.prom) atomically, for the node exporter's textfile
// collector.
func WriteMetrics(env Env, path string, run CreateRun) error {
	if path == "" {
		path = filepath.Join(env.StateDir, MetricsFile)
	}
	statePath := filepath.Join(env.StateDir, metricsStateFile)
	// Runs of different targets overlap (each takes only its own replicas' locks), and each
	// reads, changes and rewrites the state: without this lock one run's update is lost.
	unlock, err := lockFile(statePath + ".lock")
	if err != nil {
		return fmt.Errorf("metrics state: %w", err)
	}
	defer unlock()
	st := &MetricsState{}
	if b, err := os.ReadFile(statePath); err == nil {
		_ = json.Unmarshal(b, st) // a damaged state only loses the history
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("metrics state: %w", err)
	}
	// Series of older runs may name hosts by instance name: re-key them by the stack's name.
	series := map[string]*MetricsSeries{}
	for _, s := range st.Series {
		s.Host = hostInStack(env.Stack.Name, s.Host)
		series[s.Target+"/"+s.Host] = s
	}
	st.Series = series
	now := time.Now()
	var sets []*Manifest
	ended := run.Ended
	if run.Result != nil {
		sets = run.Result.Sets
		if ended == nil {
			ended = run.Result.Ended
		}
	}
	for _, m := range sets {
		if m.State == StatePartial {
			continue
		}
		end, ok := ended[m.SetID]
		if !ok {
			end = now
		}
		s := &MetricsSeries{Target: m.Target, Host: hostInStack(env.Stack.Name, m.Host), LastSuccess: end.UTC(),
			DurationSeconds: end.Sub(m.StartedAt).Seconds(), FreezeSeconds: m.FreezeDuration.Seconds()}
		for _, v := range m.Volumes {
			s.SizeBytes += int64(v.SizeGiB) << 30
		}
		if m.Postgres != nil {
			s.LagBytes = m.Postgres.LagBytes
		}
		st.Series[s.Target+"/"+s.Host] = s
	}
	st.LastRun, st.LastRunSeconds, st.LastRunExitCode = run.Start.UTC(), now.Sub(run.Start).Seconds(), run.ExitCode
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(statePath, b); err != nil {
		return fmt.Errorf("metrics state: %w", err)
	}
	if err := writeAtomic(path, []byte(RenderMetrics(env.Stack.Name, st))); err != nil {
		return fmt.Errorf("metrics file: %w", err)
	}
	return nil
}

// hostInStack is the host's name within the stack (pg-1) for its instance name (stack-pg-1):
// the monitoring names hosts so in every label (instance, host), and `instactl status` joins
// the backup metrics to the replication groups by it.
func hostInStack(stackName, instanceName string) string {
	return strings.TrimPrefix(instanceName, stackName+"-")
}

// RenderMetrics renders st in the Prometheus text exposition format.
func RenderMetrics(stackName string, st *MetricsState) string {
	var b strings.Builder
	keys := make([]string, 0, len(st.Series))
	for k := range st.Series {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	gauge := func(name, help string, val func(*MetricsSeries) (float64, bool)) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		for _, k := range keys {
			s := st.Series[k]
			if v, ok := val(s); ok {
				fmt.Fprintf(&b, "%s{stack=%q,target=%q,host=%q} %g\n", name, stackName, s.Target, s.Host, v)
			}
		}
	}
	gauge("instactl_backup_last_success_timestamp_seconds", "Unix time the last usable set of this replica was recorded.",
		func(s *MetricsSeries) (float64, bool) { return float64(s.LastSuccess.Unix()), true })
	gauge("instactl_backup_duration_seconds", "Duration of the last successful backup of this replica.",
		func(s *MetricsSeries) (float64, bool) { return s.DurationSeconds, true })
	gauge("instactl_backup_freeze_seconds", "How long the replica's volumes were frozen in the last successful backup.",
		func(s *MetricsSeries) (float64, bool) { return s.FreezeSeconds, true })
	gauge("instactl_backup_replica_lag_bytes", "Replay lag of the Postgres standby behind its primary at the last snapshot.",
		func(s *MetricsSeries) (float64, bool) { return float64(s.LagBytes), s.Target == TargetPostgres })
	gauge("instactl_backup_set_size_bytes", "Provisioned size of the volumes in the last successful set.",
		func(s *MetricsSeries) (float64, bool) { return float64(s.SizeBytes), true })
	for _, m := range []struct {
		name, help string
		v          float64
	}{
		{"instactl_backup_last_run_timestamp_seconds", "Unix time the last backup create run started.", float64(st.LastRun.Unix())},
		{"instactl_backup_last_run_duration_seconds", "Duration of the last backup create run.", st.LastRunSeconds},
		{"instactl_backup_last_run_exit_code", "Exit code of the last backup create run (0 ok, 3 unsafe, 4 locked, 5 partial, 1 failed).", float64(st.LastRunExitCode)},
	} {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n%s{stack=%q} %g\n", m.name, m.help, m.name, m.name, stackName, m.v)
	}
	return b.String()
}

// writeAtomic writes data to path through a temporary file and a rename, so a reader (the node
// exporter) never sees half a file.
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// lockFile takes an exclusive flock on path (created if missing), waiting for other holders,
// and returns its release. The kernel drops the lock if the process dies.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
