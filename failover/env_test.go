package failover_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/failover"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/topology"
)

const pgBin = "/usr/lib/postgresql/15/bin"

// localRunner runs a remote.Command on this machine, the way sshd hands it to a login shell.
type localRunner struct{}

func (localRunner) Run(ctx context.Context, cmd remote.Command, stdin io.Reader) (remote.Result, error) {
	c := exec.CommandContext(ctx, "sh", "-c", cmd.String())
	c.Stdin = stdin
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	res := remote.Result{Cmd: cmd, Stdout: out.Bytes(), Stderr: errb.Bytes()}
	if os.Getenv("FAILOVER_TEST_DEBUG") != "" {
		fmt.Fprintf(os.Stderr, "RUN %s\n%s%s\n", cmd, out.Bytes(), errb.Bytes())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.ExitCode = ee.ExitCode()
		return res, nil
	}
	return res, err
}

// node is one member's cluster, started by testenv and afterwards by pg_ctl.
type node struct {
	host string
	pg   *testenv.Postgres
	srv  *failover.SSHServer
}

func (n *node) member() topology.Member {
	return topology.Member{Host: n.host, Addr: netip.AddrPortFrom(netip.MustParseAddr(n.pg.Host), uint16(n.pg.Port))}
}

func newNode(t *testing.T, host string, pg *testenv.Postgres) *node {
	data, dir, port := pg.DataDir, pg.SocketDir, strconv.Itoa(pg.Port)
	ctl := filepath.Join(pgBin, "pg_ctl")
	start := fmt.Sprintf("%s status -D %s >/dev/null 2>&1 || %s start -D %s -w -t 120 -s -l %s -o %s",
		ctl, data, ctl, data, filepath.Join(dir, "restart.log"), remote.Quote("-h 127.0.0.1 -p "+port+" -k "+dir))
	stop := fmt.Sprintf("%s status -D %s >/dev/null 2>&1 || exit 0; %s stop -D %s -m fast -w -t 120 -s", ctl, data, ctl, data)
	n := &node{host: host, pg: pg, srv: &failover.SSHServer{
		Run: localRunner{}, Host: host, PGData: data, PGBinDir: pgBin,
		StartCmd:        remote.Command{"runuser", "-u", "postgres", "--", "sh", "-c", start},
		StopCmd:         remote.Command{"runuser", "-u", "postgres", "--", "sh", "-c", stop},
		ReplicationUser: "postgres",
	}}
	t.Cleanup(func() {
		_ = exec.Command("runuser", "-u", "postgres", "--", ctl, "stop", "-D", data, "-m", "immediate", "-s").Run()
		if b, err := os.ReadFile(filepath.Join(dir, "restart.log")); err == nil && t.Failed() {
			t.Logf("log of %s since its first restart:\n%s", host, b)
		}
	})
	return n
}

// kill SIGKILLs the node's postmaster and every child at once, like a power cut.
func (n *node) kill(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.pg.DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	// The postmaster first (not SIGSTOP: its parent runuser would stop itself too and never
	// reap it), then every child before it notices.
	_ = syscall.Kill(pid, syscall.SIGKILL)
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		st, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			_ = syscall.Kill(child, syscall.SIGKILL)
		}
	}
	for i := 0; i < 200; i++ {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))[0] == "Z" {
			return // gone, or a zombie its parent has not reaped yet
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("postmaster %d still runs after SIGKILL", pid)
}

// bouncer is a real PgBouncer in transaction mode with one database entry per group in an
// included file; the test Pooler drives its admin console.
type bouncer struct {
	dir  string
	port int
	mu   sync.Mutex
}

