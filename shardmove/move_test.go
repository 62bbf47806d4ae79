package shardmove

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/shardmap"
)

const testShards = 104

// pgEnv is two PostgreSQL 15 nodes; the control database lives on the first.
type pgEnv struct {
	a, b   *testenv.Postgres
	ctlDSN string
	nodes  []shardmap.Node
	mover  *Mover
}

func newPGEnv(t testing.TB) *pgEnv {
	t.Helper()
	e := &pgEnv{}
	var wg sync.WaitGroup
	// PG15's launcher starts at most one apply worker per wal_retrieve_retry_interval (5 s by
	// default): back-to-back moves in tests would each wait for it.
	opt := testenv.PostgresOptions{Settings: []string{"wal_retrieve_retry_interval = 100ms"}}
	wg.Go(func() { e.a = testenv.StartPostgres(t, opt) })
	wg.Go(func() { e.b = testenv.StartPostgres(t, opt) })
	wg.Wait()
	if e.a == nil || e.b == nil {
		t.FailNow()
	}
	ca := connect(t, e.a.URL("postgres"))
	mustExec(t, ca, "CREATE DATABASE control")
	mustExec(t, ca, "CREATE DATABASE shards")
	mustExec(t, connect(t, e.b.URL("postgres")), "CREATE DATABASE shards")
	e.ctlDSN = e.a.URL("control")
	e.nodes = []shardmap.Node{{Name: "a", DSN: e.a.URL("shards")}, {Name: "b", DSN: e.b.URL("shards")}}
	e.mover = New(Config{ControlDSN: e.ctlDSN})
	return e
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func mustExec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryInt(t testing.TB, conn *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (e *pgEnv) node(t testing.TB, name string) *pgx.Conn {
	for _, n := range e.nodes {
		if n.Name == name {
			return connect(t, n.DSN)
		}
	}
	t.Fatalf("no node %s", name)
	return nil
}

// seed fills a shard with about 10*n rows through next_id() defaults.
func seed(t testing.TB, conn *pgx.Conn, shard, n int) {
	t.Helper()
	mustExec(t, conn, fmt.Sprintf(`
		INSERT INTO %[1]s.users (username) SELECT 'u' || g FROM generate_series(1, %[2]d) g;
		INSERT INTO %[1]s.photos (user_id, s3_key, size, sha256, caption)
			SELECT g, 'k' || g, g, md5(g::text), repeat('x', g %% 50) FROM generate_series(1, %[2]d * 4) g;
		INSERT INTO %[1]s.likes (photo_id, user_id)
			SELECT p.id, u FROM (SELECT id FROM %[1]s.photos ORDER BY id LIMIT %[2]d) p, generate_series(1, 3) u;
		INSERT INTO %[1]s.comments (photo_id, user_id, body) SELECT id, 1, 'c' FROM %[1]s.photos LIMIT %[2]d * 2;
		INSERT INTO %[1]s.follows (follower_id, followee_id) SELECT g, g + 1 FROM generate_series(1, %[2]d) g;`,
		shardmap.SchemaName(shard), n), pgx.QueryExecModeSimpleProtocol)
}

// leftovers lists replication objects and marker tables of moves on a node.
func leftovers(t testing.TB, conn *pgx.Conn) string {
	t.Helper()
	var s string
	err := conn.QueryRow(context.Background(), `SELECT concat_ws(' ',
		(SELECT string_agg('pub:' || pubname, ' ') FROM pg_publication WHERE pubname LIKE 'instactl\_move\_%'),
		(SELECT string_agg('sub:' || subname, ' ') FROM pg_subscription WHERE subname LIKE 'instactl\_move\_%'),
		(SELECT string_agg('slot:' || slot_name, ' ') FROM pg_replication_slots))`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func schemaExists(t testing.TB, conn *pgx.Conn, shard int) bool {
	return queryInt(t, conn, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", shardmap.SchemaName(shard)) > 0
}

func loadMap(t testing.TB, e *pgEnv) shardmap.Map {
	t.Helper()
	mp, err := shardmap.Load(context.Background(), connect(t, e.ctlDSN))
	if err != nil {
		t.Fatal(err)
	}
	return mp
}

// testOptions keeps moves quick in tests; the cutover path is the production one.
func testOptions() Options {
	return Options{SyncCommitLead: 300 * time.Millisecond, ChunkRows: 500}
}

// TestPostgres runs every integration test against two real PostgreSQL 15 nodes.
func TestPostgres(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip("crash helper process")
	}
	e := newPGEnv(t)
	ctx := context.Background()
	start := time.Now()
	res, err := e.mover.Init(ctx, InitSpec{LogicalShards: testShards, Nodes: e.nodes})
	if err != nil {
		t.Fatal(err)
	}
	if res.Created != testShards || res.PerNode["a"] != testShards/2 {
		t.Fatalf("init: %+v", res)
	}
	again, err := e.mover.Init(ctx, InitSpec{LogicalShards: testShards, Nodes: e.nodes})
	if err != nil || again.Created != 0 || again.Existing != testShards {
		t.Fatalf("second init: %+v %v", again, err)
	}
	t.Logf("init of %d shards: %s", testShards, time.Since(start))

	t.Run("refusals", func(t *testing.T) { testRefusals(t, e) })
	t.Run("move under load", func(t *testing.T) { testMoveUnderLoad(t, e, 2, CopyLogical) })
	t.Run("move under load, snapshot copy", func(t *testing.T) { testMoveUnderLoad(t, e, 4, CopySnapshot) })
	t.Run("lock contention", func(t *testing.T) { testLocked(t, e) })
	t.Run("rollback", func(t *testing.T) { testRollback(t, e) })
	t.Run("window bound and cancel", func(t *testing.T) { testBoundAndCancel(t, e) })
	t.Run("crash then resume", func(t *testing.T) { testCrash(t, e, false) })
	t.Run("crash then abort", func(t *testing.T) { testCrash(t, e, true) })
	t.Run("crash leaves a statement running", func(t *testing.T) { testCrashOrphan(t, e) })
	if testing.Verbose() {
		ms, _ := e.mover.Status(ctx)
		for _, m := range ms {
			steps, _ := e.mover.Steps(ctx, m.ID)
			for _, s := range steps {
				if s.FinishedAt != nil {
					t.Logf("move %d %-22s %s %s", m.ID, s.Step, s.FinishedAt.Sub(s.StartedAt).Round(time.Millisecond), s.Status)
				}
			}
		}
	}
}

func testRefusals(t *testing.T, e *pgEnv) {
	ctx := context.Background()
	a := e.node(t, "a")
	refuse := func(m *Mover, shard int, to, want string) {
		t.Helper()
		plan, err := m.PlanMove(ctx, shard, to)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), want) {
			t.Fatalf("PlanMove(%d, %s) = %v, want refusal containing %q\n%s", shard, to, err, want, plan)
		}
		if _, err := m.Move(ctx, plan, testOptions()); !errors.Is(err, ErrRefused) {
			t.Fatalf("Move of a refused plan: %v", err)
		}
	}
	refuse(e.mover, 20, "a", "shard 20 is on a")
	refuse(e.mover, 20, "nope", `unknown node "nope"`)
	refuse(e.mover, 999, "b", "unknown shard")
	mustExec(t, a, "ALTER TABLE shard_0020.likes DROP CONSTRAINT likes_pkey")
	refuse(e.mover, 20, "b", "tables without a primary key or replica identity: likes")
	mustExec(t, a, "ALTER TABLE shard_0020.likes REPLICA IDENTITY FULL")
	if _, err := e.mover.PlanMove(ctx, 20, "b"); err != nil {
		t.Fatalf("replica identity full must be enough: %v", err)
	}
	mustExec(t, a, "ALTER TABLE shard_0020.likes ADD PRIMARY KEY (photo_id, user_id), REPLICA IDENTITY DEFAULT")
	full := New(Config{ControlDSN: e.ctlDSN, FreeBytes: func(context.Context, string) (int64, error) { return 1 << 20, nil }})
	refuse(full, 20, "b", "target room")
	b := e.node(t, "b")
	mustExec(t, b, shardmap.ShardSchemaSQL(20))
	refuse(e.mover, 20, "b", "target copy")
	mustExec(t, b, "DROP SCHEMA shard_0020 CASCADE")
	plan, err := e.mover.PlanMove(ctx, 20, "b")
	if err != nil {
		t.Fatal(err)
	}
	if s := plan.String(); !strings.Contains(s, "cutover") || !strings.Contains(s, "move shard 20 (shard_0020) a -> b") {
		t.Fatalf("plan text:\n%s", s)
	}

	// A source without wal_level=logical: its own cluster and control database.
	c := testenv.StartPostgres(t, testenv.PostgresOptions{Settings: []string{"wal_level = replica"}})
	mustExec(t, connect(t, e.a.URL("postgres")), "CREATE DATABASE control_replica")
	m2 := New(Config{ControlDSN: e.a.URL("control_replica")})
	if _, err := m2.Init(ctx, InitSpec{LogicalShards: 2, Nodes: []shardmap.Node{{Name: "c", DSN: c.URL("postgres")}, e.nodes[1]}}); err != nil {
		t.Fatal(err)
	}
	refuse(m2, 0, "b", "wal_level=replica")
}

// client follows the app's contract: write to the node the map says; on the fence error
// reload the map until the shard's epoch moves, and retry once.
type client struct {
	shard int
	ctl   *pgx.Conn
	mp    shardmap.Map
	conns map[string]*pgx.Conn
	dsns  map[string]string
}

func (c *client) conn(ctx context.Context, node string) (*pgx.Conn, error) {
	if cn, ok := c.conns[node]; ok {
		return cn, nil
	}
	cfg, err := pgx.ParseConfig(c.dsns[node])
	if err != nil {
		return nil, err
	}
	// As in production: the test clusters default to asynchronous commit.
	cfg.RuntimeParams["synchronous_commit"] = "on"
	cn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	c.conns[node] = cn
	return cn, nil
}

func (c *client) do(ctx context.Context, fn func(*pgx.Conn) error) (node string, retried bool, err error) {
	a := c.mp.Shards[c.shard]
	cn, err := c.conn(ctx, a.Node)
	if err != nil {
		return a.Node, false, err
	}
	if err = fn(cn); !shardmap.IsFenced(err) {
		return a.Node, false, err
	}
	// Wait for the flip as long as a loaded machine may need (a cutover that gives up unfences
	// the source and tries again): the wait ends on the epoch, not on a clock.
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if mp, lerr := shardmap.Load(ctx, c.ctl); lerr == nil {
			c.mp = mp
			if mp.Shards[c.shard].Epoch != a.Epoch {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	node = c.mp.Shards[c.shard].Node
	if cn, err = c.conn(ctx, node); err != nil {
		return node, true, err
	}
	return node, true, fn(cn)
}

type ack struct {
	id   int64
	node string
}

func testMoveUnderLoad(t *testing.T, e *pgEnv, shard int, copyMethod string) {
	ctx := context.Background()
	a, b := e.node(t, "a"), e.node(t, "b")
	seed(t, a, shard, 500)
	s := shardmap.SchemaName(shard)
	rows, _ := a.Query(ctx, "SELECT id FROM "+s+".photos")
	seeded, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu        sync.Mutex
		photos    []ack
		likes     = map[[2]int64]bool{}
		failures  []error
		retries   atomic.Int64
		maxStall  atomic.Int64
		writes    atomic.Int64
		onTarget  atomic.Int64 // photos acknowledged by the target node
		likeUser  atomic.Int64
		stop      = make(chan struct{})
		wg        sync.WaitGroup
		dsns      = map[string]string{"a": e.nodes[0].DSN, "b": e.nodes[1].DSN}
		nWriters  = 4
		writeEach = 8 * time.Millisecond // about 500 writes/s in all
	)
	for w := 0; w < nWriters; w++ {
		c := &client{shard: shard, ctl: connect(t, e.ctlDSN), conns: map[string]*pgx.Conn{}, dsns: dsns}
		c.mp = loadMap(t, e)
		wg.Go(func() {
			defer func() {
				for _, cn := range c.conns {
					cn.Close(context.Background())
				}
			}()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(writeEach):
				}
				t0 := time.Now()
				var node string
				var retried bool
				var err error
				switch i % 3 {
				case 0:
					var id int64
					node, retried, err = c.do(ctx, func(cn *pgx.Conn) error {
						return cn.QueryRow(ctx, "INSERT INTO "+s+".photos (user_id, s3_key, size, sha256) VALUES (7, 'load', 1, 'h') RETURNING id").Scan(&id)
					})
					if err == nil {
						mu.Lock()
						photos = append(photos, ack{id, node})
						mu.Unlock()
						if node == "b" {
							onTarget.Add(1)
						}
					}
				case 1:
					k := [2]int64{seeded[rng.IntN(len(seeded))], 1_000_000 + likeUser.Add(1)}
					node, retried, err = c.do(ctx, func(cn *pgx.Conn) error {
						_, err := cn.Exec(ctx, "INSERT INTO "+s+".likes (photo_id, user_id) VALUES ($1, $2)", k[0], k[1])
						return err
					})
					if err == nil {
						mu.Lock()
						likes[k] = true
						mu.Unlock()
					}
				case 2:
					id := seeded[rng.IntN(len(seeded))]
					node, retried, err = c.do(ctx, func(cn *pgx.Conn) error {
						_, err := cn.Exec(ctx, "UPDATE "+s+".photos SET like_count = like_count + 1 WHERE id = $1", id)
						return err
					})
				}
				_ = node
				if retried {
					retries.Add(1)
				}
				if d := time.Since(t0).Microseconds(); d > maxStall.Load() {
					maxStall.Store(d)
				}
				writes.Add(1)
				if err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
				}
			}
		})
	}
	for deadline := time.Now().Add(time.Minute); writes.Load() < 20; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("writers made %d writes in a minute", writes.Load())
		}
	}

	plan, err := e.mover.PlanMove(ctx, shard, "b")
	if err != nil {
		t.Fatal(err)
	}
	var events []Event
	opt := testOptions()
	opt.Copy = copyMethod
	// The bound is the contract checked below (the measured window never exceeds it), not a
	// speed: a loaded machine may need longer than the 2 s default to catch up.
	opt.WindowBound = 20 * time.Second
	var evMu sync.Mutex
	opt.Progress = func(ev Event) { evMu.Lock(); events = append(events, ev); evMu.Unlock() }
	t0 := time.Now()
	st, err := e.mover.Move(ctx, plan, opt)
	moveTime := time.Since(t0)
	// Writes continue on the new node: wait for some to be acknowledged there.
	for deadline := time.Now().Add(time.Minute); err == nil && onTarget.Load() < 5; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			break // reported below as "no write reached the new node"
		}
	}
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("move: %v", err)
	}
	t.Logf("move %d: %s, window %s (bound %s), %d cutover attempts; %d writes, %d retried, longest client stall %s",
		st.ID, moveTime.Round(time.Millisecond), st.Window, opt.WindowBound, st.CutoverAttempts, writes.Load(), retries.Load(),
		time.Duration(maxStall.Load())*time.Microsecond)
	steps, err := e.mover.Steps(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		if s.Step == StepCutover || s.Step == StepVerify {
			t.Logf("%s: %s", s.Step, s.Details)
		}
	}
	if st.State != StateMoved || st.Window <= 0 || st.Window > opt.WindowBound || st.Plan.Copy != copyMethod {
		t.Fatalf("after move: %+v", st)
	}
	// Every index and key constraint of the source exists on the target.
	defs := func(conn *pgx.Conn) string {
		var d string
		if err := conn.QueryRow(ctx, `SELECT string_agg(indexname || ' ' || indexdef, '; ' ORDER BY indexname) FROM pg_indexes
			WHERE schemaname = $1`, s).Scan(&d); err != nil {
			t.Fatal(err)
		}
		return d + fmt.Sprint(queryInt(t, conn, "SELECT count(*) FROM pg_constraint WHERE connamespace = $1::regnamespace", s))
	}
	if da, db := defs(a), defs(b); da != db {
		t.Fatalf("indexes differ:\n a: %s\n b: %s", da, db)
	}
	if len(failures) > 0 {
		t.Fatalf("%d writes failed after their one retry; first: %v", len(failures), failures[0])
	}
	if mp := loadMap(t, e); mp.Shards[shard].Node != "b" || mp.Shards[shard].Epoch != plan.FromEpoch+1 {
		t.Fatalf("map after move: %+v", mp.Shards[shard])
	}

	// Zero lost acknowledged writes; the old copy is a frozen subset; new ids are larger.
	idsOn := func(conn *pgx.Conn) map[int64]bool {
		rows, _ := conn.Query(ctx, "SELECT id FROM "+s+".photos")
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		m := map[int64]bool{}
		for _, id := range ids {
			m[id] = true
		}
		return m
	}
	onA, onB := idsOn(a), idsOn(b)
	var maxA int64
	for id := range onA {
		if !onB[id] {
			t.Fatalf("photo %d on the old copy is missing on the new node", id)
		}
		maxA = max(maxA, id)
	}
	seen := map[int64]bool{}
	var onNew int
	for _, p := range photos {
		if seen[p.id] {
			t.Fatalf("id %d acknowledged twice", p.id)
		}
		seen[p.id] = true
		if !onB[p.id] {
			t.Fatalf("acknowledged photo %d (written on %s) lost", p.id, p.node)
		}
		if p.node == "b" {
			onNew++
			if p.id <= maxA {
				t.Fatalf("id %d made on b is not above the old copy's max %d", p.id, maxA)
			}
			if shardmap.ShardOf(p.id) != shard {
				t.Fatalf("id %d carries shard %d", p.id, shardmap.ShardOf(p.id))
			}
		}
	}
	if onNew == 0 {
		t.Fatal("no write reached the new node")
	}
	for k := range likes {
		if queryInt(t, b, "SELECT count(*) FROM "+s+".likes WHERE photo_id = $1 AND user_id = $2", k[0], k[1]) != 1 {
			t.Fatalf("acknowledged like %v lost", k)
		}
	}
	sum := func(conn *pgx.Conn) int64 {
		return queryInt(t, conn, "SELECT count(*) + sum(like_count) FROM "+s+".photos")
	}
	if sum(a) > sum(b) {
		t.Fatalf("old copy has more than the new node: %d > %d", sum(a), sum(b))
	}
	// The old copy is fenced and its id source revoked.
	if _, err := a.Exec(ctx, "INSERT INTO "+s+".users (username) VALUES ('late')"); !shardmap.IsFenced(err) {
		t.Fatalf("write to the old copy: %v", err)
	}

	// Complete: grace period first, then everything goes.
	if _, err := e.mover.Complete(ctx, st.ID, CompleteOptions{Grace: time.Hour}); !errors.Is(err, ErrRefused) {
		t.Fatalf("complete inside the grace period: %v", err)
	}
	if st, err = e.mover.Complete(ctx, st.ID, CompleteOptions{}); err != nil || st.State != StateCompleted {
		t.Fatalf("complete: %+v %v", st, err)
	}
	if schemaExists(t, a, shard) {
		t.Fatal("old copy still on a after complete")
	}
	if l := leftovers(t, a) + leftovers(t, b); strings.TrimSpace(l) != "" {
		t.Fatalf("left after complete: %s", l)
	}
	if _, err := b.Exec(ctx, "INSERT INTO "+s+".users (username) VALUES ('after-complete')"); err != nil {
		t.Fatal(err)
	}
}

