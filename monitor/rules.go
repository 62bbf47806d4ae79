package monitor

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// RuleFile is a Prometheus rule file.
type RuleFile struct {
	Groups []RuleGroup `yaml:"groups" json:"groups"`
}

// RuleGroup is one group of rules, evaluated in order.
type RuleGroup struct {
	Name  string `yaml:"name" json:"name"`
	Rules []Rule `yaml:"rules" json:"rules"`
}

// Rule is a recording rule (Record) or an alerting rule (Alert).
type Rule struct {
	Record      string            `yaml:"record,omitempty" json:"record,omitempty"`
	Alert       string            `yaml:"alert,omitempty" json:"alert,omitempty"`
	Expr        string            `yaml:"expr" json:"expr"`
	For         string            `yaml:"for,omitempty" json:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty" json:"annotations,omitempty"`
}

// Severities of the alerts: critical pages (data at risk, users failing), warning is a ticket.
const (
	SeverityCritical = "critical"
	SeverityWarning  = "warning"
)

// Annotation and label names every alert carries.
const (
	// AnnotationCommand is the instactl command that answers the alert.
	AnnotationCommand = "command"
	AnnotationSummary = "summary"
	// LabelHost is the host the alert is about (absent for a group- or fleet-wide alert).
	LabelHost = "host"
	// LabelGroup is the replication group, or the role of a host in none.
	LabelGroup    = "group"
	LabelSeverity = "severity"
)

// Alert names the CLI and the silences of operations refer to.
const (
	AlertHostDown                  = "HostDown"
	AlertExporterDown              = "ExporterDown"
	AlertTargetMissing             = "TargetMissing"
	AlertProbeFailed               = "ProbeFailed"
	AlertPostgresDown              = "PostgresDown"
	AlertPostgresNoPrimary         = "PostgresNoPrimary"
	AlertPostgresSplitBrain        = "PostgresSplitBrain"
	AlertPostgresReplicationBroken = "PostgresReplicationBroken"
	AlertPostgresLagBytes          = "PostgresReplicationLagBytes"
	AlertPostgresLagTime           = "PostgresReplicationLagTime"
	AlertPostgresHeartbeatStale    = "PostgresHeartbeatStale"
	AlertPostgresArchiveFailing    = "PostgresWALArchiveFailing"
	AlertPostgresArchiveBehind     = "PostgresWALArchiveBehind"
	AlertPostgresConnections       = "PostgresConnectionsNearLimit"
	AlertPgBouncerWaiting          = "PgBouncerClientsWaiting"
	AlertPgBouncerClients          = "PgBouncerClientsNearLimit"
	AlertRedisDown                 = "RedisDown"
	AlertRedisNoMaster             = "RedisNoMaster"
	AlertRedisLinkDown             = "RedisReplicaLinkDown"
	AlertRedisMemory               = "RedisMemoryNearLimit"
	AlertDiskFillsIn4h             = "DiskWillFillIn4h"
	AlertDiskFillsIn24h            = "DiskWillFillIn24h"
	AlertDiskAlmostFull            = "DiskAlmostFull"
	AlertVolumeFrozen              = "VolumeFrozenTooLong"
	AlertVolumeReadOnly            = "VolumeReadOnly"
	AlertDataVolumeMissing         = "DataVolumeMissing"
	AlertBackupStale               = "BackupStale"
	AlertBackupRunFailed           = "BackupRunFailed"
	AlertBackupMetricsStale        = "BackupMetricsStale"
	AlertBackupMetricsMissing      = "BackupMetricsMissing"
	AlertAppVersionDrift           = "AppVersionDrift"
	AlertAvailabilityBurnFast      = "AppAvailabilityBurnFast"
	AlertAvailabilityBurnSlow      = "AppAvailabilityBurnSlow"
	AlertLatencyBurnFast           = "AppLatencyBurnFast"
	AlertLatencyBurnSlow           = "AppLatencyBurnSlow"
)

// fsSelector picks real filesystems from node_filesystem_*.
const fsSelector = `job="node",fstype!~"tmpfs|ramfs|squashfs|overlay|nsfs|fuse.*|autofs"`

// sloExclude keeps health checks and scrapes out of the app's SLIs.
const sloExclude = `job="app",route!~"GET /(healthz|metrics)"`

