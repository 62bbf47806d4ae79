package templates

import (
	"strings"
	"testing"

	"github.com/instactl/instactl/stack"
)

func TestWALArchiveRendered(t *testing.T) {
	y := strings.Replace(string(stack.Example()), "wal_archive: false", "wal_archive: true", 1)
	y = strings.Replace(y, "archive_timeout: 60s", "archive_timeout: 15s", 1)
	st, err := stack.Parse("example.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	for _, idx := range []int{0, 1} { // primary and standby alike: archive_mode = always
		d, err := FromStack(st, RolePostgres, idx, "127.0.10.5", "127.0.10.4")
		if err != nil {
			t.Fatal(err)
		}
		conf, err := RenderFile("postgresql.conf", d)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"archive_mode = always\n",
			"archive_command = '/opt/instagram/bin/instactl wal push --config /etc/instagram/wal.env %p'\n",
			"archive_timeout = 15s\n"} {
			if !strings.Contains(conf, want) {
				t.Errorf("pg-%d postgresql.conf lacks %q", idx, want)
			}
		}
		ud, err := UserData(RolePostgres, d)
		if err != nil {
			t.Fatal(err)
		}
		want := "write_file /etc/instagram/wal.env 0644 root:root <<'INSTACTL_EOF'\nAWS_ACCESS_KEY_ID=sandbox\n"
		if !strings.Contains(ud, want) || !strings.Contains(ud, "INSTACTL_WAL_BUCKET="+st.Name+"-wal\nINSTACTL_WAL_GROUP=pg-0\n") {
			t.Errorf("pg-%d user data does not write wal.env as expected:\n%s", idx, ud)
		}
	}
	off, err := stack.Parse("example.yaml", stack.Example())
	if err != nil {
		t.Fatal(err)
	}
	d, err := FromStack(off, RolePostgres, 0, "127.0.10.5", "")
	if err != nil {
		t.Fatal(err)
	}
	conf, _ := RenderFile("postgresql.conf", d)
	if strings.Contains(conf, "archive_") {
		t.Errorf("wal_archive off still renders archive settings")
	}
}
