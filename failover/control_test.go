package failover_test

import (
	"context"
	"errors"
	"testing"

	"github.com/instactl/instactl/failover"
)

// TestFailoverOfTheControlGroup loses the primary that holds the control database itself:
// the topology comes from the caller until the promotion, the control database is found again
// on the promoted standby (topology.ControlDSN), an interrupted failover is aborted before the
// promotion and resumed after it, and a switchover moves the control database back.
func TestFailoverOfTheControlGroup(t *testing.T) {
	e := newEnvControl(t, true)
	ctx := context.Background()
	exec1(t, e.pooler.URL("pg-0"), "INSERT INTO ledger (seq) VALUES (1)")
	e.waitReplayed("pg-0", "pg-1")
	e.nodes["pg-0"].kill(t)

	// Without a topology from the caller the control database cannot be read: refused.
	if _, err := failover.Failover(ctx, failover.FailoverOptions{Deps: e.deps, Group: "pg-0"}); err == nil {
		t.Fatal("failover without the control database nor a topology: no error")
	}
	if got := e.writable(); len(got) != 0 {
		t.Fatalf("writable servers after a refused failover: %v", got)
	}

	// Stopped after choosing, then aborted: nothing promoted, the pooler resumed.
	opts := failover.FailoverOptions{Deps: e.deps, Group: "pg-0", Topology: &e.seed}
	opts.StopAfter = failover.StepChoose
	if _, err := failover.Failover(ctx, opts); !errors.Is(err, failover.ErrHalfDone) {
		t.Fatalf("failover stopped after choose: %v", err)
	}
	if _, err := failover.Abort(ctx, e.deps, "pg-0"); err != nil {
		t.Fatalf("abort: %v", err)
	}
	if got := e.writable(); len(got) != 0 {
		t.Fatalf("writable servers after an aborted failover: %v", got)
	}

	// Stopped right after the promotion: abort finishes forward.
	opts.StopAfter = failover.StepPromote
	if _, err := failover.Failover(ctx, opts); !errors.Is(err, failover.ErrHalfDone) {
		t.Fatalf("failover stopped after promote: %v", err)
	}
	rep, err := failover.Abort(ctx, e.deps, "pg-0")
	if err != nil {
		t.Fatalf("abort after the promotion: %v", err)
	}
	t.Logf("failover: %+v", rep)
	if rep.NewPrimary != "pg-1" || rep.OldEpoch != 1 || rep.NewEpoch != 2 || rep.LossWindowKnown {
		t.Fatalf("report: %+v", rep)
	}
	if g := e.group("pg-0"); g.Primary != "pg-1" || g.Epoch != 2 {
		t.Fatalf("topology in the control database on the promoted standby: %+v", g)
	}
	exec1(t, e.pooler.URL("pg-0"), "INSERT INTO ledger (seq) VALUES (2)")

	// The old primary comes back as a standby, and a switchover moves everything back.
	if _, err := failover.Rejoin(ctx, failover.RejoinOptions{Deps: e.deps, Group: "pg-0", Host: "pg-0"}); err != nil {
		t.Fatalf("rejoin: %v", err)
	}
	rep, err = failover.Switchover(ctx, failover.SwitchoverOptions{Deps: e.deps, Group: "pg-0", To: "pg-0"})
	if err != nil {
		t.Fatalf("switchover of the control group: %v", err)
	}
	if g := e.group("pg-0"); g.Primary != "pg-0" || g.Epoch != 3 || rep.NewEpoch != 3 {
		t.Fatalf("topology after switching the control group back: %+v (report %+v)", g, rep)
	}
	var n int
	must(t, e.query("pg-0", "SELECT count(*) FROM ledger WHERE seq IN (1, 2)", &n))
	if n != 2 {
		t.Fatalf("pg-0 has %d of the rows 1, 2", n)
	}
	e.waitStreaming("pg-0", "pg-1")
}
