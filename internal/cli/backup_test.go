package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/backup"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
)

// The backup family's sandbox: 127.0.80.x, LB 18180, moto 15080.
const backupTestStack = `name: bk
provider: sandbox
network:
  address_base: 127.0.80.1
roles:
  app: {count: 1}
  pg: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
  redis: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/redis}}
  memcached: {count: 1}
backup:
  freeze_budget: 20s
sandbox:
  dir: %s
  lb_port: 18180
  moto_port: 15080
`

func TestBackupCreateOptionsCaptured(t *testing.T) {
	var got *BackupCreateOptions
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, new(string))
	cmd := NewCmdBackupCreate(f, func() Output { return OutputText }, func(o *BackupCreateOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"--target", "pg", "--lock-wait", "90s", "--allow-crash-consistent", "-v", "--metrics-file", "-"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	want := BackupCreateOptions{Target: "pg", LockWait: 90 * time.Second, AllowCrashConsistent: true, Verbose: true, MetricsFile: "-"}
	if got == nil || *got != want {
		t.Fatalf("options %+v, want %+v", got, want)
	}
}

func TestBackupUsageErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stack.yaml")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"backup", "create", "--target", "mysql"}, "--target must be pg, redis or all"},
		{[]string{"backup", "create", "--lock-wait", "-5s"}, "--lock-wait"},
		{[]string{"backup", "create", "--lock-wait", "soon"}, "lock-wait"},
		{[]string{"backup", "create", "extra"}, "takes no arguments"},
		{[]string{"backup", "list", "--target", "all"}, "--target must be pg or redis"},
		{[]string{"backup", "restore", "--to", "pg-0"}, "exactly one SET"},
		{[]string{"backup", "restore", "some-set"}, "--to HOST is required"},
		{[]string{"backup", "restore", "../etc", "--to", "pg-0"}, "not a backup set id"},
		{[]string{"backup", "restore", "s1", "--to", "pg-0", "--mount", "relative"}, "--mount must be an absolute"},
		{[]string{"backup", "restore", "s1", "--to", "pg-0", "--port", "70000"}, "--port"},
		{[]string{"backup", "verify", "a", "b"}, "at most one SET"},
		{[]string{"backup", "verify", "--target", "memcached"}, "--target must be pg or redis"},
		{[]string{"backup", "prune", "--force"}, "unknown flag"},
	} {
		_, stderr, code := run(t, append([]string{"--stack", path}, tc.args...)...)
		if code != ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("a usage error read or wrote the stack file")
	}
}

