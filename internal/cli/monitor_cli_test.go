package cli

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/monitor"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// monitorStackFile writes the example stack with a monitor host (withMonitor) and returns its
// path.
func monitorStackFile(t *testing.T, withMonitor bool) string {
	t.Helper()
	y := string(stack.Example())
	if withMonitor {
		y = strings.Replace(y, "\nload_balancer:\n", "\n  monitor:\n    count: 1\n\nload_balancer:\n", 1)
	}
	path := filepath.Join(t.TempDir(), "instagram.yaml")
	if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := stack.Load(path); err != nil {
		t.Fatalf("the test stack does not load: %v", err)
	}
	return path
}

// monitorStartAlertmanager runs the real Alertmanager with the stack's generated configuration
// on a free loopback port and returns its base URL.
func monitorStartAlertmanager(t *testing.T, stackPath string) string {
	t.Helper()
	bin := testenv.Require(t, "prometheus-alertmanager", "prometheus-alertmanager")
	st, err := stack.Load(stackPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := monitor.AlertmanagerConfig(st, monitor.Options{WebhookURL: "http://127.0.0.1:9/hook"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, monitor.FileAlertmanager)
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t, "127.0.0.1")))
	p := testenv.Start(t, syscall.SIGTERM, bin, "--config.file="+path, "--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--cluster.listen-address=")
	if err := testenv.WaitTCP(addr, 30*time.Second); err != nil {
		t.Fatalf("alertmanager: %v\n%s", err, p.Log.String())
	}
	return "http://" + addr
}

// monitorEventually polls cond until it holds or a generous deadline passes.
func monitorEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 30s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestMonitorRulesCommand writes the files, checks them with the real promtool and amtool,
// rewrites nothing the second time, and refuses bad input without writing anything.
func TestMonitorRulesCommand(t *testing.T) {
	promtool := testenv.Require(t, "promtool", "prometheus")
	amtool := testenv.Require(t, "amtool", "prometheus-alertmanager")
	stackPath := monitorStackFile(t, true)
	dir := filepath.Join(t.TempDir(), "monitoring")

	stdout, stderr, code := run(t, "monitor", "rules", "--stack", stackPath, "--dir", dir, "--webhook", "https://pager.example/hook", "-o", "json")
	if code != 0 {
		t.Fatalf("monitor rules: exit %d: %s", code, stderr)
	}
	var res MonitorRulesResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("json: %v\n%s", err, stdout)
	}
	if len(res.Files) != 4 || res.Alerts < 30 || res.Records == 0 {
		t.Fatalf("result: %+v", res)
	}
	for _, f := range res.Files {
		if !f.Changed || f.Path != filepath.Join(dir, f.Name) {
			t.Errorf("first run: %+v, want written into %s", f, dir)
		}
	}
	if out, err := exec.Command(promtool, "check", "config", filepath.Join(dir, monitor.FilePrometheus)).CombinedOutput(); err != nil {
		t.Errorf("promtool check config: %v\n%s", err, out)
	}
	if out, err := exec.Command(amtool, "check-config", filepath.Join(dir, monitor.FileAlertmanager)).CombinedOutput(); err != nil {
		t.Errorf("amtool check-config: %v\n%s", err, out)
	}
	am, _ := os.ReadFile(filepath.Join(dir, monitor.FileAlertmanager))
	if !strings.Contains(string(am), "https://pager.example/hook") {
		t.Errorf("--webhook is not in %s:\n%s", monitor.FileAlertmanager, am)
	}

	stdout, stderr, code = run(t, "monitor", "rules", "--stack", stackPath, "--dir", dir, "--webhook", "https://pager.example/hook")
	if code != 0 || strings.Contains(stdout, "written") || strings.Count(stdout, "unchanged") != 4 {
		t.Errorf("second run: exit %d, want 4 files unchanged:\n%s%s", code, stdout, stderr)
	}

	// Bad input: nothing is written.
	empty := filepath.Join(t.TempDir(), "empty")
	for _, tc := range []struct {
		name  string
		args  []string
		stack string
		want  string
	}{
		{"no monitor role", nil, monitorStackFile(t, false), "monitor: {count: 1}"},
		{"bad availability", []string{"--availability", "2"}, stackPath, "availability SLO must be between 0 and 1"},
		{"bad latency threshold", []string{"--latency-threshold", "0.3"}, stackPath, "is not a bucket"},
	} {
		args := append([]string{"monitor", "rules", "--stack", tc.stack, "--dir", empty}, tc.args...)
		_, stderr, code := run(t, args...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d, %q; want 2 and %q", tc.name, code, stderr, tc.want)
		}
		if _, err := os.Stat(empty); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %s was created", tc.name, empty)
		}
	}
}

