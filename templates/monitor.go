package templates

import (
	"path"
	"strconv"
)

// RoleMonitor runs Prometheus (on the role's port), Alertmanager and blackbox_exporter; a stack
// that declares it gets exporters on every host (Data.Exporters).
const RoleMonitor = "monitor"

// The monitoring port plan: every exporter binds its host's own address at these ports, and the
// generated Prometheus configuration (package monitor) scrapes them there.
const (
	NodeExporterPort      = 9100
	PostgresExporterPort  = 9187
	RedisExporterPort     = 9121
	PgBouncerExporterPort = 9127
	BlackboxPort          = 9115
	AlertmanagerPort      = 9093
	// PrometheusPort is the monitor role's default port (stack.RoleDefaults).
	PrometheusPort = 9090
)

// PgHeartbeatInterval is how often, in seconds, the heartbeat service writes (package monitor's
// HeartbeatInterval).
const PgHeartbeatInterval = 10

// Monitoring paths on the hosts.
const (
	// TextfileDir is node_exporter's textfile collector directory on every host: tools drop
	// NAME.prom files there (written through a rename) and Prometheus scrapes them with the host.
	TextfileDir = "/var/lib/instagram/textfile"
	// MonitorConfigDir holds prometheus.yml, alertmanager.yml, blackbox.yml and the rule files
	// on the monitor host; `instactl monitor up` replaces them and reloads.
	MonitorConfigDir = "/etc/instagram/monitor"
	// PrometheusConfig and AlertmanagerConfig are the files the services read.
	PrometheusConfig   = MonitorConfigDir + "/prometheus.yml"
	AlertmanagerConfig = MonitorConfigDir + "/alertmanager.yml"
	BlackboxConfig     = MonitorConfigDir + "/blackbox.yml"
	// MonitorDataDir holds Prometheus' TSDB and Alertmanager's silences when the monitor role
	// has no volume (with one, they live on its mount).
	MonitorDataDir = "/var/lib/instagram/monitor"
	// PostgresExporterQueries are postgres_exporter's extra queries on pg hosts (replication seen
	// from both ends, see files/postgres-exporter-queries.yaml.tmpl).
	PostgresExporterQueries = "/etc/instagram/postgres-exporter-queries.yaml"
	// PgHeartbeatSQL is the statement the heartbeat service runs every PgHeartbeatInterval
	// seconds on a pg host: on a primary it rewrites the heartbeat row every standby's exporter
	// reads the age of (package monitor's queries and rules; files/monitor/pg-heartbeat.sql.tmpl).
	PgHeartbeatSQL = "/etc/instagram/pg-heartbeat.sql"
	// PostgresExporterEnv and PgBouncerExporterEnv hold the exporters' connection settings.
	PostgresExporterEnv  = "/etc/instagram/postgres-exporter.env"
	PgBouncerExporterEnv = "/etc/instagram/pgbouncer-exporter.env"
	// PgBouncerExporterPath runs Debian's PgBouncer exporter with the fixes it needs against
	// PgBouncer 1.18 (files/monitor/pgbouncer-exporter.py.tmpl).
	PgBouncerExporterPath = "/opt/instagram/bin/instactl-pgbouncer-exporter"
	// nodeExporterProcfs is a sandbox host's view of /proc for node_exporter: links to the
	// machine's /proc except 1 -> /proc/self, because node_exporter reads the mount table of pid
	// 1, which on the sandbox is the machine's and not the host's (its volumes are mounted only
	// in the host's namespace).
	nodeExporterProcfs = "/var/lib/instagram/node-exporter/procfs"
)

// Service names of the exporters and the monitor host's services.
const (
	ServiceNodeExporter      = "node-exporter"
	ServicePostgresExporter  = "postgres-exporter"
	ServiceRedisExporter     = "redis-exporter"
	ServicePgBouncerExporter = "pgbouncer-exporter"
	ServicePgHeartbeat       = "pg-heartbeat"
	ServicePrometheus        = "prometheus"
	ServiceAlertmanager      = "alertmanager"
	ServiceBlackbox          = "blackbox-exporter"
)

// sandboxFSTypesExclude keeps node_exporter on a sandbox host to XFS, the file system of every
// sandbox volume: the machine's own disks show up in every host's mount table and would make
// every host alert on the machine's disk.
const sandboxFSTypesExclude = `^([^x].*|x([^f].*)?|xf([^s].*)?|xfs.+)$`

// MonitorData is where Prometheus and Alertmanager keep their data on a monitor host.
func (d Data) MonitorData() string {
	if len(d.Devices) > 0 && d.Mount != "" {
		return d.Mount
	}
	return MonitorDataDir
}

