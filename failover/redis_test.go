package failover

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/topology"
)

// redisTestServer is a redis-server the test started from a configuration file in its own
// directory, so it can be killed, stopped and started again from its data.
type redisTestServer struct {
	host string
	port int
	dir  string
	proc *testenv.Proc
}

func (s *redisTestServer) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

func (s *redisTestServer) member() topology.Member {
	return topology.Member{Host: s.host, Addr: netip.MustParseAddrPort(s.addr())}
}

func (s *redisTestServer) client(t *testing.T) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1, ReadTimeout: 5 * time.Second, Protocol: 2})
	t.Cleanup(func() { c.Close() })
	return c
}

// start runs redis-server on the server's configuration file (again, after a kill).
func (s *redisTestServer) start(t *testing.T) {
	t.Helper()
	bin := testenv.Require(t, "redis-server", "redis-server")
	s.proc = testenv.Start(t, syscall.SIGTERM, bin, filepath.Join(s.dir, "redis.conf"))
	log := s.proc.Log
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of %s:\n%s", s.host, log.String())
		}
	})
	if err := testenv.WaitTCP(s.addr(), 10*time.Second); err != nil {
		t.Fatalf("%s: %v\n%s", s.host, err, s.proc.Log.String())
	}
}

func (s *redisTestServer) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(s.proc.Cmd.Process.Pid, sig); err != nil {
		t.Fatalf("signal %v to %s: %v", sig, s.host, err)
	}
}

// kill ends the server at once, like a power cut, and waits until its port is closed.
func (s *redisTestServer) kill(t *testing.T) {
	t.Helper()
	_ = syscall.Kill(s.proc.Cmd.Process.Pid, syscall.SIGKILL)
	redisEventually(t, 30*time.Second, s.host+" to die", func() error {
		if testenv.WaitTCP(s.addr(), 100*time.Millisecond) == nil {
			return errors.New("still listening")
		}
		return nil
	})
}

