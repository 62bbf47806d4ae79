package monitor

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// promtool test rules files (https://prometheus.io/docs/prometheus/latest/configuration/unit_testing_rules/).
type ptFile struct {
	RuleFiles          []string  `yaml:"rule_files"`
	EvaluationInterval string    `yaml:"evaluation_interval"`
	Tests              []ptGroup `yaml:"tests"`
}

type ptGroup struct {
	Interval      string        `yaml:"interval"`
	InputSeries   []ptSeries    `yaml:"input_series"`
	AlertRuleTest []ptAlertTest `yaml:"alert_rule_test"`
}

type ptSeries struct {
	Series string `yaml:"series"`
	Values string `yaml:"values"`
}

type ptAlertTest struct {
	EvalTime  string    `yaml:"eval_time"`
	Alertname string    `yaml:"alertname"`
	ExpAlerts []ptAlert `yaml:"exp_alerts"`
}

type ptAlert struct {
	ExpLabels      map[string]string `yaml:"exp_labels"`
	ExpAnnotations map[string]string `yaml:"exp_annotations"`
}

// ruleCase is one alert's fixture: series that make it fire (and exactly the alerts expected
// at eval), and series sets that must leave it quiet at the same time.
type ruleCase struct {
	name string // the alert, with an optional /variant
	eval string
	// every is the evaluation interval (default 1m); long horizons use 5m to keep promtool fast.
	every string
	fire  []ptSeries
	want  []ptAlert
	quiet [][]ptSeries
}

// fixtures builds series labelled the way the generated scrape configuration labels them.
type fixtures struct {
	st   *stack.Stack
	topo topology.Topology
}

// labels are a target's labels (job, instance, role, group) plus extra name/value pairs.
func (fx fixtures) labels(job, host string, extra ...string) map[string]string {
	ref := hostRef(fx.st, host)
	l := map[string]string{"job": job, "instance": host, "role": ref.Role, "group": groupOf(fx.topo, ref)}
	for i := 0; i+1 < len(extra); i += 2 {
		l[extra[i]] = extra[i+1]
	}
	return l
}

func (fx fixtures) s(metric, job, host, values string, extra ...string) ptSeries {
	return ptSeries{Series: metric + render(fx.labels(job, host, extra...)), Values: values}
}

// alert is an expected alert on one host's series: its labels plus severity and host.
func (fx fixtures) alert(severity, job, host string, extra []string, summary, command string) ptAlert {
	l := fx.labels(job, host, extra...)
	l[LabelSeverity] = severity
	l[LabelHost] = host
	return ptAlert{ExpLabels: l, ExpAnnotations: map[string]string{AnnotationSummary: summary, AnnotationCommand: command}}
}

func expect(labels map[string]string, summary, command string) ptAlert {
	return ptAlert{ExpLabels: labels, ExpAnnotations: map[string]string{AnnotationSummary: summary, AnnotationCommand: command}}
}

func render(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%q", k, l[k]))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func hostRef(st *stack.Stack, name string) stack.HostRef {
	for _, h := range st.Hosts() {
		if h.Name() == name {
			return h
		}
	}
	panic("no host " + name)
}

func join(sets ...[]ptSeries) []ptSeries {
	var out []ptSeries
	for _, s := range sets {
		out = append(out, s...)
	}
	return out
}

