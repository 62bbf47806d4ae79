package templates

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Ports off the defaults, so a wildcard listener elsewhere on the machine cannot collide.
const (
	testPGPort        = 25432
	testRedisPort     = 26379
	testMemcachedPort = 21211
	testAppPort       = 28080
	testPgBouncerPort = 26432
)

// requirement is a binary the real test needs and the Debian package that provides it.
type requirement struct{ path, pkg string }

var sandboxRequirements = []requirement{
	{"/usr/lib/postgresql/15/bin/postgres", "postgresql-15"},
	{"/usr/lib/postgresql/15/bin/initdb", "postgresql-15"},
	{"/usr/lib/postgresql/15/bin/pg_basebackup", "postgresql-15"},
	{"/usr/bin/psql", "postgresql-client-15"},
	{"/usr/bin/redis-server", "redis-server"},
	{"/usr/bin/redis-cli", "redis-tools"},
	{"/usr/bin/memcached", "memcached"},
	{"/usr/sbin/pgbouncer", "pgbouncer"},
	{"/usr/sbin/mkfs.xfs", "xfsprogs"},
	{"/usr/bin/unshare", "util-linux"},
	{"/usr/bin/nsenter", "util-linux"},
	{"/usr/bin/setpriv", "util-linux"},
	{"/usr/sbin/runuser", "util-linux"},
	{"/usr/sbin/losetup", "mount"},
}

// requireSandboxComponents skips the test when something is missing, or fails it with the
// exact install line when CI=true.
func requireSandboxComponents(t *testing.T) {
	t.Helper()
	ci := os.Getenv("CI") == "true"
	if os.Geteuid() != 0 {
		if ci {
			t.Fatal("the sandbox bootstrap test needs root (mount namespaces, loop devices)")
		}
		t.Skip("needs root")
	}
	var pkgs []string
	for _, r := range sandboxRequirements {
		if _, err := os.Stat(r.path); err != nil && !slices.Contains(pkgs, r.pkg) {
			pkgs = append(pkgs, r.pkg)
		}
	}
	if len(pkgs) > 0 {
		line := "apt-get install -y " + strings.Join(pkgs, " ")
		if ci {
			t.Fatalf("missing components: %s", line)
		}
		t.Skipf("missing components (%s)", line)
	}
}

// sandboxHostUnderTest is one sandbox-like host: a mount namespace held by a sleeping process,
// with private directories bound over the host paths and a loop-device volume.
type sandboxHostUnderTest struct {
	data   Data
	root   string // tmp dir whose subdirectories are bound over the host paths
	loop   string
	holder *exec.Cmd
}

func (h *sandboxHostUnderTest) path(p string) string { return filepath.Join(h.root, p) }

// nsenter runs a command inside the host's mount namespace.
func (h *sandboxHostUnderTest) nsenter(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(h.holder.Process.Pid), "-m", "--"}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// startSandboxHost builds the host; t.Cleanup tears it down by pid, mount and loop device.
func startSandboxHost(t *testing.T, d Data) *sandboxHostUnderTest {
	t.Helper()
	h := &sandboxHostUnderTest{data: d, root: t.TempDir()}
	binds := []string{"/var/lib/instagram", "/etc/instagram", "/var/log/instagram", "/opt/instagram"}
	if len(d.Devices) > 0 {
		img := filepath.Join(h.root, "volume.img")
		run(t, "truncate", "-s", "300M", img)
		h.loop = strings.TrimSpace(run(t, "losetup", "-f", "--show", img))
		t.Cleanup(func() {
			if out, err := exec.Command("losetup", "-d", h.loop).CombinedOutput(); err != nil {
				t.Logf("losetup -d %s: %v %s", h.loop, err, out)
			}
		})
		binds = append(binds, d.Mount)
	}
	var setup strings.Builder
	setup.WriteString("set -eu\nmount -t tmpfs -o mode=0755 tmpfs /run\n")
	for _, p := range binds {
		if err := os.MkdirAll(h.path(p), 0o755); err != nil {
			t.Fatal(err)
		}
		// The mount point must exist on the machine; an empty directory is all that is left.
		fmt.Fprintf(&setup, "mkdir -p %s\nmount --bind %s %s\n", shellQuote(p), shellQuote(h.path(p)), shellQuote(p))
	}
	if h.loop != "" {
		fmt.Fprintf(&setup, "mkdir -p %s\nln -s %s %s/%s\n", d.DeviceDir, h.loop, d.DeviceDir, d.Devices[0])
	}
	setup.WriteString("echo ready\nexec sleep infinity\n")

	h.holder = exec.Command("unshare", "--mount", "--propagation", "private", "--", "bash", "-c", setup.String())
	h.holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := h.holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	h.holder.Stderr = &stderr
	if err := h.holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.teardown(t) })
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("host %s namespace setup failed: %s", d.HostName, stderr.String())
	}
	return h
}