func startBouncer(t *testing.T, group string, to topology.Member) *bouncer {
	t.Helper()
	testenv.Require(t, "/usr/sbin/pgbouncer", "pgbouncer")
	dir, err := os.MkdirTemp("", "instactl-pgb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b := &bouncer{dir: dir, port: testenv.FreePort(t, "127.0.0.1")}
	ini := fmt.Sprintf(`[databases]
%%include %s/databases.ini

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s/users.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 4
ignore_startup_parameters = extra_float_digits
server_login_retry = 1
`, dir, b.port, dir)
	must(t, os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "users.txt"), []byte(`"postgres" ""`+"\n"), 0o644))
	must(t, b.writeDatabases(group, to.Addr))
	must(t, exec.Command("chown", "-R", "postgres:postgres", dir).Run())
	must(t, os.Chmod(dir, 0o755))
	testenv.Start(t, syscall.SIGINT, "runuser", "-u", "postgres", "--", "/usr/sbin/pgbouncer", filepath.Join(dir, "pgbouncer.ini"))
	must(t, testenv.WaitTCP("127.0.0.1:"+strconv.Itoa(b.port), 20*time.Second))
	return b
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (b *bouncer) writeDatabases(group string, to netip.AddrPort) error {
	path := filepath.Join(b.dir, "databases.ini")
	line := fmt.Sprintf("%s = host=%s port=%d dbname=postgres\n", group, to.Addr(), to.Port())
	if err := os.WriteFile(path+".tmp", []byte(line), 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// URL reaches db through the pooler.
func (b *bouncer) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable&default_query_exec_mode=simple_protocol", b.port, db)
}

// admin runs one admin console command; errors PgBouncer gives for a state already reached
// (ok...) are no error.
func (b *bouncer) admin(ctx context.Context, cmd string, ok ...string) error {
	c, err := pgx.Connect(ctx, b.URL("pgbouncer"))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, cmd)
	for _, o := range ok {
		if err != nil && strings.Contains(err.Error(), o) {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("pgbouncer %s: %w", cmd, err)
	}
	return nil
}

func (b *bouncer) Pause(ctx context.Context, db string) error {
	return b.admin(ctx, "PAUSE "+quoteIdent(db), "already")
}

func (b *bouncer) Resume(ctx context.Context, db string) error {
	return b.admin(ctx, "RESUME "+quoteIdent(db), "not paused")
}

func (b *bouncer) Repoint(ctx context.Context, db string, to netip.AddrPort) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.writeDatabases(db, to); err != nil {
		return err
	}
	return b.admin(ctx, "RELOAD")
}

func (b *bouncer) Kill(ctx context.Context, db string) error {
	return b.admin(ctx, "KILL "+quoteIdent(db))
}

// fencer records the hosts it fenced; fence, when set, does the fencing.
type fencer struct {
	mu    sync.Mutex
	hosts []string
	fence func(host string) error
}

func (f *fencer) Fence(ctx context.Context, host string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hosts = append(f.hosts, host)
	if f.fence != nil {
		return f.fence(host)
	}
	return nil
}

// env is a replication group pg-0 (primary pg-0, standby pg-1) recorded in a separate control
// database, a group pg-9 without a standby, and a PgBouncer in front of pg-0's primary.
type env struct {
	t          *testing.T
	controlDSN string
	seed       topology.Topology
	nodes      map[string]*node
	pooler     *bouncer
	fencer     *fencer
	deps       failover.Deps
}

func newEnv(t *testing.T) *env { return newEnvControl(t, false) }

// newEnvControl is newEnv with, when inGroup, the control database in pg-0 itself (the
// stack's control group), reached through topology.ControlDSN.
func newEnvControl(t *testing.T, inGroup bool) *env {
	t.Helper()
	ctx := context.Background()
	// wal_keep_size as the templates set it: pg_rewind needs the old primary's WAL back to the
	// last checkpoint before the fork, which its own crash recovery would otherwise recycle.
	primary := testenv.StartPostgres(t, testenv.PostgresOptions{Settings: []string{"wal_keep_size = '256MB'"}})
	exec1(t, primary.URL("postgres"), "CREATE TABLE ledger (seq bigint PRIMARY KEY, at timestamptz DEFAULT now())")
	replica := testenv.StartReplica(t, primary)
	e := &env{t: t, nodes: map[string]*node{"pg-0": newNode(t, "pg-0", primary), "pg-1": newNode(t, "pg-1", replica)}, fencer: &fencer{}}
	// The standby streams under its host name, as Follow and the bootstrap's pg_basebackup set it.
	exec1(t, replica.URL("postgres"), fmt.Sprintf("ALTER SYSTEM SET primary_conninfo = 'host=%s port=%d user=postgres application_name=pg-1'", primary.Host, primary.Port))
	exec1(t, replica.URL("postgres"), "SELECT pg_reload_conf()")
	e.waitStreaming("pg-0", "pg-1")

	lone := topology.Member{Host: "pg-9", Addr: netip.MustParseAddrPort("127.0.0.99:5432")}
	e.seed = topology.Topology{Source: topology.SourceStack, Groups: []topology.Group{
		{Name: "pg-0", Kind: topology.KindPostgres, Primary: "pg-0", Epoch: 1, Members: []topology.Member{e.nodes["pg-0"].member(), e.nodes["pg-1"].member()}},
		{Name: "pg-9", Kind: topology.KindPostgres, Primary: "pg-9", Epoch: 1, Members: []topology.Member{lone}},
		{Name: "redis-0", Kind: topology.KindRedis, Primary: "redis-0", Epoch: 1, Members: []topology.Member{{Host: "redis-0", Addr: netip.MustParseAddrPort("127.0.0.98:6379")}}},
	}}
	if inGroup {
		dsn, err := topology.ControlDSN(e.seed, "postgres", "postgres")
		must(t, err)
		e.controlDSN = dsn
	} else {
		e.controlDSN = testenv.StartPostgres(t, testenv.PostgresOptions{}).URL("postgres")
	}
	conn, err := pgx.Connect(ctx, e.controlDSN)
	must(t, err)
	defer conn.Close(ctx)
	must(t, topology.Seed(ctx, conn, e.seed))
	must(t, shardmap.Install(ctx, conn, 4, []shardmap.Node{
		{Name: "pg-0", DSN: e.nodes["pg-0"].member().AppDSN("app", "instagram")},
		{Name: "pg-9", DSN: lone.AppDSN("app", "instagram")}}))

	e.pooler = startBouncer(t, "pg-0", e.nodes["pg-0"].member())
	jdir := t.TempDir()
	e.deps = failover.Deps{
		ControlDSN: e.controlDSN,
		Pooler:     e.pooler,
		Server: func(m topology.Member) (failover.Server, error) {
			n, ok := e.nodes[m.Host]
			if !ok {
				return nil, fmt.Errorf("no server %s", m.Host)
			}
			return n.srv, nil
		},
		Fencer:     e.fencer,
		JournalDir: jdir,
		Log:        t.Logf,
	}
	return e
}

