package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/instactl/instactl/backup"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/monitor"
	"github.com/instactl/instactl/monitorhost"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/topology"
)

// The monitoring test's own loopback range and ports, and its shortened clock: every target is
// scraped and every rule evaluated each 2 s, and no alert waits longer than 6 s (monitor up
// --alert-for caps every for:). An alert should then fire within for: + two scrape intervals,
// 10 s, of its condition; the test waits up to 90 s (no timing is asserted) and logs the time.
const (
	monitorTestBase     = "127.0.158.1"
	monitorTestLBPort   = 18158
	monitorTestMotoPort = 15158
	monitorTestScrape   = 2 * time.Second
	monitorTestFor      = 6 * time.Second
	// monitorTestQuiet is how long a healthy stack must raise no alert at all, not even a
	// pending one: the 2 minutes, 60 evaluations and 20 for: windows at the test's
	// shortened clock.
	monitorTestQuiet = 2 * time.Minute
	// monitorTestFreezeBudget is the stack's backup.freeze_budget (short, so the frozen-volume
	// alert fires soon).
	monitorTestFreezeBudget = 15 * time.Second
	// monitorTestArchiveTimeout is the stack's backup.archive_timeout: with the primary's
	// heartbeat (monitor.HeartbeatInterval) writing WAL, a segment is archived every 10 s or so.
	monitorTestArchiveTimeout = 5 * time.Second
	// monitorTestArchiveMaxAge is monitor up's --archive-max-age: above the healthy archive's
	// rhythm with a margin, short enough that a stopped archive fires soon.
	monitorTestArchiveMaxAge = 30 * time.Second
)

