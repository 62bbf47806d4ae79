package monitorhost

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/stack"
)

const testStack = `name: mon
provider: sandbox
network:
  address_base: 127.0.158.1
roles:
  app: {count: 1}
  pg: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 1, mount: /var/lib/postgresql}}
  redis: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 1, mount: /var/lib/redis}}
  monitor: {}
`

func parseStack(t *testing.T, src string) *stack.Stack {
	t.Helper()
	st, err := stack.Parse("stack.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// install runs InstallCommand on this machine, as the monitor host would, with files on stdin.
func install(t *testing.T, dir string, files Files) (string, error) {
	t.Helper()
	archive, err := tarFiles(files)
	if err != nil {
		t.Fatal(err)
	}
	cmd := InstallCommand(dir)
	c := exec.Command(cmd[0], cmd[1:]...)
	c.Stdin = bytes.NewReader(archive)
	out, err := c.CombinedOutput()
	return string(out), err
}

// TestGenerateInstalls renders the configuration of a stack with every role and installs it
// with the script monitor up runs: promtool and amtool accept it, and a second set replaces
// the rules directory as a whole.
func TestGenerateInstalls(t *testing.T) {
	testenv.Require(t, "promtool", "prometheus")
	testenv.Require(t, "amtool", "prometheus-alertmanager")
	st := parseStack(t, testStack)
	files, err := Generate(st, Options{ScrapeInterval: 2 * time.Second, For: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	prom := files["prometheus.yml"]
	for _, want := range []string{"scrape_interval: 2s", "127.0.158.3:9187", "127.0.158.5:9121", "127.0.158.1:9127",
		"127.0.158.1:8080", "127.0.158.6:9093", "127.0.158.6:9100", "{host: pg-1, role: pg}"} {
		if !strings.Contains(prom, want) {
			t.Errorf("prometheus.yml lacks %q:\n%s", want, prom)
		}
	}
	if !strings.Contains(files["rules/instactl.yml"], "for: 5s") || strings.Contains(files["rules/instactl.yml"], "for: 1m") {
		t.Errorf("Options.For does not replace every for:\n%s", files["rules/instactl.yml"])
	}
	dir := filepath.Join(t.TempDir(), "monitor")
	if out, err := install(t, dir, files); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules", "stale.yml"), []byte("groups: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := install(t, dir, files); err != nil {
		t.Fatalf("second install: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "rules", "stale.yml")); !os.IsNotExist(err) {
		t.Errorf("a rule file outside the set survived the install: %v", err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "prometheus.yml"))
	if string(got) != prom {
		t.Errorf("installed prometheus.yml differs from the generated one")
	}
}

// TestInstallRefusesBadRules: a rule file promtool rejects changes nothing.
func TestInstallRefusesBadRules(t *testing.T) {
	testenv.Require(t, "promtool", "prometheus")
	testenv.Require(t, "amtool", "prometheus-alertmanager")
	files, err := Generate(parseStack(t, testStack), Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "monitor")
	if out, err := install(t, dir, files); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	bad := Files{}
	for k, v := range files {
		bad[k] = v
	}
	bad["rules/instactl.yml"] = "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: up ==\n"
	bad["prometheus.yml"] = strings.Replace(files["prometheus.yml"], "scrape_interval: 15s", "scrape_interval: 16s", 1)
	out, err := install(t, dir, bad)
	if err == nil || !strings.Contains(out, "Broken") {
		t.Fatalf("a bad rule was installed (err %v):\n%s", err, out)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "prometheus.yml"))
	rules, _ := os.ReadFile(filepath.Join(dir, "rules", "instactl.yml"))
	if string(got) != files["prometheus.yml"] || string(rules) != files["rules/instactl.yml"] {
		t.Error("a refused configuration changed the installed files")
	}
}

func TestGenerateNeedsMonitorRole(t *testing.T) {
	st := parseStack(t, "name: x\nroles:\n  app: {count: 1}\n")
	if _, err := Generate(st, Options{}); err == nil || !strings.Contains(err.Error(), "roles.monitor: {}") {
		t.Fatalf("want an error naming the fix, got %v", err)
	}
}
