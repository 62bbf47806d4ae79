package monitor

import (
	"fmt"
	"time"

	"github.com/instactl/instactl/stack"
)

// The port plan: every exporter listens on the host's own address (the stack's fixed private
// address of the host, a loopback address on the sandbox) on these ports. The ports are the
// exporters' Debian defaults, so a host needs no port flags.
const (
	// PortNode is prometheus-node-exporter on every host.
	PortNode = 9100
	// PortPostgres is prometheus-postgres-exporter on every Postgres host.
	PortPostgres = 9187
	// PortRedis is prometheus-redis-exporter on every Redis host.
	PortRedis = 9121
	// PortPgBouncer is prometheus-pgbouncer-exporter on every app host (PgBouncer runs there).
	PortPgBouncer = 9127
	// PortBlackbox is prometheus-blackbox-exporter on the monitor host.
	PortBlackbox = 9115
	// PortPrometheus is Prometheus on the monitor host.
	PortPrometheus = 9090
	// PortAlertmanager is Alertmanager on the monitor host.
	PortAlertmanager = 9093
)

// The app servers' metrics are on their service port (the app role's port) at AppMetricsPath.
const AppMetricsPath = "/metrics"

// Role is the stack role whose hosts run Prometheus, Alertmanager and the blackbox exporter:
// declare it in the stack file as `monitor: {count: 1}`. The first host of the role is the one
// the CLI asks (AlertmanagerURL).
const Role = "monitor"

// AppRole is the role running the app server and, beside it, PgBouncer (as templates renders
// them).
const AppRole = "app"

// Job names of the scrape configuration; rules select on them.
const (
	JobNode         = "node"
	JobPostgres     = "postgres"
	JobRedis        = "redis"
	JobPgBouncer    = "pgbouncer"
	JobApp          = "app"
	JobPrometheus   = "prometheus"
	JobAlertmanager = "alertmanager"
	JobBlackbox     = "blackbox"
	// JobProbe is the blackbox exporter's probes: HTTP health checks of the app servers and
	// TCP connects to the memcached hosts.
	JobProbe = "probe"
)

// TextfileDir is where the node exporter's textfile collector reads *.prom files on every host
// (templates.TextfileDir, the directory the hosts' user data gives it). Not the Debian default
// /var/lib/prometheus/node-exporter: sandbox hosts share the machine's /var/lib/prometheus,
// while /var/lib/instagram is private to each host.
const TextfileDir = "/var/lib/instagram/textfile"

// BackupMetricsFile is where `instactl backup create` must write its metrics for these rules:
// run it (from cron) on the monitor host with --metrics-file BackupMetricsFile, so the monitor
// host's node exporter serves them and node_textfile_mtime_seconds tells their age.
const BackupMetricsFile = TextfileDir + "/instactl_backup.prom"

// FreezeMetricsFile is the textfile backup writes on the host whose volumes it freezes, for as
// long as they are frozen (see MetricVolumeFrozenSince).
const FreezeMetricsFile = TextfileDir + "/instactl_freeze.prom"

// Metrics instactl itself must emit, and the ones the rules read from the backup metrics file.
const (
	// MetricVolumeFrozenSince is the Unix time a volume was frozen, with label mountpoint (the
	// mount point, as node_filesystem_* names it). Backup writes it to FreezeMetricsFile on the
	// frozen host, atomically (write a temporary file, rename), just before xfs_freeze -f, and
	// removes the file (or the mount's line) after the thaw; the thaw guardian removes it too
	// when it thaws. A value that stays past backup.freeze_budget is a volume left frozen.
	//   instactl_volume_frozen_since_seconds{mountpoint="/var/lib/postgresql"} 1.7e9
	MetricVolumeFrozenSince = "instactl_volume_frozen_since_seconds"
	// MetricBackupLastSuccess and MetricBackupLastRunExitCode are written by backup.WriteMetrics
	// (labels stack, target, host).
	MetricBackupLastSuccess     = "instactl_backup_last_success_timestamp_seconds"
	MetricBackupLastRunExitCode = "instactl_backup_last_run_exit_code"
	// MetricAppBuildInfo is the app server's build info (labels version, commit, release).
	MetricAppBuildInfo = "instagram_build_info"
	// MetricAppRequests and MetricAppLatency are the app server's RED metrics (labels route,
	// method, code; the histogram by route).
	MetricAppRequests = "instagram_http_requests_total"
	MetricAppLatency  = "instagram_http_request_duration_seconds"
)

// The heartbeat: a one-row table in database HeartbeatDatabase of every Postgres group that the
// primary rewrites every HeartbeatInterval. Each standby's postgres_exporter reads its age
// (instactl_pg_heartbeat_age_seconds): small while the link works, even on an idle primary;
// growing when the link is broken or replay is behind.
const (
	HeartbeatDatabase = "postgres"
	HeartbeatInterval = 10 * time.Second
	// HeartbeatSQL is run every HeartbeatInterval on every Postgres host (psql -d postgres -c),
	// as a superuser: it writes only where the server is not in recovery, so it is safe to run
	// on standbys, and creates the table on first use.
	HeartbeatSQL = `DO $$ BEGIN IF NOT pg_is_in_recovery() THEN ` +
		`CREATE TABLE IF NOT EXISTS instactl_heartbeat (id int PRIMARY KEY, ts timestamptz NOT NULL); ` +
		`INSERT INTO instactl_heartbeat VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET ts = now(); ` +
		`END IF; END $$`
)

// MonitorHost returns the host whose Alertmanager and Prometheus the CLI asks: the first host
// of the monitor role, with its address.
func MonitorHost(st *stack.Stack) (stack.HostRef, string, error) {
	r := st.Role(Role)
	if r == nil || r.Count < 1 {
		return stack.HostRef{}, "", fmt.Errorf("stack %s has no %s role: add `%s: {count: 1}` under roles in %s, then run instactl monitor up",
			st.Name, Role, Role, stackPath(st))
	}
	h := stack.HostRef{Role: Role, Index: 0}
	a, err := st.Address(h)
	if err != nil {
		return stack.HostRef{}, "", err
	}
	return h, a.String(), nil
}

// AlertmanagerURL is the base URL of the stack's Alertmanager: the monitor host's address and
// PortAlertmanager. It fails when the stack has no monitor role.
func AlertmanagerURL(st *stack.Stack) (string, error) {
	_, addr, err := MonitorHost(st)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("http://%s:%d", addr, PortAlertmanager), nil
}

// PrometheusURL is the base URL of the stack's Prometheus on the monitor host.
func PrometheusURL(st *stack.Stack) (string, error) {
	_, addr, err := MonitorHost(st)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("http://%s:%d", addr, PortPrometheus), nil
}

func stackPath(st *stack.Stack) string {
	if st.Path == "" {
		return "the stack file"
	}
	return st.Path
}
