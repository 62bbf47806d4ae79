package app

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestPoolerDSN(t *testing.T) {
	for _, tc := range []struct {
		name, dsn, want string
	}{
		{"url", "postgres://app:s3cret@127.0.10.2:5432/instagram?sslmode=disable&application_name=web",
			"postgres://app:s3cret@127.0.0.1:6432/pg-0?application_name=web&sslmode=disable"},
		{"url without port or params", "postgresql://app@db.internal/instagram",
			"postgresql://app@127.0.0.1:6432/pg-0"},
		{"url with host, port and dbname params", "postgres://app@h1/instagram?host=/run/pg&port=5433&dbname=x&connect_timeout=3",
			"postgres://app@127.0.0.1:6432/pg-0?connect_timeout=3"},
		{"url with a password needing escapes", "postgres://app:p%40ss%2Fw@127.0.10.2:5432/instagram",
			"postgres://app:p%40ss%2Fw@127.0.0.1:6432/pg-0"},
		{"keywords", "host=127.0.10.2 port=5432 dbname=instagram user=app sslmode=disable",
			"host=127.0.0.1 port=6432 dbname=pg-0 user=app sslmode=disable"},
		{"keywords with quotes", `host=127.0.10.2 port=5432 dbname=instagram user=app password='a b\'c\\d' sslmode=disable`,
			`host=127.0.0.1 port=6432 dbname=pg-0 user=app password='a b\'c\\d' sslmode=disable`},
		{"keywords with spaces around =", "user = app  hostaddr=10.0.0.1 host=db dbname = instagram",
			"host=127.0.0.1 port=6432 dbname=pg-0 user=app"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PoolerDSN(tc.dsn, "127.0.0.1:6432", "pg-0")
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("PoolerDSN(%q)\n got %q\nwant %q", tc.dsn, got, tc.want)
			}
			// pgx must see the pooler as the only target, the group as the database, and the
			// node's user and password.
			cfg, err := pgconn.ParseConfig(got)
			if err != nil {
				t.Fatalf("parse %q: %v", got, err)
			}
			orig, err := pgconn.ParseConfig(tc.dsn)
			if err != nil {
				t.Fatalf("parse %q: %v", tc.dsn, err)
			}
			for _, fb := range cfg.Fallbacks { // sslmode=prefer: TLS, then plain, to the same target
				if fb.Host != "127.0.0.1" || fb.Port != 6432 {
					t.Fatalf("%q: fallback to %s:%d", got, fb.Host, fb.Port)
				}
			}
			if cfg.Host != "127.0.0.1" || cfg.Port != 6432 || cfg.Database != "pg-0" ||
				cfg.User != orig.User || cfg.Password != orig.Password {
				t.Fatalf("%q parses to host %s port %d db %s user %s password %q fallbacks %d", got,
					cfg.Host, cfg.Port, cfg.Database, cfg.User, cfg.Password, len(cfg.Fallbacks))
			}
		})
	}
	for _, bad := range []struct{ dsn, pooler string }{
		{"postgres://app@h/db", "127.0.0.1"},              // pooler without a port
		{"host=h dbname='unterminated", "127.0.0.1:6432"}, // broken quoting
		{"host=h justakeyword", "127.0.0.1:6432"},
	} {
		if got, err := PoolerDSN(bad.dsn, bad.pooler, "pg-0"); err == nil {
			t.Errorf("PoolerDSN(%q, %q) = %q, want an error", bad.dsn, bad.pooler, got)
		}
	}
}

func TestPoolerDSNIPv6(t *testing.T) {
	got, err := PoolerDSN("postgres://app@[::1]:5432/instagram", "[::1]:6432", "pg-2")
	if err != nil {
		t.Fatal(err)
	}
	if want := "postgres://app@[::1]:6432/pg-2"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestConfigPgBouncer(t *testing.T) {
	env := map[string]string{"INSTAGRAM_PGBOUNCER": "127.0.0.1:6432", "INSTAGRAM_CONTROL_DSN": "postgres://c",
		"INSTAGRAM_REDIS_ADDR": "r:1", "INSTAGRAM_MEMCACHED_ADDRS": "m:1", "INSTAGRAM_S3_BUCKET": "b"}
	opts, err := ParseArgs([]string{"-config", "/nonexistent/default/is/fine"}, func(k string) string { return env[k] })
	if err == nil {
		t.Fatal("a named, missing config file was accepted")
	}
	opts, err = ParseArgs(nil, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if opts.Config.PgBouncer != "127.0.0.1:6432" {
		t.Fatalf("PgBouncer from env = %q", opts.Config.PgBouncer)
	}
	if err := opts.Config.Validate(); err != nil {
		t.Fatal(err)
	}
	opts, err = ParseArgs([]string{"-pgbouncer", "127.0.0.2:7000"}, func(k string) string { return env[k] })
	if err != nil || opts.Config.PgBouncer != "127.0.0.2:7000" {
		t.Fatalf("flag: %q, %v", opts.Config.PgBouncer, err)
	}
	opts.Config.PgBouncer = "127.0.0.1"
	if err := opts.Config.Validate(); err == nil {
		t.Fatal("INSTAGRAM_PGBOUNCER without a port was accepted")
	}
}
