package controldb_test

import (
	"context"
	_ "embed"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/controldb"
	"github.com/instactl/instactl/internal/testenv"
)

//go:embed testdata/unversioned.sql
var unversionedSchema string

// freshDB creates an empty database in pg and returns a connection to it.
func freshDB(t *testing.T, pg *testenv.Postgres, name string) (*pgx.Conn, string) {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, pg.URL(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn, pg.URL(name)
}

// tables lists the ordinary tables of the public schema.
func tables(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, _ := conn.Query(context.Background(), "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var allTables = []string{"replication_events", "replication_groups", "replication_members", "schema_version", "shard_map",
	"shard_map_meta", "shard_move_steps", "shard_moves", "shard_nodes", "switch_events", "switch_meta", "switches"}

func versions(t *testing.T, conn *pgx.Conn) []int {
	t.Helper()
	rows, _ := conn.Query(context.Background(), "SELECT version FROM schema_version ORDER BY version")
	out, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMigrations(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	ctx := context.Background()
	latest := controldb.Latest()
	want := make([]int, latest)
	for i := range want {
		want[i] = i + 1
	}

	t.Run("from empty, then again", func(t *testing.T) {
		conn, _ := freshDB(t, pg, "empty")
		res, err := controldb.Migrate(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if res.From != 0 || res.To != latest || !slices.Equal(res.Applied, want) {
			t.Fatalf("result %+v, want 0 -> %d applying %v", res, latest, want)
		}
		if got := tables(t, conn); !slices.Equal(got, allTables) {
			t.Fatalf("tables %v, want %v", got, allTables)
		}
		res, err = controldb.Migrate(ctx, conn)
		if err != nil || res.From != latest || res.To != latest || len(res.Applied) != 0 {
			t.Fatalf("re-run: %+v, %v; want nothing applied", res, err)
		}
		if got := versions(t, conn); !slices.Equal(got, want) {
			t.Fatalf("schema_version %v, want %v", got, want)
		}
		if v, err := controldb.Version(ctx, conn); err != nil || v != latest {
			t.Fatalf("Version = %d, %v", v, err)
		}
	})

	t.Run("from the unversioned schema of an older instactl", func(t *testing.T) {
		conn, _ := freshDB(t, pg, "unversioned")
		if _, err := conn.Exec(ctx, unversionedSchema); err != nil {
			t.Fatal(err)
		}
		if v, err := controldb.Version(ctx, conn); err != nil || v != 0 {
			t.Fatalf("Version of the old schema = %d, %v; want 0", v, err)
		}
		res, err := controldb.Migrate(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if res.From != 0 || res.To != latest {
			t.Fatalf("result %+v", res)
		}
		if got := tables(t, conn); !slices.Equal(got, allTables) {
			t.Fatalf("tables %v, want %v", got, allTables)
		}
		var version int64
		var node string
		var epoch, moves int64
		if err := conn.QueryRow(ctx, `SELECT (SELECT version FROM shard_map_meta), node, epoch,
			(SELECT count(*) FROM shard_moves) FROM shard_map WHERE shard = 1`).Scan(&version, &node, &epoch, &moves); err != nil {
			t.Fatal(err)
		}
		if version != 7 || node != "pg-2" || epoch != 3 || moves != 1 {
			t.Fatalf("data changed by the upgrade: version %d, shard 1 on %s at epoch %d, %d moves", version, node, epoch, moves)
		}
		// The journal's partial unique index came along: a second open move of a shard is refused.
		_, err = conn.Exec(ctx, `INSERT INTO shard_moves (shard, from_node, to_node, from_epoch, state, step, plan)
			VALUES (0, 'pg-0', 'pg-2', 1, 'running', 'prepare_source', '{}'), (0, 'pg-0', 'pg-2', 1, 'running', 'prepare_source', '{}')`)
		if err == nil || !strings.Contains(err.Error(), "shard_moves_one_open") {
			t.Fatalf("two open moves of one shard: %v", err)
		}
	})

	t.Run("concurrent runs apply each migration once", func(t *testing.T) {
		_, url := freshDB(t, pg, "concurrent")
		const n = 8
		conns := make([]*pgx.Conn, n)
		for i := range conns {
			c, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			conns[i] = c
		}
		results := make([]controldb.Result, n)
		errs := make([]error, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Go(func() {
				<-start
				results[i], errs[i] = controldb.Migrate(ctx, c)
			})
		}
		close(start)
		wg.Wait()
		applied := 0
		for i := range n {
			if errs[i] != nil {
				t.Errorf("run %d: %v", i, errs[i])
			}
			applied += len(results[i].Applied)
		}
		if applied != latest {
			t.Fatalf("%d migrations applied in all, want %d (each once): %+v", applied, latest, results)
		}
		if got := versions(t, conns[0]); !slices.Equal(got, want) {
			t.Fatalf("schema_version %v, want %v", got, want)
		}
	})

	t.Run("a newer schema is refused", func(t *testing.T) {
		conn, _ := freshDB(t, pg, "newer")
		if _, err := controldb.Migrate(ctx, conn); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO schema_version (version, name) VALUES ($1, 'from the future')", latest+1); err != nil {
			t.Fatal(err)
		}
		_, err := controldb.Migrate(ctx, conn)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("version %d, newer than this instactl knows (%d)", latest+1, latest)) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestDatabaseAndGrants(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := controldb.EnsureDatabase(ctx, admin, "ctl", "app"); err == nil || !strings.Contains(err.Error(), "role app does not exist") {
		t.Fatalf("without the app role: %v", err)
	}
	if _, err := admin.Exec(ctx, "CREATE ROLE app LOGIN"); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false} {
		created, err := controldb.EnsureDatabase(ctx, admin, "ctl", "app")
		if err != nil || created != want {
			t.Fatalf("run %d: created %v, %v; want %v", i, created, err, want)
		}
	}
	ctl, err := pgx.Connect(ctx, pg.URL("ctl"))
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close(ctx)
	if _, err := controldb.Migrate(ctx, ctl); err != nil {
		t.Fatal(err)
	}
	if err := controldb.GrantRead(ctx, ctl, "app"); err != nil {
		t.Fatal(err)
	}
	app, err := pgx.Connect(ctx, strings.Replace(pg.URL("ctl"), "postgres@", "app@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	for _, tbl := range controldb.ReadTables {
		if _, err := app.Exec(ctx, "SELECT * FROM "+tbl); err != nil {
			t.Errorf("app reads %s: %v", tbl, err)
		}
	}
	if _, err := app.Exec(ctx, "SELECT * FROM shard_moves"); err == nil {
		t.Error("app reads the move journal; it should not need to")
	}
}