// newRedisTestServer writes the configuration of a master (replicaOf nil) or of a replica:
// AOF with fsync always (a restart keeps every write), min-replicas-to-write 1 and
// min-replicas-max-lag 10 as instactl runs masters.
func newRedisTestServer(t *testing.T, host string, replicaOf *redisTestServer) *redisTestServer {
	t.Helper()
	s := &redisTestServer{host: host, port: testenv.FreePort(t, "127.0.0.1"), dir: t.TempDir()}
	conf := []string{
		"port " + strconv.Itoa(s.port), "bind 127.0.0.1", "dir " + s.dir, "daemonize no", `save ""`,
		"appendonly yes", "appendfsync always", "protected-mode no",
		"min-replicas-to-write 1", "min-replicas-max-lag 10",
	}
	if replicaOf != nil {
		conf = append(conf, "replicaof 127.0.0.1 "+strconv.Itoa(replicaOf.port))
	}
	if err := os.WriteFile(filepath.Join(s.dir, "redis.conf"), []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	return s
}

// redisEventually waits until cond returns nil; a condition, not a timing assertion.
func redisEventually(t *testing.T, bound time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, bound, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func redisRole(c *redis.Client) (redisInfo, error) {
	return redisReadInfo(context.Background(), c)
}

// redisTestEnv is a control database with the topology seeded and one Redis pair.
type redisTestEnv struct {
	db       *pgx.Conn
	pgURL    string
	dir      string
	group    string
	servers  map[string]*redisTestServer
	master   *redisTestServer
	replica  *redisTestServer
	fenced   []string
	fenceErr error
	mu       sync.Mutex
}

func redisControlDB(t *testing.T) (*pgx.Conn, string) {
	t.Helper()
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	url := pg.URL("postgres")
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn, url
}

// newRedisTestEnv starts a master and its replica as members prefix-0 and prefix-1 of group,
// seeds the topology (with a Postgres group beside it) and waits until the master takes
// writes.
func newRedisTestEnv(t *testing.T, db *pgx.Conn, url, group, prefix string) *redisTestEnv {
	t.Helper()
	m := newRedisTestServer(t, prefix+"-0", nil)
	r := newRedisTestServer(t, prefix+"-1", m)
	e := &redisTestEnv{db: db, pgURL: url, dir: t.TempDir(), group: group, master: m, replica: r,
		servers: map[string]*redisTestServer{m.host: m, r.host: r}}
	topo := topology.Topology{Groups: []topology.Group{
		{Name: "pg-0", Kind: topology.KindPostgres, Primary: "pg-0", Epoch: 1,
			Members: []topology.Member{{Host: "pg-0", Addr: netip.MustParseAddrPort("127.0.0.1:5432")}}},
		{Name: group, Kind: topology.KindRedis, Primary: m.host, Epoch: 1, Members: []topology.Member{m.member(), r.member()}},
	}}
	if err := topology.Seed(context.Background(), db, topo); err != nil {
		t.Fatal(err)
	}
	mc := m.client(t)
	redisEventually(t, 60*time.Second, "master to take writes with its replica online", func() error {
		return mc.Set(context.Background(), "setup", "1", 0).Err()
	})
	return e
}

// Fence is the test's RedisFencer: it kills the host's redis-server (like StopInstances).
func (e *redisTestEnv) Fence(_ context.Context, host string) error {
	e.mu.Lock()
	e.fenced = append(e.fenced, host)
	err := e.fenceErr
	e.mu.Unlock()
	if err != nil {
		return err
	}
	s := e.servers[host]
	_ = syscall.Kill(s.proc.Cmd.Process.Pid, syscall.SIGKILL)
	for testenv.WaitTCP(s.addr(), 100*time.Millisecond) == nil {
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func (e *redisTestEnv) topo(t *testing.T) topology.Group {
	t.Helper()
	tp, err := topology.Load(context.Background(), e.db)
	if err != nil {
		t.Fatal(err)
	}
	g, ok := tp.Group(e.group)
	if !ok {
		t.Fatalf("no group %s", e.group)
	}
	return g
}

// converged fails t unless exactly one reachable member is master and takes writes, the
// topology names it, and no journal is left.
func (e *redisTestEnv) converged(t *testing.T) string {
	t.Helper()
	var masters []string
	for host, s := range e.servers {
		c := s.client(t)
		i, err := redisRole(c)
		if err != nil {
			continue // killed by the fence
		}
		if i.Role == "master" {
			if err := redisProbeWrite(context.Background(), c); err != nil {
				t.Errorf("master %s refuses writes: %v", host, err)
			}
			masters = append(masters, host)
		}
	}
	if len(masters) != 1 {
		t.Fatalf("masters: %v, want exactly one", masters)
	}
	if g := e.topo(t); g.Primary != masters[0] {
		t.Fatalf("topology names %s (epoch %d), the master is %s", g.Primary, g.Epoch, masters[0])
	}
	if _, err := os.Stat(redisJournalPath(e.dir, e.group)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("journal left: %v", err)
	}
	return masters[0]
}

// redisWriter writes to whichever member is master, as an app server would: each write is a
// MULTI/EXEC of INCR counter and RPUSH of its sequence number; on any error it re-reads the
// topology and tries the member it names, then the other one. It records every acknowledged
// write.
type redisWriter struct {
	mu      sync.Mutex
	acked   []int64
	at      []time.Time
	stop    atomic.Bool
	done    chan error
	errs    atomic.Int64
	started time.Time
}

func startRedisWriter(t *testing.T, e *redisTestEnv) *redisWriter {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	clients := map[string]*redis.Client{}
	for h, s := range e.servers {
		clients[h] = s.client(t)
	}
	w := &redisWriter{done: make(chan error, 1), started: time.Now()}
	go func() {
		ctx := context.Background()
		cur := e.master.host
		var seq int64
		failures := 0
		for !w.stop.Load() {
			seq++
			_, err := clients[cur].TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Incr(ctx, "counter")
				p.RPush(ctx, "seq", seq)
				return nil
			})
			if err == nil {
				failures = 0
				w.mu.Lock()
				w.acked = append(w.acked, seq)
				w.at = append(w.at, time.Now())
				w.mu.Unlock()
				time.Sleep(time.Millisecond)
				continue
			}
			w.errs.Add(1)
			failures++
			tp, lerr := topology.Load(ctx, conn)
			if lerr != nil {
				w.done <- lerr
				return
			}
			g, _ := tp.Group(e.group)
			cur = g.Primary
			if failures%2 == 0 { // the topology may lag the servers: try the other member
				cur = g.Standbys()[0].Host
			}
			time.Sleep(2 * time.Millisecond)
		}
		w.done <- nil
	}()
	return w
}

func (w *redisWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *redisWriter) waitMore(t *testing.T, n int) {
	t.Helper()
	target := w.count() + n
	redisEventually(t, 60*time.Second, fmt.Sprintf("writer to reach %d acknowledged writes", target), func() error {
		if c := w.count(); c < target {
			return fmt.Errorf("%d", c)
		}
		return nil
	})
}

func (w *redisWriter) finish(t *testing.T) {
	t.Helper()
	w.stop.Store(true)
	if err := <-w.done; err != nil {
		t.Fatalf("writer: %v", err)
	}
}

// snapshot returns the writes acknowledged so far.
func (w *redisWriter) snapshot() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int64(nil), w.acked...)
}