const helperEnv = "SHARDMOVE_CRASH_HELPER"

// TestCrashHelper is the child process of the crash tests: it moves a shard and, at the
// journaled point named in the environment, reports it and waits to be killed with SIGKILL.
func TestCrashHelper(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("only runs as the child of a crash test")
	}
	shard, _ := strconv.Atoi(os.Getenv("SHARDMOVE_SHARD"))
	killAt := os.Getenv("SHARDMOVE_KILL_AT")
	m := New(Config{ControlDSN: os.Getenv("SHARDMOVE_CONTROL")})
	ctx := context.Background()
	plan, err := m.PlanMove(ctx, shard, os.Getenv("SHARDMOVE_TO"))
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	opt := testOptions()
	opt.Copy = os.Getenv("SHARDMOVE_COPY")
	opt.Hook = func(point string) {
		if point == killAt {
			fmt.Println("AT", point)
			select {}
		}
	}
	_, err = m.Move(ctx, plan, opt)
	fmt.Println("END", err)
	os.Exit(3)
}

// crashAt runs a move of shard in a child process and kills it with SIGKILL at point.
func crashAt(t *testing.T, e *pgEnv, shard int, to, point, copyMethod string) int64 {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "SHARDMOVE_SHARD="+strconv.Itoa(shard), "SHARDMOVE_TO="+to, "SHARDMOVE_COPY="+copyMethod,
		"SHARDMOVE_KILL_AT="+point, "SHARDMOVE_CONTROL="+e.ctlDSN)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	reached := false
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "AT ") {
			reached = true
			break
		} else if strings.HasPrefix(line, "ERR") || strings.HasPrefix(line, "END") {
			_ = cmd.Wait()
			t.Fatalf("child did not reach %s: %s", point, line)
		}
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if !reached {
		t.Fatalf("child exited before %s", point)
	}
	ms, err := e.mover.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Shard == shard && m.open() {
			return m.ID
		}
	}
	t.Fatalf("no open move of shard %d after the crash", shard)
	return 0
}

