package stack

import (
	"strings"
	"testing"
)

func TestMonitorRoleDefaults(t *testing.T) {
	st, err := Parse("s.yaml", []byte("name: x\nroles:\n  app: {count: 1}\n  monitor: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := st.Role(MonitorRole)
	if m == nil || m.Count != 1 || m.Port != 9090 {
		t.Fatalf("monitor role = %+v, want count 1 port 9090", m)
	}
	if got := st.Hosts(); len(got) != 2 || got[1].Name() != "monitor-0" {
		t.Fatalf("hosts = %v", got)
	}
}

func TestMonitorRoleOneHost(t *testing.T) {
	_, err := Parse("s.yaml", []byte("name: x\nroles:\n  app: {count: 1}\n  monitor: {count: 2}\n"))
	if err == nil || !strings.Contains(err.Error(), "s.yaml:4:20: roles.monitor.count: must be 1") {
		t.Fatalf("want an error at roles.monitor.count, got %v", err)
	}
}
