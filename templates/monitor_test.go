package templates

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// monitoredCases are hosts of a stack with a monitor role: the exporters of each role and the
// monitor host itself, in both flavours, pinned in testdata/golden/*/monitored-*.
func monitoredCases() []goldenCase {
	var cases []goldenCase
	for _, f := range []struct {
		name string
		host func(string, int, int, bool, int) Data
	}{{"aws", awsHost}, {"sandbox", sandboxHost}} {
		for _, c := range []goldenCase{
			{"pg-replica", f.host(RolePostgres, 1, 5432, false, 1)},
			{"redis-master", f.host(RoleRedis, 0, 6379, true, 1)},
			{"app", f.host(RoleApp, 0, 8080, true, 0)},
			{"memcached", f.host(RoleMemcached, 0, 11211, true, 0)},
			{"monitor", f.host(RoleMonitor, 0, PrometheusPort, true, 0)},
		} {
			c.data.Exporters = true
			cases = append(cases, goldenCase{f.name + "/monitored-" + c.name, c.data})
		}
	}
	return cases
}

func TestMonitoredUserDataGolden(t *testing.T) {
	for _, c := range monitoredCases() {
		t.Run(c.name, func(t *testing.T) {
			got, err := UserData(c.data.Role, c.data)
			if err != nil {
				t.Fatal(err)
			}
			compareGolden(t, filepath.Join("testdata", "golden", c.name+".sh"), got)
			checkScript(t, c.name, got)
			if strings.Contains(got, "<no value>") {
				t.Errorf("%s: user-data has <no value>", c.name)
			}
		})
	}
}

// TestExporterServices checks the port plan and that every exporter binds the host's own
// address (sandbox hosts share the machine's loopback).
func TestExporterServices(t *testing.T) {
	want := map[string][]string{
		RolePostgres:  {"postgres", ServiceNodeExporter, ServicePostgresExporter, ServicePgHeartbeat},
		RoleRedis:     {"redis", ServiceNodeExporter, ServiceRedisExporter},
		RoleApp:       {"pgbouncer", "app", ServiceNodeExporter, ServicePgBouncerExporter},
		RoleMemcached: {"memcached", ServiceNodeExporter},
		RoleMonitor:   {ServiceNodeExporter, ServicePrometheus, ServiceAlertmanager, ServiceBlackbox},
		"worker":      {ServiceNodeExporter},
	}
	ports := map[string]string{ServiceNodeExporter: ":9100", ServicePostgresExporter: ":9187", ServiceRedisExporter: ":9121",
		ServicePgBouncerExporter: "9127", ServicePrometheus: ":9090", ServiceAlertmanager: ":9093", ServiceBlackbox: ":9115"}
	for role, names := range want {
		d := sandboxHost(role, 0, 1234, true, 0)
		if role == RoleMonitor {
			d.Port = PrometheusPort
		}
		d.Exporters = true
		var got []string
		for _, s := range Services(d) {
			got = append(got, s.Name)
			p, ok := ports[s.Name]
			if !ok {
				continue
			}
			cmd := strings.Join(s.Command, " ")
			if !strings.Contains(cmd, p) || !strings.Contains(cmd, d.Address) {
				t.Errorf("%s on %s: %q does not bind %s at %s", s.Name, role, cmd, d.Address, p)
			}
		}
		if !slices.Equal(got, names) {
			t.Errorf("%s runs %v, want %v", role, got, names)
		}
		d.Exporters = false
		for _, s := range Services(d) {
			if s.Name == ServiceNodeExporter && role != RoleMonitor {
				t.Errorf("%s runs node_exporter in a stack without a monitor role", role)
			}
		}
	}
}