func TestMonitorUpOptionsCaptured(t *testing.T) {
	var got *MonitorUpOptions
	cmd := NewCmdMonitorUp(&Factory{IO: &IOStreams{}}, func() Output { return OutputText }, func(o *MonitorUpOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"--scrape-interval", "30s", "--alert-for", "10s", "--archive-max-age", "20s"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got.ScrapeInterval != 30*time.Second || got.AlertFor != 10*time.Second || got.ArchiveMaxAge != 20*time.Second {
		t.Fatalf("options = %+v", got)
	}
	for _, args := range [][]string{{"--scrape-interval", "100ms"}, {"--alert-for", "1500ms"}, {"--scrape-interval", "1h"},
		{"--archive-max-age", "5s"}, {"--archive-max-age", "10500ms"}} {
		_, stderr, code := run(t, append([]string{"monitor", "up"}, args...)...)
		if code != ExitUsage || !strings.Contains(stderr, args[0]) {
			t.Errorf("monitor up %v: exit %d, %s", args, code, stderr)
		}
	}
}

// monitorTestStack writes the smallest stack the monitoring drill needs: one app server (its
// PgBouncer and /metrics), a Postgres pair, a Redis pair and memcached (the app needs both) and
// the monitor; pg and redis are the backup targets. The WAL archive is on: archive_timeout
// switches a 16 MiB segment about every heartbeat, kept in pg_wal until a checkpoint (5 min),
// so the volumes are 1 GiB: on 300 MiB, pg_wal alone filled 40% within a minute and
// DiskWillFillIn24h (less than 40% free and shrinking) was pending on a healthy stack.
func monitorTestStack(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	data := fmt.Sprintf(`name: montest
provider: sandbox
network:
  address_base: %s
roles:
  app: {count: 1}
  pg: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 1, mount: /var/lib/postgresql}}
  redis: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 1, mount: /var/lib/redis}}
  memcached: {count: 1}
  monitor: {}
shards:
  logical: 4
deploy:
  batches: [100%%]
  health_timeout: 60s
backup:
  freeze_budget: %s
  wal_archive: true
  archive_timeout: %s
sandbox:
  dir: %s
  volume_size_mib: 1024
  lb_port: %d
  moto_port: %d
`, monitorTestBase, monitorTestFreezeBudget, monitorTestArchiveTimeout, filepath.Join(dir, "sandbox"), monitorTestLBPort, monitorTestMotoPort)
	path := filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestMonitorSandboxAlerts is the monitoring drill against the real sandbox, with the rules of
// package monitor as monitor up installs them: every target up, a backup run whose metrics the
// monitor host's node exporter serves, then not one alert for monitorTestQuiet; then each fault
// makes its alert fire (Prometheus' /api/v1/alerts, and Alertmanager receives it) and clear
// after the fix: a standby's replication stopped, an exporter killed, a data volume filled, a
// volume frozen past the freeze budget, a backup run failing (the Redis replica's link cut),
// the primary's WAL archiver gone (the stack archives WAL as backup.wal_archive asks).
func TestMonitorSandboxAlerts(t *testing.T) {
	requireSandbox(t)
	for bin, pkg := range map[string]string{"prometheus": "prometheus", "promtool": "prometheus", "prometheus-alertmanager": "prometheus-alertmanager",
		"amtool": "prometheus-alertmanager", "prometheus-node-exporter": "prometheus-node-exporter", "prometheus-postgres-exporter": "prometheus-postgres-exporter",
		"prometheus-redis-exporter": "prometheus-redis-exporter", "prometheus-pgbouncer-exporter": "prometheus-pgbouncer-exporter",
		"prometheus-blackbox-exporter": "prometheus-blackbox-exporter"} {
		testenv.Require(t, bin, pkg)
	}
	path := monitorTestStack(t)
	// The hosts run the instactl binary as archive_command (deploy does not install it yet):
	// it builds while the sandbox comes up. A test that stops early kills the build and waits
	// for it.
	archiver := make(chan string, 1)
	buildCtx, stopBuild := context.WithCancel(context.Background())
	out := filepath.Join(t.TempDir(), "instactl")
	build := exec.CommandContext(buildCtx, "go", "build", "-o", out, "github.com/instactl/instactl/cmd/instactl")
	var buildLog strings.Builder
	build.Stdout, build.Stderr = &buildLog, &buildLog
	if err := build.Start(); err != nil {
		t.Fatalf("build instactl: %v", err)
	}
	t.Cleanup(func() { stopBuild(); <-archiver })
	go func() {
		if err := build.Wait(); err != nil {
			t.Logf("build instactl: %v\n%s", err, buildLog.String())
			out = ""
		}
		archiver <- out
		close(archiver)
	}()
	st := sandboxUp(t, path)
	cli := func(args ...string) (string, string, int) {
		return run(t, append([]string{"--stack", path}, args...)...)
	}
	f := NewFactory(&IOStreams{}, &path)
	pool, err := f.SSH(false)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx := context.Background()
	installArchiver(t, st, pool, <-archiver)

	if stdout, stderr, code := cli("shard", "init"); code != 0 {
		t.Fatalf("shard init: exit %d\n%s%s", code, stdout, stderr)
	}
	if stdout, stderr, code := cli("deploy", "--version", "v1"); code != 0 {
		t.Fatalf("deploy: exit %d\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code := cli("monitor", "up", "--scrape-interval", monitorTestScrape.String(), "--alert-for", monitorTestFor.String(),
		"--archive-max-age", monitorTestArchiveMaxAge.String())
	if code != 0 || !strings.Contains(stdout, "reloaded prometheus, alertmanager") {
		t.Fatalf("monitor up: exit %d\n%s%s", code, stdout, stderr)
	}

	mon, err := monitorhost.HostOf(st)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pool.Get(ctx, mon.Target)
	if err != nil {
		t.Fatal(err)
	}
	api := monitorhost.NewAPI(c, mon)

	// backup runs `backup create` as cron on the monitor host would: its metrics file lands in
	// that host's textfile directory (written beside it, then renamed). It returns the exit code.
	metrics := filepath.Join(t.TempDir(), "instactl_backup.prom")
	backupRun := func(target string) int {
		t.Helper()
		stdout, stderr, code := cli("backup", "create", "--target", target, "--metrics-file", metrics)
		t.Logf("backup create --target %s: exit %d %s%s", target, code, stdout, stderr)
		b, err := os.ReadFile(metrics)
		if err != nil {
			t.Fatal(err)
		}
		dst := monitor.BackupMetricsFile
		cmd := remote.Script("cat > " + remote.Quote(dst+".tmp") + " && mv -f " + remote.Quote(dst+".tmp") + " " + remote.Quote(dst))
		res, err := c.Run(ctx, cmd, strings.NewReader(string(b)))
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("copy the backup metrics to the monitor host: %v %s", err, res.Stderr)
		}
		return code
	}
	backupStart := time.Now()
	if code := backupRun("all"); code != 0 {
		t.Fatalf("backup create on a healthy stack: exit %d", code)
	}
	// It silenced the standbys' lag, which its freeze pauses, for as long as it ran.
	checkOperationSilence(t, monitor.NewClient(mon.AlertmanagerURL()), "instactl backup create", monitor.BackupSilence(), backupStart, time.Now())
	// Its freezes recorded themselves in the replicas' freeze metrics and its thaws removed them.
	for _, h := range []stack.HostRef{{Role: "pg", Index: 1}, {Role: "redis", Index: 1}} {
		if out := sandboxRun(t, pool, st, h, "cat "+backup.FreezeMarkerFile+" 2>/dev/null; true"); out != "" {
			t.Fatalf("%s: freeze metrics left after the backup's thaw: %s", h.Name(), out)
		}
	}

	// Every target up (the app's /metrics and the blackbox probes included), then `monitor
	// status` says so: 7 node, 2 postgres, 2 redis, pgbouncer, app, prometheus, alertmanager,
	// blackbox, and 2 probes (the app's health check, memcached's port).
	const targets = 18
	waitFor(t, 90*time.Second, "every target up", func() bool {
		ts, err := api.Targets(ctx)
		if err != nil || len(ts) != targets {
			return false
		}
		for _, tg := range ts {
			if tg.Health != "up" {
				return false
			}
		}
		return true
	})
	if stdout, stderr, code := cli("monitor", "status"); code != 0 || !strings.Contains(stdout, fmt.Sprintf("%d of %d targets up", targets, targets)) || strings.Contains(stdout, "failing") {
		t.Fatalf("monitor status: exit %d\n%s%s", code, stdout, stderr)
	}
	// Every exporter has answered once; an alert raised while the stack came up (a rule's
	// series appearing one scrape before another's) must be gone within a few evaluations.
	settle := time.Now()
	var seen []monitorhost.Alert
	waitFor(t, 60*time.Second, "no alerts on the healthy stack", func() bool {
		as := monitorAlerts(t, api)
		seen = append(seen, as...)
		return len(as) == 0
	})
	t.Logf("no alerts %.1fs after every target was up (seen while settling: %s)", time.Since(settle).Seconds(), dash(describeAlerts(seen)))

	// The archive works (or the quiet window would not tell anything about its alerts): the
	// primary archived segments and none failed since the last success.
	pg0 := stack.HostRef{Role: "pg", Index: 0}
	psql0 := fmt.Sprintf("psql -X -At -h %s -U postgres -d postgres -v ON_ERROR_STOP=1", func() string {
		a, err := st.Address(pg0)
		if err != nil {
			t.Fatal(err)
		}
		return a.String()
	}())
	waitFor(t, 60*time.Second, "pg-0 archiving WAL", func() bool {
		return sandboxRun(t, pool, st, pg0, psql0+` -c "SELECT archived_count > 0 AND last_archived_time > now() - interval '30 seconds' FROM pg_stat_archiver"`) == "t"
	})

	// Healthy: not one alert, pending or firing, for monitorTestQuiet.
	for end := time.Now().Add(monitorTestQuiet); time.Now().Before(end); time.Sleep(time.Second) {
		if as := monitorAlerts(t, api); len(as) > 0 {
			// A growing pg_wal is what raised an alert here once (see monitorTestStack).
			t.Logf("pg-0's volume and WAL: %s", sandboxRun(t, pool, st, pg0, "df -m /var/lib/postgresql | tail -1; du -sm /var/lib/postgresql/*/*/pg_wal /var/lib/postgresql/*/*/pg_wal/archive_status 2>&1; ls /var/lib/postgresql/*/*/pg_wal/archive_status | head"))
			t.Fatalf("alerts on a healthy stack: %s", describeAlerts(as))
		}
	}

	// `status` reads backup age and "recoverable to" from the same metrics: the backup above and
	// the archive just checked.
	checkStatusRecovery(t, cli)

	// A deploy silences what it trips (its role's exporter, probe and version drift) for
	// exactly as long as it runs: Alertmanager keeps the expired silence, which started after
	// the command did and ended before it returned.
	before := time.Now()
	if stdout, stderr, code := cli("deploy", "--version", "v2"); code != 0 {
		t.Fatalf("deploy v2: exit %d\n%s%s", code, stdout, stderr)
	}
	after := time.Now()
	checkOperationSilence(t, monitor.NewClient(mon.AlertmanagerURL()), "instactl deploy", monitor.DeploySilence("app"), before, after)

	ref := func(role string, i int) stack.HostRef { return stack.HostRef{Role: role, Index: i} }
	addr := func(h stack.HostRef) string {
		a, err := st.Address(h)
		if err != nil {
			t.Fatal(err)
		}
		return a.String()
	}
	pg1, r0, r1 := ref("pg", 1), ref("redis", 0), ref("redis", 1)
	psql1 := fmt.Sprintf("psql -X -At -h %s -U postgres -d postgres -v ON_ERROR_STOP=1", addr(pg1))

	t.Run("replication stopped", func(t *testing.T) {
		conninfo := sandboxRun(t, pool, st, pg1, psql1+` -c "SHOW primary_conninfo"`)
		if conninfo == "" {
			t.Fatal("pg-1 has no primary_conninfo")
		}
		sandboxRun(t, pool, st, pg1, psql1+` -c "ALTER SYSTEM SET primary_conninfo = ''" -c "SELECT pg_reload_conf()"`)
		fault := time.Now()
		waitAlert(t, api, monitor.AlertPostgresReplicationBroken, "pg-1", true, fault)
		waitAlertmanager(t, mon, monitor.AlertPostgresReplicationBroken, "pg-1")
		set := psql1 + " -c " + remote.Quote("ALTER SYSTEM SET primary_conninfo = "+pgLiteral(conninfo)) + ` -c "SELECT pg_reload_conf()"`
		sandboxRun(t, pool, st, pg1, set)
		waitAlert(t, api, monitor.AlertPostgresReplicationBroken, "pg-1", false, time.Now())
	})

	t.Run("exporter killed", func(t *testing.T) {
		sandboxRun(t, pool, st, pg1, "kill -KILL $(cat /run/instagram/postgres-exporter.pid)")
		waitAlert(t, api, monitor.AlertExporterDown, "pg-1", true, time.Now())
		sandboxRun(t, pool, st, pg1, "/opt/instagram/bin/instactl-svc start postgres-exporter >/dev/null")
		waitAlert(t, api, monitor.AlertExporterDown, "pg-1", false, time.Now())
	})

	t.Run("volume filled", func(t *testing.T) {
		// Leave 2% of the volume free (the alert is at 5%), and top the file up every 2 s: the
		// standby's restartpoints free old WAL segments meanwhile, which once left 5% free.
		// The top-up allocates only the new range (-o): XFS reserves space for the whole range
		// asked for, so growing a 500 MB file by 100 MB with -l alone fails with ENOSPC.
		fill := `m=/var/lib/postgresql; f=$m/monitor-test-fill
set -- $(df -B1 --output=size,avail "$m" | tail -1)
cur=$(stat -c %s "$f" 2>/dev/null || echo 0)
extra=$(($2 - $1 / 50))
if [ "$extra" -gt 0 ]; then fallocate -o "$cur" -l "$extra" "$f"; fi`
		sandboxRun(t, pool, st, pg1, fill)
		var topErr atomic.Value // the last top-up's failure, for the diagnosis
		defer func() {
			if !t.Failed() {
				return
			}
			// What the host and Prometheus saw: the volume's space, and the series the rule reads.
			t.Logf("last failed top-up: %v", topErr.Load())
			t.Logf("pg-1: %s", sandboxRun(t, pool, st, pg1, "df -B1 /var/lib/postgresql; ls -l /var/lib/postgresql; mount | grep postgresql"))
			q := url.QueryEscape(`{__name__=~"node_filesystem_(avail|size)_bytes|node_filesystem_readonly",mountpoint=~"/var/lib/postgresql.*"}`)
			if resp, err := http.Get(mon.PrometheusURL() + "/api/v1/query?query=" + q); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				t.Logf("Prometheus: %s", b)
			}
		}()
		target := remote.Target{Name: pg1.Name(), Address: addr(pg1), Port: st.SSH.Port, User: st.SSH.User}
		stop := make(chan struct{})
		topped := make(chan struct{})
		go func() {
			defer close(topped)
			for {
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Second):
					c, err := pool.Get(ctx, target)
					if err == nil {
						var res remote.Result
						res, err = c.Run(ctx, remote.Script(fill), nil)
						if err == nil && res.ExitCode != 0 {
							err = fmt.Errorf("exit %d: %s", res.ExitCode, res.Stderr)
						}
					}
					if err != nil {
						topErr.Store(err.Error())
					}
				}
			}
		}()
		waitAlert(t, api, monitor.AlertDiskAlmostFull, "pg-1", true, time.Now())
		close(stop)
		<-topped
		sandboxRun(t, pool, st, pg1, "rm -f /var/lib/postgresql/monitor-test-fill")
		waitAlert(t, api, monitor.AlertDiskAlmostFull, "pg-1", false, time.Now())
	})

	t.Run("volume frozen past the budget", func(t *testing.T) {
		// The test plays a backup run killed mid-freeze whose thaw guardian died too: the two
		// steps of backup's freeze (its mount's line in backup.FreezeMarkerFile, then
		// xfs_freeze -f), and no thaw within the budget.
		file := backup.FreezeMarkerFile
		sandboxRun(t, pool, st, pg1, fmt.Sprintf(`set -e
printf '%s{mountpoint="/var/lib/postgresql"} %%s\n' "$(date +%%s)" > %s.tmp
mv -f %s.tmp %s
xfs_freeze -f /var/lib/postgresql`, monitor.MetricVolumeFrozenSince, file, file, file))
		frozen := time.Now()
		t.Cleanup(func() { sandboxRun(t, pool, st, pg1, "xfs_freeze -u /var/lib/postgresql 2>/dev/null; rm -f "+file) })
		// The rule holds from the budget and two scrapes on (the guardian's margin), with no for:.
		waitAlert(t, api, monitor.AlertVolumeFrozen, "pg-1", true, frozen.Add(monitorTestFreezeBudget+2*monitorTestScrape))
		sandboxRun(t, pool, st, pg1, "xfs_freeze -u /var/lib/postgresql && rm -f "+file)
		waitAlert(t, api, monitor.AlertVolumeFrozen, "pg-1", false, time.Now())
	})

	t.Run("backup failed", func(t *testing.T) {
		// The Redis replica's link is cut: backup create refuses it as unsafe (exit 3).
		sandboxRun(t, pool, st, r1, fmt.Sprintf("redis-cli -h %s REPLICAOF 127.0.0.1 1", addr(r1)))
		waitAlert(t, api, monitor.AlertRedisLinkDown, "redis-1", true, time.Now())
		if code := backupRun("redis"); code == 0 {
			t.Fatal("backup create of a replica without its link succeeded")
		}
		waitAlert(t, api, monitor.AlertBackupRunFailed, "monitor-0", true, time.Now())
		sandboxRun(t, pool, st, r1, fmt.Sprintf("redis-cli -h %s REPLICAOF %s %d", addr(r1), addr(r0), st.Role("redis").Port))
		waitAlert(t, api, monitor.AlertRedisLinkDown, "redis-1", false, time.Now())
		if code := backupRun("redis"); code != 0 {
			t.Fatalf("backup create after the fix: exit %d", code)
		}
		waitAlert(t, api, monitor.AlertBackupRunFailed, "monitor-0", false, time.Now())
	})

	t.Run("archive stopped", func(t *testing.T) {
		// The primary's archiver binary gone: Postgres restarts its archiver, counts no failure,
		// and WAL segments wait; the newest archived segment ages past the archive max age.
		bin := templates.ArchiverPath
		sandboxRun(t, pool, st, pg0, "mv "+bin+" "+bin+".off")
		t.Cleanup(func() { sandboxRun(t, pool, st, pg0, "test -e "+bin+" || mv "+bin+".off "+bin) })
		last := sandboxRun(t, pool, st, pg0, psql0+` -c "SELECT extract(epoch FROM last_archived_time)::float8 FROM pg_stat_archiver"`)
		sec, err := strconv.ParseFloat(last, 64)
		if err != nil {
			t.Fatalf("last_archived_time of pg-0: %q: %v", last, err)
		}
		// The condition holds once the newest archived segment is older than the max age.
		holds := time.Unix(0, int64(sec*float64(time.Second))).Add(monitorTestArchiveMaxAge)
		waitAlert(t, api, monitor.AlertPostgresArchiveBehind, "pg-0", true, holds)
		waitAlertmanager(t, mon, monitor.AlertPostgresArchiveBehind, "pg-0")
		sandboxRun(t, pool, st, pg0, "mv "+bin+".off "+bin)
		waitAlert(t, api, monitor.AlertPostgresArchiveBehind, "pg-0", false, time.Now())
	})

	t.Run("archive failing", func(t *testing.T) {
		// The primary's archive_command fails on every segment (an S3 outage or bad credentials
		// look the same to Postgres): failures count and nothing is archived for the window,
		// which a drill's archive max age shortens to 30 s.
		bin := templates.ArchiverPath
		sandboxRun(t, pool, st, pg0, "mv "+bin+" "+bin+".off && printf '#!/bin/sh\\necho drill: archive refused >&2\\nexit 1\\n' > "+bin+" && chmod 755 "+bin)
		t.Cleanup(func() { sandboxRun(t, pool, st, pg0, "test -e "+bin+".off && mv -f "+bin+".off "+bin+"; true") })
		since := time.Now()
		waitFor(t, 60*time.Second, "pg-0 counting archive failures", func() bool {
			return sandboxRun(t, pool, st, pg0, psql0+` -c "SELECT last_failed_time > coalesce(last_archived_time, '-infinity') FROM pg_stat_archiver"`) == "t"
		})
		waitAlert(t, api, monitor.AlertPostgresArchiveFailing, "pg-0", true, since)
		waitAlertmanager(t, mon, monitor.AlertPostgresArchiveFailing, "pg-0")
		// backup verify --archive, the command the alert names, reports the failing segment.
		stdout, stderr, code := cli("backup", "verify", "--archive")
		t.Logf("backup verify --archive while archiving fails: exit %d\n%s%s", code, stdout, stderr)
		if code == 0 {
			t.Fatal("backup verify --archive passed while pg-0's archive_command fails")
		}
		fixed := time.Now()
		sandboxRun(t, pool, st, pg0, "mv -f "+bin+".off "+bin)
		waitAlert(t, api, monitor.AlertPostgresArchiveFailing, "pg-0", false, fixed)
	})

	// Whatever the faults left behind, the stack ends healthy again.
	var left []monitorhost.Alert
	defer func() {
		if t.Failed() && len(left) > 0 {
			t.Logf("alerts left after the fixes: %s; pg-0's volume: %s", describeAlerts(left),
				sandboxRun(t, pool, st, pg0, "df -m /var/lib/postgresql | tail -1; du -sm /var/lib/postgresql/*/*/pg_wal 2>&1"))
		}
	}()
	waitFor(t, 90*time.Second, "no alerts after the fixes", func() bool { left = monitorAlerts(t, api); return len(left) == 0 })
}

