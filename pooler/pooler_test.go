package pooler

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/jackc/pgx/v5"
)

// cluster is two real Postgres servers (the old and the new primary of group pg-0) behind two
// real PgBouncers (two app hosts). pg-0 and pg-2 both point at the first server.
type cluster struct {
	old, new *testenv.Postgres
	bouncers map[string]*testenv.PgBouncerServer // by app host name
	targets  []Target
}

func entry(p *testenv.Postgres) string {
	return fmt.Sprintf("host=%s port=%d dbname=postgres", p.Host, p.Port)
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{
		old: testenv.StartPostgres(t, testenv.PostgresOptions{}),
		new: testenv.StartPostgres(t, testenv.PostgresOptions{}),
	}
	for _, p := range []*testenv.Postgres{c.old, c.new} {
		conn := connect(t, p.URL("postgres"))
		if _, err := conn.Exec(context.Background(), "CREATE TABLE w (v text)"); err != nil {
			t.Fatal(err)
		}
	}
	c.bouncers = map[string]*testenv.PgBouncerServer{}
	for _, host := range []string{"app-0", "app-1"} {
		b := testenv.StartPgBouncer(t, testenv.PgBouncerOptions{Databases: map[string]string{
			"pg-0": entry(c.old), "pg-2": entry(c.old),
		}})
		c.bouncers[host] = b
		c.targets = append(c.targets, Target{Host: host, Addr: netip.MustParseAddrPort(b.Addr)})
	}
	return c
}

// write is the WriteFunc of the tests: the databases file of the named pooler, replaced by a
// rename as RemoteWriter does on a host.
func (c *cluster) write(_ context.Context, host string, content []byte) error {
	b, ok := c.bouncers[host]
	if !ok {
		return fmt.Errorf("no pooler on %s", host)
	}
	tmp := b.DatabasesFile + ".new"
	if err := os.WriteFile(tmp, content, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, b.DatabasesFile)
}