// crashPoint is where a crash test kills the move, and how that move copies.
type crashPoint struct{ point, copy string }

// crashPoints returns every journaled point of a move: each step name (the process dies
// right after the step is journaled done, so the next run starts at the next step), plus the
// points inside copy_data and the cutover. Steps both copy methods share are crashed with
// CopySnapshot only.
func crashPoints() []crashPoint {
	var out []crashPoint
	seen := map[string]bool{}
	for _, c := range []string{CopySnapshot, CopyLogical} {
		r := &runner{st: MoveStatus{Plan: MovePlan{Copy: c}}}
		for i, s := range r.steps() {
			next := ""
			if i+1 < len(r.steps()) {
				next = r.steps()[i+1].name
			}
			// A point is new if the step or the one resumed after it differ from CopySnapshot's;
			// with CopyLogical the subscription's own copy runs from create_subscription on.
			key := s.name + ">" + next
			if c == CopyLogical && (s.name == StepSubscription || s.name == StepWaitSync) {
				key = c + ":" + key
			}
			if seen[key] {
				continue
			} else {
				seen[key] = true
			}
			switch s.name {
			case StepCopyData:
				out = append(out, crashPoint{StepCopyData + ".table", c})
			case StepCutover:
				out = append(out, crashPoint{"cutover.fenced", c}, crashPoint{"cutover.flipped", c})
			}
			out = append(out, crashPoint{s.name, c})
		}
	}
	return out
}

