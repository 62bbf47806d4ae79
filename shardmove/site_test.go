package shardmove

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/controldb"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/topology"
)

func TestParseDF(t *testing.T) {
	out := []byte("Filesystem       1-blocks     Used  Available Capacity Mounted on\n/dev/loop3      520093696 49975296  470118400      10% /var/lib/postgresql\n")
	n, err := parseDF(out)
	if err != nil || n != 470118400 {
		t.Fatalf("got %d, %v", n, err)
	}
	if _, err := parseDF([]byte("df: /nope: No such file or directory\n")); err == nil {
		t.Fatal("garbage parsed")
	}
	if got := dfCommand("/var/lib/postgresql/15/main").String(); got != "df -P -B1 -- /var/lib/postgresql/15/main" {
		t.Fatalf("df command %q", got)
	}
}

// TestInitSite runs the whole `shard init` library path against one real PostgreSQL 15 that
// is the single physical node: control database, schema, topology, map, shard schemas,
// grants; then the load statistics and the free-disk check.
func TestInitSite(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for _, sql := range []string{"CREATE ROLE app LOGIN", "CREATE DATABASE instagram"} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	addr := netip.AddrPortFrom(netip.MustParseAddr(pg.Host), uint16(pg.Port))
	site := Site{
		Topology: topology.Topology{Source: topology.SourceStack, Groups: []topology.Group{{
			Name: "pg-0", Kind: topology.KindPostgres, Primary: "pg-0", Epoch: 1,
			Members: []topology.Member{{Host: "pg-0", Addr: addr}},
		}}},
		Database: "instagram", ControlDatabase: "instagram_control", AppRole: "app",
	}
	res, err := InitSite(ctx, site, 8, 3)
	if err != nil {
		t.Fatal(err)
	}
	if res.Created != 8 || res.Existing != 0 || res.Map.LogicalShards() != 8 || len(res.Map.ShardsOn("pg-0")) != 8 {
		t.Fatalf("first init: %+v", res)
	}
	if res, err = InitSite(ctx, site, 8, 3); err != nil || res.Created != 0 || res.Existing != 8 {
		t.Fatalf("second init: %+v, %v", res, err)
	}
	if _, err := InitSite(ctx, site, 9, 3); err == nil || !strings.Contains(err.Error(), "already installed with 8 logical shards") {
		t.Fatalf("init with another shard count: %v", err)
	}

	// What app servers do: read the map and the topology, write a shard.
	appURL := strings.Replace(pg.URL("instagram_control"), "postgres@", "app@", 1)
	appCtl, err := pgx.Connect(ctx, appURL)
	if err != nil {
		t.Fatal(err)
	}
	defer appCtl.Close(ctx)
	mp, err := shardmap.Load(ctx, appCtl)
	if err != nil || mp.Nodes["pg-0"].DSN != "postgres://app@"+addr.String()+"/instagram?sslmode=disable" {
		t.Fatalf("app reads the map: %+v %v", mp.Nodes, err)
	}
	topo, err := topology.Load(ctx, appCtl)
	if err != nil || len(topo.Groups) != 1 || topo.Groups[0].Primary != "pg-0" {
		t.Fatalf("app reads the topology: %+v %v", topo, err)
	}
	if v, err := controldb.Version(ctx, appCtl); err != nil || v != controldb.Latest() {
		t.Fatalf("schema version %d, %v", v, err)
	}
	app, err := pgx.Connect(ctx, strings.Replace(pg.URL("instagram"), "postgres@", "app@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	if _, err := app.Exec(ctx, "INSERT INTO shard_0003.users (username) SELECT 'u' || g FROM generate_series(1, 50) g"); err != nil {
		t.Fatalf("app writes shard 3: %v", err)
	}
	// The app session reports its statistics when it next goes idle.
	if _, err := app.Exec(ctx, "SELECT pg_stat_force_next_flush()"); err != nil {
		t.Fatal(err)
	}

	// Load statistics through the admin DSN: shard 3 holds the writes.
	cfg, err := site.Config(nil)
	if err != nil {
		t.Fatal(err)
	}
	// The statistics arrive asynchronously: wait for them, with a generous deadline.
	var rep *LoadReport
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if rep, err = CollectLoads(ctx, res.Map, cfg.AdminDSN, 0); err != nil {
			t.Fatal(err)
		}
		if rep.Writes[3] >= 50 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rep.Writes[3] != 50 || rep.Nodes["pg-0"].Shards != 8 || rep.Nodes["pg-0"].Bytes <= 0 || len(rep.Loads) != 8 {
		t.Fatalf("loads: writes %v, node %+v, %d shard loads", rep.Writes, rep.Nodes["pg-0"], len(rep.Loads))
	}

	// Free disk: data_directory from the server, df run where the server runs (here, locally).
	local := func(ctx context.Context, cmd remote.Command) ([]byte, error) {
		return exec.CommandContext(ctx, "sh", "-c", cmd.String()).Output()
	}
	free, err := FreeBytes(ctx, cfg.AdminDSN["pg-0"], local)
	if err != nil || free <= 0 {
		t.Fatalf("free bytes %d, %v", free, err)
	}
}
