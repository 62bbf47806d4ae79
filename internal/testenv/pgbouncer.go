package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PgBouncerOptions tunes a PgBouncer started by StartPgBouncer.
type PgBouncerOptions struct {
	// Databases are the [databases] entries: name -> "host=127.0.0.1 port=5432 dbname=postgres".
	// They live in DatabasesFile, pulled in with %include, as on an app host.
	Databases map[string]string
	// AuthType is PgBouncer's auth_type: "trust" (default) or "scram-sha-256".
	AuthType string
	// Users are the auth_file entries, name -> plain-text password. Default: postgres, app and
	// instactl without passwords (enough for trust).
	Users map[string]string
}

// PgBouncerServer is a running PgBouncer 1.18 in transaction pooling mode, admin user instactl.
type PgBouncerServer struct {
	// Addr is host:port of its listener on 127.0.0.1.
	Addr string
	// Dir holds pgbouncer.ini, the userlist and the databases file; it is owned by postgres.
	Dir string
	// DatabasesFile is the %include'd file with the [databases] section; rewrite it and send
	// RELOAD to repoint.
	DatabasesFile string
	// Proc is the process (runuser and pgbouncer in one process group).
	Proc *Proc
}

// PgBouncer starts a PgBouncer with auth_type trust in front of databases (see
// PgBouncerOptions.Databases) and returns its host:port.
func PgBouncer(t testing.TB, databases map[string]string) string {
	t.Helper()
	return StartPgBouncer(t, PgBouncerOptions{Databases: databases}).Addr
}

// StartPgBouncer starts /usr/sbin/pgbouncer as the postgres OS user (it refuses to run as
// root) on a free port of 127.0.0.1 and waits until it accepts connections. It is stopped at
// cleanup.
func StartPgBouncer(t testing.TB, opt PgBouncerOptions) *PgBouncerServer {
	t.Helper()
	RequireRoot(t)
	bin := Require(t, "pgbouncer", "pgbouncer")
	if opt.AuthType == "" {
		opt.AuthType = "trust"
	}
	if opt.Users == nil {
		opt.Users = map[string]string{"postgres": "", "app": "", "instactl": ""}
	}
	dir := pgDir(t)
	port := FreePort(t, "127.0.0.1")
	b := &PgBouncerServer{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Dir: dir,
		DatabasesFile: filepath.Join(dir, "pgbouncer-databases.ini")}
	writePgFile(t, b.DatabasesFile, PgBouncerDatabasesINI(opt.Databases))
	var users strings.Builder
	for _, name := range sortedKeys(opt.Users) {
		fmt.Fprintf(&users, "%q %q\n", name, opt.Users[name])
	}
	writePgFile(t, filepath.Join(dir, "userlist.txt"), users.String())
	ini := fmt.Sprintf(`%%include %s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = %s
auth_file = %s
admin_users = instactl
pool_mode = transaction
max_client_conn = 200
default_pool_size = 10
server_idle_timeout = 60
ignore_startup_parameters = extra_float_digits
`, b.DatabasesFile, port, opt.AuthType, filepath.Join(dir, "userlist.txt"))
	iniPath := filepath.Join(dir, "pgbouncer.ini")
	writePgFile(t, iniPath, ini)

	cmd := asPostgres(bin, iniPath)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbouncer: %v", err)
	}
	b.Proc = &Proc{Cmd: cmd, Log: &log}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		// SIGTERM is PgBouncer's immediate shutdown; the process group holds runuser too.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", b.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return b
		}
		select {
		case <-done:
			t.Fatalf("pgbouncer exited during start:\n%s", log.String())
		case <-ctx.Done():
			t.Fatalf("pgbouncer not listening on %s after 30s:\n%s", b.Addr, log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PgBouncerDatabasesINI renders a [databases] section, entries sorted by name.
func PgBouncerDatabasesINI(databases map[string]string) string {
	var b strings.Builder
	b.WriteString("[databases]\n")
	for _, name := range sortedKeys(databases) {
		fmt.Fprintf(&b, "%s = %s\n", name, databases[name])
	}
	return b.String()
}

// writePgFile writes content to path through a temporary file and a rename, readable by the
// postgres user.
func writePgFile(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
