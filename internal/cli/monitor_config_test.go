package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/backup"
	"github.com/instactl/instactl/monitor"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/topology"
)

// TestMonitorTemplatesAgree: the hosts' user data (package templates) runs what package
// monitor's configuration and rules expect: the same ports, postgres_exporter's queries and
// the heartbeat writer at the rules' interval. The two packages sit on one layer and cannot
// import each other, so this test holds them together.
func TestMonitorTemplatesAgree(t *testing.T) {
	for name, p := range map[string][2]int{
		"node": {templates.NodeExporterPort, monitor.PortNode}, "postgres": {templates.PostgresExporterPort, monitor.PortPostgres},
		"redis": {templates.RedisExporterPort, monitor.PortRedis}, "pgbouncer": {templates.PgBouncerExporterPort, monitor.PortPgBouncer},
		"blackbox": {templates.BlackboxPort, monitor.PortBlackbox}, "alertmanager": {templates.AlertmanagerPort, monitor.PortAlertmanager},
		"prometheus": {templates.PrometheusPort, monitor.PortPrometheus},
	} {
		if p[0] != p[1] {
			t.Errorf("%s: templates port %d, monitor port %d", name, p[0], p[1])
		}
	}
	if time.Duration(templates.PgHeartbeatInterval)*time.Second != monitor.HeartbeatInterval {
		t.Errorf("heartbeat every %d s in templates, %s in monitor", templates.PgHeartbeatInterval, monitor.HeartbeatInterval)
	}
	if templates.TextfileDir != monitor.TextfileDir || backup.FreezeMarkerFile != monitor.FreezeMetricsFile {
		t.Errorf("textfile directory: templates %s, monitor %s; freeze marker: backup %s, monitor %s",
			templates.TextfileDir, monitor.TextfileDir, backup.FreezeMarkerFile, monitor.FreezeMetricsFile)
	}
	if templates.RoleMonitor != monitor.Role || stack.MonitorRole != monitor.Role {
		t.Errorf("monitor role: templates %q, stack %q, monitor %q", templates.RoleMonitor, stack.MonitorRole, monitor.Role)
	}
	st, err := stack.Parse("stack.yaml", []byte(`name: agree
provider: sandbox
roles:
  app: {count: 1}
  pg: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 1, mount: /var/lib/postgresql}}
  monitor: {}
`))
	if err != nil {
		t.Fatal(err)
	}
	d, err := templates.FromStack(st, "pg", 1, "127.0.0.3", "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	ud, err := templates.UserData("pg", d)
	if err != nil {
		t.Fatal(err)
	}
	for what, want := range map[string]string{"postgres_exporter queries": monitor.PostgresQueries, "heartbeat SQL": monitor.HeartbeatSQL} {
		if !strings.Contains(ud, want) {
			t.Errorf("the pg host's user data lacks package monitor's %s:\n%s", what, want)
		}
	}
	// Every file monitor up installs passes through: the generated set minus the exporter's
	// queries, which the pg hosts hold.
	topo, err := topology.FromStack(st)
	if err != nil {
		t.Fatal(err)
	}
	files, err := monitorConfig(st, topo, monitor.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(files.Names(), " "); got != "alertmanager.yml instactl.rules.yml prometheus.yml" {
		t.Errorf("monitor up installs %s", got)
	}
}