// teardown stops the services the bootstrap started (pids from their pidfiles), unmounts the
// volume and ends the namespace holder.
func (h *sandboxHostUnderTest) teardown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	runDir := fmt.Sprintf("/proc/%d/root/run/instagram", h.holder.Process.Pid)
	pidfiles, _ := filepath.Glob(filepath.Join(runDir, "*.pid"))
	for _, pf := range pidfiles {
		name := strings.TrimSuffix(filepath.Base(pf), ".pid")
		b, _ := os.ReadFile(pf)
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if out, err := h.nsenter(ctx, SupervisorPath, "stop", name).CombinedOutput(); err != nil {
			t.Logf("%s: instactl-svc stop %s: %v %s", h.data.HostName, name, err, out)
		}
		if pid > 0 && processAlive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		reap(pid)
	}
	if h.loop != "" {
		if out, err := h.nsenter(ctx, "umount", h.data.Mount).CombinedOutput(); err != nil {
			t.Logf("%s: umount %s: %v %s", h.data.HostName, h.data.Mount, err, out)
		}
	}
	_ = syscall.Kill(-h.holder.Process.Pid, syscall.SIGKILL)
	_ = h.holder.Wait()
}

// bootstrap runs the user-data inside the host the way the sandbox runner does: as a file, with
// a bare environment, output to the bootstrap log. Output goes through a pipe on purpose: a
// service that kept it open would hang an SSH session, and here fails the WaitDelay.
func (h *sandboxHostUnderTest) bootstrap(ctx context.Context) error {
	script, err := UserData(h.data.Role, h.data)
	if err != nil {
		return err
	}
	if err := os.WriteFile(h.path("/var/lib/instagram/bootstrap.sh"), []byte(script), 0o755); err != nil {
		return err
	}
	cmd := h.nsenter(ctx, "bash", "/var/lib/instagram/bootstrap.sh")
	cmd.Dir = "/"
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	err = cmd.Run()
	logf, ferr := os.OpenFile(h.path(LogFile), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if ferr == nil {
		_, _ = logf.Write(out.Bytes())
		_ = logf.Close()
	}
	if err != nil {
		failed, _ := os.ReadFile(h.path(FailedFile))
		return fmt.Errorf("bootstrap of %s: %w\nbootstrap.failed: %s\n%s", h.data.HostName, err, failed, tail(out.String(), 40))
	}
	if _, err := os.Stat(h.path(DoneFile)); err != nil {
		return fmt.Errorf("bootstrap of %s exited 0 without %s", h.data.HostName, DoneFile)
	}
	if _, err := os.Stat(h.path(FailedFile)); err == nil {
		return fmt.Errorf("bootstrap of %s succeeded but left %s", h.data.HostName, FailedFile)
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func bootstrapAll(t *testing.T, hosts []*sandboxHostUnderTest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(hosts))
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.bootstrap(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// TestSandboxBootstrap runs the sandbox user-data for real: a pg primary and replica, a redis
// master and replica and memcached, each in its own mount namespace with a loop-device XFS
// volume, all bootstrapped at once (the replicas wait for their primaries), then once more
// (idempotence), and checks that the data flows.
func TestSandboxBootstrap(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real servers")
	}
	requireSandboxComponents(t)
	becomeSubreaper(t)

	host := func(role string, index int, port int, primary bool, addr string, mount string) Data {
		d := sandboxHost(role, index, port, primary, 1)
		d.Stack = "templates-test"
		d.Address = addr
		d.Mount = mount
		d.PrimaryAddress = ""
		return d
	}
	pg0 := host(RolePostgres, 0, testPGPort, true, "127.0.77.1", "/var/lib/postgresql")
	pg1 := host(RolePostgres, 1, testPGPort, false, "127.0.77.2", "/var/lib/postgresql")
	pg1.PrimaryAddress = pg0.Address
	r0 := host(RoleRedis, 0, testRedisPort, true, "127.0.77.3", "/var/lib/redis")
	r1 := host(RoleRedis, 1, testRedisPort, false, "127.0.77.4", "/var/lib/redis")
	r1.PrimaryAddress = r0.Address
	mc := host(RoleMemcached, 0, testMemcachedPort, true, "127.0.77.5", "")
	mc.Devices = nil
	app := host(RoleApp, 0, testAppPort, true, "127.0.77.6", "")
	app.Devices = nil
	app.PgBouncerPort = testPgBouncerPort
	// pg-2 names a group that does not run here: PgBouncer starts without reaching it.
	app.PoolerDatabases = []PoolerDatabase{{Name: "pg-0", Host: pg0.Address, Port: testPGPort}, {Name: "pg-2", Host: "127.0.77.9", Port: testPGPort}}

	var hosts []*sandboxHostUnderTest
	for _, d := range []Data{pg0, pg1, r0, r1, mc, app} {
		hosts = append(hosts, startSandboxHost(t, d))
	}
	start := time.Now()
	bootstrapAll(t, hosts)
	t.Logf("first bootstrap of %d hosts: %s", len(hosts), time.Since(start).Round(time.Millisecond))

	checkPostgresReplication(t, pg0, pg1, "first")
	checkRedisReplication(t, r0, r1, "first")
	checkMemcached(t, mc)
	checkPgBouncer(t, app, pg0)
	checkDaemonized(t, hosts)

	// instactl owns the databases file once it exists (it repoints groups): a re-run keeps it.
	appHost := hosts[len(hosts)-1]
	repointed := "[databases]\npg-0 = host=" + pg1.Address + " port=" + strconv.Itoa(testPGPort) + " dbname=instagram\n"
	if err := os.WriteFile(appHost.path(PgBouncerDatabasesFile), []byte(repointed), 0o644); err != nil {
		t.Fatal(err)
	}

	start = time.Now()
	bootstrapAll(t, hosts)
	t.Logf("second (idempotent) bootstrap: %s", time.Since(start).Round(time.Millisecond))
	checkPostgresReplication(t, pg0, pg1, "second")
	checkRedisReplication(t, r0, r1, "second")
	if b, err := os.ReadFile(appHost.path(PgBouncerDatabasesFile)); err != nil || string(b) != repointed {
		t.Errorf("the second bootstrap rewrote %s: %q (%v)", PgBouncerDatabasesFile, b, err)
	}

	checkSupervisor(t, hosts[2])
}

func psql(t *testing.T, d Data, sql string) string {
	t.Helper()
	out, err := exec.Command("psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", d.Address, "-p", strconv.Itoa(d.Port),
		"-U", "postgres", "-d", "instagram", "-c", sql).CombinedOutput()
	if err != nil {
		t.Fatalf("psql %s on %s: %v\n%s", sql, d.HostName, err, out)
	}
	return strings.TrimSpace(string(out))
}

// eventually polls f until it returns "" or the deadline passes, then fails with f's last message.
func eventually(t *testing.T, limit time.Duration, f func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", limit, msg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func checkPostgresReplication(t *testing.T, primary, replica Data, round string) {
	t.Helper()
	eventually(t, 30*time.Second, func() string {
		got := psql(t, primary, "SELECT state FROM pg_stat_replication WHERE application_name = '"+replica.HostName+"'")
		if got != "streaming" {
			return "pg_stat_replication on the primary shows " + replica.HostName + " as " + strconv.Quote(got)
		}
		return ""
	})
	if got := psql(t, replica, "SELECT pg_is_in_recovery()"); got != "t" {
		t.Fatalf("replica pg_is_in_recovery() = %q", got)
	}
	if got := psql(t, primary, "SHOW data_checksums"); got != "on" {
		t.Errorf("primary data_checksums = %q", got)
	}
	if got := psql(t, primary, "SHOW wal_level"); got != "logical" {
		t.Errorf("primary wal_level = %q", got)
	}
	if got := psql(t, primary, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'instagram'"); got != "app" {
		t.Errorf("database instagram is owned by %q, want app", got)
	}
	psql(t, primary, "CREATE TABLE IF NOT EXISTS probe (round text PRIMARY KEY); INSERT INTO probe VALUES ('"+round+"')")
	eventually(t, 30*time.Second, func() string {
		out, _ := exec.Command("psql", "-X", "-At", "-h", replica.Address, "-p", strconv.Itoa(replica.Port), "-U", "postgres",
			"-d", "instagram", "-c", "SELECT round FROM probe WHERE round = '"+round+"'").CombinedOutput()
		if strings.TrimSpace(string(out)) != round {
			return "the row written on the primary is not on the replica: " + string(out)
		}
		return ""
	})
}

// checkPgBouncer: the app host's PgBouncer reaches group pg-0's primary as user app (database
// pg-0, as the app connects with INSTAGRAM_PGBOUNCER), and its admin console answers instactl.
func checkPgBouncer(t *testing.T, app, primary Data) {
	t.Helper()
	bouncer := func(user, db, sql string) (string, error) {
		out, err := exec.Command("psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", app.Address,
			"-p", strconv.Itoa(app.PgBouncerPort), "-U", user, "-d", db, "-c", sql).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	got, err := bouncer("app", "pg-0", "SELECT current_user || ' ' || host(inet_server_addr()) || ' ' || current_database()")
	if want := "app " + primary.Address + " instagram"; err != nil || got != want {
		t.Fatalf("through PgBouncer on %s: %q (%v), want %q", app.HostName, got, err, want)
	}
	got, err = bouncer(PgBouncerAdminUser, "pgbouncer", "SHOW DATABASES")
	if err != nil || !strings.Contains(got, "pg-0|"+primary.Address+"|"+strconv.Itoa(primary.Port)+"|instagram") {
		t.Fatalf("PgBouncer admin console SHOW DATABASES: %v\n%s", err, got)
	}
}

func redisCLI(d Data, args ...string) (string, error) {
	out, err := exec.Command("redis-cli", append([]string{"-h", d.Address, "-p", strconv.Itoa(d.Port)}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func checkRedisReplication(t *testing.T, master, replica Data, round string) {
	t.Helper()
	// min-replicas-to-write 1: the master takes writes once its replica has connected.
	eventually(t, 30*time.Second, func() string {
		if out, err := redisCLI(master, "SET", "probe", round); err != nil || out != "OK" {
			return fmt.Sprintf("SET on the master: %v %s", err, out)
		}
		return ""
	})
	eventually(t, 30*time.Second, func() string {
		out, err := redisCLI(replica, "GET", "probe")
		if err != nil || out != round {
			return fmt.Sprintf("replica GET probe = %q (%v), want %q", out, err, round)
		}
		return ""
	})
	info, _ := redisCLI(replica, "INFO", "replication")
	if !strings.Contains(info, "role:slave") || !strings.Contains(info, "master_link_status:up") {
		t.Errorf("replica INFO replication:\n%s", info)
	}
}

func checkMemcached(t *testing.T, d Data) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(d.Address, strconv.Itoa(d.Port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "set probe 0 0 5\r\nhello\r\nget probe\r\n")
	r := bufio.NewReader(conn)
	var got []string
	for len(got) < 4 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("memcached: %v after %q", err, got)
		}
		got = append(got, strings.TrimSpace(line))
	}
	if want := []string{"STORED", "VALUE probe 0 5", "hello", "END"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("memcached answered %q, want %q", got, want)
	}
}

// checkDaemonized checks that every service leads its own session (it outlives the session
// that started it) and runs as the intended user.
func checkDaemonized(t *testing.T, hosts []*sandboxHostUnderTest) {
	t.Helper()
	for _, h := range hosts {
		for _, s := range Services(h.data) {
			if !s.Start {
				continue // the app waits for its first deploy
			}
			pid := servicePid(t, h, s.Name)
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				t.Fatal(err)
			}
			fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
			if sid := fields[3]; sid != strconv.Itoa(pid) {
				t.Errorf("%s %s: pid %d is in session %s, want its own", h.data.HostName, s.Name, pid, sid)
			}
			status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			wantUID := "0"
			if s.User == "postgres" {
				wantUID = strings.TrimSpace(run(t, "id", "-u", "postgres"))
			}
			if !strings.Contains(string(status), "\nUid:\t"+wantUID+"\t") {
				t.Errorf("%s %s: pid %d does not run as uid %s", h.data.HostName, s.Name, pid, wantUID)
			}
		}
	}
}

func servicePid(t *testing.T, h *sandboxHostUnderTest, name string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/run/instagram/%s.pid", h.holder.Process.Pid, name))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// checkSupervisor drives instactl-svc on a redis host the way deploy will.
func checkSupervisor(t *testing.T, h *sandboxHostUnderTest) {
	t.Helper()
	ctx := context.Background()
	svc := func(action string) (string, int) {
		cmd := h.nsenter(ctx, serviceCommand(ServiceManagerSandbox, action, "redis")...)
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	before := servicePid(t, h, "redis")
	if out, code := svc("restart"); code != 0 {
		t.Fatalf("restart: exit %d: %s", code, out)
	}
	after := servicePid(t, h, "redis")
	if after == before || processAlive(before) {
		t.Fatalf("restart left pid %d (was %d)", after, before)
	}
	reap(before)
	if out, code := svc("status"); code != 0 {
		t.Fatalf("status after restart: exit %d: %s", code, out)
	}
	if _, err := redisCLI(h.data, "PING"); err != nil {
		t.Fatalf("redis after restart: %v", err)
	}
	if out, code := svc("stop"); code != 0 {
		t.Fatalf("stop: exit %d: %s", code, out)
	}
	reap(after)
	if out, code := svc("status"); code != 3 {
		t.Fatalf("status after stop: exit %d, want 3: %s", code, out)
	}
	if out, code := svc("stop"); code != 0 {
		t.Fatalf("second stop: exit %d: %s", code, out)
	}
	if out, code := svc("start"); code != 0 {
		t.Fatalf("start: exit %d: %s", code, out)
	}
	if out, code := svc("start"); code != 0 || !strings.Contains(out, "is running") {
		t.Fatalf("second start: exit %d: %s", code, out)
	}
}

const prSetChildSubreaper = 36

// becomeSubreaper makes the test the parent of the services it starts: they daemonize and are
// orphaned, and the test reaps them at teardown instead of leaving zombies to a machine init
// that may never reap them.
func becomeSubreaper(t *testing.T) {
	t.Helper()
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", errno)
	}
	t.Cleanup(func() { syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0) })
}

// reap collects pid's exit status if pid is a stopped child of the test (a daemonized service
// re-parented to it); it waits at most a few seconds.
func reap(pid int) {
	if pid <= 0 {
		return
	}
	for range 50 {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if got == pid || err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// processAlive reports whether pid exists and is not a zombie (the machine's init may be slow
// to reap daemons whose parent exited).
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

// TestSandboxBootstrapFailure checks the failure contract for real: a device that never
// appears (the script's own check) and a service that cannot start (the ERR trap) each leave
// bootstrap.failed naming the line and no bootstrap.done; re-running after the cause is gone
// succeeds.
func TestSandboxBootstrapFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real servers")
	}
	requireSandboxComponents(t)
	becomeSubreaper(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("device never appears", func(t *testing.T) {
		d := sandboxHost("worker", 0, 0, true, 1)
		d.Address, d.DeviceTimeout = "127.0.77.6", 2
		h := startSandboxHost(t, d)
		h.data.DeviceDir = "/run/instactl/missing"
		if err := h.bootstrap(ctx); err == nil {
			t.Fatal("bootstrap succeeded without its device")
		}
		failed, _ := os.ReadFile(h.path(FailedFile))
		if !strings.Contains(string(failed), "device /run/instactl/missing/sdf did not appear within 2s") {
			t.Errorf("bootstrap.failed = %q", failed)
		}
		if _, err := os.Stat(h.path(DoneFile)); err == nil {
			t.Error("bootstrap.done written after a failure")
		}
	})

	t.Run("service cannot start, then can", func(t *testing.T) {
		d := sandboxHost(RoleMemcached, 0, testMemcachedPort, true, 0)
		d.Address = "127.0.77.7"
		h := startSandboxHost(t, d)
		busy, err := net.Listen("tcp", net.JoinHostPort(d.Address, strconv.Itoa(d.Port)))
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		if err := h.bootstrap(ctx); err == nil {
			t.Fatal("bootstrap succeeded with memcached's port taken")
		}
		failed, _ := os.ReadFile(h.path(FailedFile))
		if !regexp.MustCompile(`^exit 1 at line [0-9]+: "\$SVC" start memcached\n$`).Match(failed) {
			t.Errorf("bootstrap.failed = %q", failed)
		}
		busy.Close()
		if err := h.bootstrap(ctx); err != nil {
			t.Fatalf("re-run after the port was freed: %v", err)
		}
		checkMemcached(t, h.data)
	})
}
