package failover_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/instactl/instactl/failover"
	"github.com/instactl/instactl/topology"
)

// TestControlData parses a real pg_controldata of a running primary and of one shut down.
func TestControlData(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	n := e.nodes["pg-0"]
	cd, err := n.srv.ControlData(ctx)
	must(t, err)
	if cd.State != "in production" || cd.Timeline != 1 || cd.Checkpoint == 0 || cd.Redo == 0 || cd.Redo > cd.Checkpoint || !cd.DataChecksums || cd.CleanShutdown() {
		t.Fatalf("control data of a running primary: %+v", cd)
	}
	must(t, n.srv.Stop(ctx))
	must(t, n.srv.Stop(ctx)) // stopping a stopped server is fine
	down, err := n.srv.ControlData(ctx)
	must(t, err)
	if !down.CleanShutdown() || down.Checkpoint <= cd.Checkpoint {
		t.Fatalf("control data after a fast shutdown: %+v (before %+v)", down, cd)
	}
	must(t, n.srv.Start(ctx))
	must(t, n.srv.Start(ctx)) // starting a running server is fine
	sb, err := e.nodes["pg-1"].srv.ControlData(ctx)
	must(t, err)
	if sb.State != "in archive recovery" || sb.MinRecoveryEnd == 0 {
		t.Fatalf("control data of a standby: %+v", sb)
	}
	// Follow's primary_conninfo survives PostgreSQL's configuration parser and libpq's, with
	// a password that needs quoting at both levels.
	follower := *n.srv
	follower.ReplicationPassword = `it's \ secret`
	to := topology.Member{Host: "pg-1", Addr: netip.MustParseAddrPort("10.0.1.5:5432")}
	must(t, follower.Follow(ctx, to))
	must(t, os.Remove(filepath.Join(n.pg.DataDir, "standby.signal")))
	out, err := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(pgBin, "postgres"), "-D", n.pg.DataDir, "-C", "primary_conninfo").CombinedOutput()
	must(t, err)
	cfg, err := pgconn.ParseConfig(strings.TrimSpace(string(out)))
	if err != nil || cfg.Host != "10.0.1.5" || cfg.Port != 5432 || cfg.User != "postgres" || cfg.Password != `it's \ secret` ||
		cfg.RuntimeParams["application_name"] != "pg-0" {
		t.Fatalf("primary_conninfo %s: %+v %v", out, cfg, err)
	}
	if _, err := failover.ParseControlData("pg_control version number: 1300\n"); err == nil || !strings.Contains(err.Error(), "Database cluster state") {
		t.Fatalf("parse of a short output: %v", err)
	}
	l, err := failover.ParseLSN("16/B374D848")
	if err != nil || l.String() != "16/B374D848" || uint64(l) != 0x16B374D848 {
		t.Fatalf("ParseLSN: %v %v", l, err)
	}
}