// afterFlip reports whether a crash at point leaves the shard cut over and writable.
func afterFlip(point string) bool {
	return point == "cutover.flipped" || point == StepCutover || point == StepRevoke
}

// testCrash kills a move at every point of crashPoints, then resumes it (or, with abort,
// aborts it; after the flip abort must refuse and resume finish), and checks that no row is
// lost or doubled and no replication object is left.
func testCrash(t *testing.T, e *pgEnv, abort bool) {
	ctx := context.Background()
	a, b := e.node(t, "a"), e.node(t, "b")
	points := crashPoints()
	first := 32
	if abort {
		first += 2 * len(points)
	}
	if first+2*len(points) > testShards {
		t.Fatalf("%d crash points need more test shards", len(points))
	}
	for i, cp := range points {
		shard := first + 2*i // even shards start on a
		point := cp.point
		t.Run(cp.copy+"/"+point, func(t *testing.T) {
			s := shardmap.SchemaName(shard)
			seed(t, a, shard, 100)
			before := queryInt(t, a, "SELECT (SELECT count(*) FROM "+s+".photos) + (SELECT count(*) FROM "+s+".likes)")
			tc := time.Now()
			id := crashAt(t, e, shard, "b", point, cp.copy)
			t.Logf("child ran and was killed at %s after %s", point, time.Since(tc).Round(time.Millisecond))
			defer func() { t.Logf("recovery took %s", time.Since(tc).Round(time.Millisecond)) }()
			tc = time.Now()
			if point == "cutover.fenced" {
				if _, err := a.Exec(ctx, "INSERT INTO "+s+".users (username) VALUES ('x')"); !shardmap.IsFenced(err) {
					t.Fatalf("source not fenced after a crash inside the cutover: %v", err)
				}
			}
			if !abort || afterFlip(point) {
				if abort {
					// Cut over and writable: abort must refuse and point at resume + rollback.
					_, err := e.mover.Abort(ctx, id)
					if err == nil || !strings.Contains(err.Error(), "rollback") {
						t.Fatalf("abort after the flip: %v", err)
					}
				}
				st, err := e.mover.Resume(ctx, id, testOptions())
				if err != nil || st.State != StateMoved {
					t.Fatalf("resume: %+v %v", st, err)
				}
				if mp := loadMap(t, e); mp.Shards[shard].Node != "b" {
					t.Fatalf("map after resume: %+v", mp.Shards[shard])
				}
				if got := queryInt(t, b, "SELECT (SELECT count(*) FROM "+s+".photos) + (SELECT count(*) FROM "+s+".likes)"); got != before {
					t.Fatalf("rows on b after resume: %d, want %d", got, before)
				}
				mustExec(t, b, "INSERT INTO "+s+".users (username) VALUES ('after-resume')")
				if st, err := e.mover.Complete(ctx, id, CompleteOptions{}); err != nil || st.State != StateCompleted {
					t.Fatalf("complete: %v", err)
				}
				if l := leftovers(t, a) + leftovers(t, b); strings.TrimSpace(l) != "" || schemaExists(t, a, shard) {
					t.Fatalf("left after resume+complete: %q", l)
				}
				return
			}
			st, err := e.mover.Abort(ctx, id)
			if err != nil || st.State != StateAborted {
				t.Fatalf("abort: %+v %v", st, err)
			}
			if st, err = e.mover.Abort(ctx, id); err != nil || st.State != StateAborted {
				t.Fatalf("second abort: %v", err)
			}
			mp := loadMap(t, e)
			if as := mp.Shards[shard]; as.Node != "a" || as.State != shardmap.StateActive {
				t.Fatalf("map after abort: %+v", as)
			}
			if got := queryInt(t, a, "SELECT (SELECT count(*) FROM "+s+".photos) + (SELECT count(*) FROM "+s+".likes)"); got != before {
				t.Fatalf("rows on a after abort: %d, want %d", got, before)
			}
			mustExec(t, a, "INSERT INTO "+s+".users (username) VALUES ('after-abort')")
			if schemaExists(t, b, shard) {
				t.Fatal("copy left on b after abort")
			}
			if l := leftovers(t, a) + leftovers(t, b); strings.TrimSpace(l) != "" {
				t.Fatalf("left after abort: %q", l)
			}
			if _, err := e.mover.Resume(ctx, id, testOptions()); err == nil {
				t.Fatal("resume of an aborted move succeeded")
			}
		})
	}
}

