package templates

import (
	"strings"
	"testing"

	"github.com/instactl/instactl/stack"
)

func TestForHostNamesPrimaryByFixedAddress(t *testing.T) {
	st, err := stack.Parse("s.yaml", stack.Example())
	if err != nil {
		t.Fatal(err)
	}
	ud, err := ForHost(st, stack.HostRef{Role: "pg", Index: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// pg-3 is 127.0.10.6 and follows pg-2 at 127.0.10.5 (app-0, app-1, pg-0 .. come first).
	for _, want := range []string{"127.0.10.6", "127.0.10.5"} {
		if !strings.Contains(ud, want) {
			t.Errorf("pg-3 user-data lacks %s", want)
		}
	}
	if _, err := ForHost(st, stack.HostRef{Role: "pg", Index: 9}, nil); err == nil {
		t.Error("rendered a host that does not exist")
	}
	ud, err = ForHost(st, stack.HostRef{Role: "app", Index: 0}, map[string]string{"INSTAGRAM_REDIS": "127.0.10.7:6379"})
	if err != nil || !strings.Contains(ud, "INSTAGRAM_REDIS") {
		t.Fatalf("app env not rendered: %v", err)
	}
}

// TestAppEnvControlDSN: the control database is reached over every member of the control group,
// read-write only; the host's own PgBouncer is in app.env, not in the shared environment.
func TestAppEnvControlDSN(t *testing.T) {
	st, err := stack.Parse("s.yaml", stack.Example())
	if err != nil {
		t.Fatal(err)
	}
	env, err := AppEnv(st)
	if err != nil {
		t.Fatal(err)
	}
	want := "postgres://app@127.0.10.3:5432,127.0.10.4:5432/instagram_control?sslmode=disable&connect_timeout=2&target_session_attrs=read-write"
	if got := env["INSTAGRAM_CONTROL_DSN"]; got != want {
		t.Errorf("INSTAGRAM_CONTROL_DSN = %s, want %s", got, want)
	}
	if _, ok := env[PgBouncerEnv]; ok {
		t.Errorf("AppEnv sets %s, which differs per host", PgBouncerEnv)
	}
	for i, addr := range []string{"127.0.10.1", "127.0.10.2"} {
		ud, err := ForHost(st, stack.HostRef{Role: "app", Index: i}, env)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"INSTAGRAM_PGBOUNCER='" + addr + ":6432'", "listen_addr = " + addr,
			"%include /etc/instagram/pgbouncer-databases.ini", "pg-0 = host=127.0.10.3 port=5432 dbname=instagram\n",
			"pg-2 = host=127.0.10.5 port=5432 dbname=instagram\n", "auth_type = trust"} {
			if !strings.Contains(ud, want) {
				t.Errorf("app-%d user-data lacks %q", i, want)
			}
		}
	}
}
