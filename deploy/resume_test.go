package deploy

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/instactl/instactl/remote"
)

// A deploy killed mid-batch leaves hosts on the new release that its journal records as
// flipped. When the resumed run's batch breaches max-fail, the rollback must take back every
// host of the batch on the new release, whichever run flipped it, and say which ones the
// interrupted run had flipped.
func TestResumeBreachRollsBackHostsTheKilledRunFlipped(t *testing.T) {
	cfg, p := resumeTestPlan(t)
	b := p.Batches[1]
	if got := strings.Join(b.Hosts, ","); got != "app-1,app-2,app-3" {
		t.Fatalf("batch 2 = %s", got)
	}

	// The killed run: batch 1 done; in batch 2 app-1 activated and app-3 flipped and failed
	// its health gate, then the process died before the batch ended (no rollback, no marker).
	killed := newRun(&Deployer{}, p, nil, nil)
	for _, h := range p.Hosts {
		killed.update(h.Name, func(hr *HostReport) { hr.State = OutcomeStaged })
	}
	flipped := func(state Outcome) func(*HostReport) {
		return func(hr *HostReport) { hr.State, hr.Flipped, hr.Previous = state, true, "old000000000" }
	}
	killed.update("app-0", flipped(OutcomeActivated))
	killed.update("app-1", flipped(OutcomeActivated))
	killed.update("app-3", flipped(OutcomeFailed))
	killed.update("app-3", func(hr *HostReport) { hr.Stage, hr.Error = StageHealth, "health on app-3: status 500" })
	killed.rep.BatchesDone = 1
	killed.rep.Result = ResultInterrupted
	killed.save()

	// The resumed run, from the journal as Resume reads it.
	p2, prior, err := LoadJournal(cfg.StateDir, "R1")
	if err != nil {
		t.Fatal(err)
	}
	prior.Resumes++
	r := newRun(&Deployer{}, p2, prior, nil)
	todo := r.todo(b)
	if got := strings.Join(todo, ","); got != "app-2" {
		t.Fatalf("resumed todo = %s; want app-2", got)
	}
	// Without the breach only the failed host that is still on the new release goes back.
	names, earlier := r.rollbackSet(b, todo, false)
	if !slices.Equal(names, []string{"app-3"}) || !slices.Equal(earlier, []string{"app-3"}) {
		t.Errorf("rollback without breach = %v (earlier %v); want [app-3] (earlier [app-3])", names, earlier)
	}
	// The resumed run activates app-2; app-3's failure breaches max-fail 0.
	r.update("app-2", flipped(OutcomeActivated))
	if failed := r.failedCount(); failed <= r.plan.MaxFailAllowed {
		t.Fatalf("failed %d, max-fail allows %d: want a breach", failed, r.plan.MaxFailAllowed)
	}
	names, earlier = r.rollbackSet(b, todo, true)
	if !slices.Equal(names, []string{"app-1", "app-2", "app-3"}) {
		t.Errorf("rollback on breach = %v; want every flipped host of the batch [app-1 app-2 app-3]", names)
	}
	if !slices.Equal(earlier, []string{"app-1", "app-3"}) {
		t.Errorf("flipped by the interrupted run = %v; want [app-1 app-3]", earlier)
	}
	// A host already back on its previous release is not switched again.
	r.update("app-3", func(hr *HostReport) { hr.State = OutcomeRolledBack })
	if names, _ := r.rollbackSet(b, todo, true); slices.Contains(names, "app-3") {
		t.Errorf("rollback on breach = %v; app-3 is already rolled back", names)
	}
}

// cancelledDialer stands for hosts a run never reached: every dial ends with the context.
type cancelledDialer struct{}

func (cancelledDialer) Dial(ctx context.Context, t remote.Target) (*remote.Client, error) {
	<-ctx.Done()
	return nil, fmt.Errorf("dial %s: %w", t, ctx.Err())
}

// TestInterruptedFanOutFailsNoHost: Ctrl-C stops a run after the current step; hosts it had
// not reached, or whose step the interrupt cut short, did not fail. Recording them as failed
// made `deploy --resume` stop on max-fail before doing anything.
func TestInterruptedFanOutFailsNoHost(t *testing.T) {
	_, p := resumeTestPlan(t)
	r := newRun(&Deployer{}, p, nil, remote.NewPool(cancelledDialer{}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var names []string
	for _, h := range p.Hosts {
		names = append(names, h.Name)
	}
	r.fanOut(ctx, names, func(ctx context.Context, c *remote.Client, h Host) error {
		t.Errorf("%s reached through a cancelled run", h.Name)
		return nil
	})
	if n := r.failedCount(); n != 0 {
		t.Errorf("an interrupted fan-out recorded %d failed hosts: %+v", n, r.rep.Hosts)
	}
}

// resumeTestPlan is run R1: five hosts in batches [1, 3, 1] with max-fail 0, journaled under
// a fresh state directory.
func resumeTestPlan(t *testing.T) (Config, *Plan) {
	t.Helper()
	cfg := testConfig(t.TempDir())
	cfg.MaxFail = "0"
	a := Artifact{ID: "abcdef012345", SHA256: "00", Size: 1, Path: "/dev/null"}
	p, err := NewPlan(KindDeploy, cfg, testHosts(5), a, "", "R1")
	if err != nil {
		t.Fatal(err)
	}
	return cfg, p
}
