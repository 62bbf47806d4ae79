package topology_test

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

const stackYAML = `name: topo
provider: sandbox
network:
  address_base: 127.0.91.1
roles:
  app: {count: 1}
  pg: {count: 4, replicas: 1, volumes: {count: 1, size_gib: 1, mount: /var/lib/postgresql}}
  redis: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 1, mount: /var/lib/redis}}
  memcached: {count: 1}
`

func testStack(t *testing.T) *stack.Stack {
	t.Helper()
	st, err := stack.Parse("stack.yaml", []byte(stackYAML))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestFromStack(t *testing.T) {
	topo, err := topology.FromStack(testStack(t))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, g := range topo.Groups {
		s := g.Kind + " " + g.Name + " primary " + g.Primary + ":"
		for _, m := range g.Members {
			s += " " + m.Host + "@" + m.Addr.String()
		}
		got = append(got, s)
	}
	want := []string{
		"postgres pg-0 primary pg-0: pg-0@127.0.91.2:5432 pg-1@127.0.91.3:5432",
		"postgres pg-2 primary pg-2: pg-2@127.0.91.4:5432 pg-3@127.0.91.5:5432",
		"redis redis-0 primary redis-0: redis-0@127.0.91.6:6379 redis-1@127.0.91.7:6379",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("groups:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	p, err := topo.Primary("pg-2")
	if err != nil || p.DSN("postgres", "instagram") != "postgres://postgres@127.0.91.4:5432/instagram?sslmode=disable&connect_timeout=10" {
		t.Fatalf("primary of pg-2: %+v %v", p, err)
	}
	if got := p.AppDSN("app", "instagram"); got != "postgres://app@127.0.91.4:5432/instagram?sslmode=disable" {
		t.Fatalf("app dsn %q", got)
	}
	g, _ := topo.Group("pg-0")
	if s := g.Standbys(); len(s) != 1 || s[0].Host != "pg-1" {
		t.Fatalf("standbys of pg-0: %+v", s)
	}
	if !topo.IsPrimary("pg-2") || topo.IsPrimary("pg-3") || topo.IsPrimary("app-0") {
		t.Fatal("IsPrimary")
	}
	if _, err := topo.Primary("pg-1"); err == nil || !strings.Contains(err.Error(), `no replication group "pg-1" (known: [pg-0 pg-2 redis-0])`) {
		t.Fatalf("unknown group: %v", err)
	}
}

func TestControlDatabase(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	ctx := context.Background()
	connect := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, pg.URL("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	conn, listener := connect(), connect()
	seed, err := topology.FromStack(testStack(t))
	if err != nil {
		t.Fatal(err)
	}

	// Seeded from the stack: the control database answers what the stack says.
	cur, err := topology.Current(ctx, conn, seed)
	if err != nil {
		t.Fatal(err)
	}
	if cur.Source != topology.SourceControl || len(cur.Groups) != len(seed.Groups) {
		t.Fatalf("current: %+v", cur)
	}
	for i, g := range seed.Groups {
		c := cur.Groups[i]
		if c.Name != g.Name || c.Kind != g.Kind || c.Primary != g.Primary || c.Epoch != 1 || len(c.Members) != len(g.Members) || c.Members[1] != g.Members[1] {
			t.Fatalf("group %d: %+v, seeded %+v", i, c, g)
		}
	}
	if p, err := cur.Primary("pg-0"); err != nil || p.Host != "pg-0" {
		t.Fatalf("primary of pg-0: %+v %v", p, err)
	}

	// A new primary bumps the epoch and is announced.
	notes := make(chan string, 4)
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	listening := make(chan struct{})
	go func() {
		if _, err := listener.Exec(lctx, "LISTEN "+topology.NotifyChannel); err != nil {
			notes <- "listen: " + err.Error()
			return
		}
		close(listening)
		_ = topology.Listen(lctx, listener, func(group string, epoch int64) {
			notes <- group + " " + strconv.FormatInt(epoch, 10)
		})
	}()
	<-listening
	// The shard map names node pg-0 by its primary's address: the change of primary moves it.
	if err := shardmap.Install(ctx, conn, 4, []shardmap.Node{
		{Name: "pg-0", DSN: "postgres://app@127.0.91.2:5432/instagram?sslmode=disable"},
		{Name: "pg-2", DSN: "postgres://app@127.0.91.4:5432/instagram?sslmode=disable"}}); err != nil {
		t.Fatal(err)
	}
	before, err := shardmap.Load(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	g, err := topology.RecordPrimary(ctx, conn, "pg-0", "pg-1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if g.Primary != "pg-1" || g.Epoch != 2 {
		t.Fatalf("after RecordPrimary: %+v", g)
	}
	select {
	case n := <-notes:
		if n != "pg-0 2" {
			t.Fatalf("notification %q, want \"pg-0 2\"", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no notification of the new primary")
	}

	after, err := shardmap.Load(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if after.Nodes["pg-0"].DSN != "postgres://app@127.0.91.3:5432/instagram?sslmode=disable" ||
		after.Nodes["pg-2"] != before.Nodes["pg-2"] || after.Version != before.Version+1 {
		t.Fatalf("shard map after the change of primary: %+v (before %+v)", after, before)
	}
	// The control database, not the stack, is the truth now: seeding again keeps pg-1.
	cur, err = topology.Current(ctx, conn, seed)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := cur.Primary("pg-0"); err != nil || p.Host != "pg-1" || cur.Groups[0].Epoch != 2 {
		t.Fatalf("primary of pg-0 after a change and a re-seed: %+v %v (%+v)", p, err, cur.Groups[0])
	}
	if s := cur.Groups[0].Standbys(); len(s) != 1 || s[0].Host != "pg-0" {
		t.Fatalf("standbys after the change: %+v", s)
	}

	// A stale epoch and a host outside the group are refused and change nothing.
	if _, err := topology.RecordPrimary(ctx, conn, "pg-0", "pg-0", 1); !errors.Is(err, topology.ErrConflict) {
		t.Fatalf("stale epoch: %v", err)
	}
	if _, err := topology.RecordPrimary(ctx, conn, "pg-0", "pg-3", 2); err == nil || !strings.Contains(err.Error(), "pg-3 is not a member of pg-0") {
		t.Fatalf("non-member: %v", err)
	}
	if _, err := topology.RecordPrimary(ctx, conn, "pg-9", "pg-3", 1); err == nil || !strings.Contains(err.Error(), "no such replication group") {
		t.Fatalf("unknown group: %v", err)
	}
	if cur, err = topology.Load(ctx, conn); err != nil || cur.Groups[0].Primary != "pg-1" || cur.Groups[0].Epoch != 2 {
		t.Fatalf("refusals changed the group: %+v %v", cur.Groups[0], err)
	}
}

func TestControlDSN(t *testing.T) {
	topo, err := topology.FromStack(testStack(t))
	if err != nil {
		t.Fatal(err)
	}
	dsn, err := topology.ControlDSN(topo, "postgres", "instactl")
	if err != nil {
		t.Fatal(err)
	}
	want := "postgres://postgres@127.0.91.2:5432,127.0.91.3:5432/instactl?sslmode=disable&connect_timeout=2&target_session_attrs=read-write"
	if dsn != want {
		t.Fatalf("ControlDSN = %q, want %q", dsn, want)
	}
	if _, err := topology.ControlDSN(topology.Topology{}, "postgres", "instactl"); err == nil {
		t.Fatal("ControlDSN of a topology without PostgreSQL: no error")
	}
}

// TestControlDSNFindsThePrimary lists a standby first: the connection lands on the primary.
func TestControlDSNFindsThePrimary(t *testing.T) {
	primary := testenv.StartPostgres(t, testenv.PostgresOptions{})
	standby := testenv.StartReplica(t, primary)
	addr := func(p *testenv.Postgres) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr(p.Host), uint16(p.Port))
	}
	topo := topology.Topology{Groups: []topology.Group{{Name: "pg-0", Kind: topology.KindPostgres, Primary: "pg-1",
		Members: []topology.Member{{Host: "pg-0", Addr: addr(standby)}, {Host: "pg-1", Addr: addr(primary)}}}}}
	dsn, err := topology.ControlDSN(topo, "postgres", "postgres")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var recovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recovery); err != nil || recovery {
		t.Fatalf("connected to a server in recovery (%v), want the primary", err)
	}
	if got := conn.PgConn().Conn().RemoteAddr().String(); got != addr(primary).String() {
		t.Fatalf("connected to %s, want the primary %s", got, addr(primary))
	}
}
