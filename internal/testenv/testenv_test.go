package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestPostgresPrimaryAndReplica(t *testing.T) {
	primary := StartPostgres(t, PostgresOptions{})
	replica := StartReplica(t, primary)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc, err := pgx.Connect(ctx, primary.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	if _, err := pc.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	rc, err := pgx.Connect(ctx, replica.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(ctx)
	for {
		var v int
		err := rc.QueryRow(ctx, "SELECT v FROM t").Scan(&v)
		if err == nil && v == 42 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("row never reached the replica: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestRedisMemcachedMoto(t *testing.T) {
	for name, addr := range map[string]string{"redis": Redis(t), "memcached": Memcached(t)} {
		if err := WaitTCP(addr, time.Second); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if ep := Moto(t); ep == "" {
		t.Fatal("moto endpoint empty")
	}
}

// TestPgBouncer: a database entry named like a group reaches its Postgres server through the
// pooler, and the admin console answers instactl.
func TestPgBouncer(t *testing.T) {
	pg := StartPostgres(t, PostgresOptions{})
	addr := PgBouncer(t, map[string]string{"pg-0": fmt.Sprintf("host=%s port=%d dbname=postgres", pg.Host, pg.Port)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, "postgres://postgres@"+addr+"/pg-0?sslmode=disable&default_query_exec_mode=simple_protocol")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var port int
	if err := c.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil || port != pg.Port {
		t.Fatalf("through the pooler: port %d (%v), want %d", port, err, pg.Port)
	}
	admin, err := pgx.Connect(ctx, "postgres://instactl@"+addr+"/pgbouncer?sslmode=disable&default_query_exec_mode=simple_protocol")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "RELOAD"); err != nil {
		t.Fatalf("admin console: %v", err)
	}
}