// rules builds the rule file; every alert is one call, so a reader sees what fires on what.
type rules struct {
	st   *stack.Stack
	topo topology.Topology
	o    Options
}

// Rules generates the alerting and recording rules of the stack: per host and exporter, per
// replication group (from topo: topology.FromStack, or the control database's), per backup
// target and for the app fleet. Every alert has labels severity, group (and host when it is
// about one host) and annotations summary and command.
func Rules(st *stack.Stack, topo topology.Topology, o Options) (RuleFile, error) {
	o, err := o.withDefaults()
	if err != nil {
		return RuleFile{}, err
	}
	targets, err := Targets(st, topo)
	if err != nil {
		return RuleFile{}, err
	}
	probes, err := Probes(st, topo)
	if err != nil {
		return RuleFile{}, err
	}
	r := &rules{st: st, topo: topo, o: o}
	f := RuleFile{Groups: []RuleGroup{
		{Name: "instactl-targets", Rules: r.targets(targets, probes)},
		{Name: "instactl-postgres", Rules: r.postgres()},
		{Name: "instactl-pgbouncer", Rules: r.pgbouncer()},
		{Name: "instactl-redis", Rules: r.redis()},
		{Name: "instactl-disks", Rules: r.disks()},
		{Name: "instactl-backups", Rules: r.backups()},
		{Name: "instactl-app", Rules: r.app()},
		{Name: "instactl-slo-recording", Rules: r.sloRecording()},
		{Name: "instactl-slo", Rules: r.sloAlerts()},
	}}
	var kept []RuleGroup
	for _, g := range f.Groups {
		if len(g.Rules) > 0 {
			kept = append(kept, g)
		}
	}
	f.Groups = kept
	return f, nil
}

// RulesYAML renders the rule file.
func RulesYAML(st *stack.Stack, topo topology.Topology, o Options) ([]byte, error) {
	f, err := Rules(st, topo, o)
	if err != nil {
		return nil, err
	}
	return marshal("# Prometheus rules of stack "+st.Name+", generated by `instactl monitor rules`: edit the stack, not this file.\n", f)
}

// onHost are the labels of an alert about the series' own host.
var onHost = map[string]string{LabelHost: "{{ $labels.instance }}"}

// alert is one alerting rule. labels add to severity; command and summary may use templates.
func (r *rules) alert(name, expr string, forDur time.Duration, severity string, labels map[string]string, summary, command string) Rule {
	l := map[string]string{LabelSeverity: severity}
	for k, v := range labels {
		l[k] = v
	}
	return Rule{Alert: name, Expr: expr, For: r.dur(forDur), Labels: l,
		Annotations: map[string]string{AnnotationSummary: summary, AnnotationCommand: command}}
}

// dur renders a for: duration, capped by MaxFor; "" for none.
func (r *rules) dur(d time.Duration) string {
	if r.o.MaxFor > 0 && d > r.o.MaxFor {
		d = r.o.MaxFor
	}
	return promDuration(d)
}

// promDuration is d in Prometheus's syntax, in whole seconds ("" for 0).
func promDuration(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	s := int64(math.Ceil(d.Seconds()))
	switch {
	case s%3600 == 0:
		return fmt.Sprintf("%dh", s/3600)
	case s%60 == 0:
		return fmt.Sprintf("%dm", s/60)
	}
	return fmt.Sprintf("%ds", s)
}

// sel is a selector with its matchers; values are quoted for PromQL.
func sel(metric string, kv ...string) string {
	var m []string
	for i := 0; i+1 < len(kv); i += 2 {
		m = append(m, kv[i]+"="+strconv.Quote(kv[i+1]))
	}
	return metric + "{" + strings.Join(m, ",") + "}"
}

