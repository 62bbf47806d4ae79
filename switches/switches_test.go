package switches_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/switches"
)

func TestLookupAndValues(t *testing.T) {
	for _, name := range switches.Names() {
		if _, err := switches.Lookup(name); err != nil {
			t.Errorf("Lookup(%q): %v", name, err)
		}
	}
	_, err := switches.Lookup("feed.rankin")
	if err == nil || !strings.Contains(err.Error(), `"feed.rankin"`) {
		t.Fatalf("Lookup of an unknown name: %v", err)
	}
	for _, n := range switches.Names() {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("the error for an unknown switch does not list %s: %v", n, err)
		}
	}
	for _, tc := range []struct {
		in   string
		want bool
		ok   bool
	}{{"on", true, true}, {"OFF", false, true}, {"off", false, true}, {"yes", false, false}, {"", false, false}} {
		got, err := switches.ParseValue(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseValue(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestStateExpiry(t *testing.T) {
	now := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	exp := now.Add(time.Minute)
	s := switches.State{Version: 3, Settings: map[string]switches.Setting{
		switches.Uploads:  {Name: switches.Uploads, On: false, ExpiresAt: &exp},
		switches.ReadOnly: {Name: switches.ReadOnly, On: true},
	}}
	for _, tc := range []struct {
		name   string
		at     time.Time
		on     bool
		source string
	}{
		{switches.Uploads, now, false, switches.SourceSet},
		{switches.Uploads, exp.Add(-time.Nanosecond), false, switches.SourceSet},
		{switches.Uploads, exp, true, switches.SourceExpired}, // back at the default the instant it expires
		{switches.ReadOnly, exp.Add(time.Hour), true, switches.SourceSet},
		{switches.FeedRanking, now, true, switches.SourceDefault},
		{switches.FeedFanout, now, true, switches.SourceDefault},
	} {
		st := s.Status(tc.name, tc.at)
		if st.On != tc.on || st.Source != tc.source {
			t.Errorf("%s at %s: %+v, want on=%v source=%s", tc.name, tc.at, st, tc.on, tc.source)
		}
	}
	if got := len(s.Statuses(now)); got != len(switches.Known) {
		t.Fatalf("Statuses: %d, want %d", got, len(switches.Known))
	}
}

func TestFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "switches.json")
	if _, err := switches.ReadFile(path); !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("missing file: %v", err)
	}
	exp := time.Now().Add(time.Hour).UTC().Round(time.Second)
	s := switches.State{Version: 7, Settings: map[string]switches.Setting{
		switches.Uploads: {Name: switches.Uploads, On: false, Reason: "s3 slow", SetBy: "ops@x", ExpiresAt: &exp, Version: 7}}}
	for range 2 { // the second write replaces the first
		if err := switches.WriteFile(path, s); err != nil {
			t.Fatal(err)
		}
	}
	got, err := switches.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 7 || got.Settings[switches.Uploads].Reason != "s3 slow" || !got.Settings[switches.Uploads].ExpiresAt.Equal(exp) {
		t.Fatalf("read back %+v", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left beside the state: %v", entries)
	}
	if err := os.WriteFile(path, []byte(`{"format": 99}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := switches.ReadFile(path); err == nil || !strings.Contains(err.Error(), "format 99") {
		t.Fatalf("a file of another format: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func startControl(t *testing.T) (string, *pgx.Conn) {
	t.Helper()
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	dsn := pg.URL("postgres")
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return dsn, conn
}

// TestSetLoadHistory: every change is recorded with before and after, bumps the version and
// notifies; bad input changes nothing.
func TestSetLoadHistory(t *testing.T) {
	ctx := context.Background()
	_, db := startControl(t)
	if s, err := switches.Load(ctx, db); err != nil || s.Version != 0 || len(s.Settings) != 0 {
		t.Fatalf("load before any schema: %+v, %v", s, err)
	}
	if _, err := db.Exec(ctx, "LISTEN "+switches.NotifyChannel); err != nil {
		t.Fatal(err)
	}
	ev, err := switches.Set(ctx, db, switches.Change{Name: switches.Uploads, On: false, Reason: "s3 slow", By: "ops@a", For: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if ev.Version != 1 || ev.Before != true || ev.After != false || ev.ExpiresAt == nil || ev.ExpiresAt.Sub(ev.At) != time.Hour {
		t.Fatalf("first change: %+v", ev)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	n, err := db.WaitForNotification(wctx)
	cancel()
	if err != nil || n.Payload != "1" {
		t.Fatalf("notification: %+v, %v", n, err)
	}
	if _, err := switches.Set(ctx, db, switches.Change{Name: switches.ReadOnly, On: true, Reason: "incident 12", By: "ops@b"}); err != nil {
		t.Fatal(err)
	}
	ev, err = switches.Set(ctx, db, switches.Change{Name: switches.Uploads, On: true, Reason: "s3 fine", By: "ops@a"})
	if err != nil || ev.Version != 3 || ev.Before != false || ev.After != true || ev.ExpiresAt != nil {
		t.Fatalf("third change: %+v, %v", ev, err)
	}
	for _, bad := range []switches.Change{
		{Name: "uploadz", On: false, Reason: "x", By: "ops"},
		{Name: switches.Uploads, On: false, Reason: "  ", By: "ops"},
		{Name: switches.Uploads, On: false, Reason: "x", By: "ops", For: -time.Second},
	} {
		if _, err := switches.Set(ctx, db, bad); err == nil {
			t.Errorf("Set(%+v) succeeded", bad)
		}
	}
	s, err := switches.Load(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if s.Version != 3 || s.On(switches.Uploads, now) != true || s.On(switches.ReadOnly, now) != true ||
		s.Settings[switches.ReadOnly].SetBy != "ops@b" || s.Settings[switches.ReadOnly].Version != 2 {
		t.Fatalf("state: %+v", s)
	}
	hist, err := switches.History(ctx, db, "", 10)
	if err != nil || len(hist) != 3 || hist[0].Version != 3 || hist[2].Reason != "s3 slow" {
		t.Fatalf("history: %+v, %v", hist, err)
	}
	hist, err = switches.History(ctx, db, switches.ReadOnly, 10)
	if err != nil || len(hist) != 1 || hist[0].Before != false || hist[0].After != true {
		t.Fatalf("history of readonly: %+v, %v", hist, err)
	}
	// An expired setting counts as the default when the next change records "before".
	if _, err := db.Exec(ctx, `UPDATE switches SET expires_at = now() - interval '1 second' WHERE name = 'readonly'`); err != nil {
		t.Fatal(err)
	}
	ev, err = switches.Set(ctx, db, switches.Change{Name: switches.ReadOnly, On: true, Reason: "again", By: "ops@b"})
	if err != nil || ev.Before != false {
		t.Fatalf("change after expiry: %+v, %v (before must be the default, off)", ev, err)
	}
}

// TestBoardFollowsAndRestartsFromDisk: a board follows changes by NOTIFY alone (the periodic
// re-read is an hour away), keeps each on disk, refuses an older state, and a board started
// while the control database is unreachable applies the state from disk.
func TestBoardFollowsAndRestartsFromDisk(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dsn, db := startControl(t)
	path := filepath.Join(t.TempDir(), "switches.json")
	var changes atomic.Int64
	b := switches.NewBoard(path, nil, func(old, new switches.Applied) { changes.Add(1) })
	if c := b.Current(); c.Source != switches.FromDefault || !b.On(switches.Uploads) {
		t.Fatalf("fresh board: %+v", c)
	}
	go b.Watch(ctx, dsn, time.Hour)
	waitUntil(t, "the board connects", func() bool { _, _, _, _, c := b.Counters(); return c > 0 })
	if _, err := switches.Set(ctx, db, switches.Change{Name: switches.Uploads, On: false, Reason: "r", By: "t"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the board applies version 1", func() bool { return b.Current().Version == 1 })
	if b.On(switches.Uploads) || b.Current().Source != switches.FromDatabase {
		t.Fatalf("after the change: %+v", b.Current())
	}
	ev, err := switches.Set(ctx, db, switches.Change{Name: switches.ReadOnly, On: true, Reason: "r2", By: "t"})
	if err != nil {
		t.Fatal(err)
	}
	// The change callback runs just after the new state is visible: wait for both.
	waitUntil(t, "the board applies version 2", func() bool { return b.Current().Version == ev.Version && changes.Load() >= 2 })
	if !b.On(switches.ReadOnly) || changes.Load() != 2 {
		t.Fatalf("board after two changes: %+v, %d change callbacks", b.Current(), changes.Load())
	}
	if b.Apply(switches.State{Version: 1}) || b.Current().Version != 2 {
		t.Fatal("an older state was applied")
	}
	onDisk, err := switches.ReadFile(path)
	if err != nil || onDisk.Version != 2 || !onDisk.On(switches.ReadOnly, time.Now()) {
		t.Fatalf("state on disk: %+v, %v", onDisk, err)
	}

	// Restart without the database: a port nobody listens on.
	dead := "postgres://postgres@127.0.0.1:" + itoa(testenv.FreePort(t, "127.0.0.1")) + "/postgres?sslmode=disable&connect_timeout=1"
	b2 := switches.NewBoard(path, nil, nil)
	go b2.Watch(ctx, dead, time.Second)
	time.Sleep(1500 * time.Millisecond) // let it fail to connect at least once; not a timing assertion
	if c := b2.Current(); c.Source != switches.FromDisk || c.Version != 2 || !b2.On(switches.ReadOnly) || b2.On(switches.Uploads) {
		t.Fatalf("board restarted without the database: %+v", c)
	}
	// With the database back it confirms (and moves past) the disk state.
	b3 := switches.NewBoard(path, nil, nil)
	if _, err := switches.Set(ctx, db, switches.Change{Name: switches.ReadOnly, On: false, Reason: "r3", By: "t"}); err != nil {
		t.Fatal(err)
	}
	go b3.Watch(ctx, dsn, time.Hour)
	waitUntil(t, "the restarted board catches up", func() bool { return b3.Current().Version == 3 })
	if b3.On(switches.ReadOnly) || b3.Current().Source != switches.FromDatabase {
		t.Fatalf("restarted board: %+v", b3.Current())
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAwait: each server is waited for until it reports the version; one that never does is
// reported with the version it has.
func TestAwait(t *testing.T) {
	serve := func(version *atomic.Int64) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != switches.Path {
				http.NotFound(w, r)
				return
			}
			_ = json.NewEncoder(w).Encode(switches.Report{Version: version.Load(), Source: switches.FromDatabase})
		}))
		t.Cleanup(s.Close)
		return s
	}
	var v1, v2, v3 atomic.Int64
	v1.Store(5)
	v2.Store(4)
	v3.Store(4)
	s1, s2, s3 := serve(&v1), serve(&v2), serve(&v3)
	go func() { time.Sleep(100 * time.Millisecond); v2.Store(5) }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	acks := switches.Await(ctx, http.DefaultClient, []switches.Target{{Host: "a", URL: s1.URL}, {Host: "b", URL: s2.URL},
		{Host: "c", URL: s3.URL}, {Host: "d", URL: "http://127.0.0.1:1"}}, 5, time.Now(), 10*time.Millisecond)
	if !acks[0].OK() || !acks[1].OK() || acks[1].Version != 5 || acks[1].After < acks[0].After {
		t.Fatalf("acks of a and b: %+v", acks[:2])
	}
	if acks[2].OK() || acks[2].Version != 4 || !acks[2].Answered || !strings.Contains(acks[2].Error, "version 4") {
		t.Fatalf("ack of c (stays at 4): %+v", acks[2])
	}
	if acks[3].OK() || acks[3].Answered {
		t.Fatalf("ack of d (nobody listens): %+v", acks[3])
	}
}

// TestPrepareLetsTheAppRead: on a control database whose app role cannot read the switch
// tables (a site made before they existed), Prepare migrates and grants, and the app role
// reads what Set wrote.
func TestPrepareLetsTheAppRead(t *testing.T) {
	ctx := context.Background()
	dsn, db := startControl(t)
	if _, err := db.Exec(ctx, "CREATE ROLE reader LOGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := switches.Set(ctx, db, switches.Change{Name: switches.ReadOnly, On: true, Reason: "drill", By: "ops@a"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = "reader"
	reader, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close(ctx)
	if _, err := switches.Load(ctx, reader); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("load by a role without the grant: %v (want permission denied)", err)
	}
	if err := switches.Prepare(ctx, db, "reader"); err != nil {
		t.Fatal(err)
	}
	if s, err := switches.Load(ctx, reader); err != nil || s.Version != 1 || !s.On(switches.ReadOnly, time.Now()) {
		t.Fatalf("load by the role after Prepare: %+v, %v", s, err)
	}
	if err := switches.Prepare(ctx, db, "nobody"); err == nil || !strings.Contains(err.Error(), "nobody") {
		t.Fatalf("Prepare for a missing role: %v", err)
	}
}