func ruleCases(t *testing.T, st *stack.Stack, topo topology.Topology) []ruleCase {
	fx := fixtures{st: st, topo: topo}
	pg, rd, mon := JobPostgres, JobRedis, "monitor-0"
	pgMount := []string{"device", "/dev/loop0", "fstype", "xfs", "mountpoint", "/var/lib/postgresql"}
	fs := func(metric, host, values string) ptSeries { return fx.s(metric, JobNode, host, values, pgMount...) }
	recovery := func(vals ...string) []ptSeries { // pg-0, pg-1, pg-2, pg-3; "" leaves one out
		var out []ptSeries
		for i, v := range vals {
			if v != "" {
				out = append(out, fx.s("instactl_pg_in_recovery", pg, fmt.Sprintf("pg-%d", i), v+"x20"))
			}
		}
		return out
	}
	streaming := func(primary, standby string) ptSeries {
		return fx.s("instactl_pg_replication_streaming", pg, primary, "1x20", "application_name", standby, "state", "streaming")
	}
	targets, err := Targets(st, topo)
	if err != nil {
		t.Fatal(err)
	}
	probes, err := Probes(st, topo)
	if err != nil {
		t.Fatal(err)
	}
	allUp := func(except string) []ptSeries {
		var out []ptSeries
		for _, tg := range targets {
			if tg.Job+"/"+tg.Host != except {
				out = append(out, fx.s("up", tg.Job, tg.Host, "1x10"))
			}
		}
		for _, p := range probes {
			out = append(out, fx.s("up", JobProbe, p.Host, "1x10", "module", p.Module))
		}
		return out
	}
	var volumes []ptSeries
	var nodesUp []ptSeries
	for _, h := range st.Hosts() {
		if r := st.Role(h.Role); r.Volumes.Count > 0 {
			nodesUp = append(nodesUp, fx.s("up", JobNode, h.Name(), "1x10"))
			if h.Name() != "pg-1" {
				volumes = append(volumes, fx.s("node_filesystem_avail_bytes", JobNode, h.Name(), "1e8x10", "device", "/dev/loop0", "fstype", "xfs", "mountpoint", r.Volumes.Mount))
			}
		}
	}
	backupFile := []string{"file", BackupMetricsFile}
	backupLast := func(host, target, v string) ptSeries {
		return fx.s(MetricBackupLastSuccess, JobNode, mon, v, "stack", "instagram", "target", target, "host", host)
	}
	req := func(host, code, v string) ptSeries {
		return fx.s(MetricAppRequests, JobApp, host, v, "route", "GET /feed", "method", "GET", "code", code)
	}
	bucket := func(le, v string) ptSeries {
		return fx.s(MetricAppLatency+"_bucket", JobApp, "app-0", v, "route", "GET /feed", "le", le)
	}
	count := func(v string) ptSeries {
		return fx.s(MetricAppLatency+"_count", JobApp, "app-0", v, "route", "GET /feed")
	}
	app := map[string]string{LabelSeverity: SeverityCritical, LabelGroup: "app"}
	burnFire := []ptSeries{req("app-0", "200", "0+600x30"), req("app-0", "500", "0+60x30")}
	burnQuiet := []ptSeries{req("app-0", "200", "0+4x30"), req("app-0", "500", "0+1x30")} // 16 % errors, 0.08 req/s
	slowFire := []ptSeries{req("app-0", "200", "0+600x30"), bucket("0.25", "0+500x30"), count("0+600x30")}
	slowQuiet := []ptSeries{req("app-0", "200", "0+600x30"), bucket("0.25", "0+598x30"), count("0+600x30")}

	return []ruleCase{
		{name: AlertHostDown, eval: "3m",
			fire:  []ptSeries{fx.s("up", JobNode, "pg-1", "0x5")},
			want:  []ptAlert{fx.alert(SeverityCritical, JobNode, "pg-1", nil, "host pg-1 is down: its node exporter does not answer", "instactl host start pg-1")},
			quiet: [][]ptSeries{{fx.s("up", JobNode, "pg-1", "1x5")}}},
		{name: AlertExporterDown, eval: "4m",
			fire:  []ptSeries{fx.s("up", pg, "pg-1", "0x5")},
			want:  []ptAlert{fx.alert(SeverityWarning, pg, "pg-1", nil, "postgres on pg-1 does not answer Prometheus's scrape", "instactl monitor status")},
			quiet: [][]ptSeries{{fx.s("up", pg, "pg-1", "1x5")}, {fx.s("up", JobNode, "pg-1", "0x5")}}},
		{name: AlertProbeFailed, eval: "3m",
			fire: []ptSeries{fx.s("probe_success", JobProbe, "app-0", "0x5", "module", "http_2xx")},
			want: []ptAlert{fx.alert(SeverityCritical, JobProbe, "app-0", []string{"module", "http_2xx"},
				"the blackbox probe of app-0 fails", "instactl status")},
			quiet: [][]ptSeries{{fx.s("probe_success", JobProbe, "app-0", "1x5", "module", "http_2xx")}}},
		{name: AlertTargetMissing, eval: "6m",
			fire: allUp("postgres/pg-1"),
			want: []ptAlert{expect(map[string]string{LabelSeverity: SeverityWarning, LabelHost: "pg-1", LabelGroup: "pg-0", "job": pg, "instance": "pg-1"},
				"Prometheus does not scrape postgres on pg-1: its configuration is not the stack's", "instactl monitor up")},
			quiet: [][]ptSeries{allUp("")}},
		{name: AlertPostgresDown, eval: "3m",
			fire: []ptSeries{fx.s("pg_up", pg, "pg-1", "0x5")},
			want: []ptAlert{fx.alert(SeverityCritical, pg, "pg-1", nil,
				"PostgreSQL on pg-1 (group pg-0) does not accept connections", "instactl rejoin pg-1")},
			quiet: [][]ptSeries{{fx.s("pg_up", pg, "pg-1", "1x5")}}},
		{name: AlertPostgresNoPrimary, eval: "3m",
			// pg-0's host is gone: no member of pg-0 answers as a primary.
			fire: join(recovery("", "1", "0", "1"), []ptSeries{fx.s("up", pg, "pg-0", "0x5"), fx.s("up", JobNode, "pg-0", "0x5")}),
			want: []ptAlert{expect(map[string]string{LabelSeverity: SeverityCritical, LabelGroup: "pg-0"},
				"group pg-0 has no primary: no member answers as a primary", "instactl failover pg-0")},
			quiet: [][]ptSeries{
				recovery("0", "1", "0", "1"),
				// Only pg-0's exporter is down, its host is up: no verdict, no failover.
				join(recovery("", "1", "0", "1"), []ptSeries{fx.s("up", pg, "pg-0", "0x5"), fx.s("up", JobNode, "pg-0", "1x5")}),
			}},
		{name: AlertPostgresSplitBrain, eval: "1m",
			fire:  recovery("0", "0", "0", "1"),
			want:  []ptAlert{expect(map[string]string{LabelSeverity: SeverityCritical, LabelGroup: "pg-0"}, "more than one member of group pg-0 accepts writes as a primary", "instactl status")},
			quiet: [][]ptSeries{recovery("0", "1", "0", "1")}},
		{name: AlertPostgresReplicationBroken, eval: "3m",
			fire: join(recovery("0", "1", "0", "1"), []ptSeries{streaming("pg-2", "pg-3")}),
			want: []ptAlert{expect(map[string]string{LabelSeverity: SeverityCritical, LabelHost: "pg-1", LabelGroup: "pg-0"},
				"standby pg-1 does not stream from the primary of pg-0 (pg_stat_replication on the primary)", "instactl rejoin pg-1")},
			quiet: [][]ptSeries{
				join(recovery("0", "1", "0", "1"), []ptSeries{streaming("pg-0", "pg-1"), streaming("pg-2", "pg-3")}),
				// After a failover of pg-0: pg-1 is the primary and pg-0 streams from it.
				join(recovery("1", "0", "0", "1"), []ptSeries{streaming("pg-1", "pg-0"), streaming("pg-2", "pg-3")}),
			}},
		{name: AlertPostgresLagBytes, eval: "4m",
			fire: []ptSeries{fx.s("instactl_pg_replication_lag_bytes", pg, "pg-0", "1e9x5", "application_name", "pg-1", "state", "streaming")},
			want: []ptAlert{func() ptAlert {
				a := fx.alert(SeverityWarning, pg, "pg-0", []string{"application_name", "pg-1", "state", "streaming"},
					"standby pg-1 replays more than 64 MiB behind the primary of pg-0 (backups of it are skipped)", "instactl status")
				a.ExpLabels[LabelHost] = "pg-1"
				return a
			}()},
			quiet: [][]ptSeries{{fx.s("instactl_pg_replication_lag_bytes", pg, "pg-0", "1e6x5", "application_name", "pg-1", "state", "streaming")}}},
		{name: AlertPostgresLagTime, eval: "3m",
			fire: join(recovery("0", "1"), []ptSeries{
				fx.s("instactl_pg_heartbeat_age_seconds", pg, "pg-0", "5x5"),
				fx.s("instactl_pg_heartbeat_age_seconds", pg, "pg-1", "100+60x5")}),
			want: []ptAlert{fx.alert(SeverityWarning, pg, "pg-1", nil,
				"standby pg-1 has not replayed the primary's heartbeat of the last 1m: replication is broken or far behind", "instactl status")},
			quiet: [][]ptSeries{
				// An idle primary: only heartbeats make WAL, and the standby replays them.
				join(recovery("0", "1"), []ptSeries{
					fx.s("instactl_pg_heartbeat_age_seconds", pg, "pg-0", "5x5"),
					fx.s("instactl_pg_heartbeat_age_seconds", pg, "pg-1", "8x5")}),
				// The writer stopped: the primary's own heartbeat is old too (HeartbeatStale says so).
				join(recovery("0", "1"), []ptSeries{
					fx.s("instactl_pg_heartbeat_age_seconds", pg, "pg-0", "100+60x5"),
					fx.s("instactl_pg_heartbeat_age_seconds", pg, "pg-1", "100+60x5")}),
			}},
		{name: AlertPostgresHeartbeatStale, eval: "4m",
			fire: join(recovery("0", "1"), []ptSeries{fx.s("instactl_pg_heartbeat_age_seconds", pg, "pg-0", "120x5")}),
			want: []ptAlert{fx.alert(SeverityWarning, pg, "pg-0", nil,
				"the heartbeat writer on primary pg-0 stopped: replication lag in time cannot be told", "instactl monitor up")},
			quiet: [][]ptSeries{join(recovery("0", "1"), []ptSeries{fx.s("instactl_pg_heartbeat_age_seconds", pg, "pg-0", "4x5")})}},
		{name: AlertPostgresHeartbeatStale + "/absent", eval: "6m",
			fire: recovery("0", "1"),
			want: []ptAlert{expect(map[string]string{LabelSeverity: SeverityWarning, LabelGroup: "pg-0", "job": pg},
				"group pg-0 has no heartbeat table: the heartbeat writer never ran on its primary", "instactl monitor up")},
			quiet: [][]ptSeries{join(recovery("0", "1"), []ptSeries{fx.s("instactl_pg_heartbeat_age_seconds", pg, "pg-1", "4x10")})}},
		{name: AlertPostgresArchiveFailing, eval: "12m",
			fire: []ptSeries{fx.s("pg_stat_archiver_failed_count", pg, "pg-0", "0+1x20"), fx.s("pg_stat_archiver_archived_count", pg, "pg-0", "5x20")},
			want: []ptAlert{fx.alert(SeverityCritical, pg, "pg-0", nil,
				"WAL archiving on pg-0 fails and archived nothing for 10m: point-in-time recovery falls behind", "instactl backup verify --archive")},
			// Failures that the archiver got past: segments are still archived.
			quiet: [][]ptSeries{{fx.s("pg_stat_archiver_failed_count", pg, "pg-0", "0+1x20"), fx.s("pg_stat_archiver_archived_count", pg, "pg-0", "5+1x20")}}},
		{name: AlertPostgresArchiveBehind, eval: "8m",
			fire: join(recovery("0"), []ptSeries{fx.s("pg_stat_archiver_last_archive_age", pg, "pg-0", "1000+60x10"), fx.s("pg_stat_archiver_archived_count", pg, "pg-0", "5x10")}),
			want: []ptAlert{fx.alert(SeverityWarning, pg, "pg-0", nil, "primary pg-0 archived no WAL segment for more than 15m", "instactl status")},
			quiet: [][]ptSeries{
				join(recovery("0"), []ptSeries{fx.s("pg_stat_archiver_last_archive_age", pg, "pg-0", "30x10"), fx.s("pg_stat_archiver_archived_count", pg, "pg-0", "5+1x10")}),
				// A standby does not archive.
				join(recovery("1"), []ptSeries{fx.s("pg_stat_archiver_last_archive_age", pg, "pg-0", "1000+60x10"), fx.s("pg_stat_archiver_archived_count", pg, "pg-0", "5x10")}),
			}},
		{name: AlertPostgresConnections, eval: "4m",
			fire: []ptSeries{fx.s("pg_stat_activity_count", pg, "pg-0", "150x5", "datname", "instagram", "state", "active"),
				fx.s("pg_stat_activity_count", pg, "pg-0", "30x5", "datname", "instagram", "state", "idle"),
				fx.s("pg_settings_max_connections", pg, "pg-0", "200x5"), fx.s("pg_settings_superuser_reserved_connections", pg, "pg-0", "3x5")},
			want: []ptAlert{fx.alert(SeverityWarning, pg, "pg-0", nil, "PostgreSQL on pg-0 uses more than 80% of max_connections", "instactl status")},
			quiet: [][]ptSeries{{fx.s("pg_stat_activity_count", pg, "pg-0", "50x5", "datname", "instagram", "state", "active"),
				fx.s("pg_settings_max_connections", pg, "pg-0", "200x5"), fx.s("pg_settings_superuser_reserved_connections", pg, "pg-0", "3x5")}}},
		{name: AlertPgBouncerWaiting, eval: "4m",
			fire:  []ptSeries{fx.s("pgbouncer_waiting_clients", JobPgBouncer, "app-0", "30x5", "database", "instagram_pg_0", "user", "app")},
			want:  []ptAlert{fx.alert(SeverityWarning, JobPgBouncer, "app-0", nil, "more than 20 clients wait for a server connection in PgBouncer on app-0", "instactl status")},
			quiet: [][]ptSeries{{fx.s("pgbouncer_waiting_clients", JobPgBouncer, "app-0", "3x5", "database", "instagram_pg_0", "user", "app")}}},
		{name: AlertPgBouncerClients, eval: "4m",
			fire:  []ptSeries{fx.s("pgbouncer_used_clients", JobPgBouncer, "app-0", "1900x5")},
			want:  []ptAlert{fx.alert(SeverityWarning, JobPgBouncer, "app-0", nil, "PgBouncer on app-0 uses more than 80% of max_client_conn (2000)", "instactl status")},
			quiet: [][]ptSeries{{fx.s("pgbouncer_used_clients", JobPgBouncer, "app-0", "100x5")}}},
		{name: AlertRedisDown, eval: "3m",
			fire:  []ptSeries{fx.s("redis_up", rd, "redis-1", "0x5")},
			want:  []ptAlert{fx.alert(SeverityCritical, rd, "redis-1", nil, "Redis on redis-1 (group redis-0) does not answer", "instactl rejoin redis-1")},
			quiet: [][]ptSeries{{fx.s("redis_up", rd, "redis-1", "1x5")}}},
		{name: AlertRedisLinkDown, eval: "3m",
			fire:  []ptSeries{fx.s("redis_master_link_up", rd, "redis-1", "0x5")},
			want:  []ptAlert{fx.alert(SeverityCritical, rd, "redis-1", nil, "Redis replica redis-1 lost its link to the master of redis-0", "instactl rejoin redis-1")},
			quiet: [][]ptSeries{{fx.s("redis_master_link_up", rd, "redis-1", "1x5")}}},
		{name: AlertRedisMemory, eval: "4m",
			fire: []ptSeries{fx.s("redis_memory_used_bytes", rd, "redis-0", "95x5"), fx.s("redis_memory_max_bytes", rd, "redis-0", "100x5")},
			want: []ptAlert{fx.alert(SeverityWarning, rd, "redis-0", nil, "Redis on redis-0 uses more than 90% of maxmemory", "instactl status")},
			// No maxmemory set: nothing to be near.
			quiet: [][]ptSeries{{fx.s("redis_memory_used_bytes", rd, "redis-0", "95x5"), fx.s("redis_memory_max_bytes", rd, "redis-0", "0x5")}}},
		{name: AlertRedisNoMaster, eval: "2m",
			fire: []ptSeries{fx.s("redis_instance_info", rd, "redis-1", "1x5", "exported_role", "slave"),
				fx.s("up", rd, "redis-0", "0x5"), fx.s("up", JobNode, "redis-0", "0x5")},
			want: []ptAlert{expect(map[string]string{LabelSeverity: SeverityCritical, LabelGroup: "redis-0", "job": rd, "exported_role": "master"}, "Redis group redis-0 has no master", "instactl failover redis-0")},
			quiet: [][]ptSeries{{fx.s("redis_instance_info", rd, "redis-1", "1x5", "exported_role", "slave"),
				fx.s("redis_instance_info", rd, "redis-0", "1x5", "exported_role", "master")}}},
		{name: AlertDiskFillsIn4h, eval: "25m", every: "5m",
			fire: []ptSeries{fs("node_filesystem_avail_bytes", "pg-1", "190000000-1000000x100"), fs("node_filesystem_size_bytes", "pg-1", "1e9x100"), fs("node_filesystem_readonly", "pg-1", "0x100")},
			want: []ptAlert{fx.alert(SeverityCritical, JobNode, "pg-1", pgMount,
				"/var/lib/postgresql on pg-1 will be full within 4 hours at the rate of the last hour", "instactl status")},
			quiet: [][]ptSeries{{fs("node_filesystem_avail_bytes", "pg-1", "190000000x100"), fs("node_filesystem_size_bytes", "pg-1", "1e9x100"), fs("node_filesystem_readonly", "pg-1", "0x100")}}},
		{name: AlertDiskFillsIn24h, eval: "70m", every: "5m",
			fire: []ptSeries{fs("node_filesystem_avail_bytes", "pg-1", "390000000-300000x80"), fs("node_filesystem_size_bytes", "pg-1", "1e9x80"), fs("node_filesystem_readonly", "pg-1", "0x80")},
			want: []ptAlert{fx.alert(SeverityWarning, JobNode, "pg-1", pgMount,
				"/var/lib/postgresql on pg-1 will be full within a day at the rate of the last 6 hours", "instactl status")},
			quiet: [][]ptSeries{{fs("node_filesystem_avail_bytes", "pg-1", "390000000x80"), fs("node_filesystem_size_bytes", "pg-1", "1e9x80"), fs("node_filesystem_readonly", "pg-1", "0x80")}}},
		{name: AlertDiskAlmostFull, eval: "7m",
			fire:  []ptSeries{fs("node_filesystem_avail_bytes", "pg-1", "4e7x10"), fs("node_filesystem_size_bytes", "pg-1", "1e9x10"), fs("node_filesystem_readonly", "pg-1", "0x10")},
			want:  []ptAlert{fx.alert(SeverityCritical, JobNode, "pg-1", pgMount, "/var/lib/postgresql on pg-1 has less than 5% space left", "instactl status")},
			quiet: [][]ptSeries{{fs("node_filesystem_avail_bytes", "pg-1", "1e8x10"), fs("node_filesystem_size_bytes", "pg-1", "1e9x10"), fs("node_filesystem_readonly", "pg-1", "0x10")}}},
		{name: AlertVolumeFrozen, eval: "5m",
			fire: []ptSeries{fx.s(MetricVolumeFrozenSince, JobNode, "pg-1", "0x10", "mountpoint", "/var/lib/postgresql")},
			want: []ptAlert{fx.alert(SeverityCritical, JobNode, "pg-1", []string{"mountpoint", "/var/lib/postgresql"},
				"/var/lib/postgresql on pg-1 is frozen for longer than the freeze budget (30s): its writes block",
				"instactl run --hosts pg-1 -- xfs_freeze -u /var/lib/postgresql")},
			// Frozen 40 s ago, within the budget and two scrapes.
			quiet: [][]ptSeries{{fx.s(MetricVolumeFrozenSince, JobNode, "pg-1", "260x10", "mountpoint", "/var/lib/postgresql")}}},
		{name: AlertVolumeReadOnly, eval: "3m",
			fire: []ptSeries{fs("node_filesystem_readonly", "pg-1", "1x5")},
			want: []ptAlert{fx.alert(SeverityCritical, JobNode, "pg-1", pgMount, "data volume /var/lib/postgresql on pg-1 is read-only", "instactl status")},
			// A read-only filesystem that holds no data (a CD, /boot) is fine.
			quiet: [][]ptSeries{{fx.s("node_filesystem_readonly", JobNode, "pg-1", "1x5", "device", "/dev/sr0", "fstype", "iso9660", "mountpoint", "/media/cdrom")}}},
		{name: AlertDataVolumeMissing, eval: "6m",
			fire: join(nodesUp, volumes),
			want: []ptAlert{expect(map[string]string{LabelSeverity: SeverityCritical, LabelHost: "pg-1", LabelGroup: "pg-0", "job": JobNode, "instance": "pg-1", "mountpoint": "/var/lib/postgresql"},
				"data volume /var/lib/postgresql of pg-1 is not mounted (or its mount hangs)", "instactl status")},
			quiet: [][]ptSeries{
				join(nodesUp, volumes, []ptSeries{fs("node_filesystem_avail_bytes", "pg-1", "1e8x10")}),
				// The whole host is down: HostDown says so, not this.
				join(volumes, func() []ptSeries {
					var out []ptSeries
					for _, s := range nodesUp {
						if !strings.Contains(s.Series, `instance="pg-1"`) {
							out = append(out, s)
						}
					}
					return append(out, fx.s("up", JobNode, "pg-1", "0x10"))
				}()),
			}},
		{name: AlertBackupStale, eval: "100m", every: "5m",
			fire: []ptSeries{backupLast("pg-1", "pg", "0x100"), backupLast("pg-3", "pg", "0x100"), backupLast("redis-1", "redis", "5000x100")},
			want: []ptAlert{expect(map[string]string{LabelSeverity: SeverityCritical, LabelGroup: "pg", "target": "pg"},
				"fewer than 2 pg groups have a usable backup set newer than 1h30m", "instactl backup create --target pg")},
			// pg-0 was backed up before a switchover made it a primary: its old time stays.
			quiet: [][]ptSeries{{backupLast("pg-0", "pg", "0x100"), backupLast("pg-1", "pg", "5000x100"), backupLast("pg-3", "pg", "5000x100"), backupLast("redis-1", "redis", "5000x100")}}},
		{name: AlertBackupRunFailed, eval: "1m",
			fire: []ptSeries{fx.s(MetricBackupLastRunExitCode, JobNode, mon, "3x5", "stack", "instagram")},
			want: []ptAlert{fx.alert(SeverityWarning, JobNode, mon, []string{"stack", "instagram"},
				"the last backup create run exited 3 (3 unsafe, 4 locked, 5 partial, 1 failed)", "instactl backup create -v")},
			quiet: [][]ptSeries{{fx.s(MetricBackupLastRunExitCode, JobNode, mon, "0x5", "stack", "instagram")}}},
		{name: AlertBackupMetricsStale, eval: "100m", every: "5m",
			fire: []ptSeries{fx.s("node_textfile_mtime_seconds", JobNode, mon, "0x100", backupFile...)},
			want: []ptAlert{fx.alert(SeverityWarning, JobNode, mon, backupFile,
				"the backup metrics file on monitor-0 was not rewritten for 1h30m: backup create does not run",
				"instactl backup create --metrics-file "+BackupMetricsFile)},
			quiet: [][]ptSeries{{fx.s("node_textfile_mtime_seconds", JobNode, mon, "0+60x100", backupFile...)}}},
		{name: AlertBackupMetricsMissing, eval: "16m",
			fire: []ptSeries{fx.s("node_textfile_mtime_seconds", JobNode, mon, "0+60x20", "file", TextfileDir+"/other.prom")},
			want: []ptAlert{expect(map[string]string{LabelSeverity: SeverityWarning, LabelGroup: "monitor", "job": JobNode},
				"no node exporter serves "+BackupMetricsFile+": backup create never ran on the monitor host, or writes elsewhere",
				"instactl backup create --metrics-file "+BackupMetricsFile)},
			quiet: [][]ptSeries{{fx.s("node_textfile_mtime_seconds", JobNode, mon, "0+60x20", backupFile...)}}},
		{name: AlertAppVersionDrift, eval: "10m",
			fire: []ptSeries{fx.s(MetricAppBuildInfo, JobApp, "app-0", "1x12", "version", "v1", "commit", "a", "release", "r1"),
				fx.s(MetricAppBuildInfo, JobApp, "app-1", "1x12", "version", "v2", "commit", "b", "release", "r2")},
			want: []ptAlert{expect(map[string]string{LabelSeverity: SeverityWarning, LabelGroup: "app"},
				"app servers run more than one release for longer than a deploy takes (8m15s)", "instactl lock status")},
			quiet: [][]ptSeries{
				{fx.s(MetricAppBuildInfo, JobApp, "app-0", "1x12", "version", "v2", "commit", "b", "release", "r2"),
					fx.s(MetricAppBuildInfo, JobApp, "app-1", "1x12", "version", "v2", "commit", "b", "release", "r2")},
				// A deploy in its stride: the old release is gone before the deploy's time is up.
				{fx.s(MetricAppBuildInfo, JobApp, "app-0", "1x12", "version", "v1", "commit", "a", "release", "r1"),
					fx.s(MetricAppBuildInfo, JobApp, "app-1", "1x3 _x8", "version", "v2", "commit", "b", "release", "r2"),
					fx.s(MetricAppBuildInfo, JobApp, "app-1", "_x3 1x8", "version", "v1", "commit", "a", "release", "r1")},
			}},
		{name: AlertAvailabilityBurnFast, eval: "20m", every: "5m", fire: burnFire,
			want:  []ptAlert{expect(app, "the app burns its 99.9% availability error budget 14.4x too fast (over 1h and 5m)", "instactl status")},
			quiet: [][]ptSeries{burnQuiet, {req("app-0", "200", "0+600x30")}}},
		{name: AlertAvailabilityBurnSlow, eval: "25m", every: "5m", fire: burnFire,
			want:  []ptAlert{expect(app, "the app burns its 99.9% availability error budget 6x too fast (over 6h and 30m)", "instactl status")},
			quiet: [][]ptSeries{burnQuiet}},
		{name: AlertLatencyBurnFast, eval: "20m", every: "5m", fire: slowFire,
			want:  []ptAlert{expect(app, "the app burns its 99% within 0.25s error budget 14.4x too fast (over 1h and 5m)", "instactl status")},
			quiet: [][]ptSeries{slowQuiet}},
		{name: AlertLatencyBurnSlow, eval: "25m", every: "5m", fire: slowFire,
			want:  []ptAlert{expect(app, "the app burns its 99% within 0.25s error budget 6x too fast (over 6h and 30m)", "instactl status")},
			quiet: [][]ptSeries{slowQuiet}},
	}
}