func TestBackupCreateExitCode(t *testing.T) {
	unsafe := &backup.UnsafeError{Host: "pg-1", Target: "pg", Reason: "lag"}
	locked := &backup.LockedError{Host: "pg-1"}
	partial := &backup.PartialError{Set: "s", Reason: "x"}
	ok := &backup.CreateResult{Sets: []*backup.Manifest{{State: backup.StateComplete}}}
	none := &backup.CreateResult{}
	for _, tc := range []struct {
		name string
		res  *backup.CreateResult
		err  error
		want int
	}{
		{"ok", ok, nil, ExitOK},
		{"unsafe", none, unsafe, ExitUnsafe},
		{"unsafe wrapped", none, fmt.Errorf("x: %w", unsafe), ExitUnsafe},
		{"locked beats unsafe", none, errors.Join(unsafe, locked), ExitLocked},
		{"partial beats locked", none, errors.Join(locked, partial), ExitPartial},
		{"failure", none, errors.New("ssh: boom"), ExitError},
		{"failure beside a usable set", ok, errors.New("ssh: boom"), ExitPartial},
		{"unsafe beside a usable set", ok, unsafe, ExitUnsafe},
	} {
		if got := backupCreateExitCode(tc.res, tc.err); got != tc.want {
			t.Errorf("%s: exit %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestBackupSandbox drives every backup command against a real sandbox: rows written to the
// Postgres primary come back from a set restored onto another host, a drill marks a set
// verified, an unsafe replica exits 3 and creates nothing, a held lock exits 4, of two
// overlapping runs one backs up everything and the other nothing, and prune deletes nothing
// without --yes.
func TestBackupSandbox(t *testing.T) {
	backupRequireSandbox(t)
	start := time.Now()
	dir := t.TempDir()
	path := filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(backupTestStack, filepath.Join(dir, "sandbox"))), 0o644); err != nil {
		t.Fatal(err)
	}
	st := sandboxUp(t, path)
	t.Logf("sandbox up in %s", time.Since(start).Round(time.Second))
	bk := func(args ...string) (string, string, int) {
		t.Helper()
		return run(t, append([]string{"--stack", path, "backup"}, args...)...)
	}
	f := NewFactory(&IOStreams{}, &path)
	pool, err := f.SSH(false)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	sh := func(host, script string) (string, error) { return backupSh(pool, st, host, script) }
	must := func(host, script string) string {
		t.Helper()
		out, err := sh(host, script)
		if err != nil {
			t.Fatalf("%s: %s: %v", host, script, err)
		}
		return out
	}
	psql := func(host, db, sql string) string {
		return "runuser -u postgres -- psql -X -At -v ON_ERROR_STOP=1 -h /run/postgresql -p 5432 -d " + db + " -c " + remote.Quote(sql)
	}

	// Rows on the primary, streamed to the replica; keys on the Redis master.
	must("pg-0", psql("pg-0", "instagram", "CREATE TABLE backup_probe (id int PRIMARY KEY, v text); INSERT INTO backup_probe SELECT g, 'row ' || g FROM generate_series(1, 500) g"))
	waitFor(t, 30*time.Second, "rows on the pg replica", func() bool {
		out, _ := sh("pg-1", psql("pg-1", "instagram", "SELECT count(*) FROM backup_probe"))
		return out == "500"
	})
	must("redis-0", "for i in $(seq 1 20); do echo \"SET probe-$i v$i\"; done | redis-cli -h "+backupAddr(t, st, "redis-0")+" >/dev/null")
	waitFor(t, 30*time.Second, "keys on the redis replica", func() bool {
		out, _ := sh("redis-1", "redis-cli -h "+backupAddr(t, st, "redis-1")+" GET probe-20")
		return out == "v20"
	})

	// create: exit 0, one summary line and no chatter (stderr is not a terminal), metrics.
	stdout, stderr, code := bk("create", "--target", "all")
	if code != 0 || strings.Count(stdout, "\n") != 1 || !strings.HasPrefix(stdout, "backup: 2 of 2 sets usable") || stderr != "" {
		t.Fatalf("create: exit %d\nstdout %q\nstderr %q", code, stdout, stderr)
	}
	prom, err := os.ReadFile(filepath.Join(dir, "sandbox", "state", "backup.prom"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`instactl_backup_last_success_timestamp_seconds{stack="bk",target="pg",host="pg-1"}`,
		`instactl_backup_freeze_seconds{stack="bk",target="redis",host="redis-1"}`, `instactl_backup_last_run_exit_code{stack="bk"} 0`} {
		if !strings.Contains(string(prom), want) {
			t.Errorf("backup.prom lacks %s:\n%s", want, prom)
		}
	}

	// list: a complete set for pg and for redis.
	sets := backupList(t, bk)
	pgSet, redisSet := backupNewest(sets, "pg"), backupNewest(sets, "redis")
	if len(sets) != 2 || pgSet.State != backup.StateComplete || redisSet.State != backup.StateComplete {
		t.Fatalf("list after create: %+v", sets)
	}
	stdout, _, _ = bk("list")
	t.Logf("list:\n%s", stdout)
	if !strings.Contains(stdout, "TIME") || !strings.Contains(stdout, pgSet.ID) || !strings.Contains(stdout, "complete") {
		t.Errorf("list text:\n%s", stdout)
	}

	// verify (default scratch): the drill passes, the scratch host is gone, list says verified.
	stdout, stderr, code = bk("verify", pgSet.ID)
	if code != 0 || !strings.Contains(stdout, "PASSED") || !strings.Contains(stdout, "instagram.public.backup_probe 500") {
		t.Fatalf("verify: exit %d\n%s\n%s", code, stdout, stderr)
	}
	t.Logf("verify:\n%s", stdout)
	if res, err := backupDescribe(t, f, st); err != nil {
		t.Fatal(err)
	} else {
		for _, in := range res {
			if in == "scratch" {
				t.Error("the scratch host was left running after the drill")
			}
		}
	}
	if s := backupNewest(backupList(t, bk), "pg"); s.ID != pgSet.ID || s.State != backup.StateVerified {
		t.Fatalf("after verify: %+v, want %s verified", s, pgSet.ID)
	}

	// restore onto another host: the rows are there.
	stdout, stderr, code = bk("restore", pgSet.ID, "--to", "memcached-0")
	if code != 0 || !strings.Contains(stdout, "Restored "+pgSet.ID+" onto bk-memcached-0") {
		t.Fatalf("restore: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if got := must("memcached-0", psql("memcached-0", "instagram", "SELECT count(*), max(v) FILTER (WHERE id = 500) FROM backup_probe")); got != "500|row 500" {
		t.Fatalf("restored copy on memcached-0 answers %q, want 500|row 500", got)
	}
	if _, stderr, code = bk("restore", "no-such-set", "--to", "memcached-0"); code != ExitUsage || !strings.Contains(stderr, "does not exist") {
		t.Errorf("restore of an unknown set: exit %d, %s", code, stderr)
	}

	// A second redis set in the same hour: the first one falls outside retention.
	stdout, stderr, code = bk("create", "--target", "redis", "-o", "json")
	var created backup.CreateResult
	if err := json.Unmarshal([]byte(stdout), &created); code != 0 || err != nil || len(created.Sets) != 1 ||
		created.Sets[0].Redis == nil || created.Sets[0].Redis.Keys != 20 || created.Sets[0].State != backup.StateComplete {
		t.Fatalf("second redis create -o json: exit %d, %v\n%s\n%s", code, err, stdout, stderr)
	}
	before := backupList(t, bk)
	stdout, _, code = bk("prune")
	if code != 0 || !strings.Contains(stdout, "delete") || !strings.Contains(stdout, redisSet.ID) ||
		!strings.Contains(stdout, "outside retention") || !strings.Contains(stdout, "newest verified set") || !strings.Contains(stdout, "Nothing deleted") {
		t.Fatalf("prune plan: exit %d\n%s", code, stdout)
	}
	t.Logf("prune:\n%s", stdout)
	if after := backupList(t, bk); len(after) != len(before) {
		t.Fatalf("prune without --yes changed the sets: %d -> %d", len(before), len(after))
	}
	stdout, stderr, code = bk("prune", "--yes")
	if code != 0 || !strings.Contains(stdout, "deleted "+redisSet.ID) || !strings.Contains(stdout, "confirmed gone") {
		t.Fatalf("prune --yes: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if after := backupList(t, bk); len(after) != len(before)-1 || backupHas(after, redisSet.ID) || !backupHas(after, pgSet.ID) {
		t.Fatalf("after prune --yes: %+v", after)
	}

	// Two overlapping cron runs: one backs up every replica and exits 0, the other exits 4
	// having made nothing (each takes every lock before any host work).
	n0 := len(backupList(t, bk))
	type outcome struct {
		stdout, stderr string
		code           int
	}
	runs := make(chan outcome, 2)
	for i := 0; i < 2; i++ {
		go func() {
			o, e, c := run(t, "--stack", path, "backup", "create", "--target", "all")
			runs <- outcome{o, e, c}
		}()
	}
	won, lost := <-runs, <-runs
	if won.code != 0 {
		won, lost = lost, won
	}
	if won.code != 0 || !strings.HasPrefix(won.stdout, "backup: 2 of 2 sets usable") ||
		lost.code != ExitLocked || lost.stdout != "" || !strings.Contains(lost.stderr, "is held by") || strings.Contains(lost.stderr, "skipped") {
		t.Fatalf("overlapping runs: exits %d and %d\n%s%s\n%s%s", won.code, lost.code, won.stdout, won.stderr, lost.stdout, lost.stderr)
	}
	if got := len(backupList(t, bk)); got != n0+2 {
		t.Fatalf("overlapping runs made %d sets, want the winner's 2", got-n0)
	}

	// A held lock: exit 4 naming the holder.
	release := backupHoldLock(t, pool, st, "pg-1")
	_, stderr, code = bk("create", "--target", "pg")
	release()
	if code != ExitLocked || !strings.Contains(stderr, "cli-test holder") {
		t.Fatalf("create under a held lock: exit %d, %q; want 4 naming the holder", code, stderr)
	}

	// An unsafe replica: its WAL receiver cannot reach the primary. Exit 3, the reason, no set.
	n := len(backupList(t, bk))
	must("pg-1", psql("pg-1", "postgres", "ALTER SYSTEM SET primary_conninfo = 'host=127.0.80.1 port=1 user=replicator'")+
		" && "+psql("pg-1", "postgres", "SELECT pg_reload_conf()"))
	waitFor(t, 30*time.Second, "the replica stops streaming", func() bool {
		out, _ := sh("pg-1", psql("pg-1", "postgres", "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'"))
		return out == "0"
	})
	stdout, stderr, code = bk("create", "--target", "pg")
	if code != ExitUnsafe || !strings.Contains(stderr, "skipped as unsafe") || !strings.Contains(stderr, "not streaming") || stdout != "" {
		t.Fatalf("create from a non-streaming replica: exit %d\nstdout %q\nstderr %q", code, stdout, stderr)
	}
	if got := len(backupList(t, bk)); got != n {
		t.Fatalf("an unsafe run changed the number of sets: %d -> %d", n, got)
	}
	prom, _ = os.ReadFile(filepath.Join(dir, "sandbox", "state", "backup.prom"))
	if !strings.Contains(string(prom), `instactl_backup_last_run_exit_code{stack="bk"} 3`) ||
		!strings.Contains(string(prom), `instactl_backup_last_success_timestamp_seconds{stack="bk",target="pg"`) {
		t.Errorf("metrics after an unsafe run:\n%s", prom)
	}
	t.Logf("backup family test body done in %s", time.Since(start).Round(time.Second))
}

// backupRequireSandbox is requireSandbox plus what backups and drills run on the hosts.
func backupRequireSandbox(t *testing.T) {
	t.Helper()
	requireSandbox(t)
	for bin, pkg := range map[string]string{"xfs_freeze": "xfsprogs", "flock": "util-linux",
		"redis-check-rdb": "redis-tools", "psql": "postgresql-client-15",
		"/usr/lib/postgresql/15/bin/pg_amcheck": "postgresql-15"} {
		testenv.Require(t, bin, pkg)
	}
}

func backupAddr(t *testing.T, st *stack.Stack, host string) string {
	t.Helper()
	ref, err := parseHostArg(host)
	if err != nil {
		t.Fatal(err)
	}
	a, err := st.Address(ref)
	if err != nil {
		t.Fatal(err)
	}
	return a.String()
}

func backupTarget(st *stack.Stack, host string) (remote.Target, error) {
	ref, err := parseHostArg(host)
	if err != nil {
		return remote.Target{}, err
	}
	a, err := st.Address(ref)
	if err != nil {
		return remote.Target{}, err
	}
	return remote.Target{Name: host, Address: a.String(), Port: st.SSH.Port, User: st.SSH.User}, nil
}

// backupSh runs a script on a host and returns its trimmed stdout.
func backupSh(pool *remote.Pool, st *stack.Stack, host, script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tgt, err := backupTarget(st, host)
	if err != nil {
		return "", err
	}
	c, err := pool.Get(ctx, tgt)
	if err != nil {
		return "", err
	}
	res, err := c.Run(ctx, remote.Script(script), nil)
	if err != nil {
		return "", err
	}
	if err := res.Err(); err != nil {
		return "", fmt.Errorf("%w: %s", err, res.Stderr)
	}
	return strings.TrimSpace(string(res.Stdout)), nil
}

// backupHoldLock holds host's backup lock the way a running backup does (flock held by a
// process living as long as its SSH session) until the returned func is called.
func backupHoldLock(t *testing.T, pool *remote.Pool, st *stack.Stack, host string) func() {
	t.Helper()
	tgt, err := backupTarget(st, host)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pool.Get(context.Background(), tgt)
	if err != nil {
		t.Fatal(err)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	script := "mkdir -p " + backup.HostStateDir + " && flock -n " + backup.LockFile +
		` sh -c 'echo "cli-test holder" >` + backup.LockHolderFile + `; echo acquired; exec cat >/dev/null'`
	go func() {
		res, err := c.RunStream(context.Background(), remote.Script(script), inR, outW, io.Discard)
		if err == nil {
			err = res.Err()
		}
		outW.Close()
		done <- err
	}()
	line, _ := bufio.NewReader(outR).ReadString('\n')
	if strings.TrimSpace(line) != "acquired" {
		inW.Close()
		t.Fatalf("hold the lock on %s: %q, %v", host, line, <-done)
	}
	go func() { _, _ = io.Copy(io.Discard, outR) }()
	return func() {
		inW.Close()
		if err := <-done; err != nil {
			t.Errorf("lock holder on %s: %v", host, err)
		}
	}
}

func backupList(t *testing.T, bk func(...string) (string, string, int)) []backup.Set {
	t.Helper()
	stdout, stderr, code := bk("list", "-o", "json")
	var sets []backup.Set
	if code != 0 {
		t.Fatalf("list: exit %d: %s", code, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), &sets); err != nil {
		t.Fatalf("list json: %v\n%s", err, stdout)
	}
	return sets
}

func backupNewest(sets []backup.Set, target string) backup.Set {
	for _, s := range sets {
		if s.Target == target {
			return s
		}
	}
	return backup.Set{}
}

func backupHas(sets []backup.Set, id string) bool {
	for _, s := range sets {
		if s.ID == id {
			return true
		}
	}
	return false
}

// backupDescribe returns the roles of the stack's live instances.
func backupDescribe(t *testing.T, f *Factory, st *stack.Stack) ([]string, error) {
	t.Helper()
	p, err := f.Provider(context.Background())
	if err != nil {
		return nil, err
	}
	res, err := p.Describe(context.Background(), st.Name)
	if err != nil {
		return nil, err
	}
	var roles []string
	for _, in := range res.Instances {
		roles = append(roles, in.Role)
	}
	return roles, nil
}
