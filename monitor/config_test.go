package monitor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/instactl/instactl/internal/testenv"
)

// TestConfigsCheck writes every generated file for the example stack and has the real tools
// check them: promtool check config (which checks the rule file it names too) and amtool
// check-config.
func TestConfigsCheck(t *testing.T) {
	promtool := testenv.Require(t, "promtool", "prometheus")
	amtool := testenv.Require(t, "amtool", "prometheus-alertmanager")
	st, topo := exampleStack(t)
	files, err := Files(st, topo, Options{WebhookURL: "http://127.0.0.1:9/hook"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.Name), f.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(promtool, "check", "config", filepath.Join(dir, FilePrometheus)).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "rules found") {
		t.Errorf("promtool did not check the rule file:\n%s", out)
	}
	if out, err := exec.Command(amtool, "check-config", filepath.Join(dir, FileAlertmanager)).CombinedOutput(); err != nil {
		t.Fatalf("amtool check-config: %v\n%s", err, out)
	}
}

// TestTargetsPortPlan checks the scrape targets of the example stack against the port plan:
// which hosts run which exporter, on which address.
func TestTargetsPortPlan(t *testing.T) {
	st, topo := exampleStack(t)
	targets, err := Targets(st, topo)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Target{}
	for _, tg := range targets {
		got[tg.Job+"/"+tg.Host] = tg
	}
	for key, want := range map[string]string{
		"node/pg-0":              "127.0.10.3:9100",
		"postgres/pg-1":          "127.0.10.4:9187",
		"redis/redis-1":          "127.0.10.8:9121",
		"pgbouncer/app-0":        "127.0.10.1:9127",
		"app/app-1":              "127.0.10.2:8080",
		"prometheus/monitor-0":   "127.0.10.10:9090",
		"alertmanager/monitor-0": "127.0.10.10:9093",
		"blackbox/monitor-0":     "127.0.10.10:9115",
	} {
		if got[key].Address != want {
			t.Errorf("%s: address %q, want %q", key, got[key].Address, want)
		}
	}
	if g := got["postgres/pg-1"].Group; g != "pg-0" {
		t.Errorf("pg-1's group is %q, want pg-0", g)
	}
	if g := got["node/memcached-0"].Group; g != "memcached" {
		t.Errorf("memcached-0's group is %q, want its role", g)
	}
	for _, key := range []string{"postgres/app-0", "redis/pg-0", "pgbouncer/pg-0"} {
		if _, ok := got[key]; ok {
			t.Errorf("unexpected target %s", key)
		}
	}
	u, err := AlertmanagerURL(st)
	if err != nil || u != "http://127.0.10.10:9093" {
		t.Errorf("AlertmanagerURL = %q, %v", u, err)
	}
	st.Roles = st.Roles[:len(st.Roles)-1] // no monitor role
	if _, err := AlertmanagerURL(st); err == nil || !strings.Contains(err.Error(), "monitor: {count: 1}") {
		t.Errorf("AlertmanagerURL without a monitor role: %v, want the fix", err)
	}
}