func (c *cluster) open(t *testing.T) *Set {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, c.targets, AdminUser, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// client connects through a pooler to db as an app would (simple protocol: transaction
// pooling keeps no prepared statements).
func client(t *testing.T, b *testenv.PgBouncerServer, db string) *pgx.Conn {
	t.Helper()
	return connect(t, fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable&default_query_exec_mode=simple_protocol", b.Addr, db))
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func count(t *testing.T, p *testenv.Postgres, v string) int {
	t.Helper()
	conn := connect(t, p.URL("postgres"))
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM w WHERE v = $1", v).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitFor polls cond until it holds; the deadline is generous, the test asserts no timing.
func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after 30s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitingClients counts the clients of db that PgBouncer holds (SHOW CLIENTS, state waiting).
func waitingClients(ctx context.Context, b *testenv.PgBouncerServer, db string) (int, error) {
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://instactl@%s/pgbouncer?sslmode=disable&default_query_exec_mode=simple_protocol", b.Addr))
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SHOW CLIENTS")
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	col := map[string]int{}
	for i, f := range rows.FieldDescriptions() {
		col[f.Name] = i
	}
	n := 0
	for rows.Next() {
		raw := rows.RawValues()
		if string(raw[col["database"]]) == db && string(raw[col["state"]]) == "waiting" {
			n++
		}
	}
	return n, rows.Err()
}

// insertAsync runs INSERT v through conn in the background and reports its error.
func insertAsync(conn *pgx.Conn, v string) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_, err := conn.Exec(ctx, "INSERT INTO w VALUES ($1)", v)
		done <- err
	}()
	return done
}

func paused(t *testing.T, s *Set, db string) map[string]bool {
	t.Helper()
	all, err := s.Databases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for host, entries := range all {
		for _, e := range entries {
			if e.Name == db {
				out[host] = e.Paused
			}
		}
	}
	return out
}

// TestPauseHoldsWriter: a write sent while pg-0 is paused waits in the pooler and completes
// without error after RESUME.
func TestPauseHoldsWriter(t *testing.T) {
	c := startCluster(t)
	s := c.open(t)
	app := client(t, c.bouncers["app-0"], "pg-0")
	ctx := context.Background()

	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.Pause(pctx, "pg-0"); err != nil {
		t.Fatal(err)
	}
	if got := paused(t, s, "pg-0"); !got["app-0"] || !got["app-1"] {
		t.Fatalf("pg-0 paused per pooler = %v, want both", got)
	}
	if got := paused(t, s, "pg-2"); got["app-0"] || got["app-1"] {
		t.Fatalf("PAUSE pg-0 paused pg-2 too: %v", got)
	}
	done := insertAsync(app, "held")
	waitFor(t, "the write waits in the pooler", func() (bool, error) {
		n, err := waitingClients(ctx, c.bouncers["app-0"], "pg-0")
		return n == 1, err
	})
	if n := count(t, c.old, "held"); n != 0 {
		t.Fatalf("a write reached postgres while pg-0 was paused")
	}
	if err := s.Resume(ctx, "pg-0"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the held write failed after RESUME: %v", err)
	}
	if n := count(t, c.old, "held"); n != 1 {
		t.Fatalf("rows after RESUME = %d, want 1", n)
	}
	// Resume is repeatable: "not paused" is not an error.
	if err := s.Resume(ctx, "pg-0"); err != nil {
		t.Fatalf("second Resume: %v", err)
	}
}

// TestPauseDeadlineRollsBack: a transaction that stays open keeps PAUSE from finishing on one
// pooler; when the deadline passes Pause resumes every pooler and names the one that did not
// pause.
func TestPauseDeadlineRollsBack(t *testing.T) {
	c := startCluster(t)
	s := c.open(t)
	ctx := context.Background()
	long := client(t, c.bouncers["app-1"], "pg-0")
	tx, err := long.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO w VALUES ('long')"); err != nil {
		t.Fatal(err)
	}

	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err = s.Pause(pctx, "pg-0")
	if err == nil {
		t.Fatal("Pause succeeded while a transaction held a server connection")
	}
	msg := err.Error()
	t.Log(msg)
	if !strings.Contains(msg, "pooler app-1 (") || strings.Contains(msg, "pooler app-0 (") {
		t.Errorf("error should name app-1 (the pooler that did not pause) and not app-0:\n%s", msg)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(msg, "rolled back") {
		t.Errorf("error should say the deadline passed and the pause was rolled back:\n%s", msg)
	}
	if got := paused(t, s, "pg-0"); got["app-0"] || got["app-1"] {
		t.Fatalf("pg-0 still paused after the rollback: %v", got)
	}
	// The old primary keeps serving: the long transaction commits and new writes go through.
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("the long transaction could not commit after the rollback: %v", err)
	}
	for host, b := range c.bouncers {
		if _, err := client(t, b, "pg-0").Exec(ctx, "INSERT INTO w VALUES ('after')"); err != nil {
			t.Fatalf("write through %s after the rollback: %v", host, err)
		}
	}
	if n := count(t, c.old, "after"); n != 2 {
		t.Fatalf("writes after the rollback = %d, want 2", n)
	}
}

// TestRepointWhilePaused: the switchover's sequence. Writes held by PAUSE land on the new
// server after Repoint and RESUME; the other group's entry is untouched.
func TestRepointWhilePaused(t *testing.T) {
	c := startCluster(t)
	s := c.open(t)
	ctx := context.Background()
	// A client that has already used the old server: its next transaction must not.
	app := client(t, c.bouncers["app-0"], "pg-0")
	if _, err := app.Exec(ctx, "INSERT INTO w VALUES ('before')"); err != nil {
		t.Fatal(err)
	}

	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.Pause(pctx, "pg-0"); err != nil {
		t.Fatal(err)
	}
	done := insertAsync(app, "moved")
	waitFor(t, "the write waits in the pooler", func() (bool, error) {
		n, err := waitingClients(ctx, c.bouncers["app-0"], "pg-0")
		return n == 1, err
	})
	newAddr := netip.MustParseAddrPort(fmt.Sprintf("%s:%d", c.new.Host, c.new.Port))
	if err := s.Repoint(ctx, "pg-0", newAddr, "postgres", c.write); err != nil {
		t.Fatal(err)
	}
	if err := s.Resume(ctx, "pg-0"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the held write failed after the repoint: %v", err)
	}
	if n := count(t, c.new, "moved"); n != 1 {
		t.Fatalf("held write on the new server: %d rows, want 1", n)
	}
	if n := count(t, c.old, "moved"); n != 0 {
		t.Fatalf("held write reached the old server after the repoint")
	}
	for host, b := range c.bouncers {
		if _, err := client(t, b, "pg-0").Exec(ctx, "INSERT INTO w VALUES ('new-'||$1)", host); err != nil {
			t.Fatal(err)
		}
		if n := count(t, c.new, "new-"+host); n != 1 {
			t.Errorf("a new write through %s did not reach the new server", host)
		}
		// pg-2 still points at the old server.
		var port int
		if err := client(t, b, "pg-2").QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			t.Fatal(err)
		}
		if port != c.old.Port {
			t.Errorf("%s: pg-2 reaches port %d after repointing pg-0, want the old server's %d", host, port, c.old.Port)
		}
	}
	all, err := s.Databases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for host, entries := range all {
		want := []DBEntry{
			{Name: "pg-0", Host: c.new.Host, Port: c.new.Port, Database: "postgres"},
			{Name: "pg-2", Host: c.old.Host, Port: c.old.Port, Database: "postgres"},
		}
		if fmt.Sprint(entries) != fmt.Sprint(want) {
			t.Errorf("%s: SHOW DATABASES = %+v, want %+v", host, entries, want)
		}
	}
	b, err := os.ReadFile(c.bouncers["app-1"].DatabasesFile)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("pg-0 = host=%s port=%d dbname=postgres\npg-2 = host=%s port=%d dbname=postgres\n", c.new.Host, c.new.Port, c.old.Host, c.old.Port)
	if !strings.HasSuffix(string(b), "[databases]\n"+want) {
		t.Errorf("%s:\n%s\nwant the entries\n%s", c.bouncers["app-1"].DatabasesFile, b, want)
	}
}

