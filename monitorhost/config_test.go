package monitorhost

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/instactl/instactl/internal/testenv"
)

// testFiles is a small configuration in the shape package monitor generates: the rule file
// beside prometheus.yml, named relative to it.
func testFiles() Files {
	return Files{
		"prometheus.yml": `global:
  scrape_interval: 15s
rule_files: [instactl.rules.yml]
alerting:
  alertmanagers:
    - static_configs:
        - targets: ['127.0.158.6:9093']
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ['127.0.158.3:9100']
        labels: {instance: pg-1, role: pg, group: pg-0}
`,
		"instactl.rules.yml": `groups:
  - name: instactl-targets
    rules:
      - alert: HostDown
        expr: up{job="node"} == 0
        for: 1m
`,
		"alertmanager.yml": `route:
  receiver: default
receivers:
  - name: default
`,
	}
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

// TestInstall installs a configuration with the script monitor up runs: promtool and amtool
// accept it, and a second set replaces the rules directory as a whole.
func TestInstall(t *testing.T) {
	testenv.Require(t, "promtool", "prometheus")
	testenv.Require(t, "amtool", "prometheus-alertmanager")
	files := testFiles()
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
	for _, name := range files.Names() {
		got, _ := os.ReadFile(filepath.Join(dir, name))
		if string(got) != files[name] {
			t.Errorf("installed %s differs from the given one", name)
		}
	}
}

// TestInstallRefusesBadRules: a rule file promtool rejects changes nothing.
func TestInstallRefusesBadRules(t *testing.T) {
	testenv.Require(t, "promtool", "prometheus")
	testenv.Require(t, "amtool", "prometheus-alertmanager")
	files := testFiles()
	dir := filepath.Join(t.TempDir(), "monitor")
	if out, err := install(t, dir, files); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	bad := Files{}
	for k, v := range files {
		bad[k] = v
	}
	bad["instactl.rules.yml"] = "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: up ==\n"
	bad["prometheus.yml"] = strings.Replace(files["prometheus.yml"], "scrape_interval: 15s", "scrape_interval: 16s", 1)
	out, err := install(t, dir, bad)
	if err == nil || !strings.Contains(out, "Broken") {
		t.Fatalf("a bad rule was installed (err %v):\n%s", err, out)
	}
	for _, name := range files.Names() {
		got, _ := os.ReadFile(filepath.Join(dir, name))
		if string(got) != files[name] {
			t.Errorf("a refused configuration changed the installed %s", name)
		}
	}
}