func (r *rules) targets(targets []Target, probes []Probe) []Rule {
	out := []Rule{
		r.alert(AlertHostDown, `up{job="node"} == 0`, time.Minute, SeverityCritical, onHost,
			"host {{ $labels.instance }} is down: its node exporter does not answer",
			"instactl host start {{ $labels.instance }}"),
		r.alert(AlertExporterDown, `up{job!="node"} == 0`, 2*time.Minute, SeverityWarning, onHost,
			"{{ $labels.job }} on {{ $labels.instance }} does not answer Prometheus's scrape",
			"instactl monitor status"),
		r.alert(AlertProbeFailed, `probe_success{job="probe"} == 0`, time.Minute, SeverityCritical, onHost,
			"the blackbox probe of {{ $labels.instance }} fails",
			"instactl status"),
	}
	// One guard per expected target: a target Prometheus does not have never fires up == 0.
	for _, t := range targets {
		out = append(out, r.alert(AlertTargetMissing, "absent("+sel("up", "job", t.Job, "instance", t.Host)+")", 5*time.Minute,
			SeverityWarning, map[string]string{LabelHost: t.Host, LabelGroup: t.Group, "job": t.Job},
			fmt.Sprintf("Prometheus does not scrape %s on %s: its configuration is not the stack's", t.Job, t.Host),
			"instactl monitor up"))
	}
	for _, p := range probes {
		out = append(out, r.alert(AlertTargetMissing, "absent("+sel("up", "job", JobProbe, "instance", p.Host)+")", 5*time.Minute,
			SeverityWarning, map[string]string{LabelHost: p.Host, LabelGroup: p.Group, "job": JobProbe},
			fmt.Sprintf("Prometheus does not probe %s on %s: its configuration is not the stack's", p.Module, p.Host),
			"instactl monitor up"))
	}
	return out
}

// exporterBlind is true when a member's exporter is down while its host is up: then no
// verdict on the group's primary is safe (a failover on a dead exporter would be wrong).
func exporterBlind(job, group string) string {
	return "(" + sel("up", "job", job, "group", group) + ` == 0 and on(instance) up{job="node"} == 1)`
}

