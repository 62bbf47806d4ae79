package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/internal/loadgen"
	"github.com/instactl/instactl/internal/testenv"
)

// failoverStackYAML is the smallest stack with everything a failover touches: two app hosts
// (each with its PgBouncer), one Postgres group, the Redis pair.
const failoverStackYAML = `name: fotest
provider: sandbox
network:
  address_base: 127.0.97.1
roles:
  app: {count: 2}
  pg: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
  redis: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/redis}}
  memcached: {count: 1}
deploy:
  batches: [1, 100%%]
shards:
  logical: 8
sandbox:
  dir: %s
  lb_port: 18197
  moto_port: 15097
`

// writeMix is write-only, so the load is at least its rate in writes per second.
var writeMix = loadgen.Mix{SignUp: 15, Follow: 35, Like: 35, Comment: 15}

// TestFailoverSandbox is issue 15's proof on the real sandbox: under the load generator through
// the load balancer, a Postgres switchover and back and a Redis switchover and back fail no
// request and lose no acknowledged write; bad input changes nothing; a standby whose link is
// cut makes the switchover roll back with the old primary serving; a primary killed like a
// power cut is failed over, stays fenced when its host starts again, rejoins, and a later
// switchover back works. The same for Redis.
func TestFailoverSandbox(t *testing.T) {
	requireSandbox(t)
	testenv.Require(t, "/usr/sbin/pgbouncer", "pgbouncer")
	dir := t.TempDir()
	path := filepath.Join(dir, "stack.yaml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(failoverStackYAML, filepath.Join(dir, "sandbox"))), 0o644); err != nil {
		t.Fatal(err)
	}
	st := sandboxUp(t, path)
	ctx := context.Background()
	cli := func(args ...string) (string, string, int) {
		t.Helper()
		start := time.Now()
		stdout, stderr, code := run(t, append([]string{"--stack", path}, args...)...)
		t.Logf("instactl %s: exit %d in %s\n%s%s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond), stdout, stderr)
		return stdout, stderr, code
	}
	must := func(args ...string) string {
		t.Helper()
		stdout, stderr, code := cli(args...)
		if code != 0 {
			t.Fatalf("instactl %s: exit %d\n%s\n%s", strings.Join(args, " "), code, stdout, stderr)
		}
		return stdout
	}
	op := func(args ...string) FailoverView {
		t.Helper()
		var v FailoverView
		out := must(append(args, "-o", "json")...)
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("%s -o json: %v\n%s", strings.Join(args, " "), err, out)
		}
		return v
	}
	addr := func(host string) string {
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
	pgQuery := func(host, sql string) (string, error) {
		c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s:5432/postgres?sslmode=disable&connect_timeout=5", addr(host)))
		if err != nil {
			return "", err
		}
		defer c.Close(ctx)
		var s string
		err = c.QueryRow(ctx, sql).Scan(&s)
		return s, err
	}
	// inRecovery asks host whether it is a standby, waiting while it does not accept
	// connections yet (a standby that streams may still be reaching consistency).
	inRecovery := func(host string) string {
		t.Helper()
		var s string
		var err error
		waitFor(t, 60*time.Second, host+" answers", func() bool {
			s, err = pgQuery(host, "SELECT pg_is_in_recovery()::text")
			return err == nil
		})
		return s
	}

	must("shard", "init")
	bin := filepath.Join(dir, "instagram-app")
	if _, err := deploy.Build(ctx, deploy.BuildOptions{ModuleDir: "../..", Version: "v1", Output: bin}); err != nil {
		t.Fatal(err)
	}
	must("deploy", "--artifact", bin, "--version", "v1")

	// Bad input: exit 2 and nothing changed.
	for _, bad := range [][]string{
		{"switchover", "pg-9"},
		{"switchover", "pg-1"}, // a host, not a group
		{"failover", "memcached-0"},
		{"switchover", "pg-0", "--from", "pg-1"}, // pg-1 is not the primary
		{"switchover", "pg-0", "--to", "pg-0"},   // the primary is no standby
		{"rejoin", "app-0"},
	} {
		if _, _, code := cli(bad...); code != ExitUsage {
			t.Fatalf("instactl %s: exit %d, want %d", strings.Join(bad, " "), code, ExitUsage)
		}
	}
	if inRecovery("pg-0") != "false" || inRecovery("pg-1") != "true" {
		t.Fatal("bad input changed the roles of pg-0/pg-1")
	}

	// Load through the load balancer while the groups switch over and back.
	lb := fmt.Sprintf("http://127.0.0.1:%d", st.Sandbox.LBPort)
	record := filepath.Join(dir, "writes.jsonl")
	loadCtx, stopLoad := context.WithCancel(ctx)
	type loadOut struct {
		res loadgen.Result
		err error
	}
	loadDone := make(chan loadOut, 1)
	go func() {
		res, err := loadgen.Run(loadCtx, loadgen.Config{BaseURL: lb, Rate: 220, Duration: time.Hour, Mix: writeMix,
			RecordFile: record, WaitForSlot: true, Timeout: 30 * time.Second})
		loadDone <- loadOut{res, err}
	}()
	time.Sleep(3 * time.Second) // some writes before the first switchover; not a timing assertion

	v := op("switchover", "pg-0")
	if v.OldPrimary != "pg-0" || v.NewPrimary != "pg-1" || v.NewEpoch != v.OldEpoch+1 || v.ProbeFailed != 0 || v.WriteBlock <= 0 || v.ProbeBlock <= 0 {
		t.Fatalf("switchover pg-0: %+v", v)
	}
	if inRecovery("pg-1") != "false" || inRecovery("pg-0") != "true" {
		t.Fatal("after the switchover pg-1 must be primary and pg-0 its standby")
	}
	if out := must("status"); !strings.Contains(out, "pg-0") {
		t.Fatalf("status after switchover:\n%s", out)
	}
	time.Sleep(2 * time.Second)
	if v := op("switchover", "pg-0"); v.NewPrimary != "pg-0" || v.ProbeFailed != 0 {
		t.Fatalf("switchover back: %+v", v)
	}
	time.Sleep(2 * time.Second)
	if v := op("switchover", "redis-0"); v.OldPrimary != "redis-0" || v.NewPrimary != "redis-1" {
		t.Fatalf("switchover redis-0: %+v", v)
	}
	time.Sleep(2 * time.Second)
	if v := op("switchover", "redis-0"); v.NewPrimary != "redis-0" {
		t.Fatalf("switchover redis-0 back: %+v", v)
	}
	time.Sleep(2 * time.Second)
	stopLoad()
	lo := <-loadDone
	if lo.err != nil {
		t.Fatal(lo.err)
	}
	t.Logf("load: %d requests, %d errors, %d acknowledged writes, %d not sent", lo.res.Requests, lo.res.Errors, lo.res.Writes, lo.res.Dropped)
	if lo.res.Errors != 0 || lo.res.Writes == 0 {
		t.Fatalf("switchovers under load: %d failed requests (want 0), %d acknowledged writes; first errors: %v", lo.res.Errors, lo.res.Writes, lo.res.FirstErrors)
	}
	vr, err := loadgen.Verify(ctx, lb, record)
	if err != nil {
		t.Fatal(err)
	}
	if !vr.Clean() || vr.Checked != lo.res.Writes {
		t.Fatalf("acknowledged writes after the switchovers: %+v (want %d checked, all ok)", vr, lo.res.Writes)
	}

	// A standby that stops receiving: the switchover rolls back, the old primary serves.
	pidS, err := pgQuery("pg-1", "SELECT pid::text FROM pg_stat_wal_receiver")
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	fmt.Sscan(pidS, &pid)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := cli("switchover", "pg-0")
	_ = syscall.Kill(pid, syscall.SIGCONT)
	if code != ExitError || !strings.Contains(stdout, "Rolled back") {
		t.Fatalf("switchover with a stopped walreceiver: exit %d, want %d and a rollback\n%s%s", code, ExitError, stdout, stderr)
	}
	if inRecovery("pg-0") != "false" {
		t.Fatal("after the rollback pg-0 must still be the primary")
	}
	if _, err := pgQuery("pg-0", "SELECT txid_current()::text"); err != nil {
		t.Fatalf("pg-0 does not take writes after the rollback: %v", err)
	}
	waitFor(t, 60*time.Second, "pg-1 streams again", func() bool {
		s, err := pgQuery("pg-0", "SELECT count(*)::text FROM pg_stat_replication WHERE application_name = 'pg-1' AND state = 'streaming'")
		return err == nil && s == "1"
	})

	// Power cut of the primary, then failover: writes are accepted again through the pooler.
	must("host", "stop", "pg-0", "--force")
	v = op("failover", "pg-0")
	if v.NewPrimary != "pg-1" || v.NewEpoch <= v.OldEpoch {
		t.Fatalf("failover pg-0: %+v", v)
	}
	probe := fmt.Sprintf("postgres://app@%s:6432/pg-0?sslmode=disable", addr("app-0"))
	pc, err := pgx.Connect(ctx, probe)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Exec(ctx, "SELECT txid_current()", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("a write through app-0's pooler after the failover: %v", err)
	}
	pc.Close(ctx)
	// The old primary's host boots fenced: its postgres does not start as a primary.
	must("host", "start", "pg-0")
	if s, err := pgQuery("pg-0", "SELECT txid_current()::text"); err == nil {
		t.Fatalf("pg-0 came back and took a write (%s): two primaries", s)
	}
	must("rejoin", "pg-0")
	if inRecovery("pg-0") != "true" {
		t.Fatal("pg-0 after rejoin must be a standby")
	}
	// rejoin returns once pg-0 follows; on a loaded machine it may still be catching up, and a
	// switchover to a standby that is not streaming yet is refused (exit 3), as it should be.
	waitFor(t, 60*time.Second, "pg-0 streams from pg-1 and has replayed nearly all pg-1 sent", func() bool {
		s, err := pgQuery("pg-1", "SELECT count(*)::text FROM pg_stat_replication WHERE application_name = 'pg-0' AND state = 'streaming' AND pg_wal_lsn_diff(sent_lsn, replay_lsn) < 1048576")
		return err == nil && s == "1"
	})
	if v := op("switchover", "pg-0", "--to", "pg-0"); v.NewPrimary != "pg-0" {
		t.Fatalf("switchover back after the rejoin: %+v", v)
	}
	// The control database lives in pg-0's group: lose the primary it has after a switchover,
	// and the failover has only the topology instactl kept from its last read to go on (the
	// stack file names pg-0, which is the standby now).
	if v := op("switchover", "pg-0"); v.NewPrimary != "pg-1" {
		t.Fatalf("switchover to pg-1: %+v", v)
	}
	must("host", "stop", "pg-1", "--force")
	if v := op("failover", "pg-0"); v.OldPrimary != "pg-1" || v.NewPrimary != "pg-0" {
		t.Fatalf("failover of the control group from pg-1: %+v", v)
	}
	must("host", "start", "pg-1")
	must("rejoin", "pg-1")
	if inRecovery("pg-1") != "true" || inRecovery("pg-0") != "false" {
		t.Fatal("after the control group's failover and rejoin pg-0 must be primary and pg-1 its standby")
	}

	// Redis: power cut of the master, failover, fenced on return, rejoin.
	must("host", "stop", "redis-0", "--force")
	if v := op("failover", "redis-0"); v.NewPrimary != "redis-1" {
		t.Fatalf("failover redis-0: %+v", v)
	}
	r1 := redis.NewClient(&redis.Options{Addr: addr("redis-1") + ":6379"})
	defer r1.Close()
	if err := r1.Set(ctx, "fotest:after-failover", "1", 0).Err(); err != nil {
		t.Fatalf("redis-1 takes no write after the failover: %v", err)
	}
	must("host", "start", "redis-0")
	r0 := redis.NewClient(&redis.Options{Addr: addr("redis-0") + ":6379"})
	defer r0.Close()
	waitFor(t, 60*time.Second, "redis-0 answers", func() bool { return r0.Ping(ctx).Err() == nil })
	if err := r0.Set(ctx, "fotest:zombie", "1", 0).Err(); err == nil {
		t.Fatal("redis-0 came back and took a write: two masters")
	}
	must("rejoin", "redis-0")
	if role, err := r0.Do(ctx, "ROLE").Slice(); err != nil || fmt.Sprint(role[0]) != "slave" {
		t.Fatalf("redis-0 after rejoin: %v %v", role, err)
	}
	if v := op("switchover", "redis-0"); v.NewPrimary != "redis-0" {
		t.Fatalf("redis switchover back after the rejoin: %+v", v)
	}
	if out := must("status"); !strings.Contains(out, "redis-0") {
		t.Fatalf("status:\n%s", out)
	}
}