// TestAlertsAndSilenceCommands runs `alerts` and `silence` against a real Alertmanager: the
// firing alerts with their commands, a host silence that suppresses exactly that host's alert,
// list, expire.
func TestAlertsAndSilenceCommands(t *testing.T) {
	stackPath := monitorStackFile(t, true)
	u := monitorStartAlertmanager(t, stackPath)
	c := monitor.NewClient(u)
	ctx := context.Background()
	err := c.PostAlerts(ctx, []monitor.PostableAlert{
		{Labels: map[string]string{"alertname": monitor.AlertPostgresNoPrimary, monitor.LabelGroup: "pg-0", monitor.LabelSeverity: monitor.SeverityCritical},
			Annotations: map[string]string{monitor.AnnotationCommand: "instactl failover pg-0", monitor.AnnotationSummary: "group pg-0 has no primary"}},
		{Labels: map[string]string{"alertname": monitor.AlertPostgresLagBytes, monitor.LabelHost: "pg-3", monitor.LabelGroup: "pg-2", monitor.LabelSeverity: monitor.SeverityWarning},
			Annotations: map[string]string{monitor.AnnotationCommand: "instactl status", monitor.AnnotationSummary: "standby pg-3 replays more than 16 MiB behind"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	alerts := func(extra ...string) []AlertView {
		t.Helper()
		stdout, stderr, code := run(t, append([]string{"alerts", "--stack", stackPath, "--alertmanager", u, "-o", "json"}, extra...)...)
		if code != 0 {
			t.Fatalf("alerts: exit %d: %s", code, stderr)
		}
		var vs []AlertView
		if err := json.Unmarshal([]byte(stdout), &vs); err != nil {
			t.Fatalf("alerts json: %v\n%s", err, stdout)
		}
		return vs
	}
	monitorEventually(t, "both alerts listed", func() bool { return len(alerts()) == 2 })
	vs := alerts()
	if vs[0].Name != monitor.AlertPostgresNoPrimary || vs[0].Command != "instactl failover pg-0" || vs[1].Host != "pg-3" {
		t.Errorf("alerts not critical first with their commands: %+v", vs)
	}
	// The text view, with the address from the environment instead of the flag.
	t.Setenv(EnvAlertmanager, u)
	stdout, _, code := run(t, "alerts", "--stack", stackPath)
	for _, want := range []string{"critical  PostgresNoPrimary  group pg-0", "answer: instactl failover pg-0", "host pg-3", "answer: instactl status"} {
		if code != 0 || !strings.Contains(stdout, want) {
			t.Errorf("alerts text: exit %d, missing %q:\n%s", code, want, stdout)
		}
	}

	// pg-3 is a host of group pg-2: silencing the host leaves the group's other alerts loud.
	stdout, stderr, code := run(t, "silence", "pg-3", "--stack", stackPath, "--for", "1h", "--reason", "replacing the disk", "-o", "json")
	if code != 0 {
		t.Fatalf("silence: exit %d: %s", code, stderr)
	}
	var sv SilenceView
	if err := json.Unmarshal([]byte(stdout), &sv); err != nil || sv.ID == "" || sv.Matchers != `{host="pg-3"}` {
		t.Fatalf("silence json: %+v, %v\n%s", sv, err, stdout)
	}
	if d := time.Until(sv.EndsAt); d < 55*time.Minute || d > time.Hour {
		t.Errorf("silence ends in %s, want about 1h", d)
	}
	monitorEventually(t, "pg-3's alert silenced", func() bool {
		vs := alerts()
		return len(vs) == 1 && vs[0].Name == monitor.AlertPostgresNoPrimary
	})
	for _, v := range alerts("--all") {
		if v.Host == "pg-3" && (v.State != "suppressed" || len(v.SilencedBy) != 1 || v.SilencedBy[0] != sv.ID) {
			t.Errorf("with --all pg-3's alert is %+v, want suppressed by %s", v, sv.ID)
		}
	}
	stdout, _, code = run(t, "silence", "list", "--stack", stackPath)
	if code != 0 || !strings.Contains(stdout, sv.ID) || !strings.Contains(stdout, "replacing the disk") || !strings.Contains(stdout, "active") {
		t.Errorf("silence list: exit %d:\n%s", code, stdout)
	}
	if _, stderr, code := run(t, "silence", "expire", sv.ID, "--stack", stackPath); code != 0 {
		t.Fatalf("silence expire: exit %d: %s", code, stderr)
	}
	monitorEventually(t, "pg-3's alert loud again", func() bool { return len(alerts()) == 2 })
	stdout, _, _ = run(t, "silence", "list", "--stack", stackPath)
	if strings.Contains(stdout, sv.ID) {
		t.Errorf("an expired silence is listed without --all:\n%s", stdout)
	}
	stdout, _, _ = run(t, "silence", "list", "--all", "--stack", stackPath)
	if !strings.Contains(stdout, sv.ID) || !strings.Contains(stdout, "expired") {
		t.Errorf("silence list --all does not show the expired silence:\n%s", stdout)
	}

	// A group silence covers the group's own alert.
	if _, stderr, code := run(t, "silence", "pg-0", "--alert", monitor.AlertPostgresNoPrimary, "--stack", stackPath, "--for", "10m", "--reason", "planned"); code != 0 {
		t.Fatalf("group silence: exit %d: %s", code, stderr)
	}
	monitorEventually(t, "pg-0's alert silenced", func() bool {
		vs := alerts()
		return len(vs) == 1 && vs[0].Host == "pg-3"
	})
}

// TestSilenceBadInput refuses unknown targets and alert names, a missing reason and a
// non-positive duration, each with exit 2 and no silence created.
func TestSilenceBadInput(t *testing.T) {
	stackPath := monitorStackFile(t, true)
	u := monitorStartAlertmanager(t, stackPath)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pg-99", "--reason", "x"}, `no group or host "pg-99" in stack`},
		{[]string{"app", "--host", "--reason", "x"}, `no host "app"`},
		{[]string{"pg-1", "--alert", "PostgresLag", "--reason", "x"}, `--alert "PostgresLag" is no alert of stack`},
		{[]string{"pg-1"}, "--reason is required"},
		{[]string{"pg-1", "--for", "0s", "--reason", "x"}, "--for must be a positive duration"},
		{[]string{"pg-1", "pg-2", "--reason", "x"}, "takes one TARGET"},
	} {
		args := append([]string{"silence", "--stack", stackPath, "--alertmanager", u}, tc.args...)
		_, stderr, code := run(t, args...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("silence %v: exit %d, %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
	ss, err := monitor.NewClient(u).Silences(context.Background())
	if err != nil || len(ss) != 0 {
		t.Errorf("silences after bad input: %+v, %v; want none", ss, err)
	}
	_, stderr, code := run(t, "alerts", "--stack", monitorStackFile(t, false))
	if code != ExitUsage || !strings.Contains(stderr, "--alertmanager") {
		t.Errorf("alerts without a monitor host: exit %d, %q; want 2 and a hint about --alertmanager", code, stderr)
	}
	dead := "http://127.0.0.1:" + strconv.Itoa(testenv.FreePort(t, "127.0.0.1"))
	_, stderr, code = run(t, "alerts", "--stack", stackPath, "--alertmanager", dead)
	if code != ExitError || !strings.Contains(stderr, "unreachable") || !strings.Contains(stderr, "instactl monitor status") {
		t.Errorf("alerts from a dead Alertmanager: exit %d, %q; want 1 and what to check", code, stderr)
	}
}

// TestSilenceOperation checks what deploy, switchover and backup silence (through the CLI's
// wiring to the stack's Alertmanager): active exactly while the operation runs, expired after;
// an unreachable Alertmanager only warns.
func TestSilenceOperation(t *testing.T) {
	stackPath := monitorStackFile(t, true)
	u := monitorStartAlertmanager(t, stackPath)
	t.Setenv(EnvAlertmanager, u)
	c := monitor.NewClient(u)
	ctx := context.Background()
	f := NewFactory(&IOStreams{In: strings.NewReader(""), Out: &strings.Builder{}, ErrOut: &strings.Builder{}}, &stackPath)

	for _, tc := range []struct {
		name     string
		matchers []monitor.Matcher
		want     string
	}{
		{"switchover", groupOpSilence("switchover", "pg-0"), `{group="pg-0"}`},
		{"backup", backupSilence(""), `{alertname=~"PostgresReplicationLagBytes|PostgresReplicationLagTime"}`},
		{"deploy", monitor.DeploySilence("app"), `{group="app",alertname=~"ExporterDown|ProbeFailed|AppVersionDrift"}`},
	} {
		opErr := errors.New(tc.name + " failed")
		var during []monitor.Silence
		err := silenceOperation(ctx, f, tc.matchers, "instactl "+tc.name, func() error {
			ss, err := c.Silences(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range ss {
				if s.Status.State == "active" {
					during = append(during, s)
				}
			}
			return opErr
		})
		if !errors.Is(err, opErr) {
			t.Errorf("%s: error %v, want the operation's", tc.name, err)
		}
		if len(during) != 1 || silenceView(during[0]).Matchers != tc.want || during[0].Comment != "instactl "+tc.name {
			t.Errorf("%s: active silences during the operation: %+v, want one with %s", tc.name, during, tc.want)
			continue
		}
		ss, _ := c.Silences(ctx)
		for _, s := range ss {
			if s.ID == during[0].ID && s.Status.State != "expired" {
				t.Errorf("%s: silence %s is %s after the operation, want expired", tc.name, s.ID, s.Status.State)
			}
		}
	}
	for _, none := range [][]monitor.Matcher{groupOpSilence("failover", "pg-0"), groupOpSilence("rejoin", "pg-0"), backupSilence("redis")} {
		if none != nil {
			t.Errorf("failover, rejoin and a Redis backup must silence nothing, got %v", none)
		}
	}

	var errOut strings.Builder
	t.Setenv(EnvAlertmanager, "http://127.0.0.1:"+strconv.Itoa(testenv.FreePort(t, "127.0.0.1")))
	f = NewFactory(&IOStreams{In: strings.NewReader(""), Out: &strings.Builder{}, ErrOut: &errOut}, &stackPath)
	ran := false
	if err := silenceOperation(ctx, f, groupOpSilence("switchover", "pg-0"), "x", func() error { ran = true; return nil }); err != nil || !ran {
		t.Errorf("unreachable Alertmanager: ran %v, err %v; want run and no error", ran, err)
	}
	if !strings.Contains(errOut.String(), "warning: no silence for") {
		t.Errorf("unreachable Alertmanager: stderr %q, want a warning", errOut.String())
	}
}

// TestAlertCommandsExist checks that the command every generated alert names is a real
// instactl command with real flags, once its label templates are filled in: an alert that
// answers with a command that does not exist is worse than none.
func TestAlertCommandsExist(t *testing.T) {
	st, err := stack.Load(monitorStackFile(t, true))
	if err != nil {
		t.Fatal(err)
	}
	topo, err := topology.FromStack(st)
	if err != nil {
		t.Fatal(err)
	}
	rf, err := monitor.Rules(st, topo, monitor.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Added by the monitoring host's commands (monitor up|status), which live beside these.
	pending := map[string]bool{"instactl monitor up": true, "instactl monitor status": true}
	fill := strings.NewReplacer("{{ $labels.instance }}", "pg-1", "{{ $labels.application_name }}", "pg-1", "{{ $labels.group }}", "pg-0", "{{ $labels.mountpoint }}", "/var/lib/postgresql")
	root := NewCmdRoot(&IOStreams{In: strings.NewReader(""), Out: &strings.Builder{}, ErrOut: &strings.Builder{}})
	seen := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			line := fill.Replace(r.Annotations[monitor.AnnotationCommand])
			if seen[line] {
				continue
			}
			seen[line] = true
			args := strings.Fields(line)
			if len(args) < 2 || args[0] != "instactl" || strings.Contains(line, "{{") {
				t.Errorf("%s: command %q is not an instactl command line", r.Alert, line)
				continue
			}
			cmd, rest, err := root.Find(args[1:])
			if err != nil || cmd == root || !cmd.Runnable() {
				if !pending[line] {
					t.Errorf("%s: %q is no instactl command (%v)", r.Alert, line, err)
				}
				continue
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Errorf("%s: %q: %v", r.Alert, line, err)
			}
		}
	}
	if len(seen) < 8 {
		t.Errorf("only %d distinct commands checked: %v", len(seen), seen)
	}
}

// TestOperationsSilenceWhileTheyRun runs the real commands (backup create, switchover) on a
// sandbox stack whose hosts are not up, so each fails fast, and checks through a real
// Alertmanager that each set its silence and expired it when it returned; a Redis-only backup
// sets none. (What a silence covers while an operation runs is TestSilenceOperation's.)
func TestOperationsSilenceWhileTheyRun(t *testing.T) {
	testenv.RequireRoot(t)
	dir := "/var/lib/instactl/sandbox/monrules-cli-test"
	y := strings.NewReplacer(
		"\nload_balancer:\n", "\n  monitor:\n    count: 1\n\nload_balancer:\n",
		"address_base: 127.0.10.1", "address_base: 127.0.155.1",
		"dir: /var/lib/instactl/sandbox/instagram", "dir: "+dir,
		"lb_port: 18080", "lb_port: 18155",
		"moto_port: 15000", "moto_port: 15155",
	).Replace(string(stack.Example()))
	if !strings.Contains(y, dir) || !strings.Contains(y, "127.0.155.1") {
		t.Fatal("the example stack changed: this test's sandbox keys were not replaced")
	}
	path := filepath.Join(t.TempDir(), "instagram.yaml")
	if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u := monitorStartAlertmanager(t, path)
	t.Setenv(EnvAlertmanager, u)
	c := monitor.NewClient(u)

	silences := func() []SilenceView {
		t.Helper()
		ss, err := c.Silences(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var out []SilenceView
		for _, s := range ss {
			out = append(out, silenceView(s))
		}
		return out
	}
	for _, tc := range []struct {
		args    []string
		matcher string
		comment string
	}{
		{[]string{"backup", "create", "--target", "redis", "--metrics-file", "-"}, "", ""},
		{[]string{"backup", "create", "--metrics-file", "-"}, `{alertname=~"PostgresReplicationLagBytes|PostgresReplicationLagTime"}`, "instactl backup create"},
		{[]string{"switchover", "pg-0"}, `{group="pg-0"}`, "instactl switchover pg-0"},
	} {
		before := len(silences())
		_, stderr, code := run(t, append(tc.args, "--stack", path)...)
		if code == 0 {
			t.Fatalf("%v succeeded without hosts: %s", tc.args, stderr)
		}
		got := silences()
		if tc.matcher == "" {
			if len(got) != before {
				t.Errorf("%v set a silence: %+v", tc.args, got)
			}
			continue
		}
		if len(got) != before+1 {
			t.Fatalf("%v: silences %+v, want one more than %d", tc.args, got, before)
		}
		var s SilenceView
		for _, v := range got {
			if strings.HasPrefix(v.Comment, tc.comment) {
				s = v
			}
		}
		if s.Matchers != tc.matcher || s.State != "expired" {
			t.Errorf("%v: silence %+v, want %s, expired once the command returned", tc.args, s, tc.matcher)
		}
	}
}