// TestRepointFailedWrite: a write that fails leaves the pooler as it was and names the pooler.
func TestRepointFailedWrite(t *testing.T) {
	c := startCluster(t)
	s := c.open(t)
	ctx := context.Background()
	failOn := func(ctx context.Context, host string, content []byte) error {
		if host == "app-1" {
			return errors.New("disk full")
		}
		return c.write(ctx, host, content)
	}
	err := s.Repoint(ctx, "pg-0", netip.MustParseAddrPort(fmt.Sprintf("%s:%d", c.new.Host, c.new.Port)), "postgres", failOn)
	if err == nil || !strings.Contains(err.Error(), "pooler app-1 (") || !strings.Contains(err.Error(), "disk full") || strings.Contains(err.Error(), "pooler app-0 (") {
		t.Fatalf("Repoint error = %v, want one naming app-1 and its cause", err)
	}
	all, err := s.Databases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if all["app-0"][0].Port != c.new.Port || all["app-1"][0].Port != c.old.Port {
		t.Fatalf("pg-0 ports after a half-failed repoint: app-0 %d (want new %d), app-1 %d (want old %d)",
			all["app-0"][0].Port, c.new.Port, all["app-1"][0].Port, c.old.Port)
	}
}

// TestKillAndReconnect: KILL drops the clients of a database; RESUME lets new ones in.
func TestKillAndReconnect(t *testing.T) {
	c := startCluster(t)
	s := c.open(t)
	ctx := context.Background()
	app := client(t, c.bouncers["app-0"], "pg-0")
	if _, err := app.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Reconnect(ctx, "pg-0"); err != nil {
		t.Fatal(err)
	}
	if _, err := app.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("a client after RECONNECT: %v", err)
	}
	if err := s.Kill(ctx, "pg-0"); err != nil {
		t.Fatal(err)
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := app.Exec(qctx, "SELECT 1"); err == nil {
		t.Fatal("a client of a killed database could still run a query")
	}
	if err := s.Resume(ctx, "pg-0"); err != nil {
		t.Fatal(err)
	}
	if _, err := client(t, c.bouncers["app-0"], "pg-0").Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("a new client after RESUME: %v", err)
	}
}

// TestOpenErrors: a wrong admin password and an unreachable pooler are named, with the cause,
// and the password appears nowhere.
func TestOpenErrors(t *testing.T) {
	secured := testenv.StartPgBouncer(t, testenv.PgBouncerOptions{AuthType: "scram-sha-256",
		Users: map[string]string{AdminUser: "right-password"}})
	good := testenv.StartPgBouncer(t, testenv.PgBouncerOptions{})
	closed := testenv.FreePort(t, "127.0.0.1")
	targets := []Target{
		{Host: "app-0", Addr: netip.MustParseAddrPort(good.Addr)},
		{Host: "app-1", Addr: netip.MustParseAddrPort(secured.Addr)},
		{Host: "app-2", Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(closed))},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := Open(ctx, targets, AdminUser, "wrong-password")
	if err == nil {
		t.Fatal("Open succeeded with a wrong password and an unreachable pooler")
	}
	msg := err.Error()
	t.Log(msg)
	for _, want := range []string{"pooler app-1 (" + secured.Addr + ")", "authentication failed",
		fmt.Sprintf("pooler app-2 (127.0.0.1:%d)", closed), "connection refused"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "app-0") || strings.Contains(msg, "wrong-password") {
		t.Errorf("error names the good pooler or shows the password:\n%s", msg)
	}
	s, err := Open(ctx, targets[1:2], AdminUser, "right-password")
	if err != nil {
		t.Fatalf("the right password: %v", err)
	}
	s.Close()
}

func TestRenderDatabases(t *testing.T) {
	got := string(RenderDatabases([]DBEntry{
		{Name: "pg-2", Host: "10.0.1.12", Port: 5432, Database: "instagram"},
		{Name: "pg-0", Host: "10.0.1.10", Port: 5432, Database: "instagram", Paused: true},
	}))
	want := "; Written by instactl: one entry per Postgres group, pointing at its primary.\n[databases]\n" +
		"pg-0 = host=10.0.1.10 port=5432 dbname=instagram\npg-2 = host=10.0.1.12 port=5432 dbname=instagram\n"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}
