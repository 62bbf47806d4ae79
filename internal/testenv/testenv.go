package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// InCI reports whether tests run in CI, where a missing component is a failure.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require returns the path of binary name, or ends the test: a failure in CI, a skip elsewhere.
// aptPackage names the Debian package that provides it.
func Require(t testing.TB, name, aptPackage string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/lib/postgresql/15/bin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	Missing(t, fmt.Sprintf("%s not found: apt-get update && apt-get install -y %s", name, aptPackage))
	return ""
}

// RequireRoot ends the test unless it runs as root (loop devices, namespaces, runuser).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "this test needs root (loop devices, mount namespaces)")
	}
}

// Missing fails the test in CI and skips it elsewhere.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if InCI() {
		t.Fatalf("required component missing in CI: %s", msg)
	}
	t.Skip(msg)
}

// FreePort returns a TCP port on host that was free a moment ago.
func FreePort(t testing.TB, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("find free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitTCP waits until addr accepts connections or the timeout passes.
func WaitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening after %s: %w", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Proc is a started server process; Stop ends it (also registered as test cleanup).
type Proc struct {
	Cmd *exec.Cmd
	Log *bytes.Buffer
}

// Start runs cmd in its own process group, logging to a buffer, and stops it with sig at cleanup.
func Start(t testing.TB, sig syscall.Signal, name string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(name, args...)
	var log bytes.Buffer
	cmd.Stdout = &log
	cmd.Stderr = &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Cmd: cmd, Log: &log}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, sig)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	return p
}

// Moto starts moto_server on a free loopback port and returns its endpoint URL. It also sets
// the AWS environment (region, dummy credentials) for the test.
func Moto(t testing.TB) string {
	t.Helper()
	bin := Require(t, "moto_server", "python3-moto (or: pip install 'moto[server]')")
	port := FreePort(t, "127.0.0.1")
	p := Start(t, syscall.SIGTERM, bin, "-H", "127.0.0.1", "-p", strconv.Itoa(port))
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := WaitTCP(addr, 30*time.Second); err != nil {
		t.Fatalf("moto_server: %v\n%s", err, p.Log.String())
	}
	if tt, ok := t.(*testing.T); ok {
		tt.Setenv("AWS_ACCESS_KEY_ID", "testing")
		tt.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
		tt.Setenv("AWS_REGION", "us-east-1")
		tt.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	}
	return "http://" + addr
}

// Redis starts a redis-server with no persistence on a free loopback port; returns host:port.
func Redis(t testing.TB, extra ...string) string {
	t.Helper()
	bin := Require(t, "redis-server", "redis-server")
	port := FreePort(t, "127.0.0.1")
	args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", t.TempDir(), "--daemonize", "no"}, extra...)
	p := Start(t, syscall.SIGTERM, bin, args...)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := WaitTCP(addr, 10*time.Second); err != nil {
		t.Fatalf("redis: %v\n%s", err, p.Log.String())
	}
	return addr
}

// Memcached starts memcached on a free loopback port; returns host:port.
func Memcached(t testing.TB) string {
	t.Helper()
	bin := Require(t, "memcached", "memcached")
	port := FreePort(t, "127.0.0.1")
	p := Start(t, syscall.SIGTERM, bin, "-u", "root", "-l", "127.0.0.1", "-p", strconv.Itoa(port), "-m", "64")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := WaitTCP(addr, 10*time.Second); err != nil {
		t.Fatalf("memcached: %v\n%s", err, p.Log.String())
	}
	return addr
}

// Postgres is a throwaway PostgreSQL 15 cluster owned by the postgres OS user.
type Postgres struct {
	Host    string
	Port    int
	DataDir string
	// SocketDir holds the Unix socket.
	SocketDir string
}

// URL returns a connection string for db as the superuser postgres.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@%s:%d/%s?sslmode=disable", p.Host, p.Port, db)
}

// PostgresOptions tunes a cluster.
type PostgresOptions struct {
	// Settings are extra postgresql.conf lines ("name = value").
	Settings []string
}

const pgBin = "/usr/lib/postgresql/15/bin"

// pgDir makes a directory the postgres user owns (t.TempDir is 0700 root, which postgres cannot
// enter).
func pgDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "instactl-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := exec.Command("chown", "postgres:postgres", dir).Run(); err != nil {
		t.Fatalf("chown %s: %v", dir, err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func asPostgres(args ...string) *exec.Cmd {
	return exec.Command("runuser", append([]string{"-u", "postgres", "--"}, args...)...)
}

// StartPostgres initdbs and starts a primary with wal_level=logical on 127.0.0.1.
func StartPostgres(t testing.TB, opt PostgresOptions) *Postgres {
	t.Helper()
	RequireRoot(t)
	Require(t, filepath.Join(pgBin, "initdb"), "postgresql-15")
	dir := pgDir(t)
	data := filepath.Join(dir, "data")
	if out, err := asPostgres(filepath.Join(pgBin, "initdb"), "-D", data, "-U", "postgres",
		"--auth=trust", "--data-checksums", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	conf := []string{
		"wal_level = logical", "max_wal_senders = 20", "max_replication_slots = 20",
		"max_logical_replication_workers = 8", "max_worker_processes = 16", "hot_standby = on",
		"hot_standby_feedback = on", "fsync = off", "synchronous_commit = off", "full_page_writes = on",
		"shared_buffers = 64MB", "max_connections = 200",
	}
	conf = append(conf, opt.Settings...)
	appendFile(t, filepath.Join(data, "postgresql.conf"), conf)
	appendFile(t, filepath.Join(data, "pg_hba.conf"), []string{
		"host all all 127.0.0.0/8 trust", "host replication all 127.0.0.0/8 trust"})
	return runPostgres(t, dir, data)
}

// StartReplica makes a streaming replica of primary with pg_basebackup -R and starts it.
func StartReplica(t testing.TB, primary *Postgres) *Postgres {
	t.Helper()
	dir := pgDir(t)
	data := filepath.Join(dir, "data")
	if out, err := asPostgres(filepath.Join(pgBin, "pg_basebackup"), "-h", primary.Host, "-p",
		strconv.Itoa(primary.Port), "-U", "postgres", "-D", data, "-R", "-X", "stream",
		"-c", "fast").CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	return runPostgres(t, dir, data)
}

func runPostgres(t testing.TB, dir, data string) *Postgres {
	t.Helper()
	port := FreePort(t, "127.0.0.1")
	p := &Postgres{Host: "127.0.0.1", Port: port, DataDir: data, SocketDir: dir}
	cmd := asPostgres(filepath.Join(pgBin, "postgres"), "-D", data, "-h", "127.0.0.1",
		"-p", strconv.Itoa(port), "-k", dir)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		// SIGINT is Postgres' fast shutdown; the process group holds runuser and postgres.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		err := exec.CommandContext(ctx, filepath.Join(pgBin, "pg_isready"), "-q", "-h", "127.0.0.1",
			"-p", strconv.Itoa(port)).Run()
		if err == nil {
			return p
		}
		select {
		case <-done:
			t.Fatalf("postgres exited during start:\n%s", log.String())
		case <-ctx.Done():
			t.Fatalf("postgres not ready after 30s:\n%s", log.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func appendFile(t testing.TB, path string, lines []string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, l := range lines {
		if _, err := fmt.Fprintln(f, l); err != nil {
			t.Fatal(err)
		}
	}
}
