package monitor

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/testenv"
)

// startAlertmanager runs the real Alertmanager with the generated configuration on a free
// loopback port (no cluster listener) and returns its client.
func startAlertmanager(t *testing.T) *Client {
	t.Helper()
	bin := testenv.Require(t, "prometheus-alertmanager", "prometheus-alertmanager")
	st, _ := exampleStack(t)
	cfg, err := AlertmanagerConfig(st, Options{WebhookURL: "http://127.0.0.1:9/hook"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, FileAlertmanager)
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t, "127.0.0.1")))
	p := testenv.Start(t, syscall.SIGTERM, bin, "--config.file="+path, "--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--cluster.listen-address=")
	if err := testenv.WaitTCP(addr, 30*time.Second); err != nil {
		t.Fatalf("alertmanager: %v\n%s", err, p.Log.String())
	}
	return NewClient("http://" + addr)
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 30s (last error: %v)", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func firing(t *testing.T, c *Client, all bool) map[string]Alert {
	t.Helper()
	as, err := c.Alerts(context.Background(), all)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Alert{}
	for _, a := range as {
		out[a.Name()+"/"+a.Labels[LabelHost]+a.Labels[LabelGroup]] = a
	}
	return out
}

// TestAlertmanagerClient runs the client against a real Alertmanager: post alerts, list them
// with their command, silence a host, see the alert suppressed, expire the silence.
func TestAlertmanagerClient(t *testing.T) {
	c := startAlertmanager(t)
	ctx := context.Background()
	err := c.PostAlerts(ctx, []PostableAlert{
		{Labels: map[string]string{"alertname": AlertPostgresNoPrimary, LabelGroup: "pg-0", LabelSeverity: SeverityCritical},
			Annotations: map[string]string{AnnotationCommand: "instactl failover pg-0", AnnotationSummary: "group pg-0 has no primary"}},
		{Labels: map[string]string{"alertname": AlertRedisLinkDown, LabelHost: "redis-1", LabelGroup: "redis-0", LabelSeverity: SeverityCritical},
			Annotations: map[string]string{AnnotationCommand: "instactl rejoin redis-1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "both alerts listed", func() (bool, error) { return len(firing(t, c, false)) == 2, nil })
	if got := firing(t, c, false)[AlertPostgresNoPrimary+"/pg-0"].Command(); got != "instactl failover pg-0" {
		t.Errorf("command annotation %q", got)
	}

	id, err := c.PutSilence(ctx, Silence{Matchers: []Matcher{Equal(LabelHost, "redis-1")}, StartsAt: time.Now(),
		EndsAt: time.Now().Add(time.Hour), CreatedBy: "test", Comment: "replacing the disk"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "redis-1's alert silenced", func() (bool, error) {
		f := firing(t, c, false)
		_, loud := f[AlertRedisLinkDown+"/redis-1redis-0"]
		return len(f) == 1 && !loud, nil
	})
	all := firing(t, c, true)
	if a := all[AlertRedisLinkDown+"/redis-1redis-0"]; a.Status.State != "suppressed" || len(a.Status.SilencedBy) != 1 || a.Status.SilencedBy[0] != id {
		t.Errorf("silenced alert's status: %+v, want suppressed by %s", a.Status, id)
	}
	ss, err := c.Silences(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 1 || ss[0].ID != id || ss[0].Status.State != "active" || ss[0].Comment != "replacing the disk" || ss[0].Matchers[0].String() != `host="redis-1"` {
		t.Errorf("silences: %+v", ss)
	}
	if err := c.ExpireSilence(ctx, id); err != nil {
		t.Fatal(err)
	}
	eventually(t, "redis-1's alert loud again", func() (bool, error) { return len(firing(t, c, false)) == 2, nil })
	ss, _ = c.Silences(ctx)
	if len(ss) != 1 || ss[0].Status.State != "expired" {
		t.Errorf("after expire: %+v", ss)
	}
	if err := c.ExpireSilence(ctx, "no-such-silence"); err == nil {
		t.Error("expiring an unknown silence succeeded")
	}
}

// TestSilenceDuring checks that the operation's silence holds exactly while it runs, and that
// an unreachable Alertmanager only warns.
func TestSilenceDuring(t *testing.T) {
	c := startAlertmanager(t)
	ctx := context.Background()
	if err := c.PostAlerts(ctx, []PostableAlert{{Labels: map[string]string{"alertname": AlertPostgresDown, LabelHost: "pg-0", LabelGroup: "pg-0"}}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "alert listed", func() (bool, error) { return len(firing(t, c, false)) == 1, nil })
	opErr := errors.New("switchover failed")
	warns, err := SilenceDuring(ctx, c, SwitchoverSilence("pg-0"), "switchover pg-0", func() error {
		if n := len(firing(t, c, false)); n != 0 {
			t.Errorf("%d alerts loud during the operation, want 0", n)
		}
		return opErr
	})
	if !errors.Is(err, opErr) || len(warns) != 0 {
		t.Fatalf("SilenceDuring = %v, %v; want the operation's error and no warnings", warns, err)
	}
	if n := len(firing(t, c, false)); n != 1 {
		t.Errorf("%d alerts loud after the operation, want 1", n)
	}
	ss, _ := c.Silences(ctx)
	if len(ss) != 1 || ss[0].Status.State != "expired" || ss[0].Comment != "switchover pg-0" {
		t.Errorf("silence after the operation: %+v", ss)
	}

	dead := NewClient("http://127.0.0.1:" + strconv.Itoa(testenv.FreePort(t, "127.0.0.1")))
	ran := false
	warns, err = SilenceDuring(ctx, dead, SwitchoverSilence("pg-0"), "x", func() error { ran = true; return nil })
	if !ran || err != nil || len(warns) != 1 {
		t.Errorf("unreachable Alertmanager: ran %v, err %v, warnings %v; want run, nil, one warning", ran, err, warns)
	}
}