// maxGap is the longest time between two acknowledged writes: the write block clients saw.
func (w *redisWriter) maxGap() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var g time.Duration
	for i := 1; i < len(w.at); i++ {
		g = max(g, w.at[i].Sub(w.at[i-1]))
	}
	return g
}

// redisCheckAcked fails t unless every write in acked is on the server at c, and the counter
// agrees with the list (each write is one transaction).
func redisCheckAcked(t *testing.T, c *redis.Client, acked []int64) {
	t.Helper()
	ctx := context.Background()
	// Both keys in one transaction: the writer may still be writing, and each of its writes
	// changes both.
	var lr *redis.StringSliceCmd
	var cnt *redis.StringCmd
	if _, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		lr = p.LRange(ctx, "seq", 0, -1)
		cnt = p.Get(ctx, "counter")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	list := lr.Val()
	present := make(map[int64]bool, len(list))
	for _, s := range list {
		n, _ := strconv.ParseInt(s, 10, 64)
		present[n] = true
	}
	missing := 0
	for _, id := range acked {
		if !present[id] {
			if missing++; missing <= 5 {
				t.Errorf("acknowledged write %d missing on %s", id, c.Options().Addr)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged writes missing", missing, len(acked))
	}
	if n, err := cnt.Int64(); err != nil || n != int64(len(list)) {
		t.Fatalf("counter %d (%v) but %d list entries", n, err, len(list))
	}
}

func TestRedisSwitchoverUnderWrites(t *testing.T) {
	db, url := redisControlDB(t)
	e := newRedisTestEnv(t, db, url, "redis-0", "redis")
	ctx := context.Background()
	w := startRedisWriter(t, e)
	w.waitMore(t, 300)
	// A client of the master that is idle during the switchover (neither blocked nor
	// writing): FAILOVER would leave it connected to the demoted master.
	idle := e.master.client(t).Conn()
	defer idle.Close()
	if err := idle.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	rep, err := RedisSwitchover(ctx, RedisSwitchoverOptions{DB: db, JournalDir: e.dir, Group: "redis-0", Master: "redis-0"})
	if err != nil {
		t.Fatalf("switchover: %v\n%+v", err, rep)
	}
	t.Logf("switchover: %+v", rep)
	if rep.OldMaster != "redis-0" || rep.NewMaster != "redis-1" || rep.EpochBefore != 1 || rep.EpochAfter != 2 || rep.WriteBlock <= 0 || rep.NewOffset < rep.OldOffset {
		t.Fatalf("report: %+v", rep)
	}
	if g := e.topo(t); g.Primary != "redis-1" || g.Epoch != 2 {
		t.Fatalf("topology after the switchover: %+v", g)
	}
	if i, err := redisRole(e.master.client(t)); err != nil || i.Role != "slave" || i.MasterPort != e.replica.port {
		t.Fatalf("old master: %+v %v", i, err)
	}
	if err := idle.Get(ctx, "counter").Err(); err == nil {
		t.Fatal("an idle client of the old master is still connected after the switchover")
	}
	w.waitMore(t, 300) // the writer found the new master
	redisCheckAcked(t, e.replica.client(t), w.snapshot())
	e.converged(t)

	// And back, still under writes.
	rep, err = RedisSwitchover(ctx, RedisSwitchoverOptions{DB: db, JournalDir: e.dir, Group: "redis-0"})
	if err != nil {
		t.Fatalf("switch back: %v\n%+v", err, rep)
	}
	t.Logf("switch back: %+v", rep)
	if rep.OldMaster != "redis-1" || rep.NewMaster != "redis-0" || rep.EpochAfter != 3 {
		t.Fatalf("report: %+v", rep)
	}
	w.waitMore(t, 300)
	w.finish(t)
	acked := w.snapshot()
	redisCheckAcked(t, e.master.client(t), acked)
	if e.converged(t) != "redis-0" {
		t.Fatal("redis-0 is not the master after switching back")
	}
	secs := time.Since(w.started).Seconds()
	t.Logf("writer: %d acknowledged writes in %.1f s (%.0f/s), %d errors, longest gap between acknowledged writes %s",
		len(acked), secs, float64(len(acked))/secs, w.errs.Load(), w.maxGap())
}

func TestRedisSwitchoverRollsBack(t *testing.T) {
	db, url := redisControlDB(t)
	e := newRedisTestEnv(t, db, url, "redis-0", "redis")
	ctx := context.Background()
	mc := e.master.client(t)
	opts := RedisSwitchoverOptions{DB: db, JournalDir: e.dir, Group: "redis-0", Timeout: time.Second,
		beforeFailover: func() {
			// The replica stops (kill -STOP) after the preflight saw it online; the master
			// takes a few more writes it will never acknowledge.
			e.replica.signal(t, syscall.SIGSTOP)
			for i := range 10 {
				if err := mc.Set(ctx, "after-stop-"+strconv.Itoa(i), "x", 0).Err(); err != nil {
					t.Errorf("write to the master before FAILOVER: %v", err)
				}
			}
		}}
	rep, err := RedisSwitchover(ctx, opts)
	e.replica.signal(t, syscall.SIGCONT)
	if !errors.Is(err, RedisErrRolledBack) {
		t.Fatalf("switchover with a stopped replica: %v, want RedisErrRolledBack\n%+v", err, rep)
	}
	t.Logf("rolled back: %v\n%+v", err, rep)
	if i, err := redisRole(mc); err != nil || i.Role != "master" || i.FailoverState != "no-failover" {
		t.Fatalf("old master after the rollback: %+v %v", i, err)
	}
	redisEventually(t, 30*time.Second, "old master to take writes", func() error { return mc.Set(ctx, "after-rollback", "1", 0).Err() })
	if g := e.topo(t); g.Primary != "redis-0" || g.Epoch != 1 {
		t.Fatalf("topology changed by a rolled back switchover: %+v", g)
	}
	if e.converged(t) != "redis-0" {
		t.Fatal("redis-0 is not master")
	}
}

func TestRedisFailover(t *testing.T) {
	db, url := redisControlDB(t)
	e := newRedisTestEnv(t, db, url, "redis-0", "redis")
	ctx := context.Background()
	mc, rc := e.master.client(t), e.replica.client(t)
	for i := range 100 {
		if err := mc.Set(ctx, "k"+strconv.Itoa(i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// The replica is cut off (kill -STOP): the master takes writes the replica never gets
	// (20 MB: more than the socket buffers hold for the stopped replica), until
	// min-replicas-max-lag makes it refuse them (an isolated master fences itself).
	e.replica.signal(t, syscall.SIGSTOP)
	big := strings.Repeat("x", 100<<10)
	const lastLost = "lost-199"
	for i := range 200 {
		if err := mc.Set(ctx, "lost-"+strconv.Itoa(i), big, 0).Err(); err != nil {
			t.Fatalf("write %d to the master after its replica stopped: %v", i, err)
		}
	}
	redisEventually(t, 60*time.Second, "isolated master to refuse writes", func() error {
		err := mc.Set(ctx, "probe", "1", 0).Err()
		if err == nil {
			return errors.New("still takes writes")
		}
		if !strings.Contains(err.Error(), "NOREPLICAS") {
			t.Fatalf("isolated master: %v, want NOREPLICAS", err)
		}
		return nil
	})
	mi, err := redisRole(mc)
	if err != nil {
		t.Fatal(err)
	}
	lastKnown := mi.Offset // what monitoring saw last
	e.master.kill(t)
	e.replica.signal(t, syscall.SIGCONT)

	// No fencer: refused. A failing fencer: refused, nothing changed.
	if _, err := RedisFailover(ctx, RedisFailoverOptions{DB: db, JournalDir: e.dir, Group: "redis-0"}); !errors.Is(err, RedisErrBadInput) {
		t.Fatalf("failover without a fencer: %v", err)
	}
	e.fenceErr = errors.New("StopInstances: UnauthorizedOperation")
	if _, err := RedisFailover(ctx, RedisFailoverOptions{DB: db, JournalDir: e.dir, Group: "redis-0", Fencer: e}); !errors.Is(err, RedisErrPrecondition) {
		t.Fatalf("failover with a failing fence: %v", err)
	}
	if i, err := redisRole(rc); err != nil || i.Role != "slave" || e.topo(t).Epoch != 1 {
		t.Fatalf("a refused failover changed something: %+v %v %+v", i, err, e.topo(t))
	}
	e.fenceErr = nil

	rep, err := RedisFailover(ctx, RedisFailoverOptions{DB: db, JournalDir: e.dir, Group: "redis-0", Fencer: e, LastKnownOffset: lastKnown})
	if err != nil {
		t.Fatalf("failover: %v\n%+v", err, rep)
	}
	t.Logf("failover: %+v", rep)
	if rep.NewMaster != "redis-1" || rep.EpochAfter != 2 || !rep.LossWindowKnown || rep.LossWindowBytes <= 0 || rep.MinReplicasToWrite != 0 {
		t.Fatalf("report: %+v", rep)
	}
	if e.fenced[len(e.fenced)-1] != "redis-0" {
		t.Fatalf("fenced %v", e.fenced)
	}
	if err := rc.Set(ctx, "after-failover", "1", 0).Err(); err != nil {
		t.Fatalf("promoted replica refuses writes: %v", err)
	}
	if n, err := rc.Exists(ctx, "k99").Result(); err != nil || n != 1 {
		t.Fatalf("replicated write k99 missing on the promoted replica: %d %v", n, err)
	}
	if n, _ := rc.Exists(ctx, lastLost).Result(); n != 0 {
		t.Fatal(lastLost + " was written while the replica was stopped, yet the replica has it")
	}
	e.converged(t)

	// The old master started again from its data dir is a master on its own, but with
	// min-replicas-to-write 1 and no replica it refuses every write.
	e.master.start(t)
	if err := mc.Set(ctx, "zombie", "1", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOREPLICAS") {
		t.Fatalf("restarted old master: write %v, want NOREPLICAS", err)
	}
	if n, err := mc.Exists(ctx, lastLost).Result(); err != nil || n != 1 {
		t.Fatalf("the restarted old master lost its own data: %d %v", n, err)
	}

	if _, err := RedisRejoin(ctx, RedisRejoinOptions{DB: db, JournalDir: e.dir, Group: "redis-0", Host: "redis-1"}); !errors.Is(err, RedisErrBadInput) {
		t.Fatalf("rejoin of the master: %v", err)
	}
	rep, err = RedisRejoin(ctx, RedisRejoinOptions{DB: db, JournalDir: e.dir, Group: "redis-0", Host: "redis-0"})
	if err != nil {
		t.Fatalf("rejoin: %v\n%+v", err, rep)
	}
	t.Logf("rejoin: %+v", rep)
	if i, err := redisRole(mc); err != nil || i.Role != "slave" || !i.LinkUp || i.MasterPort != e.replica.port {
		t.Fatalf("rejoined old master: %+v %v", i, err)
	}
	if v, err := rc.ConfigGet(ctx, "min-replicas-to-write").Result(); err != nil || v["min-replicas-to-write"] != "1" {
		t.Fatalf("master's min-replicas-to-write after the rejoin: %v %v", v, err)
	}
	if err := rc.Set(ctx, "after-rejoin", "1", 0).Err(); err != nil {
		t.Fatalf("master after the rejoin: %v", err)
	}
	redisEventually(t, 30*time.Second, "rejoined replica to hold the new master's data", func() error {
		if n, err := mc.Exists(ctx, "after-rejoin", "after-failover").Result(); err != nil || n != 2 {
			return fmt.Errorf("%d %v", n, err)
		}
		return nil
	})
	if n, _ := mc.Exists(ctx, lastLost).Result(); n != 0 {
		t.Fatal("the rejoined replica kept a write the master never had")
	}
	e.converged(t)
	// The two can switch over again.
	if rep, err := RedisSwitchover(ctx, RedisSwitchoverOptions{DB: db, JournalDir: e.dir, Group: "redis-0"}); err != nil || rep.NewMaster != "redis-0" {
		t.Fatalf("switchover after the rejoin: %v %+v", err, rep)
	}
	e.converged(t)
}

func TestRedisBadInput(t *testing.T) {
	db, url := redisControlDB(t)
	e := newRedisTestEnv(t, db, url, "redis-0", "redis")
	ctx := context.Background()
	for _, c := range []struct {
		name string
		opts RedisSwitchoverOptions
		want string
	}{
		{"unknown group", RedisSwitchoverOptions{Group: "redis-9"}, `no replication group "redis-9" (Redis groups: [redis-0])`},
		{"postgres group", RedisSwitchoverOptions{Group: "pg-0"}, "group pg-0 is a postgres group, not a Redis group"},
		{"replica named as master", RedisSwitchoverOptions{Group: "redis-0", Master: "redis-1"}, "redis-1 is not the master of redis-0 (the topology says redis-0, epoch 1)"},
		{"non-member named as master", RedisSwitchoverOptions{Group: "redis-0", Master: "pg-0"}, "pg-0 is not a member of group redis-0"},
		{"master named as replica", RedisSwitchoverOptions{Group: "redis-0", Replica: "redis-0"}, "redis-0 is the master of redis-0 already"},
	} {
		c.opts.DB, c.opts.JournalDir = db, e.dir
		_, err := RedisSwitchover(ctx, c.opts)
		if !errors.Is(err, RedisErrBadInput) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want RedisErrBadInput saying %q", c.name, err, c.want)
		}
		fo := RedisFailoverOptions{DB: db, JournalDir: e.dir, Group: c.opts.Group, Master: c.opts.Master, Replica: c.opts.Replica, Fencer: e}
		if _, err := RedisFailover(ctx, fo); !errors.Is(err, RedisErrBadInput) {
			t.Errorf("failover, %s: %v, want RedisErrBadInput", c.name, err)
		}
	}
	if _, err := RedisResume(ctx, RedisResumeOptions{DB: db, JournalDir: e.dir, Group: "redis-0"}); !errors.Is(err, RedisErrBadInput) {
		t.Errorf("resume without a journal: %v", err)
	}
	// Another operation holds the group.
	lock, err := redisLockGroup(e.dir, "redis-0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RedisSwitchover(ctx, RedisSwitchoverOptions{DB: db, JournalDir: e.dir, Group: "redis-0"}); !errors.Is(err, RedisErrBusy) {
		t.Errorf("switchover while locked: %v", err)
	}
	lock.release()
	if len(e.fenced) != 0 {
		t.Errorf("bad input fenced %v", e.fenced)
	}
	if e.converged(t) != "redis-0" || e.topo(t).Epoch != 1 {
		t.Fatal("bad input changed the group")
	}
}

// TestRedisResumeAbort stops a switchover and a failover at every step, as if instactl had
// been killed there, and checks that resume and abort each converge on one master that takes
// writes and a topology that names it.
func TestRedisResumeAbort(t *testing.T) {
	db, url := redisControlDB(t)
	ctx := context.Background()
	type tc struct {
		op, crashAt string
		abort       bool
		// wantNew: the replica ends as master.
		wantNew bool
	}
	var cases []tc
	for _, at := range []string{redisStepPrepare, redisStepFailoverSent, redisCrashFailoverIssued, redisStepRecord, redisStepKillClients} {
		promoted := at == redisCrashFailoverIssued || at == redisStepRecord || at == redisStepKillClients
		cases = append(cases, tc{redisOpSwitchover, at, false, true}, tc{redisOpSwitchover, at, true, promoted})
	}
	for _, at := range []string{redisStepFence, redisStepPromote, redisStepRecord, redisStepKillClients} {
		// Abort before the fence returns to the old master; after it, the old master is gone.
		cases = append(cases, tc{redisOpFailover, at, false, true}, tc{redisOpFailover, at, true, at != redisStepFence})
	}
	for n, c := range cases {
		verb := "resume"
		if c.abort {
			verb = "abort"
		}
		t.Run(fmt.Sprintf("%s/%s/%s", c.op, c.crashAt, verb), func(t *testing.T) {
			p := "c" + strconv.Itoa(n)
			e := newRedisTestEnv(t, db, url, "g-"+p, p)
			var err error
			if c.op == redisOpSwitchover {
				_, err = RedisSwitchover(ctx, RedisSwitchoverOptions{DB: db, JournalDir: e.dir, Group: e.group, crashAt: c.crashAt})
			} else {
				_, err = RedisFailover(ctx, RedisFailoverOptions{DB: db, JournalDir: e.dir, Group: e.group, Fencer: e, crashAt: c.crashAt})
			}
			if !errors.Is(err, errRedisCrashed) {
				t.Fatalf("crash at %s: %v", c.crashAt, err)
			}
			j, err := redisReadJournal(e.dir, e.group)
			wantStep := c.crashAt
			if wantStep == redisCrashFailoverIssued {
				wantStep = redisStepFailoverSent
			}
			if err != nil || j == nil || j.Step != wantStep {
				t.Fatalf("journal after a crash at %s: %+v %v", c.crashAt, j, err)
			}
			// A second operation is refused while the journal is there.
			if _, err := RedisSwitchover(ctx, RedisSwitchoverOptions{DB: db, JournalDir: e.dir, Group: e.group}); !errors.Is(err, RedisErrHalfway) {
				t.Fatalf("switchover with a journal: %v", err)
			}
			ro := RedisResumeOptions{DB: db, JournalDir: e.dir, Group: e.group, Fencer: e}
			var rep RedisReport
			if c.abort {
				rep, err = RedisAbort(ctx, ro)
			} else {
				rep, err = RedisResume(ctx, ro)
			}
			if err != nil {
				t.Fatalf("%s: %v\n%+v", verb, err, rep)
			}
			t.Logf("%s: %+v", verb, rep)
			want := e.master.host
			if c.wantNew {
				want = e.replica.host
			}
			if got := e.converged(t); got != want {
				t.Fatalf("master %s, want %s", got, want)
			}
		})
	}
}