func (r *rules) postgres() []Rule {
	groups := r.topo.OfKind(topology.KindPostgres)
	if len(groups) == 0 {
		return nil
	}
	maxLag := r.st.Backup.MaxLagBytes
	maxLagTime := r.st.Backup.MaxLagTime
	fresh := 3 * HeartbeatInterval
	primary := `on(instance) instactl_pg_in_recovery{job="postgres"} == 0`
	out := []Rule{
		r.alert(AlertPostgresDown, `pg_up{job="postgres"} == 0`, time.Minute, SeverityCritical, onHost,
			"PostgreSQL on {{ $labels.instance }} (group {{ $labels.group }}) does not accept connections",
			"instactl rejoin {{ $labels.instance }}"),
		r.alert(AlertPostgresSplitBrain, `count by (group) (instactl_pg_in_recovery{job="postgres"} == 0) > 1`, 0, SeverityCritical, nil,
			"more than one member of group {{ $labels.group }} accepts writes as a primary",
			"instactl status"),
		r.alert(AlertPostgresLagBytes, fmt.Sprintf(`instactl_pg_replication_lag_bytes{job="postgres"} > %d`, maxLag), 2*time.Minute,
			SeverityWarning, map[string]string{LabelHost: "{{ $labels.application_name }}"},
			fmt.Sprintf("standby {{ $labels.application_name }} replays more than %s behind the primary of {{ $labels.group }} (backups of it are skipped)", bytesText(maxLag)),
			"instactl status"),
		r.alert(AlertPostgresLagTime,
			fmt.Sprintf(`(instactl_pg_heartbeat_age_seconds{job="postgres"} and on(instance) instactl_pg_in_recovery{job="postgres"} == 1) > %d`+
				` and on(group) (min by (group) (instactl_pg_heartbeat_age_seconds{job="postgres"} and %s) < %d)`,
				int64(maxLagTime.Seconds()), primary, int64(fresh.Seconds())),
			time.Minute, SeverityWarning, onHost,
			fmt.Sprintf("standby {{ $labels.instance }} has not replayed the primary's heartbeat of the last %s: replication is broken or far behind", shortDur(maxLagTime)),
			"instactl status"),
		r.alert(AlertPostgresHeartbeatStale,
			fmt.Sprintf(`(instactl_pg_heartbeat_age_seconds{job="postgres"} and %s) > %d`, primary, int64(fresh.Seconds())),
			2*time.Minute, SeverityWarning, onHost,
			"the heartbeat writer on primary {{ $labels.instance }} stopped: replication lag in time cannot be told",
			"instactl monitor up"),
		r.alert(AlertPostgresArchiveFailing,
			fmt.Sprintf(`increase(pg_stat_archiver_failed_count{job="postgres"}[%[1]s]) > 0 and on(instance) increase(pg_stat_archiver_archived_count{job="postgres"}[%[1]s]) == 0`,
				promDuration(archiveFailWindow(r.o.ArchiveMaxAge))),
			time.Minute, SeverityCritical, onHost,
			fmt.Sprintf("WAL archiving on {{ $labels.instance }} fails and archived nothing for %s: point-in-time recovery falls behind", shortDur(archiveFailWindow(r.o.ArchiveMaxAge))),
			"instactl backup verify --archive"),
		r.alert(AlertPostgresArchiveBehind,
			fmt.Sprintf(`pg_stat_archiver_last_archive_age{job="postgres"} > %d and %s and on(instance) pg_stat_archiver_archived_count{job="postgres"} > 0`,
				int64(r.o.ArchiveMaxAge.Seconds()), primary),
			5*time.Minute, SeverityWarning, onHost,
			fmt.Sprintf("primary {{ $labels.instance }} archived no WAL segment for more than %s", shortDur(r.o.ArchiveMaxAge)),
			"instactl status"),
		r.alert(AlertPostgresConnections,
			`sum by (job, instance, role, group) (pg_stat_activity_count{job="postgres"})`+
				` / (pg_settings_max_connections{job="postgres"} - pg_settings_superuser_reserved_connections{job="postgres"}) > 0.8`,
			2*time.Minute, SeverityWarning, onHost,
			"PostgreSQL on {{ $labels.instance }} uses more than 80% of max_connections",
			"instactl status"),
	}
	for _, g := range groups {
		out = append(out, r.alert(AlertPostgresNoPrimary,
			"absent("+sel("instactl_pg_in_recovery", "job", JobPostgres, "group", g.Name)+" == 0) unless on() "+exporterBlind(JobPostgres, g.Name),
			30*time.Second, SeverityCritical, map[string]string{LabelGroup: g.Name},
			fmt.Sprintf("group %s has no primary: no member answers as a primary", g.Name),
			"instactl failover "+g.Name))
		out = append(out, r.alert(AlertPostgresHeartbeatStale,
			"absent("+sel("instactl_pg_heartbeat_age_seconds", "job", JobPostgres, "group", g.Name)+") unless on() absent("+
				sel("instactl_pg_in_recovery", "job", JobPostgres, "group", g.Name)+" == 0)",
			5*time.Minute, SeverityWarning, map[string]string{LabelGroup: g.Name},
			fmt.Sprintf("group %s has no heartbeat table: the heartbeat writer never ran on its primary", g.Name),
			"instactl monitor up"))
		// Per member, computed on whichever member is primary now: the member is not the
		// primary, a primary exists, and its pg_stat_replication has no streaming row for it.
		for _, m := range g.Members {
			out = append(out, r.alert(AlertPostgresReplicationBroken,
				"absent("+sel("instactl_pg_replication_streaming", "job", JobPostgres, "group", g.Name, "application_name", m.Host)+" == 1)"+
					" unless on() ("+sel("instactl_pg_in_recovery", "job", JobPostgres, "instance", m.Host)+" == 0)"+
					" unless on() absent("+sel("instactl_pg_in_recovery", "job", JobPostgres, "group", g.Name)+" == 0)",
				time.Minute, SeverityCritical, map[string]string{LabelHost: m.Host, LabelGroup: g.Name},
				fmt.Sprintf("standby %s does not stream from the primary of %s (pg_stat_replication on the primary)", m.Host, g.Name),
				"instactl rejoin "+m.Host))
		}
	}
	return out
}

func (r *rules) pgbouncer() []Rule {
	if r.st.Role(AppRole) == nil {
		return nil
	}
	return []Rule{
		// The Debian exporter (cbaines) has no maxwait: clients waiting, sustained, stand in.
		r.alert(AlertPgBouncerWaiting, `sum by (job, instance, role, group) (pgbouncer_waiting_clients{job="pgbouncer"}) > 20`,
			2*time.Minute, SeverityWarning, onHost,
			"more than 20 clients wait for a server connection in PgBouncer on {{ $labels.instance }}",
			"instactl status"),
		r.alert(AlertPgBouncerClients, fmt.Sprintf(`pgbouncer_used_clients{job="pgbouncer"} / %d > 0.8`, r.o.PgBouncerMaxClientConn),
			2*time.Minute, SeverityWarning, onHost,
			fmt.Sprintf("PgBouncer on {{ $labels.instance }} uses more than 80%% of max_client_conn (%d)", r.o.PgBouncerMaxClientConn),
			"instactl status"),
	}
}

