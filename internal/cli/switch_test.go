package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/internal/loadgen"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/switches"
)

// The switch family's sandbox: 127.0.156.x, LB 18156, moto 15156.
const switchTestStack = `name: swtest
provider: sandbox
network:
  address_base: 127.0.156.1
roles:
  app: {count: 2}
  pg: {count: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
  redis: {count: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/redis}}
  memcached: {count: 1}
deploy:
  batches: [100%%]
shards:
  logical: 4
sandbox:
  dir: %s
  lb_port: 18156
  moto_port: 15156
`

func TestSwitchSetOptionsCaptured(t *testing.T) {
	var got *SwitchSetOptions
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, new(string))
	cmd := NewCmdSwitchSet(f, func() Output { return OutputText }, func(o *SwitchSetOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"feed.ranking", "OFF", "--reason", "db overloaded", "--for", "2h", "--wait", "5s"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got == nil || got.Change.Name != "feed.ranking" || got.Change.On || got.Change.Reason != "db overloaded" ||
		got.Change.For != 2*time.Hour || got.Wait != 5*time.Second || !strings.Contains(got.Change.By, "@") {
		t.Fatalf("options %+v", got)
	}
}

// TestSwitchUsageErrors: bad input exits 2 with the place and the fix, before the stack file is
// read (so nothing can have changed).
func TestSwitchUsageErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stack.yaml")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"switch", "set", "feed.rankin", "off", "--reason", "x"}, `unknown switch "feed.rankin": the known switches are feed.ranking, feed.fanout, uploads, readonly`},
		{[]string{"switch", "set", "uploads", "maybe", "--reason", "x"}, `must be on or off (got "maybe")`},
		{[]string{"switch", "set", "uploads", "off"}, "a reason is required (--reason"},
		{[]string{"switch", "set", "uploads", "off", "--reason", "  "}, "a reason is required"},
		{[]string{"switch", "set", "uploads", "--reason", "x"}, "takes NAME and on|off (got 1 arguments)"},
		{[]string{"switch", "set", "uploads", "off", "--reason", "x", "--for", "-1h"}, "--for must be positive"},
		{[]string{"switch", "set", "uploads", "off", "--reason", "x", "--for", "soon"}, "for"},
		{[]string{"switch", "set", "uploads", "off", "--reason", "x", "--wait", "-1s"}, "--wait must be >= 0"},
		{[]string{"switch", "list", "uploads"}, "takes no arguments"},
		{[]string{"switch", "history", "nope"}, `unknown switch "nope"`},
		{[]string{"switch", "history", "uploads", "readonly"}, "at most one switch name"},
		{[]string{"switch", "history", "--limit", "0"}, "--limit must be >= 1"},
	} {
		_, stderr, code := run(t, append([]string{"--stack", path}, tc.args...)...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("a usage error read or wrote the stack file")
	}
}

