package shardmap_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/shardmap"
)

func TestIDParts(t *testing.T) {
	now := time.UnixMilli(time.Now().UnixMilli())
	for _, shard := range []int{0, 1, 42, shardmap.MaxShards - 1} {
		id := shardmap.MakeID(now, shard, 1500)
		if got := shardmap.ShardOf(id); got != shard {
			t.Errorf("ShardOf(MakeID(shard=%d)) = %d", shard, got)
		}
		if got := shardmap.IDTime(id); !got.Equal(now) {
			t.Errorf("IDTime = %v, want %v", got, now)
		}
		if id&1023 != 1500%1024 {
			t.Errorf("sequence bits = %d", id&1023)
		}
	}
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec1(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestShardSchema runs against one real PostgreSQL 15: next_id, fence, dump/restore.
func TestShardSchema(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	ctx := context.Background()
	conn := connect(t, pg.URL("postgres"))
	exec1(t, conn, shardmap.ShardSchemaSQL(42))
	exec1(t, conn, shardmap.ShardSchemaSQL(42)) // idempotent

	t.Run("next_id unique with shard bits", func(t *testing.T) {
		seen := map[int64]bool{}
		before := time.Now().Add(-time.Millisecond)
		for batch := 0; batch < 4; batch++ {
			rows, _ := conn.Query(ctx, "SELECT shard_0042.next_id() FROM generate_series(1, 1000)")
			ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				if seen[id] {
					t.Fatalf("duplicate id %d", id)
				}
				seen[id] = true
				if shardmap.ShardOf(id) != 42 {
					t.Fatalf("id %d: shard %d", id, shardmap.ShardOf(id))
				}
				if ts := shardmap.IDTime(id); ts.Before(before) || ts.After(time.Now().Add(time.Millisecond)) {
					t.Fatalf("id %d: time %v not now", id, ts)
				}
			}
		}
	})

	t.Run("fence", func(t *testing.T) {
		exec1(t, conn, "INSERT INTO shard_0042.users (username) VALUES ('before')")
		if err := shardmap.SetFence(ctx, conn, 42, true, time.Second); err != nil {
			t.Fatal(err)
		}
		for _, stmt := range []string{
			"INSERT INTO shard_0042.users (username) VALUES ('during')",
			"UPDATE shard_0042.users SET username = 'x'",
			"DELETE FROM shard_0042.likes",
			"INSERT INTO shard_0042.comments (photo_id, user_id, body) VALUES (1, 1, 'b')",
		} {
			_, err := conn.Exec(ctx, stmt)
			if !shardmap.IsFenced(fmt.Errorf("wrapped: %w", err)) {
				t.Fatalf("%s: want fence error, got %v", stmt, err)
			}
		}
		// Re-running the schema DDL must not lift the fence.
		exec1(t, conn, shardmap.ShardSchemaSQL(42))
		if _, err := conn.Exec(ctx, "INSERT INTO shard_0042.users (username) VALUES ('during')"); !shardmap.IsFenced(err) {
			t.Fatalf("fence lifted by re-running ShardSchemaSQL: %v", err)
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM shard_0042.users").Scan(&n); err != nil || n != 1 {
			t.Fatalf("reads under the fence: n=%d err=%v", n, err)
		}
		if err := shardmap.SetFence(ctx, conn, 42, false, time.Second); err != nil {
			t.Fatal(err)
		}
		exec1(t, conn, "INSERT INTO shard_0042.users (username) VALUES ('after')")
		if shardmap.IsFenced(errors.New("IG001")) || shardmap.IsFenced(nil) {
			t.Fatal("IsFenced matched a non-fence error")
		}
	})

	t.Run("pg_dump and pg_restore with empty search_path", func(t *testing.T) {
		exec1(t, conn, "CREATE DATABASE restored")
		dump := filepath.Join(t.TempDir(), "shard.dump")
		bin := "/usr/lib/postgresql/15/bin/"
		port := fmt.Sprint(pg.Port)
		if out, err := exec.Command(bin+"pg_dump", "-h", pg.Host, "-p", port, "-U", "postgres",
			"-Fc", "-n", "shard_0042", "-f", dump, "postgres").CombinedOutput(); err != nil {
			t.Fatalf("pg_dump: %v\n%s", err, out)
		}
		if out, err := exec.Command(bin+"pg_restore", "-h", pg.Host, "-p", port, "-U", "postgres",
			"--exit-on-error", "-d", "restored", dump).CombinedOutput(); err != nil {
			t.Fatalf("pg_restore: %v\n%s", err, out)
		}
		rc := connect(t, pg.URL("restored"))
		var id int64
		if err := rc.QueryRow(ctx, "INSERT INTO shard_0042.photos (user_id, s3_key, size, sha256) VALUES (1, 'k', 1, 'h') RETURNING id").Scan(&id); err != nil {
			t.Fatalf("insert after restore: %v", err)
		}
		if shardmap.ShardOf(id) != 42 {
			t.Fatalf("restored next_id: shard %d", shardmap.ShardOf(id))
		}
		// The fence came across disabled and still works.
		if err := shardmap.SetFence(ctx, rc, 42, true, time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := rc.Exec(ctx, "INSERT INTO shard_0042.users (username) VALUES ('z')"); !shardmap.IsFenced(err) {
			t.Fatalf("restored fence: %v", err)
		}
	})
}

func TestControl(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	ctx := context.Background()
	conn := connect(t, pg.URL("postgres"))
	exec1(t, conn, "CREATE DATABASE a")
	exec1(t, conn, "CREATE DATABASE b")
	nodes := []shardmap.Node{{Name: "a", DSN: pg.URL("a")}, {Name: "b", DSN: pg.URL("b")}}
	for i := 0; i < 2; i++ {
		if err := shardmap.Install(ctx, conn, 8, nodes); err != nil {
			t.Fatalf("install #%d: %v", i, err)
		}
	}
	if err := shardmap.Install(ctx, conn, 16, nodes); err == nil {
		t.Fatal("install with a different shard count succeeded")
	}
	m, err := shardmap.Load(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != 1 || m.LogicalShards() != 8 || len(m.Nodes) != 2 || len(m.ShardsOn("b")) != 4 {
		t.Fatalf("map after install: %+v", m)
	}
	if err := shardmap.InitShards(ctx, m); err != nil {
		t.Fatal(err)
	}
	bconn := connect(t, pg.URL("b"))
	exec1(t, bconn, "INSERT INTO shard_0003.users (username) VALUES ('u')")

	lc := connect(t, pg.URL("postgres"))
	got := make(chan int64, 4)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	listening := make(chan error, 1)
	go func() { listening <- shardmap.Listen(lctx, lc, func(v int64) { got <- v }) }()
	time.Sleep(200 * time.Millisecond) // let LISTEN run before the flip

	a3 := m.Shards[3]
	if err := shardmap.Flip(ctx, conn, 3, a3.Node, "a", a3.Epoch+1); !errors.Is(err, shardmap.ErrConflict) {
		t.Fatalf("flip with a stale epoch: %v", err)
	}
	if err := shardmap.Flip(ctx, conn, 3, "a", "b", a3.Epoch); !errors.Is(err, shardmap.ErrConflict) {
		t.Fatalf("flip from the wrong node: %v", err)
	}
	if err := shardmap.Flip(ctx, conn, 3, a3.Node, "a", a3.Epoch); err != nil {
		t.Fatal(err)
	}
	if err := shardmap.Flip(ctx, conn, 3, a3.Node, "a", a3.Epoch); !errors.Is(err, shardmap.ErrConflict) {
		t.Fatalf("second flip at the same epoch: %v", err)
	}
	select {
	case v := <-got:
		if v != 2 {
			t.Fatalf("notified version %d, want 2", v)
		}
	case err := <-listening:
		t.Fatalf("listen: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no notification after flip")
	}
	m2, err := shardmap.Load(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if a := m2.Shards[3]; a.Node != "a" || a.Epoch != a3.Epoch+1 || m2.Version != 2 {
		t.Fatalf("after flip: %+v version %d", a, m2.Version)
	}
	if err := shardmap.SetState(ctx, conn, 3, "a", a3.Epoch+1, shardmap.StateMoving); err != nil {
		t.Fatal(err)
	}
}