// TestSwitchoverUnderWrites switches pg-0 over to pg-1 and back while a writer writes through
// PgBouncer: no write fails, none acknowledged is lost, the old primary streams afterwards.
func TestSwitchoverUnderWrites(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	w := startWriter(t, e.pooler.URL("pg-0"), 200)
	w.waitMore(t, 200)

	rep, err := failover.Switchover(ctx, failover.SwitchoverOptions{Deps: e.deps, Group: "pg-0", From: "pg-0"})
	if err != nil {
		t.Fatalf("switchover: %v\nreport: %+v", err, rep)
	}
	t.Logf("switchover: write block %s, shutdown %s, received %s, steps %+v", rep.WriteBlock, rep.ShutdownLSN, rep.ReceiveLSN, rep.Steps)
	if rep.OldPrimary != "pg-0" || rep.NewPrimary != "pg-1" || rep.OldEpoch != 1 || rep.NewEpoch != 2 ||
		rep.ReceiveLSN <= rep.ShutdownLSN || rep.ShutdownLSN == 0 || rep.WriteBlock <= 0 || rep.Rewound {
		t.Fatalf("report: %+v", rep)
	}
	w.waitMore(t, 200)
	if g := e.group("pg-0"); g.Primary != "pg-1" || g.Epoch != 2 {
		t.Fatalf("topology after the switchover: %+v", g)
	}
	if dsn := e.shardMap().Nodes["pg-0"].DSN; !strings.Contains(dsn, e.nodes["pg-1"].member().Addr.String()) {
		t.Fatalf("shard map node pg-0 after the switchover: %s", dsn)
	}
	if got := e.writable(); len(got) != 1 || got[0] != "pg-1" {
		t.Fatalf("writable servers: %v", got)
	}
	e.waitStreaming("pg-1", "pg-0")

	// And back.
	rep, err = failover.Switchover(ctx, failover.SwitchoverOptions{Deps: e.deps, Group: "pg-0"})
	if err != nil {
		t.Fatalf("switch back: %v\nreport: %+v", err, rep)
	}
	if rep.NewPrimary != "pg-0" || rep.NewEpoch != 3 {
		t.Fatalf("switch back report: %+v", rep)
	}
	w.waitMore(t, 200)
	w.halt()
	if len(w.failed) > 0 {
		t.Fatalf("%d writes failed: %v", len(w.failed), w.failed[:min(len(w.failed), 5)])
	}
	e.checkLedger(w, "pg-0")
	e.waitStreaming("pg-0", "pg-1")
	if got := e.writable(); len(got) != 1 || got[0] != "pg-0" {
		t.Fatalf("writable servers after switching back: %v", got)
	}
}

// TestSwitchoverStandbyCannotCatchUp cuts the standby's WAL receiver after the pause: the
// switchover rolls back and the old primary serves again.
func TestSwitchoverStandbyCannotCatchUp(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	deps := e.deps
	deps.AfterStep = func(step string) {
		if step == failover.StepPause {
			e.cutReplication("pg-1")
		}
	}
	// Writes that the standby never receives, so it cannot have the shutdown checkpoint.
	rep, err := failover.Switchover(ctx, failover.SwitchoverOptions{Deps: deps, Group: "pg-0"})
	if !errors.Is(err, failover.ErrRolledBack) {
		t.Fatalf("switchover without catch-up: %v, want ErrRolledBack\nreport %+v", err, rep)
	}
	t.Logf("rolled back: %v", err)
	if g := e.group("pg-0"); g.Primary != "pg-0" || g.Epoch != 1 {
		t.Fatalf("topology after the rollback: %+v", g)
	}
	if got := e.writable(); len(got) != 1 || got[0] != "pg-0" {
		t.Fatalf("writable servers after the rollback: %v", got)
	}
	// The pooler was resumed and still reaches the old primary.
	exec1(t, e.pooler.URL("pg-0"), "INSERT INTO ledger (seq) VALUES (-1)")
	if j, ok, err := failover.ReadJournal(e.deps.JournalDir, "pg-0"); err != nil || !ok || j.Step != failover.StepRolledBack {
		t.Fatalf("journal after the rollback: %+v %v %v", j, ok, err)
	}
}