// TestRulesPromtool runs `promtool test rules` on the rules generated for the example stack:
// per alert, one series set that makes it fire (with exactly the labels and annotations
// expected, the command among them) and others that must leave it quiet.
func TestRulesPromtool(t *testing.T) {
	promtool := testenv.Require(t, "promtool", "prometheus")
	st, topo := exampleStack(t)
	dir := t.TempDir()
	rules, err := RulesYAML(st, topo, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rulesPath := filepath.Join(dir, FileRules)
	if err := os.WriteFile(rulesPath, rules, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", rulesPath).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	cases := ruleCases(t, st, topo)
	f, err := Rules(st, topo, Options{})
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, c := range cases {
		covered[strings.Split(c.name, "/")[0]] = true
	}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !covered[r.Alert] {
				t.Errorf("alert %s has no promtool fixture", r.Alert)
			}
		}
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, "/", "_"), func(t *testing.T) {
			t.Parallel()
			alert := strings.Split(c.name, "/")[0]
			groups := []ptGroup{{Interval: "1m", InputSeries: c.fire,
				AlertRuleTest: []ptAlertTest{{EvalTime: c.eval, Alertname: alert, ExpAlerts: c.want}}}}
			for _, q := range c.quiet {
				groups = append(groups, ptGroup{Interval: "1m", InputSeries: q,
					AlertRuleTest: []ptAlertTest{{EvalTime: c.eval, Alertname: alert, ExpAlerts: []ptAlert{}}}})
			}
			every := c.every
			if every == "" {
				every = "1m"
			}
			b, err := yaml.Marshal(ptFile{RuleFiles: []string{rulesPath}, EvaluationInterval: every, Tests: groups})
			if err != nil {
				t.Fatal(err)
			}
			test := filepath.Join(t.TempDir(), "test.yml")
			if err := os.WriteFile(test, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(promtool, "test", "rules", test).CombinedOutput(); err != nil {
				t.Errorf("promtool test rules (group 0 fires, the others are quiet): %v\n%s\n--- test file:\n%s", err, out, b)
			}
		})
	}
}