func (r *rules) redis() []Rule {
	groups := r.topo.OfKind(topology.KindRedis)
	if len(groups) == 0 {
		return nil
	}
	out := []Rule{
		r.alert(AlertRedisDown, `redis_up{job="redis"} == 0`, time.Minute, SeverityCritical, onHost,
			"Redis on {{ $labels.instance }} (group {{ $labels.group }}) does not answer",
			"instactl rejoin {{ $labels.instance }}"),
		r.alert(AlertRedisLinkDown, `redis_master_link_up{job="redis"} == 0`, time.Minute, SeverityCritical, onHost,
			"Redis replica {{ $labels.instance }} lost its link to the master of {{ $labels.group }}",
			"instactl rejoin {{ $labels.instance }}"),
		r.alert(AlertRedisMemory,
			`redis_memory_used_bytes{job="redis"} / redis_memory_max_bytes{job="redis"} > 0.9 and on(instance) redis_memory_max_bytes{job="redis"} > 0`,
			2*time.Minute, SeverityWarning, onHost,
			"Redis on {{ $labels.instance }} uses more than 90% of maxmemory",
			"instactl status"),
	}
	for _, g := range groups {
		// redis_instance_info's own label role is renamed exported_role by Prometheus: the
		// target already has a label role (the stack role).
		out = append(out, r.alert(AlertRedisNoMaster,
			"absent("+sel("redis_instance_info", "job", JobRedis, "group", g.Name, "exported_role", "master")+") unless on() "+exporterBlind(JobRedis, g.Name),
			30*time.Second, SeverityCritical, map[string]string{LabelGroup: g.Name},
			fmt.Sprintf("Redis group %s has no master", g.Name),
			"instactl failover "+g.Name))
	}
	return out
}

func (r *rules) disks() []Rule {
	avail := "node_filesystem_avail_bytes{" + fsSelector + "}"
	size := "node_filesystem_size_bytes{" + fsSelector + "}"
	rw := "node_filesystem_readonly{" + fsSelector + "} == 0"
	window := func(d time.Duration) string {
		if r.o.MaxFor > 0 && d > r.o.MaxFor {
			d = max(r.o.MaxFor, 2*r.o.ScrapeInterval)
		}
		return promDuration(d)
	}
	out := []Rule{
		r.alert(AlertDiskFillsIn4h,
			fmt.Sprintf("predict_linear(%s[%s], 4 * 3600) < 0 and %s / %s < 0.2 and %s", avail, window(time.Hour), avail, size, rw),
			15*time.Minute, SeverityCritical, onHost,
			"{{ $labels.mountpoint }} on {{ $labels.instance }} will be full within 4 hours at the rate of the last hour",
			"instactl status"),
		r.alert(AlertDiskFillsIn24h,
			fmt.Sprintf("predict_linear(%s[%s], 24 * 3600) < 0 and %s / %s < 0.4 and %s", avail, window(6*time.Hour), avail, size, rw),
			time.Hour, SeverityWarning, onHost,
			"{{ $labels.mountpoint }} on {{ $labels.instance }} will be full within a day at the rate of the last 6 hours",
			"instactl status"),
		r.alert(AlertDiskAlmostFull, fmt.Sprintf("%s / %s < 0.05 and %s", avail, size, rw), 5*time.Minute, SeverityCritical, onHost,
			"{{ $labels.mountpoint }} on {{ $labels.instance }} has less than 5% space left",
			"instactl status"),
		// The budget is the thaw guardian's: past it (and two scrapes) the guardian failed.
		r.alert(AlertVolumeFrozen,
			fmt.Sprintf(`time() - %s{job="node"} > %d`, MetricVolumeFrozenSince, int64((r.st.Backup.FreezeBudget+2*r.o.ScrapeInterval).Seconds())),
			0, SeverityCritical, onHost,
			fmt.Sprintf("{{ $labels.mountpoint }} on {{ $labels.instance }} is frozen for longer than the freeze budget (%s): its writes block", shortDur(r.st.Backup.FreezeBudget)),
			"instactl run --hosts {{ $labels.instance }} -- xfs_freeze -u {{ $labels.mountpoint }}"),
	}
	var mounts []string
	for _, role := range r.st.Roles {
		if role.Volumes.Count > 0 && role.Volumes.Mount != "" {
			mounts = append(mounts, role.Volumes.Mount)
		}
	}
	if len(mounts) == 0 {
		return out
	}
	out = append(out, r.alert(AlertVolumeReadOnly,
		fmt.Sprintf(`node_filesystem_readonly{job="node",mountpoint=~%s} == 1`, strconv.Quote(strings.Join(mounts, "|"))),
		time.Minute, SeverityCritical, onHost,
		"data volume {{ $labels.mountpoint }} on {{ $labels.instance }} is read-only",
		"instactl status"))
	// A stuck or lost mount's series vanish (the node exporter skips it): guard each data mount
	// while the host's node exporter answers.
	for _, h := range r.st.Hosts() {
		role := r.st.Role(h.Role)
		if role.Volumes.Count == 0 {
			continue
		}
		out = append(out, r.alert(AlertDataVolumeMissing,
			"absent("+sel("node_filesystem_avail_bytes", "job", JobNode, "instance", h.Name(), "mountpoint", role.Volumes.Mount)+")"+
				" unless on() absent("+sel("up", "job", JobNode, "instance", h.Name())+" == 1)",
			5*time.Minute, SeverityCritical, map[string]string{LabelHost: h.Name(), LabelGroup: groupOf(r.topo, h)},
			fmt.Sprintf("data volume %s of %s is not mounted (or its mount hangs)", role.Volumes.Mount, h.Name()),
			"instactl status"))
	}
	return out
}