func testRollback(t *testing.T, e *pgEnv) {
	ctx := context.Background()
	const shard = 30
	a, b := e.node(t, "a"), e.node(t, "b")
	s := shardmap.SchemaName(shard)
	seed(t, a, shard, 100)
	plan, err := e.mover.PlanMove(ctx, shard, "b")
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.mover.Move(ctx, plan, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	var onB int64
	if err := b.QueryRow(ctx, "INSERT INTO "+s+".photos (user_id, s3_key, size, sha256) VALUES (1, 'b', 1, 'h') RETURNING id").Scan(&onB); err != nil {
		t.Fatal(err)
	}
	back, err := e.mover.Rollback(ctx, st.ID, testOptions())
	if err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if back.Kind != KindRollback || back.State != StateMoved || back.To != "a" {
		t.Fatalf("rollback move: %+v", back)
	}
	if queryInt(t, a, "SELECT count(*) FROM "+s+".photos WHERE id = $1", onB) != 1 {
		t.Fatal("write made on b lost by the rollback")
	}
	var onA int64
	if err := a.QueryRow(ctx, "INSERT INTO "+s+".photos (user_id, s3_key, size, sha256) VALUES (1, 'a', 1, 'h') RETURNING id").Scan(&onA); err != nil {
		t.Fatal(err)
	}
	if onA <= onB {
		t.Fatalf("id after rollback %d not above %d", onA, onB)
	}
	ms, _ := e.mover.Status(ctx)
	for _, m := range ms {
		if m.ID == st.ID && m.State != StateRolledBack {
			t.Fatalf("original move after rollback: %s", m.State)
		}
	}
	if _, err := e.mover.Complete(ctx, back.ID, CompleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if l := leftovers(t, a) + leftovers(t, b); schemaExists(t, b, shard) || strings.TrimSpace(l) != "" {
		t.Fatalf("left after rollback + complete: %q (schema on b: %v)", l, schemaExists(t, b, shard))
	}
}

// testBoundAndCancel: a cutover that cannot fit its window unfences the source and changes
// nothing; a cancelled move stops between steps; both resume.
func testBoundAndCancel(t *testing.T, e *pgEnv) {
	ctx := context.Background()
	const shard = 28
	a := e.node(t, "a")
	s := shardmap.SchemaName(shard)
	seed(t, a, shard, 50)
	plan, err := e.mover.PlanMove(ctx, shard, "b")
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opt := testOptions()
	opt.Progress = func(ev Event) {
		if ev.Step == StepWaitSync && ev.Message == "done" {
			cancel() // like SIGINT: the current step is done, the next one must not start
		}
	}
	st, err := e.mover.Move(cctx, plan, opt)
	var stuck *StuckError
	if !errors.As(err, &stuck) || !errors.Is(err, context.Canceled) || stuck.Step != StepVerify ||
		!strings.Contains(err.Error(), fmt.Sprintf("instactl shard resume %d", st.ID)) {
		t.Fatalf("cancelled move: %v", err)
	}
	if st.State != StateFailed || st.Step != StepVerify {
		t.Fatalf("journal after cancel: %s at %s", st.State, st.Step)
	}

	tight := testOptions()
	tight.WindowBound, tight.CutoverAttempts = time.Microsecond, 2
	st, err = e.mover.Resume(ctx, st.ID, tight)
	if !errors.Is(err, ErrWindowExceeded) || !errors.As(err, &stuck) || st.CutoverAttempts != 2 {
		t.Fatalf("resume with an impossible window: %+v %v", st, err)
	}
	if as := loadMap(t, e).Shards[shard]; as.Node != "a" || as.Epoch != plan.FromEpoch {
		t.Fatalf("map changed by an abandoned cutover: %+v", as)
	}
	mustExec(t, a, "INSERT INTO "+s+".users (username) VALUES ('source still writable')")
	if st, err = e.mover.Resume(ctx, st.ID, testOptions()); err != nil || st.State != StateMoved {
		t.Fatalf("resume: %+v %v", st, err)
	}
	if n := queryInt(t, e.node(t, "b"), "SELECT count(*) FROM "+s+".users WHERE username = 'source still writable'"); n != 1 {
		t.Fatalf("write made between attempts: %d copies on b", n)
	}
	if _, err := e.mover.Complete(ctx, st.ID, CompleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// testLocked: a second process working on a running move gets a *LockedError.
func testLocked(t *testing.T, e *pgEnv) {
	ctx := context.Background()
	const shard = 6
	id := crashAt(t, e, shard, "b", StepPublication, "")
	holder := connect(t, e.ctlDSN)
	mustExec(t, holder, "SELECT pg_advisory_lock(7271, $1::int)", id)
	_, err := e.mover.Resume(ctx, id, testOptions())
	var locked *LockedError
	if !errors.As(err, &locked) || locked.MoveID != id {
		t.Fatalf("resume of a held move: %v", err)
	}
	mustExec(t, holder, "SELECT pg_advisory_unlock(7271, $1::int)", id)
	if st, err := e.mover.Abort(ctx, id); err != nil || st.State != StateAborted {
		t.Fatalf("abort: %+v %v", st, err)
	}
}

// testCrashOrphan: a SIGKILLed mover's statement runs on in its backend until it next talks to
// the client, so it can commit while the next process works on the move. Here the killed
// process's last statement (its session named for the move, as the mover names them) is the
// target's CREATE SCHEMA, still in its transaction: resume must end that session rather than
// collide with it (before the fix: a duplicate key on pg_namespace when the orphan commits).
func testCrashOrphan(t *testing.T, e *pgEnv) {
	ctx := context.Background()
	const shard = 8
	a := e.node(t, "a")
	seed(t, a, shard, 50)
	id := crashAt(t, e, shard, "b", StepPrepare, "") // the next step is copy_schema
	cfg, err := pgx.ParseConfig(e.nodes[1].DSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = moveAppName(id)
	orphan, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer orphan.Close(ctx)
	orphanDone := make(chan error, 1)
	go func() {
		// One implicit transaction: the schema commits when the sleep ends, unless the session
		// is ended first.
		_, err := orphan.Exec(ctx, shardmap.ShardSchemaSQL(shard)+"; SELECT pg_sleep(60)", pgx.QueryExecModeSimpleProtocol)
		orphanDone <- err
	}()
	b := e.node(t, "b")
	for deadline := time.Now().Add(time.Minute); queryInt(t, b, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'", moveAppName(id)) == 0; time.Sleep(10 * time.Millisecond) {
		select {
		case err := <-orphanDone:
			t.Fatalf("the orphan statement ended before the resume: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the orphan statement never started")
		}
	}
	st, err := e.mover.Resume(ctx, id, testOptions())
	if err != nil || st.State != StateMoved {
		t.Fatalf("resume with the killed process's statement still running: %+v %v", st, err)
	}
	if err := <-orphanDone; err == nil {
		t.Fatal("the orphan statement committed instead of being ended")
	}
	s := shardmap.SchemaName(shard)
	if got, want := queryInt(t, b, "SELECT count(*) FROM "+s+".photos"), queryInt(t, a, "SELECT count(*) FROM "+s+".photos"); got != want {
		t.Fatalf("photos on b %d, on a %d", got, want)
	}
	if _, err := e.mover.Complete(ctx, id, CompleteOptions{}); err != nil {
		t.Fatal(err)
	}
}
