package cli

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/monitor"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// TestStatusRecoveryView renders the recovery section (a group with archived WAL past its
// backup, one without a backup, an unserved metrics file) and checks that an unreachable
// Prometheus is an error the section shows, not a failed status.
func TestStatusRecoveryView(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	r := &StatusRecovery{Prometheus: "http://127.0.10.10:9090", MetricsFileAgeSeconds: 40, Groups: []monitor.RecoveryPoint{
		{Group: "pg-0", Kind: "postgres", LastBackup: now.Add(-2 * time.Hour), BackupHost: "pg-1", ArchivedTo: now.Add(-time.Minute), RecoverableTo: now.Add(-time.Minute)},
		{Group: "redis-0", Kind: "redis"},
	}}
	var b strings.Builder
	renderRecovery(&b, r, "", now)
	for _, want := range []string{
		"Recovery (http://127.0.10.10:9090; backup metrics written 40s ago):",
		"pg-0     2026-12-07T10:00:00Z (2h ago)  pg-1  2026-12-07T11:59:00Z (1m ago)  2026-12-07T11:59:00Z (1m ago)",
		"redis-0  -                              -     -                              nothing: no backup (instactl backup create)",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in:\n%s", want, b.String())
		}
	}
	r.MetricsFileAgeSeconds = -1
	b.Reset()
	renderRecovery(&b, r, "", now)
	if !strings.Contains(b.String(), "backup times unknown: no node exporter serves "+monitor.BackupMetricsFile) {
		t.Errorf("unserved metrics file not said:\n%s", b.String())
	}
	b.Reset()
	renderRecovery(&b, nil, "", now)
	if b.Len() != 0 {
		t.Errorf("a stack without monitoring shows %q", b.String())
	}

	st, err := stack.Load(monitorStackFile(t, true))
	if err != nil {
		t.Fatal(err)
	}
	topo, _ := topology.FromStack(st)
	t.Setenv(EnvPrometheus, "http://127.0.0.1:"+strconv.Itoa(testenv.FreePort(t, "127.0.0.1")))
	if _, err := statusRecovery(context.Background(), st, topo); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("unreachable Prometheus: %v, want an error saying so", err)
	}
}