func (r *rules) backups() []Rule {
	if len(r.st.Backup.Targets) == 0 {
		return nil
	}
	stale := time.Duration(1.5 * float64(r.o.BackupInterval))
	fileSel := `node_textfile_mtime_seconds{job="node",file=~".*/instactl_backup\\.prom"}`
	out := []Rule{
		r.alert(AlertBackupRunFailed, MetricBackupLastRunExitCode+" != 0", 0, SeverityWarning, onHost,
			"the last backup create run exited {{ $value }} (3 unsafe, 4 locked, 5 partial, 1 failed)",
			"instactl backup create -v"),
		r.alert(AlertBackupMetricsStale, fmt.Sprintf("time() - %s > %d", fileSel, int64(stale.Seconds())), 5*time.Minute, SeverityWarning, onHost,
			fmt.Sprintf("the backup metrics file on {{ $labels.instance }} was not rewritten for %s: backup create does not run", shortDur(stale)),
			"instactl backup create --metrics-file "+BackupMetricsFile),
		r.alert(AlertBackupMetricsMissing, "absent("+fileSel+")", 15*time.Minute, SeverityWarning, map[string]string{LabelGroup: Role},
			"no node exporter serves "+BackupMetricsFile+": backup create never ran on the monitor host, or writes elsewhere",
			"instactl backup create --metrics-file "+BackupMetricsFile),
	}
	for _, t := range r.st.Backup.Targets {
		want := 0
		for _, g := range r.topo.Groups {
			if r.st.Role(t) != nil && strings.HasPrefix(g.Name, t+"-") {
				want++
			}
		}
		if want == 0 {
			continue
		}
		// Counted over hosts, not per host: after a switchover another standby is backed up and
		// the old one's series keeps its old time forever.
		out = append(out, r.alert(AlertBackupStale,
			fmt.Sprintf("(count(time() - %s < %d) or vector(0)) < %d",
				sel(MetricBackupLastSuccess, "target", t), int64(stale.Seconds()), want),
			5*time.Minute, SeverityCritical, map[string]string{LabelGroup: t, "target": t},
			fmt.Sprintf("fewer than %d %s groups have a usable backup set newer than %s", want, t, shortDur(stale)),
			"instactl backup create --target "+t))
	}
	return out
}

// DeployDuration is how long a deploy of the stack's app role may take: per batch the drain,
// the health timeout and a restart, plus staging. Two versions running longer than this is
// not a deploy any more.
func DeployDuration(st *stack.Stack) time.Duration {
	batches := len(st.Deploy.Batches)
	if batches == 0 {
		batches = 1
	}
	per := st.LoadBalancer.DrainTimeout + st.Deploy.HealthTimeout + 30*time.Second
	return time.Duration(batches)*per + 5*time.Minute
}