// checkOperationSilence checks that Alertmanager holds exactly one silence whose comment
// starts with comment, with matchers want, created by instactl between before and after and
// expired by then.
func checkOperationSilence(t *testing.T, am *monitor.Client, comment string, want []monitor.Matcher, before, after time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ss, err := am.Silences(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var found []monitor.Silence
	for _, s := range ss {
		if strings.HasPrefix(s.Comment, comment) && !s.StartsAt.Before(before.Add(-time.Second)) {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("silences of %q since %s: %+v, want exactly one", comment, before.Format(time.RFC3339), found)
	}
	s := found[0]
	t.Logf("%s silenced %s from %s to %s (%s), by %s", comment, describeMatchers(s.Matchers), s.StartsAt.Format(time.StampMilli), s.EndsAt.Format(time.StampMilli), s.Status.State, s.CreatedBy)
	if s.CreatedBy != "instactl" || s.Status.State != "expired" || s.EndsAt.After(after.Add(time.Second)) {
		t.Errorf("silence %s: created by %q, state %s, ends %s; want instactl's, expired by %s", s.ID, s.CreatedBy, s.Status.State, s.EndsAt, after)
	}
	if describeMatchers(s.Matchers) != describeMatchers(want) {
		t.Errorf("silence %s matches %s, want %s", s.ID, describeMatchers(s.Matchers), describeMatchers(want))
	}
}

// describeMatchers is matchers as name=value (=~ for a regex), sorted.
func describeMatchers(ms []monitor.Matcher) string {
	var out []string
	for _, m := range ms {
		op := "="
		if m.IsRegex {
			op = "=~"
		}
		out = append(out, m.Name+op+m.Value)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// checkStatusRecovery runs `status -o json` and checks its recovery section against the
// sandbox: the pg group backed up from its standby and archived past that backup, the redis
// group backed up and archiving nothing, the metrics file fresh; the text form shows the table.
func checkStatusRecovery(t *testing.T, cli func(...string) (string, string, int)) {
	t.Helper()
	var got struct {
		Recovery      *StatusRecovery `json:"recovery"`
		RecoveryError string          `json:"recovery_error"`
	}
	var stdout, stderr string
	var code int
	// Prometheus scrapes the metrics file and the archiver every 2 s: within a few scrapes
	// both are in.
	defer func() {
		if t.Failed() {
			t.Logf("status -o json: exit %d\n%s%s", code, stdout, stderr)
			if got.Recovery != nil {
				for _, q := range []string{monitor.MetricBackupLastSuccess, "node_textfile_mtime_seconds"} {
					if resp, err := http.Get(got.Recovery.Prometheus + "/api/v1/query?query=" + url.QueryEscape(q)); err == nil {
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						t.Logf("%s: %s", q, b)
					}
				}
			}
		}
	}()
	waitFor(t, 60*time.Second, "status showing every group recoverable", func() bool {
		stdout, stderr, code = cli("status", "-o", "json")
		got.Recovery, got.RecoveryError = nil, ""
		if code != 0 || json.Unmarshal([]byte(stdout), &got) != nil || got.Recovery == nil {
			return false
		}
		for _, g := range got.Recovery.Groups {
			if g.RecoverableTo.IsZero() || (g.Kind == topology.KindPostgres && !g.ArchivedTo.After(g.LastBackup)) {
				return false
			}
		}
		return len(got.Recovery.Groups) > 0
	})
	r := got.Recovery
	if r.MetricsFileAgeSeconds < 0 || r.MetricsFileAgeSeconds > 600 {
		t.Errorf("backup metrics file age %.0fs, want the file just written", r.MetricsFileAgeSeconds)
	}
	kinds := map[string]bool{}
	for _, g := range r.Groups {
		kinds[g.Kind] = true
		if g.BackupHost == "" {
			t.Errorf("group %s: no member named as the backup's host", g.Group)
		}
		if time.Since(g.LastBackup) > 10*time.Minute {
			t.Errorf("group %s: last backup %s, want the backup this test made", g.Group, g.LastBackup)
		}
		if g.Kind == topology.KindPostgres && g.RecoverableTo != g.ArchivedTo {
			t.Errorf("group %s: recoverable to %s, want the archive's %s", g.Group, g.RecoverableTo, g.ArchivedTo)
		}
		if g.Kind != topology.KindPostgres && (!g.ArchivedTo.IsZero() || g.RecoverableTo != g.LastBackup) {
			t.Errorf("group %s (%s): archived to %s, recoverable to %s; want no archive and the backup's time %s", g.Group, g.Kind, g.ArchivedTo, g.RecoverableTo, g.LastBackup)
		}
	}
	if !kinds[topology.KindPostgres] || !kinds[topology.KindRedis] {
		t.Errorf("recovery groups %+v, want a postgres and a redis group", r.Groups)
	}
	stdout, stderr, code = cli("status")
	if code != 0 || !strings.Contains(stdout, "RECOVERABLE TO") || strings.Contains(stdout, "nothing: no backup") {
		t.Fatalf("status: exit %d\n%s%s", code, stdout, stderr)
	}
	t.Logf("status recovery section:\n%s", stdout[strings.Index(stdout, "Recovery"):])
}

func monitorAlerts(t *testing.T, api *monitorhost.API) []monitorhost.Alert {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	as, err := api.Alerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return as
}

func describeAlerts(as []monitorhost.Alert) string {
	var out []string
	seen := map[string]bool{}
	for _, a := range as {
		d := fmt.Sprintf("%s{host=%s,job=%s} %s", a.Name, a.Labels["host"], a.Labels["job"], a.State)
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// waitAlert waits until alert name on host is firing (firing true) or gone (false), and logs
// how long that took after since (when the condition began to hold) beside the expected bound,
// for: + two scrape intervals. The deadline is generous: no timing is asserted.
func waitAlert(t *testing.T, api *monitorhost.API, name, host string, firing bool, since time.Time) {
	t.Helper()
	var last []monitorhost.Alert
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		last = monitorAlerts(t, api)
		found := false
		for _, a := range last {
			if a.Name == name && a.Labels["host"] == host && (a.State == "firing" || !firing) {
				found = true
			}
		}
		if found == firing {
			if firing {
				t.Logf("%s on %s fired %.1fs after its condition held (for: + two scrapes is %s)", name, host,
					time.Since(since).Seconds(), monitorTestFor+2*monitorTestScrape)
			} else {
				t.Logf("%s on %s cleared %.1fs after the fix", name, host, time.Since(since).Seconds())
			}
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	want := "firing"
	if !firing {
		want = "cleared"
	}
	t.Fatalf("%s on %s not %s within 90s; alerts now: %s", name, host, want, describeAlerts(last))
}

// waitAlertmanager waits until Alertmanager holds alert name for host: Prometheus delivered it.
func waitAlertmanager(t *testing.T, mon monitorhost.Host, name, host string) {
	t.Helper()
	waitFor(t, 60*time.Second, name+" in Alertmanager", func() bool {
		resp, err := http.Get(mon.AlertmanagerURL() + "/api/v2/alerts?filter=" + url.QueryEscape(fmt.Sprintf("alertname=%q", name)))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var as []struct {
			Labels map[string]string `json:"labels"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&as); err != nil {
			return false
		}
		for _, a := range as {
			if a.Labels["host"] == host {
				return true
			}
		}
		return false
	})
}

// installArchiver uploads the instactl binary at archiver to every pg host as
// its archive_command (templates.ArchiverPath), as TestSandboxPITR does, and creates the WAL
// archive's bucket in the sandbox's moto.
func installArchiver(t *testing.T, st *stack.Stack, pool *remote.Pool, archiver string) {
	t.Helper()
	if archiver == "" {
		t.Fatal("no instactl binary to install as the archiver")
	}
	ctx := context.Background()
	cl, err := templates.WALArchiveFor(st, "pg-0").Config().S3Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(templates.WALBucket(st))}); err != nil {
		t.Fatalf("create the WAL bucket: %v", err)
	}
	for i := 0; i < st.Role("pg").Count; i++ {
		h := stack.HostRef{Role: "pg", Index: i}
		a, err := st.Address(h)
		if err != nil {
			t.Fatal(err)
		}
		c, err := pool.Get(ctx, remote.Target{Name: h.Name(), Address: a.String(), Port: st.SSH.Port, User: st.SSH.User})
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(archiver)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Upload(ctx, f, templates.ArchiverPath, 0o755)
		f.Close()
		if err != nil {
			t.Fatalf("install the archiver on %s: %v", h.Name(), err)
		}
	}
}

// pgLiteral quotes s as an SQL string literal.
func pgLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
