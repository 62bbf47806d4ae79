package failover_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/instactl/instactl/failover"
)

// TestSwitchoverCrashSafety stops a switchover after each of its steps, as if instactl died
// there, and finishes it with Resume or Abort (alternately): each time exactly one server
// takes writes, the topology names it, the other streams from it, and no acknowledged write of
// a writer running throughout is lost.
func TestSwitchoverCrashSafety(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	w := startWriter(t, e.pooler.URL("pg-0"), 200)
	w.waitMore(t, 50)
	steps := []string{failover.StepCheckpoint, failover.StepPause, failover.StepStopOld, failover.StepCatchUp,
		failover.StepPromote, failover.StepRecord, failover.StepRepoint, failover.StepResume, failover.StepRejoin}
	for i, step := range steps {
		before := e.group("pg-0")
		deps := e.deps
		deps.StopAfter = step
		_, err := failover.Switchover(ctx, failover.SwitchoverOptions{Deps: deps, Group: "pg-0"})
		if !errors.Is(err, failover.ErrHalfDone) {
			t.Fatalf("stop after %s: %v, want ErrHalfDone", step, err)
		}
		// Nothing else may start while the journal waits.
		if _, err := failover.Switchover(ctx, failover.SwitchoverOptions{Deps: e.deps, Group: "pg-0"}); !errors.Is(err, failover.ErrBusy) {
			t.Fatalf("a second switchover over an unfinished journal: %v, want ErrBusy", err)
		}
		j, _, err := failover.ReadJournal(e.deps.JournalDir, "pg-0")
		must(t, err)
		var rep failover.Report
		how := "resume"
		if i%2 == 1 {
			how = "abort"
			rep, err = failover.Abort(ctx, e.deps, "pg-0")
		} else {
			rep, err = failover.Resume(ctx, e.deps, "pg-0")
		}
		if err != nil {
			t.Fatalf("%s after %s: %v", how, step, err)
		}
		after := e.group("pg-0")
		back := how == "abort" && !j.Promoting
		want, other := j.NewPrimary, j.OldPrimary
		if back {
			want, other = j.OldPrimary, j.NewPrimary
		}
		t.Logf("stopped after %s, %s: primary %s epoch %d -> %s epoch %d; report %s -> %s", step, how, before.Primary, before.Epoch, after.Primary, after.Epoch, rep.OldPrimary, rep.NewPrimary)
		if after.Primary != want || (back && after.Epoch != before.Epoch) || (!back && after.Epoch != before.Epoch+1) {
			t.Fatalf("after %s at %s: topology %+v, want primary %s", how, step, after, want)
		}
		if got := e.writable(); len(got) != 1 || got[0] != want {
			t.Fatalf("after %s at %s: writable servers %v, want [%s]", how, step, got, want)
		}
		e.waitStreaming(want, other)
		if j, _, err := failover.ReadJournal(e.deps.JournalDir, "pg-0"); err != nil || !j.Ended() {
			t.Fatalf("journal after %s at %s: %+v %v", how, step, j, err)
		}
		w.waitMore(t, 50)
	}
	w.halt()
	if len(w.failed) > 0 {
		t.Fatalf("%d writes failed: %v", len(w.failed), w.failed[:min(len(w.failed), 5)])
	}
	e.checkLedger(w, e.group("pg-0").Primary)
}

// TestBusy: a group whose lock another process holds is refused, and nothing changes.
func TestBusy(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	must(t, os.MkdirAll(e.deps.JournalDir, 0o700))
	f, err := os.OpenFile(filepath.Join(e.deps.JournalDir, "pg-0.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	must(t, err)
	defer f.Close()
	must(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX))
	if _, err := failover.Switchover(ctx, failover.SwitchoverOptions{Deps: e.deps, Group: "pg-0"}); !errors.Is(err, failover.ErrBusy) {
		t.Fatalf("switchover of a locked group: %v", err)
	}
	if _, err := failover.Resume(ctx, e.deps, "pg-0"); !errors.Is(err, failover.ErrBusy) {
		t.Fatalf("resume of a locked group: %v", err)
	}
	must(t, syscall.Flock(int(f.Fd()), syscall.LOCK_UN))
	if g := e.group("pg-0"); g.Primary != "pg-0" || g.Epoch != 1 {
		t.Fatalf("topology: %+v", g)
	}
	// Resume and abort without a journal have nothing to do.
	if _, err := failover.Abort(ctx, e.deps, "pg-0"); err != nil {
		t.Fatal(err)
	}
}
