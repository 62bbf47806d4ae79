package backup

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/instactl/instactl/stack"
)

func TestRenderMetrics(t *testing.T) {
	st := &MetricsState{Series: map[string]*MetricsSeries{
		"pg/bk-pg-1":       {Target: "pg", Host: "bk-pg-1", LastSuccess: time.Unix(1700000000, 0), DurationSeconds: 2.5, FreezeSeconds: 0.04, LagBytes: 128, SizeBytes: 10 << 30},
		"redis/bk-redis-1": {Target: "redis", Host: "bk-redis-1", LastSuccess: time.Unix(1700000100, 0), FreezeSeconds: 0.01},
	}, LastRun: time.Unix(1700000200, 0), LastRunSeconds: 3, LastRunExitCode: 3}
	got := RenderMetrics("bk", st)
	for _, want := range []string{
		"# TYPE instactl_backup_last_success_timestamp_seconds gauge\n",
		`instactl_backup_last_success_timestamp_seconds{stack="bk",target="pg",host="bk-pg-1"} 1.7e+09` + "\n",
		`instactl_backup_freeze_seconds{stack="bk",target="redis",host="bk-redis-1"} 0.01` + "\n",
		`instactl_backup_replica_lag_bytes{stack="bk",target="pg",host="bk-pg-1"} 128` + "\n",
		`instactl_backup_last_run_exit_code{stack="bk"} 3` + "\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("metrics lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, `instactl_backup_replica_lag_bytes{stack="bk",target="redis"`) {
		t.Error("a redis series has a replication lag metric")
	}
}

// TestWriteMetricsKeepsHistory: a run that backs nothing up keeps the last success of every
// series and reports its own exit code; a partial set is no success.
func TestWriteMetricsKeepsHistory(t *testing.T) {
	dir := t.TempDir()
	env := Env{Stack: &stack.Stack{Name: "bk"}, StateDir: dir}
	start := time.Unix(1700000000, 0)
	ok := &Manifest{SetID: "s1", Target: "pg", Host: "bk-pg-1", State: StateComplete, StartedAt: start,
		FreezeDuration: 40 * time.Millisecond, Volumes: []VolumeRecord{{SizeGiB: 2}}, Postgres: &PostgresRecord{LagBytes: 64}}
	partial := &Manifest{SetID: "s2", Target: "redis", Host: "bk-redis-1", State: StatePartial, StartedAt: start}
	run := CreateRun{Result: &CreateResult{Sets: []*Manifest{ok, partial}}, Ended: map[string]time.Time{"s1": start.Add(3 * time.Second)}, Start: start}
	if err := WriteMetrics(env, "", run); err != nil {
		t.Fatal(err)
	}
	if err := WriteMetrics(env, "", CreateRun{Result: &CreateResult{}, Start: start.Add(time.Hour), ExitCode: 4}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	for _, want := range []string{
		`instactl_backup_last_success_timestamp_seconds{stack="bk",target="pg",host="pg-1"} 1.700000003e+09`,
		`instactl_backup_duration_seconds{stack="bk",target="pg",host="pg-1"} 3`,
		`instactl_backup_set_size_bytes{stack="bk",target="pg",host="pg-1"} 2.147483648e+09`,
		`instactl_backup_replica_lag_bytes{stack="bk",target="pg",host="pg-1"} 64`,
		`instactl_backup_last_run_exit_code{stack="bk"} 4`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("metrics lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "redis-1") {
		t.Errorf("a partial set counted as a success:\n%s", got)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// TestWriteMetricsUsesCreateEnds: without CreateRun.Ended, a set's duration runs to the end
// Create recorded in its result, not to the time the metrics are written.
func TestWriteMetricsUsesCreateEnds(t *testing.T) {
	dir := t.TempDir()
	env := Env{Stack: &stack.Stack{Name: "bk"}, StateDir: dir}
	start := time.Unix(1700000000, 0)
	m := &Manifest{SetID: "s1", Target: "pg", Host: "bk-pg-1", State: StateComplete, StartedAt: start}
	res := &CreateResult{Sets: []*Manifest{m}, Ended: map[string]time.Time{"s1": start.Add(5 * time.Second)}}
	if err := WriteMetrics(env, "", CreateRun{Result: res, Start: start}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	want := `instactl_backup_duration_seconds{stack="bk",target="pg",host="pg-1"} 5` + "\n"
	if !strings.Contains(string(b), want) {
		t.Errorf("metrics lack %q:\n%s", want, b)
	}
}

// TestWriteMetricsRenamesOldHosts: a state written when series named hosts by instance name
// (bk-pg-1) is re-keyed by the stack's name (pg-1), so one host never has two series.
func TestWriteMetricsRenamesOldHosts(t *testing.T) {
	dir := t.TempDir()
	env := Env{Stack: &stack.Stack{Name: "bk"}, StateDir: dir}
	old := `{"series":{"pg/bk-pg-1":{"target":"pg","host":"bk-pg-1","last_success":"2023-11-14T22:13:20Z"},` +
		`"redis/bk-redis-1":{"target":"redis","host":"bk-redis-1","last_success":"2023-11-14T22:13:20Z"}}}`
	if err := os.WriteFile(filepath.Join(dir, metricsStateFile), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Unix(1700000600, 0)
	m := &Manifest{SetID: "s1", Target: "pg", Host: "bk-pg-1", State: StateComplete, StartedAt: start}
	res := &CreateResult{Sets: []*Manifest{m}, Ended: map[string]time.Time{"s1": start.Add(5 * time.Second)}}
	if err := WriteMetrics(env, "", CreateRun{Result: res, Start: start}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	for _, want := range []string{
		`instactl_backup_last_success_timestamp_seconds{stack="bk",target="pg",host="pg-1"} 1.700000605e+09`,
		`instactl_backup_last_success_timestamp_seconds{stack="bk",target="redis",host="redis-1"} 1.7e+09`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("metrics lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "bk-") {
		t.Errorf("metrics still name a host by instance name:\n%s", got)
	}
}

// TestWriteMetricsConcurrentRuns: overlapping runs (cron starting `backup create --target pg`
// while `--target redis` still writes) each read, change and write the state; none may lose
// what another wrote.
func TestWriteMetricsConcurrentRuns(t *testing.T) {
	dir := t.TempDir()
	env := Env{Stack: &stack.Stack{Name: "bk"}, StateDir: dir}
	start := time.Unix(1700000000, 0)
	const runs = 16
	var wg sync.WaitGroup
	errs := make(chan error, runs)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := &Manifest{SetID: fmt.Sprintf("s%d", i), Target: "pg", Host: fmt.Sprintf("bk-pg-%d", i), State: StateComplete, StartedAt: start}
			errs <- WriteMetrics(env, "", CreateRun{Result: &CreateResult{Sets: []*Manifest{m}}, Start: start})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, MetricsFile))
	if err != nil {
		t.Fatal(err)
	}
	for i := range runs {
		if want := fmt.Sprintf(`host="pg-%d"`, i); !strings.Contains(string(b), want) {
			t.Errorf("the update of run %d was lost: no %s in\n%s", i, want, b)
		}
	}
}
