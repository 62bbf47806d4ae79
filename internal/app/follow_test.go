package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/topology"
)

// testLog logs to stderr when APPTEST_LOG is set.
func testLog() *slog.Logger {
	if os.Getenv("APPTEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func execSQL(t *testing.T, dsn string, sqls ...string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range sqls {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// installMap installs a one-shard map with node on the control database.
func installMap(t *testing.T, controlDSN string, node shardmap.Node) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, controlDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := shardmap.Install(ctx, conn, 1, []shardmap.Node{node}); err != nil {
		t.Fatal(err)
	}
}

// seedTopology records one Postgres group pg-0 (members pg-0 at primary, pg-1 at standby) and,
// when redis is non-empty, a Redis group redis-0 whose members are at those addresses.
func seedTopology(t *testing.T, controlDSN string, primary, standby string, redis ...string) topology.Topology {
	t.Helper()
	addr := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	topo := topology.Topology{Groups: []topology.Group{{Name: "pg-0", Kind: topology.KindPostgres, Primary: "pg-0", Epoch: 1,
		Members: []topology.Member{{Host: "pg-0", Addr: addr(primary)}, {Host: "pg-1", Addr: addr(standby)}}}}}
	if len(redis) > 0 {
		g := topology.Group{Name: "redis-0", Kind: topology.KindRedis, Primary: "redis-0", Epoch: 1}
		for i, a := range redis {
			g.Members = append(g.Members, topology.Member{Host: "redis-" + strconv.Itoa(i), Addr: addr(a)})
		}
		topo.Groups = append(topo.Groups, g)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, controlDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := topology.Seed(ctx, conn, topo); err != nil {
		t.Fatal(err)
	}
	return topo
}

func recordPrimary(t *testing.T, controlDSN, group, host string, expectEpoch int64) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, controlDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// The cluster may be read-only by default in a test; this session writes.
	if _, err := conn.Exec(ctx, "SET default_transaction_read_only = off"); err != nil {
		t.Fatal(err)
	}
	if _, err := topology.RecordPrimary(ctx, conn, group, host, expectEpoch); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func hostPort(pg *testenv.Postgres) string { return net.JoinHostPort(pg.Host, strconv.Itoa(pg.Port)) }

// startPgBouncer runs a real PgBouncer (transaction pooling, trust auth for app and postgres)
// on a free loopback port with the given [databases] lines; it returns ADDR:PORT. PgBouncer
// refuses to run as root, so it runs as the postgres user.
func startPgBouncer(t *testing.T, databases ...string) string {
	t.Helper()
	testenv.RequireRoot(t)
	bin := testenv.Require(t, "/usr/sbin/pgbouncer", "pgbouncer")
	dir, err := os.MkdirTemp("", "instactl-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	port := testenv.FreePort(t, "127.0.0.1")
	ini := "[databases]\n"
	for _, d := range databases {
		ini += d + "\n"
	}
	ini += fmt.Sprintf(`[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir = %s
auth_type = trust
auth_file = %s
pool_mode = transaction
admin_users = postgres
ignore_startup_parameters = extra_float_digits
`, port, dir, filepath.Join(dir, "userlist.txt"))
	for name, body := range map[string]string{"pgbouncer.ini": ini, "userlist.txt": "\"app\" \"\"\n\"postgres\" \"\"\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "-R", "postgres:postgres", dir).CombinedOutput(); err != nil {
		t.Fatalf("chown %s: %v\n%s", dir, err, out)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := testenv.Start(t, syscall.SIGINT, "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
		bin, filepath.Join(dir, "pgbouncer.ini"))
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := testenv.WaitTCP(addr, 15*time.Second); err != nil {
		t.Fatalf("pgbouncer: %v\n%s", err, p.Log.String())
	}
	return addr
}

// poolOf returns the router's pool for node.
func poolOf(t *testing.T, r *Router, node string) *pgxpool.Pool {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	np := r.pools[node]
	if np == nil {
		t.Fatalf("no pool for node %s", node)
	}
	return np.pool
}

// TestRouterThroughPgBouncer routes a shard node through a real PgBouncer: the pool connects
// to the pooler as database "pg-0" (the group), PgBouncer forwards to the real database; a new
// epoch of pg-0 resets the pool, so later statements run on connections made after it.
func TestRouterThroughPgBouncer(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	execSQL(t, pg.URL("postgres"), "CREATE ROLE app LOGIN", "CREATE DATABASE instagram OWNER app", "CREATE DATABASE control")
	control := pg.URL("control")
	// The map's node DSN names the server itself and user app; the router must not use it as is.
	nodeDSN := fmt.Sprintf("postgres://app@%s/instagram?sslmode=disable&application_name=instagram-app", hostPort(pg))
	installMap(t, control, shardmap.Node{Name: "pg-0", DSN: nodeDSN})
	seedTopology(t, control, hostPort(pg), "127.0.0.1:1")
	bouncer := startPgBouncer(t, fmt.Sprintf("pg-0 = host=127.0.0.1 port=%d dbname=instagram", pg.Port))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := OpenRouter(ctx, RouterConfig{ControlDSN: control, MaxConns: 4, PgBouncer: bouncer, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go r.Watch(ctx, control, time.Hour) // only NOTIFY can deliver the new epoch

	pool := poolOf(t, r, "pg-0")
	cc := pool.Config().ConnConfig
	if net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))) != bouncer || cc.Database != "pg-0" || cc.User != "app" ||
		cc.RuntimeParams["application_name"] != "instagram-app" {
		t.Fatalf("pool connects to %s:%d database %s as %s (params %v); want the pooler %s, database pg-0, user app",
			cc.Host, cc.Port, cc.Database, cc.User, cc.RuntimeParams, bouncer)
	}
	var db, user string
	var port int
	err = r.Do(ctx, 0, time.Second, func(ctx context.Context, p *pgxpool.Pool) error {
		return p.QueryRow(ctx, "SELECT current_database(), current_user, inet_server_port()").Scan(&db, &user, &port)
	})
	if err != nil {
		t.Fatalf("query through pgbouncer: %v", err)
	}
	if db != "instagram" || user != "app" || port != pg.Port {
		t.Fatalf("through the pooler the statement ran in %s as %s on port %d; want instagram as app on %d", db, user, port, pg.Port)
	}

	// A new primary of pg-0 (epoch 2): the pool must drop every connection made before.
	before := pool.Stat().NewConnsCount()
	if before == 0 {
		t.Fatal("pool made no connection")
	}
	recordPrimary(t, control, "pg-0", "pg-1", 1)
	waitFor(t, "epoch 2 of pg-0", func() bool { return r.GroupEpoch("pg-0") == 2 })
	if n := pool.Stat().TotalConns(); n != 0 {
		t.Fatalf("after the new epoch the pool still holds %d connections", n)
	}
	if err := r.Do(ctx, 0, time.Second, func(ctx context.Context, p *pgxpool.Pool) error {
		_, err := p.Exec(ctx, "SELECT 1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if after := pool.Stat().NewConnsCount(); after <= before {
		t.Fatalf("the statement after the new epoch reused a connection (new conns %d -> %d)", before, after)
	}
}

// TestRouterFollowsControlFailover lists the control primary and its replica in a multi-host
// DSN; the primary shuts down (fast), the replica is promoted, and the router's listener
// reconnects to it and sees a shard map change and a new epoch announced there.
func TestRouterFollowsControlFailover(t *testing.T) {
	primary := testenv.StartPostgres(t, testenv.PostgresOptions{})
	execSQL(t, primary.URL("postgres"), "CREATE DATABASE control", "CREATE DATABASE instagram")
	installMap(t, primary.URL("control"), shardmap.Node{Name: "pg-0", DSN: primary.URL("instagram")})
	seedTopology(t, primary.URL("control"), hostPort(primary), "127.0.0.1:1")
	replica := testenv.StartReplica(t, primary)
	control := fmt.Sprintf("postgres://postgres@%s,%s/control?sslmode=disable&target_session_attrs=read-write",
		hostPort(primary), hostPort(replica))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := NewRouter(ctx, control, 4, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go r.Watch(ctx, control, time.Hour) // only the listener (and its reload on reconnect) updates
	waitFor(t, "the listener", func() bool { return r.ListenerConnects() == 1 })
	v1 := r.Map().Version
	if r.GroupEpoch("pg-0") != 1 {
		t.Fatalf("epoch of pg-0 = %d, want 1", r.GroupEpoch("pg-0"))
	}

	pgCtl(t, primary, "stop", "-m", "fast")
	var promoted bool
	rep, err := pgx.Connect(ctx, replica.URL("control"))
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close(ctx)
	if err := rep.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&promoted); err != nil || !promoted {
		t.Fatalf("pg_promote: %v %v", promoted, err)
	}
	waitFor(t, "the listener to reconnect to the promoted replica", func() bool { return r.ListenerConnects() >= 2 })

	// Changes made on the new primary after the reconnect arrive by NOTIFY.
	if err := shardmap.SetState(ctx, rep, 0, "pg-0", r.Map().Shards[0].Epoch, r.Map().Shards[0].State); err != nil {
		t.Fatalf("change the map on the new primary: %v", err)
	}
	waitFor(t, "the map change made on the new primary", func() bool { return r.Map().Version > v1 })
	if _, err := topology.RecordPrimary(ctx, rep, "pg-0", "pg-1", 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "epoch 2 announced on the new primary", func() bool { return r.GroupEpoch("pg-0") == 2 })
	if err := r.control.Ping(ctx); err != nil {
		t.Fatalf("control pool after the failover: %v", err)
	}
}

// pgCtl runs pg_ctl as postgres on pg's data directory.
func pgCtl(t *testing.T, pg *testenv.Postgres, args ...string) {
	t.Helper()
	args = append([]string{"-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D", pg.DataDir, "-w"}, args...)
	if out, err := exec.Command("runuser", args...).CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl %v: %v\n%s", args, err, out)
	}
}

// TestDoRetriesAfterPrimaryLost: a write refused because the node went read-only (25006, as an
// old primary turned standby answers) waits for a topology change and runs once more; without
// a change it fails after the wait with the server's error.
func TestDoRetriesAfterPrimaryLost(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	execSQL(t, pg.URL("postgres"), "CREATE DATABASE control", "CREATE DATABASE instagram")
	execSQL(t, pg.URL("instagram"), "CREATE TABLE t (id int PRIMARY KEY)")
	control := pg.URL("control")
	installMap(t, control, shardmap.Node{Name: "pg-0", DSN: pg.URL("instagram")})
	// pg-1 is the same server: RecordPrimary points the map's node at the new primary's
	// address, and the retried write must find a server there.
	seedTopology(t, control, hostPort(pg), hostPort(pg))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := NewRouter(ctx, control, 4, testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go r.Watch(ctx, control, time.Hour)
	readOnly := func(on bool) {
		execSQL(t, pg.URL("postgres"), "SET default_transaction_read_only = off",
			fmt.Sprintf("ALTER SYSTEM SET default_transaction_read_only = %v", on), "SELECT pg_reload_conf()")
		// The reload reaches every backend; wait until a new session sees it.
		waitFor(t, "read-only to apply", func() bool {
			var v string
			err := r.Do(ctx, 0, time.Millisecond, func(ctx context.Context, p *pgxpool.Pool) error {
				return p.QueryRow(ctx, "SHOW default_transaction_read_only").Scan(&v)
			})
			return err == nil && v == map[bool]string{true: "on", false: "off"}[on]
		})
	}
	insert := func(id int, wait time.Duration) (runs int, err error) {
		err = r.Do(ctx, 0, wait, func(ctx context.Context, p *pgxpool.Pool) error {
			runs++
			_, err := p.Exec(ctx, "INSERT INTO t VALUES ($1)", id)
			return err
		})
		return runs, err
	}

	readOnly(true)
	// No change of topology follows: the write fails after the wait, with the server's error.
	runs, err := insert(1, 300*time.Millisecond)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" || !errors.Is(err, errTopologyUnchanged) || runs != 1 {
		t.Fatalf("write on a read-only node with no topology change: runs %d, err %v", runs, err)
	}
	if !primaryLost(err) {
		t.Fatalf("primaryLost(%v) = false", err)
	}
	if n := r.FailoverRetries(); n != 1 {
		t.Fatalf("failover retries = %d, want 1", n)
	}

	// A change of primary follows the refused write: it runs once more and succeeds.
	done := make(chan error, 1)
	go func() {
		runs, err := insert(2, time.Minute)
		if err == nil && runs != 2 {
			err = fmt.Errorf("ran %d times, want 2", runs)
		}
		done <- err
	}()
	waitFor(t, "the write to wait for the topology", func() bool { return r.FailoverRetries() == 2 })
	readOnly(false)
	recordPrimary(t, control, "pg-0", "pg-1", 1)
	if err := <-done; err != nil {
		t.Fatalf("write retried after the change of primary: %v", err)
	}
	var n int
	execRow(t, pg.URL("instagram"), "SELECT count(*) FROM t WHERE id = 2", &n)
	if n != 1 {
		t.Fatalf("row 2 written %d times", n)
	}

	// The server ends the session under a running write (57P01 admin_shutdown, as a fast
	// shutdown of the old primary does): its transaction is rolled back, and the write runs
	// once more after the next change of primary.
	go func() {
		runs := 0
		err := r.Do(ctx, 0, time.Minute, func(ctx context.Context, p *pgxpool.Pool) error {
			runs++
			sleep := 0
			if runs == 1 {
				sleep = 600 // the first run waits to be terminated
			}
			_, err := p.Exec(ctx, "INSERT INTO t SELECT 3 FROM pg_sleep($1) WHERE true /* victim */", sleep)
			return err
		})
		if err == nil && runs != 2 {
			err = fmt.Errorf("ran %d times, want 2", runs)
		}
		done <- err
	}()
	waitFor(t, "the write to start", func() bool {
		var k int
		execRow(t, pg.URL("postgres"), "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%/* victim */%' AND pid <> pg_backend_pid()", &k)
		return k == 1
	})
	execSQL(t, pg.URL("postgres"), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%/* victim */%' AND pid <> pg_backend_pid()")
	waitFor(t, "the terminated write to wait for the topology", func() bool { return r.FailoverRetries() == 3 })
	recordPrimary(t, control, "pg-0", "pg-0", 2)
	if err := <-done; err != nil {
		t.Fatalf("write retried after its session was terminated: %v", err)
	}
	execRow(t, pg.URL("instagram"), "SELECT count(*) FROM t WHERE id = 3", &n)
	if n != 1 {
		t.Fatalf("row 3 written %d times", n)
	}
}

func execRow(t *testing.T, dsn, sql string, dst ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql).Scan(dst...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestPrimaryLost(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "25006"}, true},
		{fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "57P01"}), true},
		{&pgconn.PgError{Code: "57P03"}, true},
		{&pgconn.PgError{Code: "23505"}, false},
		{&pgconn.PgError{Code: "08006"}, false}, // a reply after the statement was sent: outcome unknown
		{errors.New("unexpected EOF"), false},
		{context.Canceled, false},
		{&pgconn.ConnectError{Config: &pgconn.Config{}}, true}, // nothing was sent
	} {
		if got := primaryLost(tc.err); got != tc.want {
			t.Errorf("primaryLost(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestRouterWithoutTopologyTables: a control database migrated before the topology tables
// existed (or not seeded) leaves the configured Redis address alone and is no error.
func TestRouterWithoutTopologyTables(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	execSQL(t, pg.URL("postgres"), "CREATE DATABASE control", "CREATE DATABASE instagram")
	control := pg.URL("control")
	installMap(t, control, shardmap.Node{Name: "pg-0", DSN: pg.URL("instagram")})
	execSQL(t, control, "DROP TABLE replication_members, replication_groups CASCADE")
	target := NewRedisTarget("127.0.0.1:6379")
	r, err := OpenRouter(context.Background(), RouterConfig{ControlDSN: control, MaxConns: 2, Redis: target, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.RefreshTopology(context.Background()); err != nil {
		t.Fatal(err)
	}
	if target.Addr() != "127.0.0.1:6379" || len(r.Epochs()) != 0 {
		t.Fatalf("redis %s, epochs %v; want the configured address and no epochs", target.Addr(), r.Epochs())
	}
}