// TestFailoverAndRejoin kills the primary after writes the standby never received, fails over
// and rejoins the old primary (pg_rewind: its WAL forked).
func TestFailoverAndRejoin(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	exec1(t, e.pooler.URL("pg-0"), "INSERT INTO ledger (seq) VALUES (1)")
	e.waitReplayed("pg-0", "pg-1")
	// Cut the standby off, then write on the primary only: a fork the rejoin must rewind.
	e.cutReplication("pg-1")
	exec1(t, e.nodes["pg-0"].pg.URL("postgres"), "INSERT INTO ledger (seq) SELECT g FROM generate_series(1000, 2000) g")
	var last string
	must(t, e.query("pg-0", "SELECT pg_current_wal_lsn()::text", &last))
	lastLSN, err := failover.ParseLSN(last)
	must(t, err)
	e.nodes["pg-0"].kill(t)

	rep, err := failover.Failover(ctx, failover.FailoverOptions{Deps: e.deps, Group: "pg-0", LastKnownLSN: lastLSN})
	if err != nil {
		t.Fatalf("failover: %v\nreport %+v", err, rep)
	}
	t.Logf("failover: %+v", rep)
	if rep.NewPrimary != "pg-1" || rep.NewEpoch != 2 || !rep.LossWindowKnown || rep.LossWindowBytes <= 0 || rep.LastKnownLSN != lastLSN {
		t.Fatalf("report: %+v", rep)
	}
	if len(e.fencer.hosts) != 1 || e.fencer.hosts[0] != "pg-0" {
		t.Fatalf("fenced hosts: %v", e.fencer.hosts)
	}
	if g := e.group("pg-0"); g.Primary != "pg-1" || g.Epoch != 2 {
		t.Fatalf("topology after the failover: %+v", g)
	}
	exec1(t, e.pooler.URL("pg-0"), "INSERT INTO ledger (seq) VALUES (3)") // through the repointed pooler

	// A pg_rewind that fails asks for a rebuild from a snapshot set.
	broken := e.deps
	broken.Server = func(m topology.Member) (failover.Server, error) {
		s, err := e.deps.Server(m)
		return failingRewind{s}, err
	}
	_, err = failover.Rejoin(ctx, failover.RejoinOptions{Deps: broken, Group: "pg-0", Host: "pg-0"})
	if !errors.Is(err, failover.ErrRebuildNeeded) || !strings.Contains(err.Error(), "instactl backup restore") {
		t.Fatalf("rejoin with a failing pg_rewind: %v", err)
	}

	rj, err := failover.Rejoin(ctx, failover.RejoinOptions{Deps: e.deps, Group: "pg-0", Host: "pg-0"})
	if err != nil {
		t.Fatalf("rejoin: %v\nreport %+v", err, rj)
	}
	if !rj.Rewound {
		t.Fatalf("rejoin of a forked old primary did not rewind: %+v", rj)
	}
	e.waitStreaming("pg-1", "pg-0")
	exec1(t, e.pooler.URL("pg-0"), "INSERT INTO ledger (seq) VALUES (4)")
	e.waitReplayed("pg-1", "pg-0")
	var n int
	must(t, e.query("pg-0", "SELECT count(*) FROM ledger WHERE seq IN (1, 3, 4)", &n))
	if n != 3 {
		t.Fatalf("the rejoined standby has %d of the rows 1, 3, 4", n)
	}
	if got := e.writable(); len(got) != 1 || got[0] != "pg-1" {
		t.Fatalf("writable servers: %v", got)
	}
	// Rejoining the primary, or twice, is refused or harmless.
	if _, err := failover.Rejoin(ctx, failover.RejoinOptions{Deps: e.deps, Group: "pg-0", Host: "pg-1"}); !errors.Is(err, failover.ErrBadInput) {
		t.Fatalf("rejoin of the primary: %v", err)
	}
	if rj, err := failover.Rejoin(ctx, failover.RejoinOptions{Deps: e.deps, Group: "pg-0", Host: "pg-0"}); err != nil || rj.Rewound {
		t.Fatalf("second rejoin: %+v %v", rj, err)
	}
}

