package deploy

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/instactl/instactl/remote"
)

// unchanged is the first step of a deploy: every host's probe, and on the lock host the
// lock's state read in the same session. When every host already runs the release (sealed
// and current) and passes the health gate, and the lock is free, the deploy has nothing to
// change: it records every host as already current and ends without taking the lock, so an
// unchanged redeploy costs one handshake and one session per host, with nothing on the
// hosts written (its report goes to the local audit log and journal as before).
//
// Why skipping the lock is safe then: the lock serializes changes, and this run makes none.
// Each host was seen on the release by its own probe; a run that changed a host before its
// probe would have been seen (it switched the host away, or held the lock when the lock
// host was read, and then this run takes the normal path and meets the lock as before). A
// run that starts changing hosts after their probes comes after this one, as it would have
// after a locked no-op. A lock held by anyone, even a stale one, sends the run down the
// normal path.
//
// Otherwise it returns false and the normal path takes the lock and stages as before,
// reusing the probes that found the release absent (an upload over a release another run
// staged meanwhile puts the same verified bytes in place again); hosts that had it present
// are probed again under the lock, since a run could have pruned or switched them since.
func (r *run) unchanged(ctx context.Context) bool {
	if r.plan.Kind != KindDeploy || r.rep.Resumes > 0 {
		return false
	}
	lh, err := lockHostOf(r.plan.LockHost, r.plan.Hosts)
	if err != nil {
		return false
	}
	names := make([]string, 0, len(r.plan.Hosts))
	for _, h := range r.plan.Hosts {
		if r.state(h.Name) != OutcomePending {
			return false
		}
		names = append(names, h.Name)
	}
	a, cfg := r.plan.Artifact, r.cfg
	start := time.Now()
	var mu sync.Mutex
	probes := map[string]map[string]string{}
	res := r.pool.FanOut(ctx, targetsOf(r, names), cfg.Parallel, func(ctx context.Context, c *remote.Client, t remote.Target) error {
		cmd := ProbeCommand(cfg.Path, a.ID, cfg.Binary, a.SHA256)
		if t.Name == lh.Name {
			cmd = probeLockCommand(cfg.Path, a.ID, cfg.Binary, a.SHA256)
		}
		r.ev.emit(Event{Host: t.Name, Stage: StageProbe, Status: StatusStart})
		out, err := runOK(ctx, c, cmd)
		if err != nil {
			return err // the normal path probes again and records it
		}
		mu.Lock()
		probes[t.Name] = parseLines(out)
		mu.Unlock()
		return nil
	})
	ms := time.Since(start).Milliseconds()
	all := ctx.Err() == nil
	for _, h := range res {
		all = all && h.Err == nil
	}
	for _, n := range names {
		p := probes[n]
		_, present := p["present"]
		all = all && present && p["current"] == a.ID
		if _, absent := p["absent"]; absent {
			r.mu.Lock()
			if r.absent == nil {
				r.absent = map[string]bool{}
			}
			r.absent[n] = true
			r.mu.Unlock()
		}
	}
	if _, free := probes[lh.Name]["free"]; !all || !free || !r.healthyAll(ctx, names) {
		return false
	}
	for _, n := range names {
		r.updateSoon(n, func(hr *HostReport) {
			hr.State, hr.StageMS, hr.WasCurrent = OutcomeActivated, ms, true
			hr.Note = "already current and healthy: not restarted"
		})
		r.ev.emit(Event{Host: n, Stage: StageUpload, Status: StatusSkip, Message: "release " + a.ID + " already staged"})
		r.ev.emit(Event{Host: n, Batch: r.byName[n].Batch, Stage: StageDone, Status: StatusSkip, Message: "already current"})
	}
	r.ev.emit(Event{Host: lh.Name, Stage: StageLock, Status: StatusSkip,
		Message: fmt.Sprintf("not taken: every host already runs release %s and the lock is free, so nothing changes", a.ID)})
	return true
}

// healthyAll runs the health gate's checks (Config.HealthPasses in a row, no waiting) on
// every host at once, as skipCurrent does for a host it leaves alone; true when all pass or
// the run skips the gate.
func (r *run) healthyAll(ctx context.Context, names []string) bool {
	if r.cfg.SkipHealthGate {
		return true
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := true
	for _, n := range names {
		wg.Go(func() {
			url := r.hosts[n].healthURL(r.cfg)
			for range r.cfg.HealthPasses {
				if checkOnce(ctx, r.d.httpClient(), url, r.expectVersion()) != nil {
					mu.Lock()
					ok = false
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return ok
}

// absentBefore says the unlocked first probe found host's release absent, so staging can
// upload without probing again.
func (r *run) absentBefore(host string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.absent[host]
}

// probeLockCommand is ProbeCommand followed by LockStatusCommand in one session: the lock
// host's part of the unchanged check.
func probeLockCommand(root, id, binary, sha string) remote.Command {
	return remote.Script(ProbeCommand(root, id, binary, sha)[2] + "\n" + LockStatusCommand(root)[2])
}
