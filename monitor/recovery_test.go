package monitor

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/testenv"
)

// startPrometheus runs the real Prometheus scraping, every second, one static exporter per
// target (job, instance and the text it serves), and returns its client.
func startPrometheus(t *testing.T, targets []struct{ job, instance, text string }) *PromClient {
	t.Helper()
	bin := testenv.Require(t, "prometheus", "prometheus")
	var cfg strings.Builder
	cfg.WriteString("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n")
	jobs := map[string][]string{}
	var order []string
	for _, tg := range targets {
		text := tg.text
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			fmt.Fprint(w, text)
		}))
		t.Cleanup(srv.Close)
		if _, ok := jobs[tg.job]; !ok {
			order = append(order, tg.job)
		}
		jobs[tg.job] = append(jobs[tg.job], fmt.Sprintf("      - targets: [%q]\n        labels: {instance: %q}\n", strings.TrimPrefix(srv.URL, "http://"), tg.instance))
	}
	for _, j := range order {
		fmt.Fprintf(&cfg, "  - job_name: %s\n    static_configs:\n%s", j, strings.Join(jobs[j], ""))
	}
	dir := t.TempDir()
	path := filepath.Join(dir, FilePrometheus)
	if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t, "127.0.0.1")))
	p := testenv.Start(t, syscall.SIGTERM, bin, "--config.file="+path, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr)
	if err := testenv.WaitTCP(addr, 60*time.Second); err != nil {
		t.Fatalf("prometheus: %v\n%s", err, p.Log.String())
	}
	return NewPromClient("http://" + addr)
}

// TestRecoveryPoints feeds a real Prometheus the metrics the backup metrics file and
// postgres_exporter serve, and reads each group's newest backup, archived WAL and recoverable
// point back: archived WAL past the backup extends it, no archiving leaves the backup's time,
// no backup recovers nothing; a standby's never-archived counters are ignored.
func TestRecoveryPoints(t *testing.T) {
	_, topo := exampleStack(t)
	now := time.Now()
	pg1 := now.Add(-2 * time.Hour).Truncate(time.Second).UTC()
	pg3 := now.Add(-90 * time.Minute).Truncate(time.Second).UTC()
	old := now.Add(-30 * time.Hour).Truncate(time.Second).UTC() // pg-0's set from before a switchover
	c := startPrometheus(t, []struct{ job, instance, text string }{
		{JobNode, "monitor-0", fmt.Sprintf(
			"%s{stack=\"s\",target=\"pg\",host=\"pg-1\"} %d\n%s{stack=\"s\",target=\"pg\",host=\"pg-3\"} %d\n%s{stack=\"s\",target=\"pg\",host=\"pg-0\"} %d\n"+
				"node_textfile_mtime_seconds{file=%q} %d\n",
			MetricBackupLastSuccess, pg1.Unix(), MetricBackupLastSuccess, pg3.Unix(), MetricBackupLastSuccess, old.Unix(),
			BackupMetricsFile, now.Add(-40*time.Second).Unix())},
		{JobPostgres, "pg-0", "pg_stat_archiver_last_archive_age 60\npg_stat_archiver_archived_count 12\n"},
		{JobPostgres, "pg-1", "pg_stat_archiver_last_archive_age NaN\npg_stat_archiver_archived_count 0\n"},
		{JobPostgres, "pg-2", "pg_stat_archiver_archived_count 0\n"},
	})
	ctx := context.Background()
	var points []RecoveryPoint
	var fileAge time.Duration
	deadline := time.Now().Add(60 * time.Second)
	for {
		var err error
		points, fileAge, err = RecoveryPoints(ctx, c, topo)
		if err == nil && len(points) == 3 && !points[0].ArchivedTo.IsZero() && !points[1].LastBackup.IsZero() && fileAge >= 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery points after 60s: %+v, %v", points, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	near := func(got, want time.Time, slack time.Duration) bool {
		return got.After(want.Add(-slack)) && got.Before(want.Add(slack))
	}
	pg0, pg2, redis := points[0], points[1], points[2]
	if pg0.Group != "pg-0" || !pg0.LastBackup.Equal(pg1) || pg0.BackupHost != "pg-1" || !near(pg0.ArchivedTo, now.Add(-time.Minute), 30*time.Second) ||
		!pg0.RecoverableTo.Equal(pg0.ArchivedTo) {
		t.Errorf("pg-0: %+v; want backup %s of pg-1, archived to about a minute ago, recoverable to that", pg0, pg1)
	}
	if pg2.Group != "pg-2" || !pg2.LastBackup.Equal(pg3) || pg2.BackupHost != "pg-3" || !pg2.ArchivedTo.IsZero() || !pg2.RecoverableTo.Equal(pg3) {
		t.Errorf("pg-2: %+v; want backup %s of pg-3, no archiving, recoverable to the backup", pg2, pg3)
	}
	if redis.Group != "redis-0" || !redis.LastBackup.IsZero() || !redis.RecoverableTo.IsZero() {
		t.Errorf("redis-0: %+v; want nothing recoverable", redis)
	}
	if fileAge < 30*time.Second || fileAge > 5*time.Minute {
		t.Errorf("metrics file age %s, want about 40s", fileAge)
	}
	if _, err := c.Query(ctx, "rate(up["); err == nil || !strings.Contains(err.Error(), "parse error") {
		t.Errorf("a bad query: %v, want Prometheus's parse error", err)
	}
}
