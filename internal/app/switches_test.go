package app_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/internal/app/apptest"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/switches"
)

// TestSwitchesInApp: each switch set in the control database reaches the app by NOTIFY (the
// re-read is an hour away) and sheds what it says: readonly refuses writes with 503 and
// Retry-After while reads work, uploads off refuses uploads alone, feed.ranking off serves the
// feed from Redis, feed.fanout off parks the fan-out of a user with many followers until it is
// on again. The app reports the version it applies and the state as a metric.
func TestSwitchesInApp(t *testing.T) {
	ctx := context.Background()
	comps := apptest.StartComponents(t, 4)
	cfg := comps.Config()
	cfg.SwitchRefresh = time.Hour
	cfg.FanoutBigFollowers = 2
	srv := apptest.StartApp(t, cfg)
	c := client{t: t, base: srv.URL}
	ctl, err := pgx.Connect(ctx, comps.ControlDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close(ctx)
	set := func(name string, on bool, d time.Duration) {
		t.Helper()
		ev, err := switches.Set(ctx, ctl, switches.Change{Name: name, On: on, Reason: "test " + name, By: "tester@here", For: d})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			r, err := switches.Fetch(ctx, http.DefaultClient, srv.URL)
			if err == nil && r.Version >= ev.Version {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the app did not apply version %d: %+v, %v", ev.Version, r, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	raw := func(method, path string, body string) (int, http.Header, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}

	alice, bob, carol := c.signUp("alice"), c.signUp("bob"), c.signUp("carol")
	for _, f := range [][2]int64{{bob.ID, alice.ID}, {carol.ID, alice.ID}} {
		if code := c.call("POST", fmt.Sprintf("/users/%d/follow/%d", f[0], f[1]), nil, nil); code != http.StatusOK {
			t.Fatalf("follow: %d", code)
		}
	}
	p1 := c.upload(alice.ID, "one", randomBytes(1000))
	waitFeed := func(user, photo int64) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !slices.Contains(c.feed(user), photo) {
			if time.Now().After(deadline) {
				t.Fatalf("photo %d never reached the feed of %d", photo, user)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFeed(bob.ID, p1.ID)

	// readonly: writes 503 with Retry-After (the seconds to its expiry), reads 200.
	set(switches.ReadOnly, true, 10*time.Minute)
	code, hdr, body := raw("POST", "/users", `{"username":"dave"}`)
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || !strings.Contains(body, "read-only") || !strings.Contains(body, "tester@here") {
		t.Fatalf("sign-up while read-only: %d %v %s", code, hdr, body)
	}
	if ra := hdr.Get("Retry-After"); ra != "600" && ra != "599" {
		t.Fatalf("Retry-After %s, want the seconds to the expiry (600)", ra)
	}
	if code, _, body := raw("POST", fmt.Sprintf("/photos/%d/likes", p1.ID), fmt.Sprintf(`{"user_id":%d}`, bob.ID)); code != http.StatusServiceUnavailable {
		t.Fatalf("like while read-only: %d %s", code, body)
	}
	if code := c.call("GET", fmt.Sprintf("/users/%d", alice.ID), nil, nil); code != http.StatusOK {
		t.Fatalf("read while read-only: %d", code)
	}
	if ids := c.feed(bob.ID); !slices.Contains(ids, p1.ID) {
		t.Fatalf("feed while read-only: %v", ids)
	}
	set(switches.ReadOnly, false, 0)
	c.signUp("dave")

	// uploads off: uploads 503, other writes work.
	set(switches.Uploads, false, 0)
	code, hdr, body = raw("POST", fmt.Sprintf("/photos?user_id=%d", alice.ID), "not an image")
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") != "30" || !strings.Contains(body, "uploads") {
		t.Fatalf("upload while uploads are off: %d %v %s", code, hdr, body)
	}
	if code, _, body := raw("POST", fmt.Sprintf("/photos/%d/likes", p1.ID), fmt.Sprintf(`{"user_id":%d}`, bob.ID)); code != http.StatusOK {
		t.Fatalf("like while uploads are off: %d %s", code, body)
	}
	set(switches.Uploads, true, 0)

	// feed.ranking off: the same ids, from Redis alone, marked degraded.
	set(switches.FeedRanking, false, 0)
	var page struct {
		Photos []struct {
			ID     int64 `json:"id"`
			UserID int64 `json:"user_id"`
		}
		Degraded string
	}
	if code := c.call("GET", fmt.Sprintf("/users/%d/feed", bob.ID), nil, &page); code != http.StatusOK || page.Degraded == "" ||
		len(page.Photos) != 1 || page.Photos[0].ID != p1.ID || page.Photos[0].UserID != alice.ID {
		t.Fatalf("feed with ranking off: %d %+v", code, page)
	}
	set(switches.FeedRanking, true, 0)

	// feed.fanout off: alice has 2 followers (the threshold): her photo waits, then arrives.
	rdb := redis.NewClient(&redis.Options{Addr: comps.RedisAddr})
	defer rdb.Close()
	set(switches.FeedFanout, false, 0)
	p2 := c.upload(alice.ID, "two", randomBytes(1000))
	deadline := time.Now().Add(30 * time.Second)
	for rdb.LLen(ctx, "q:fanout:deferred").Val() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the fan-out of a user with many followers was not queued while feed.fanout was off")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if slices.Contains(c.feed(bob.ID), p2.ID) {
		t.Fatal("photo fanned out while feed.fanout was off")
	}
	set(switches.FeedFanout, true, 0)
	waitFeed(bob.ID, p2.ID)
	waitFeed(carol.ID, p2.ID)

	// The report and the metric.
	r, err := switches.Fetch(ctx, http.DefaultClient, srv.URL)
	if err != nil || r.Source != switches.FromDatabase || len(r.Switches) != len(switches.Known) {
		t.Fatalf("report: %+v, %v", r, err)
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`instagram_switch_state{name="readonly",source="set"} 0`, `instagram_switch_state{name="uploads",source="set"} 1`,
		fmt.Sprintf(`instagram_switch_version{source="database"} %d`, r.Version), `instagram_switch_refusals_total{name="readonly"} 2`} {
		if !bytes.Contains(m, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestSwitchesRestartWithoutControlDatabase: an app server restarted while the control
// database does not answer starts anyway, from the switch state on its disk: readonly, set
// before the restart, still refuses writes.
func TestSwitchesRestartWithoutControlDatabase(t *testing.T) {
	ctx := context.Background()
	comps := apptest.StartComponents(t, 2)
	cfg := comps.Config()
	cfg.SwitchesFile = filepath.Join(t.TempDir(), "switches.json")
	srv := apptest.StartApp(t, cfg)
	ctl, err := pgx.Connect(ctx, comps.ControlDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close(ctx)
	ev, err := switches.Set(ctx, ctl, switches.Change{Name: switches.ReadOnly, On: true, Reason: "before the restart", By: "tester"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r, err := switches.Fetch(ctx, http.DefaultClient, srv.URL); err == nil && r.Version == ev.Version {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the app never applied the switch")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := srv.Shutdown(); err != nil {
		t.Fatal(err)
	}

	// The same server, its control database unreachable (nobody listens on that port).
	cfg.ControlDSN = fmt.Sprintf("postgres://app@127.0.0.1:%d/control?sslmode=disable&connect_timeout=1", testenv.FreePort(t, "127.0.0.1"))
	srv = apptest.StartApp(t, cfg)
	r, err := switches.Fetch(ctx, http.DefaultClient, srv.URL)
	if err != nil || r.Source != switches.FromDisk || r.Version != ev.Version {
		t.Fatalf("report after the restart without the database: %+v, %v", r, err)
	}
	resp, err := http.Post(srv.URL+"/users", "application/json", strings.NewReader(`{"username":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "read-only") || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a write after the restart: %d %s (want 503, read-only)", resp.StatusCode, body)
	}
	resp, err = http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("healthz without the control database: %d, want 503", resp.StatusCode)
	}
}