// waitReplayed waits until standby has replayed everything primary wrote so far.
func (e *env) waitReplayed(primary, standby string) {
	e.t.Helper()
	var target string
	// The insert position: with synchronous_commit = off a commit may not be written yet.
	must(e.t, e.query(primary, "SELECT pg_current_wal_insert_lsn()::text", &target))
	deadline := time.Now().Add(60 * time.Second)
	for {
		var ok bool
		err := e.query(standby, "SELECT pg_last_wal_replay_lsn() >= '"+target+"'::pg_lsn", &ok)
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s did not replay %s: %v", standby, target, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBadInput: unknown groups, a group without a standby, a standby named as the primary, a
// refused fence: each an error that changed nothing.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for name, o := range map[string]failover.SwitchoverOptions{
		"unknown group":        {Group: "pg-7"},
		"redis group":          {Group: "redis-0"},
		"no standby":           {Group: "pg-9"},
		"standby as primary":   {Group: "pg-0", From: "pg-1"},
		"primary as target":    {Group: "pg-0", To: "pg-0"},
		"non-member as target": {Group: "pg-0", To: "pg-9"},
	} {
		o.Deps = e.deps
		if _, err := failover.Switchover(ctx, o); !errors.Is(err, failover.ErrBadInput) {
			t.Errorf("switchover, %s: %v, want ErrBadInput", name, err)
		}
	}
	if _, err := failover.Failover(ctx, failover.FailoverOptions{Deps: e.deps, Group: "pg-0", From: "pg-1"}); !errors.Is(err, failover.ErrBadInput) {
		t.Errorf("failover naming a standby: %v", err)
	}
	if _, err := failover.Failover(ctx, failover.FailoverOptions{Deps: e.deps, Group: "pg-9"}); !errors.Is(err, failover.ErrBadInput) {
		t.Errorf("failover without a standby: %v", err)
	}
	if _, err := failover.Rejoin(ctx, failover.RejoinOptions{Deps: e.deps, Group: "pg-0", Host: "pg-9"}); !errors.Is(err, failover.ErrBadInput) {
		t.Errorf("rejoin of a non-member: %v", err)
	}
	// A host fence that fails refuses the failover (without force): nothing promoted.
	e.fencer.fence = func(host string) error { return errors.New("StopInstances: UnauthorizedOperation") }
	_, err := failover.Failover(ctx, failover.FailoverOptions{Deps: e.deps, Group: "pg-0"})
	if !errors.Is(err, failover.ErrPrecondition) || !strings.Contains(err.Error(), "force") {
		t.Errorf("failover with a failed fence: %v", err)
	}
	exec1(t, e.pooler.URL("pg-0"), "INSERT INTO ledger (seq) VALUES (1)") // resumed, still the old primary
	if g := e.group("pg-0"); g.Primary != "pg-0" || g.Epoch != 1 {
		t.Fatalf("topology after bad input: %+v", g)
	}
	if got := e.writable(); len(got) != 1 || got[0] != "pg-0" {
		t.Fatalf("writable servers: %v", got)
	}
}

// TestSwitchoverPauseDeadline: a transaction left open through the pooler keeps PAUSE from
// completing; past the pause deadline the switchover rolls back and the transaction can
// still commit on the old primary.
func TestSwitchoverPauseDeadline(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c, err := pgx.Connect(ctx, e.pooler.URL("pg-0"))
	must(t, err)
	defer c.Close(ctx)
	tx, err := c.Begin(ctx)
	must(t, err)
	if _, err := tx.Exec(ctx, "INSERT INTO ledger (seq) VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	_, err = failover.Switchover(ctx, failover.SwitchoverOptions{Deps: e.deps, Group: "pg-0", Timeouts: failover.Timeouts{Pause: 500 * time.Millisecond}})
	if !errors.Is(err, failover.ErrRolledBack) || !strings.Contains(err.Error(), "pause") {
		t.Fatalf("switchover past the pause deadline: %v, want ErrRolledBack at pause", err)
	}
	t.Logf("rolled back: %v", err)
	must(t, tx.Commit(ctx))
	var n int
	must(t, e.query("pg-0", "SELECT count(*) FROM ledger WHERE seq = 7", &n))
	if n != 1 || e.group("pg-0").Epoch != 1 {
		t.Fatalf("after the rollback: %d rows, group %+v", n, e.group("pg-0"))
	}
	exec1(t, e.pooler.URL("pg-0"), "INSERT INTO ledger (seq) VALUES (8)") // resumed
}

// failingRewind is a Server whose pg_rewind fails.
type failingRewind struct{ failover.Server }

func (failingRewind) Rewind(context.Context, topology.Member) error {
	return errors.New("pg_rewind: error: could not find previous WAL record at 0/2000100")
}

// cutReplication stops standby's WAL receiver (an empty primary_conninfo) and waits until it
// is gone: the reload only asks for it.
func (e *env) cutReplication(standby string) {
	e.t.Helper()
	exec1(e.t, e.nodes[standby].pg.URL("postgres"), "ALTER SYSTEM SET primary_conninfo = ''")
	exec1(e.t, e.nodes[standby].pg.URL("postgres"), "SELECT pg_reload_conf()")
	deadline := time.Now().Add(60 * time.Second)
	for {
		var n int
		err := e.query(standby, "SELECT count(*) FROM pg_stat_wal_receiver", &n)
		if err == nil && n == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the WAL receiver of %s still runs: %v", standby, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