// exporterServices are the exporters a host of d.Role runs when the stack is monitored.
func exporterServices(d Data) []Service {
	if !d.Exporters {
		return nil
	}
	sandbox := d.ServiceManager == ServiceManagerSandbox
	user := "prometheus" // made by the Debian exporter packages
	if sandbox {
		user = "root"
	}
	listen := func(port int) string { return "--web.listen-address=" + d.Address + ":" + strconv.Itoa(port) }
	node := []string{"/usr/bin/prometheus-node-exporter", listen(NodeExporterPort),
		"--collector.textfile.directory=" + TextfileDir}
	if sandbox {
		node = append(node, "--path.procfs="+nodeExporterProcfs, "--no-collector.systemd",
			"--collector.filesystem.fs-types-exclude="+sandboxFSTypesExclude)
	}
	out := []Service{{
		Name: ServiceNodeExporter, Description: "node_exporter", User: user, Command: node, Dir: "/",
		StopSignal: "TERM", StopTimeout: 10, Start: true,
	}}
	switch d.Role {
	case RolePostgres:
		// As postgres over the local socket: peer authentication, no password to keep.
		out = append(out, Service{
			Name: ServicePostgresExporter, Description: "postgres_exporter", User: "postgres",
			Command: []string{"/usr/bin/prometheus-postgres-exporter", listen(PostgresExporterPort),
				"--extend.query-path=" + PostgresExporterQueries},
			Dir: "/", EnvFile: PostgresExporterEnv, StopSignal: "TERM", StopTimeout: 10, Start: true,
		}, Service{
			// A failed write (the server restarting, a standby) is retried at the next beat.
			Name: ServicePgHeartbeat, Description: "replication heartbeat writer", User: "postgres",
			Command: []string{"/bin/sh", "-c", "while :; do " + d.PGBinDir + "/psql -X -q -h /run/postgresql -p " + strconv.Itoa(d.Port) +
				" -d postgres -f " + PgHeartbeatSQL + " >/dev/null; sleep " + strconv.Itoa(PgHeartbeatInterval) + "; done"},
			Dir: "/", StopSignal: "TERM", StopTimeout: 10, Start: true,
		})
	case RoleRedis:
		out = append(out, Service{
			Name: ServiceRedisExporter, Description: "redis_exporter", User: user,
			Command: []string{"/usr/bin/prometheus-redis-exporter", listen(RedisExporterPort),
				"-redis.addr=redis://" + d.Address + ":" + strconv.Itoa(d.Port)},
			Dir: "/", StopSignal: "TERM", StopTimeout: 10, Start: true,
		})
	case RoleApp:
		if d.PgBouncer {
			out = append(out, Service{
				Name: ServicePgBouncerExporter, Description: "PgBouncer exporter", User: user,
				Command: []string{PgBouncerExporterPath,
					"--host", d.Address, "--port", strconv.Itoa(PgBouncerExporterPort),
					"--pgbouncer-host", d.Address, "--pgbouncer-port", strconv.Itoa(d.PgBouncerPort),
					"--pgbouncer-user", PgBouncerAdminUser},
				Dir: "/", EnvFile: PgBouncerExporterEnv, StopSignal: "TERM", StopTimeout: 10, Start: true,
			})
		}
	}
	return out
}

// monitorServices are the monitor host's own services, after its exporters.
func monitorServices(d Data) []Service {
	user := "prometheus"
	if d.ServiceManager == ServiceManagerSandbox {
		user = "root"
	}
	listen := func(port int) string { return "--web.listen-address=" + d.Address + ":" + strconv.Itoa(port) }
	data := d.MonitorData()
	return []Service{
		{
			Name: ServicePrometheus, Description: "Prometheus", User: user,
			Command: []string{"/usr/bin/prometheus", "--config.file=" + PrometheusConfig,
				"--storage.tsdb.path=" + path.Join(data, "prometheus"), listen(d.Port),
				"--web.enable-lifecycle", "--storage.tsdb.retention.time=15d"},
			Dir: "/", StopSignal: "TERM", StopTimeout: 60, Start: true, RequiresMount: d.mountIfAny(),
		},
		{
			// No peers: the cluster listener would bind 0.0.0.0:9094 on every sandbox host.
			Name: ServiceAlertmanager, Description: "Alertmanager", User: user,
			Command: []string{"/usr/bin/prometheus-alertmanager", "--config.file=" + AlertmanagerConfig,
				"--storage.path=" + path.Join(data, "alertmanager"), listen(AlertmanagerPort),
				"--cluster.listen-address=", "--web.external-url=http://" + d.Address + ":" + strconv.Itoa(AlertmanagerPort)},
			Dir: "/", StopSignal: "TERM", StopTimeout: 30, Start: true, RequiresMount: d.mountIfAny(),
		},
		{
			Name: ServiceBlackbox, Description: "blackbox_exporter", User: user,
			Command: []string{"/usr/bin/prometheus-blackbox-exporter", "--config.file=" + BlackboxConfig, listen(BlackboxPort)},
			Dir:     "/", StopSignal: "TERM", StopTimeout: 10, Start: true,
		},
	}
}

// MonitorPackages are the Debian packages of d's exporters and, on the monitor host, its
// services, for packages.sh; their own units are disabled there (they would claim the ports).
func (d Data) MonitorPackages() []string {
	var out []string
	pkgs := map[string]string{
		ServiceNodeExporter: "prometheus-node-exporter", ServicePostgresExporter: "prometheus-postgres-exporter",
		ServiceRedisExporter: "prometheus-redis-exporter", ServicePgBouncerExporter: "prometheus-pgbouncer-exporter",
		ServicePrometheus: "prometheus", ServiceAlertmanager: "prometheus-alertmanager", ServiceBlackbox: "prometheus-blackbox-exporter",
	}
	for _, s := range Services(d) {
		if p, ok := pkgs[s.Name]; ok {
			out = append(out, p)
		}
	}
	return out
}

// ProcfsDir is the sandbox node_exporter's /proc (see nodeExporterProcfs).
func (d Data) ProcfsDir() string { return nodeExporterProcfs }