// TestSwitchSandbox is issue 17's proof for the degradation switches on the real sandbox: under
// the load generator through the load balancer, each switch flipped with `instactl switch set`
// is acknowledged by both app servers and changes their behaviour (uploads refused with 503 and
// Retry-After, the feed from Redis alone until its --for expires, read-only), the load
// generator sees exactly that effect, and every write it saw acknowledged is still there. An
// app server that does not answer makes the command exit 5 with the switch set, and it applies
// the switch once it runs again; every server keeps the state on its disk; list and history
// show the settings and the audit.
func TestSwitchSandbox(t *testing.T) {
	requireSandbox(t)
	testenv.Require(t, "/usr/sbin/pgbouncer", "pgbouncer")
	dir := t.TempDir()
	path := filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(switchTestStack, filepath.Join(dir, "sandbox"))), 0o644); err != nil {
		t.Fatal(err)
	}
	st := sandboxUp(t, path)
	ctx := context.Background()
	cli := func(args ...string) (string, string, int) {
		t.Helper()
		start := time.Now()
		stdout, stderr, code := run(t, append([]string{"--stack", path}, args...)...)
		t.Logf("instactl %s: exit %d in %s\n%s%s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond), stdout, stderr)
		return stdout, stderr, code
	}
	must := func(args ...string) string {
		t.Helper()
		stdout, stderr, code := cli(args...)
		if code != 0 {
			t.Fatalf("instactl %s: exit %d\n%s\n%s", strings.Join(args, " "), code, stdout, stderr)
		}
		return stdout
	}
	set := func(name, value string, extra ...string) SwitchSetView {
		t.Helper()
		var v SwitchSetView
		out := must(append([]string{"switch", "set", name, value, "--reason", "sandbox test: " + name + " " + value, "-o", "json"}, extra...)...)
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("switch set -o json: %v\n%s", err, out)
		}
		if len(v.Acks) != 2 || !v.Waited || v.Event.Name != name {
			t.Fatalf("switch set %s %s: %+v (want both app servers acknowledged)", name, value, v)
		}
		for _, a := range v.Acks {
			if !a.OK() || a.Version < v.Event.Version {
				t.Fatalf("switch set %s %s: app server %s: %+v", name, value, a.Host, a)
			}
		}
		return v
	}
	var apps []string
	for i := range 2 {
		a, err := st.Address(stack.HostRef{Role: "app", Index: i})
		if err != nil {
			t.Fatal(err)
		}
		apps = append(apps, fmt.Sprintf("http://%s:%d", a, st.Role("app").Port))
	}
	lb := fmt.Sprintf("http://127.0.0.1:%d", st.Sandbox.LBPort)
	// request sends one request straight to one app server (not through the load balancer).
	request := func(method, url, body string) (int, http.Header, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	report := func(app string) switches.Report {
		t.Helper()
		r, err := switches.Fetch(ctx, http.DefaultClient, app)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	on := func(r switches.Report, name string) bool {
		for _, s := range r.Switches {
			if s.Name == name {
				return s.On
			}
		}
		t.Fatalf("report without switch %s: %+v", name, r)
		return false
	}

	must("shard", "init")
	bin := filepath.Join(dir, "instagram-app")
	if _, err := deploy.Build(ctx, deploy.BuildOptions{ModuleDir: "../..", Version: "v1", Output: bin}); err != nil {
		t.Fatal(err)
	}
	must("deploy", "--artifact", bin, "--version", "v1")
	if out := must("switch", "history"); !strings.Contains(out, "No switch was ever set.") {
		t.Fatalf("history before any change:\n%s", out)
	}
	code, _, body := request("POST", lb+"/users", `{"username":"switch-reader"}`)
	var reader struct{ ID int64 }
	if code != http.StatusCreated || json.Unmarshal([]byte(body), &reader) != nil {
		t.Fatalf("sign-up: %d %s", code, body)
	}

	// The load, through the load balancer, for the whole flip sequence.
	record := filepath.Join(dir, "writes.jsonl")
	loadCtx, stopLoad := context.WithCancel(ctx)
	type loadOut struct {
		res loadgen.Result
		err error
	}
	loadDone := make(chan loadOut, 1)
	go func() {
		res, err := loadgen.Run(loadCtx, loadgen.Config{BaseURL: lb, Rate: 60, Duration: time.Hour,
			Mix:        loadgen.Mix{SignUp: 5, Follow: 10, Upload: 20, Like: 15, Comment: 10, Feed: 40},
			RecordFile: record, WaitForSlot: true, Timeout: 30 * time.Second})
		loadDone <- loadOut{res, err}
	}()
	time.Sleep(3 * time.Second) // some writes before the first flip; not a timing assertion

	// uploads off: both servers refuse uploads, a load generator of uploads sees only 503s.
	v := set(switches.Uploads, "off")
	if !v.Event.Before || v.Event.After || v.Event.ExpiresAt != nil {
		t.Fatalf("uploads off event: %+v", v.Event)
	}
	for _, app := range apps {
		if r := report(app); r.Version < v.Event.Version || on(r, switches.Uploads) || r.Source != switches.FromDatabase {
			t.Fatalf("%s after uploads off: %+v", app, r)
		}
		code, h, body := request("POST", fmt.Sprintf("%s/photos?user_id=%d", app, reader.ID), "jpeg")
		if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || !strings.Contains(body, "uploads are switched off") {
			t.Fatalf("upload to %s with uploads off: %d Retry-After %q %s", app, code, h.Get("Retry-After"), body)
		}
	}
	up, err := loadgen.Run(ctx, loadgen.Config{BaseURL: lb, Rate: 20, Duration: 2 * time.Second, Mix: loadgen.Mix{Upload: 1},
		WaitForSlot: true, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	uk := up.ByKind["upload"]
	if uk.Requests == 0 || uk.Errors != uk.Requests || up.ErrorKinds["http 503"] != up.Errors || up.ByKind["signup"].Errors != 0 {
		t.Fatalf("uploads while uploads is off: %d uploads, %d failed, errors by cause %v (want every upload refused with 503, nothing else failing)",
			uk.Requests, uk.Errors, up.ErrorKinds)
	}

	// feed.ranking off for a while: the feed comes from Redis alone until the expiry passes,
	// with nothing written at the expiry.
	v = set(switches.FeedRanking, "off", "--for", "4s")
	if v.Event.ExpiresAt == nil {
		t.Fatalf("feed.ranking off --for 4s: no expiry in %+v", v.Event)
	}
	feed := func(app string) (int, string) {
		code, _, body := request("GET", fmt.Sprintf("%s/users/%d/feed?limit=5", app, reader.ID), "")
		return code, body
	}
	for _, app := range apps {
		// The expiry may pass on a slow machine before this read: then the check below covers it.
		if code, body := feed(app); code != http.StatusOK || (time.Now().Before(*v.Event.ExpiresAt) && !strings.Contains(body, "feed.ranking is off")) {
			t.Fatalf("feed on %s with feed.ranking off: %d %s", app, code, body)
		}
	}
	for _, app := range apps {
		waitFor(t, 60*time.Second, app+" serves the ranked feed after the expiry", func() bool {
			code, body := feed(app)
			return code == http.StatusOK && !strings.Contains(body, "degraded")
		})
	}
	if out := must("switch", "list"); !strings.Contains(out, "expired (was off)") {
		t.Fatalf("list after the expiry of feed.ranking:\n%s", out)
	}

	// readonly on: every write refused on both servers, reads served.
	v = set(switches.ReadOnly, "on")
	for _, app := range apps {
		code, h, body := request("POST", app+"/users", `{"username":"refused"}`)
		if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || !strings.Contains(body, "read-only") {
			t.Fatalf("sign-up on %s while read-only: %d %s", app, code, body)
		}
		if code, body := feed(app); code != http.StatusOK {
			t.Fatalf("feed on %s while read-only: %d %s", app, code, body)
		}
	}
	time.Sleep(2 * time.Second) // writes refused under load for a while; not a timing assertion
	set(switches.ReadOnly, "off")
	v = set(switches.Uploads, "on")
	for _, app := range apps {
		code, _, body := request("POST", fmt.Sprintf("%s/photos?user_id=%d", app, reader.ID), "jpeg")
		if code != http.StatusCreated {
			t.Fatalf("upload to %s after uploads on: %d %s", app, code, body)
		}
	}
	time.Sleep(2 * time.Second)
	stopLoad()
	lo := <-loadDone
	if lo.err != nil {
		t.Fatal(lo.err)
	}
	t.Logf("load: %d requests, %d errors %v, %d acknowledged writes", lo.res.Requests, lo.res.Errors, lo.res.ErrorKinds, lo.res.Writes)
	if lo.res.Writes == 0 || lo.res.Errors == 0 || lo.res.ErrorKinds["http 503"] != lo.res.Errors || lo.res.ByKind["feed"].Errors != 0 ||
		lo.res.ByKind["upload"].Errors == 0 || lo.res.ByKind["signup"].Errors+lo.res.ByKind["like"].Errors+lo.res.ByKind["follow"].Errors == 0 {
		t.Fatalf("the load under the flips: %d acknowledged writes, errors by kind %v and by cause %v, first %v (want uploads and other writes refused with 503, no read failing)",
			lo.res.Writes, lo.res.ByKind, lo.res.ErrorKinds, lo.res.FirstErrors)
	}
	vr, err := loadgen.Verify(ctx, lb, record)
	if err != nil {
		t.Fatal(err)
	}
	if !vr.Clean() || vr.Checked != lo.res.Writes {
		t.Fatalf("acknowledged writes after the flips: %+v (want %d checked, all ok)", vr, lo.res.Writes)
	}

	// Each server keeps the state it applies on its disk.
	// (grep exits 1 on a host whose file lacks the version: run then exits non-zero.)
	must("run", "--role", "app", "--", fmt.Sprintf(`grep -q '^  "version": %d,$' %s`, v.Event.Version, switches.DefaultFile))

	// An app server that does not answer: the switch is set, the command exits 5 naming it, and
	// the server applies the change once it runs again.
	must("run", "--hosts", "app-1", "--", "kill -STOP $(cat /run/instagram/app.pid)")
	cont := func() { _, _, _ = cli("run", "--hosts", "app-1", "--", "kill -CONT $(cat /run/instagram/app.pid)") }
	defer cont()
	stdout, stderr, code := cli("switch", "set", switches.FeedFanout, "off", "--reason", "sandbox test: one server stopped", "--wait", "3s")
	if code != ExitPartial || !strings.Contains(stderr, "1 of 2 app servers did not acknowledge") || !strings.Contains(stderr, "app-1") ||
		!strings.Contains(stdout, "NOT ACKNOWLEDGED") {
		t.Fatalf("switch set with app-1 stopped: exit %d, want %d naming app-1\n%s%s", code, ExitPartial, stdout, stderr)
	}
	cont()
	waitFor(t, 60*time.Second, "app-1 applies feed.fanout off", func() bool {
		r, err := switches.Fetch(ctx, http.DefaultClient, apps[1])
		return err == nil && !on(r, switches.FeedFanout)
	})
	set(switches.FeedFanout, "on")

	// The audit, newest first, and the list.
	var evs []switches.Event
	if err := json.Unmarshal([]byte(must("switch", "history", "-o", "json")), &evs); err != nil {
		t.Fatal(err)
	}
	want := []string{"feed.fanout off->on", "feed.fanout on->off", "uploads off->on", "readonly on->off", "readonly off->on", "feed.ranking on->off", "uploads on->off"}
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%s %s->%s", e.Name, switches.Word(e.Before), switches.Word(e.After)))
		if e.SetBy == "" || !strings.HasPrefix(e.Reason, "sandbox test") || e.At.IsZero() {
			t.Errorf("audit event without who, why or when: %+v", e)
		}
	}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Fatalf("history: %s\nwant:    %s", strings.Join(got, ", "), strings.Join(want, ", "))
	}
	if out := must("switch", "history", "readonly", "--limit", "1"); !strings.Contains(out, "readonly  on -> off") {
		t.Fatalf("history readonly --limit 1:\n%s", out)
	}
	out := must("switch", "list")
	for _, w := range []string{"SWITCH", "uploads", "sandbox test: uploads on", "readonly"} {
		if !strings.Contains(out, w) {
			t.Fatalf("list lacks %q:\n%s", w, out)
		}
	}
}