func (r *rules) app() []Rule {
	if r.st.Role(AppRole) == nil {
		return nil
	}
	d := DeployDuration(r.st)
	return []Rule{
		r.alert(AlertAppVersionDrift, `count(count by (release) (`+MetricAppBuildInfo+`{job="app"})) > 1`, d, SeverityWarning,
			map[string]string{LabelGroup: AppRole},
			fmt.Sprintf("app servers run more than one release for longer than a deploy takes (%s)", shortDur(d)),
			"instactl lock status"),
	}
}

// sloWindows are the burn-rate windows (SRE Workbook table 5-8, the two paging tiers).
var sloWindows = []string{"5m", "30m", "1h", "6h"}

func (r *rules) sloRecording() []Rule {
	if r.st.Role(AppRole) == nil {
		return nil
	}
	var out []Rule
	le := strconv.FormatFloat(r.o.LatencyThreshold, 'g', -1, 64)
	for _, w := range sloWindows {
		out = append(out,
			Rule{Record: "instactl:app_requests:rate" + w,
				Expr: fmt.Sprintf("sum(rate(%s{%s}[%s]))", MetricAppRequests, sloExclude, w)},
			Rule{Record: "instactl:app_errors:ratio_rate" + w,
				Expr: fmt.Sprintf(`sum(rate(%s{%s,code=~"5.."}[%s])) / sum(rate(%s{%s}[%s]))`, MetricAppRequests, sloExclude, w, MetricAppRequests, sloExclude, w)},
			Rule{Record: "instactl:app_slow:ratio_rate" + w,
				Expr: fmt.Sprintf(`1 - sum(rate(%s_bucket{%s,le=%q}[%s])) / sum(rate(%s_count{%s}[%s]))`,
					MetricAppLatency, sloExclude, le, w, MetricAppLatency, sloExclude, w)},
		)
	}
	return out
}

func (r *rules) sloAlerts() []Rule {
	if r.st.Role(AppRole) == nil {
		return nil
	}
	burn := func(name, ratio string, budget float64, factor float64, long, short string, forDur time.Duration, what string) Rule {
		f := strconv.FormatFloat(factor, 'g', -1, 64)
		b := strconv.FormatFloat(budget, 'g', -1, 64)
		expr := fmt.Sprintf("instactl:%s:ratio_rate%s > %s * %s and instactl:%s:ratio_rate%s > %s * %s and instactl:app_requests:rate%s > %s",
			ratio, long, f, b, ratio, short, f, b, long, strconv.FormatFloat(r.o.MinRequestRate, 'g', -1, 64))
		return r.alert(name, expr, forDur, SeverityCritical, map[string]string{LabelGroup: AppRole},
			fmt.Sprintf("the app burns its %s error budget %sx too fast (over %s and %s)", what, f, long, short),
			"instactl status")
	}
	avail := 1 - r.o.Availability
	slow := 1 - r.o.LatencyTarget
	avail, slow = round(avail), round(slow)
	what := fmt.Sprintf("%g%% availability", r.o.Availability*100)
	lat := fmt.Sprintf("%g%% within %gs", r.o.LatencyTarget*100, r.o.LatencyThreshold)
	return []Rule{
		burn(AlertAvailabilityBurnFast, "app_errors", avail, 14.4, "1h", "5m", 2*time.Minute, what),
		burn(AlertAvailabilityBurnSlow, "app_errors", avail, 6, "6h", "30m", 15*time.Minute, what),
		burn(AlertLatencyBurnFast, "app_slow", slow, 14.4, "1h", "5m", 2*time.Minute, lat),
		burn(AlertLatencyBurnSlow, "app_slow", slow, 6, "6h", "30m", 15*time.Minute, lat),
	}
}

// archiveFailWindow is how long archiving must fail without one success before
// PostgresWALArchiveFailing fires: 10 minutes, or the archive max age when a drill sets that
// shorter (a failing archiver is worse than a slow one, so it never waits longer).
func archiveFailWindow(maxAge time.Duration) time.Duration {
	return min(10*time.Minute, maxAge)
}

// shortDur is d for a summary: "90m", "8m15s", "30s".
func shortDur(d time.Duration) string {
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// round drops float noise such as 1 - 0.999 = 0.0010000000000000009.
func round(f float64) float64 { return math.Round(f*1e9) / 1e9 }

// bytesText is n in MiB or GiB for a summary.
func bytesText(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// marshal renders v as YAML after a header comment.
func marshal(header string, v any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(header)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