func exec1(t *testing.T, url, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	must(t, err)
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// waitStreaming waits until standby streams from primary.
func (e *env) waitStreaming(primary, standby string) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var state string
		err := e.query(primary, "SELECT coalesce((SELECT state FROM pg_stat_replication WHERE application_name = '"+standby+"'), '')", &state)
		if err == nil && state == "streaming" {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s does not stream from %s: %q %v", standby, primary, state, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// query runs sql on host directly, scanning one row into dst.
func (e *env) query(host, sql string, dst ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, e.nodes[host].pg.URL("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	return c.QueryRow(ctx, sql).Scan(dst...)
}

// writable reports which of the group's servers take writes now.
func (e *env) writable() []string {
	var out []string
	for _, h := range []string{"pg-0", "pg-1"} {
		var rec bool
		if err := e.query(h, "SELECT pg_is_in_recovery()", &rec); err == nil && !rec {
			out = append(out, h)
		}
	}
	return out
}

func (e *env) group(name string) topology.Group {
	e.t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, e.controlDSN)
	must(e.t, err)
	defer c.Close(ctx)
	topo, err := topology.Load(ctx, c)
	must(e.t, err)
	g, ok := topo.Group(name)
	if !ok {
		e.t.Fatalf("no group %s", name)
	}
	return g
}

func (e *env) shardMap() shardmap.Map {
	e.t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, e.controlDSN)
	must(e.t, err)
	defer c.Close(ctx)
	m, err := shardmap.Load(ctx, c)
	must(e.t, err)
	return m
}

// writer inserts increasing sequence numbers into ledger through the pooler at about rate per
// second and remembers which were acknowledged.
type writer struct {
	mu     sync.Mutex
	acked  []int64
	failed []string
	stop   chan struct{}
	done   chan struct{}
}

func startWriter(t *testing.T, url string, rate int) *writer {
	t.Helper()
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	must(t, err)
	go func() {
		defer close(w.done)
		defer conn.Close(ctx)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for seq := int64(1); ; seq++ {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			qctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			_, err := conn.Exec(qctx, "INSERT INTO ledger (seq) VALUES ($1)", seq)
			cancel()
			w.mu.Lock()
			if err != nil {
				w.failed = append(w.failed, fmt.Sprintf("seq %d: %v", seq, err))
				if conn.IsClosed() {
					conn, _ = pgx.Connect(ctx, url)
				}
			} else {
				w.acked = append(w.acked, seq)
			}
			w.mu.Unlock()
			if conn == nil {
				return
			}
		}
	}()
	t.Cleanup(w.halt)
	return w
}

func (w *writer) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *writer) ackedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// waitAcked waits until n more writes than now are acknowledged.
func (w *writer) waitMore(t *testing.T, n int) {
	t.Helper()
	want := w.ackedCount() + n
	deadline := time.Now().Add(60 * time.Second)
	for w.ackedCount() < want {
		if time.Now().After(deadline) {
			w.mu.Lock()
			defer w.mu.Unlock()
			t.Fatalf("writer: %d acknowledged, want %d; failures: %v", len(w.acked), want, w.failed)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkLedger fails unless every acknowledged write is on host.
func (e *env) checkLedger(w *writer, host string) {
	e.t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, e.nodes[host].pg.URL("postgres"))
	must(e.t, err)
	defer c.Close(ctx)
	rows, err := c.Query(ctx, "SELECT seq FROM ledger")
	must(e.t, err)
	have := map[int64]bool{}
	var s int64
	_, err = pgx.ForEachRow(rows, []any{&s}, func() error { have[s] = true; return nil })
	must(e.t, err)
	w.mu.Lock()
	defer w.mu.Unlock()
	var lost []int64
	for _, a := range w.acked {
		if !have[a] {
			lost = append(lost, a)
		}
	}
	if len(lost) > 0 {
		e.t.Fatalf("%d acknowledged writes missing on %s (of %d): %v", len(lost), host, len(w.acked), lost[:min(len(lost), 20)])
	}
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
