package deploy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/instactl/instactl/errtext"
	"github.com/instactl/instactl/remote"
)

// batch activates one batch: LB out and drain, then per host flip, restart and health gate,
// then roll back what failed (everything that flipped, if max-fail is breached), put the
// healthy hosts back in the LB, and mark them done on the hosts.
func (r *run) batch(ctx context.Context, b Batch) error {
	todo := r.todo(b)
	carried := r.carried(b, todo)
	r.ev.emit(Event{Batch: b.Index, Stage: StageBatch, Status: StatusStart,
		Message: fmt.Sprintf("%d hosts (%d to do)", len(b.Hosts), len(todo))})
	if len(todo) > 0 {
		if err := r.resumeCheck(ctx, b, todo); err != nil {
			return err
		}
		r.skipCurrent(ctx, b, todo)
		todo = r.todo(b)
	}
	if len(todo) == 0 {
		if len(carried) > 0 {
			if err := r.register(ctx, b, carried); err != nil {
				return err
			}
			r.mark(ctx, carried)
			// The interrupted run may have died during the canary analysis: judge the
			// canary now rather than roll it out unjudged.
			if r.canaryUndecided() {
				if err := r.analyzeCanary(ctx, b); err != nil {
					return err
				}
			}
		}
		r.rep.BatchesDone = max(r.rep.BatchesDone, b.Index)
		r.ev.emit(Event{Batch: b.Index, Stage: StageBatch, Status: StatusSkip, Message: "nothing to do"})
		return nil
	}
	if err := r.deregister(ctx, b, todo); err != nil {
		return err
	}
	r.fanOut(ctx, todo, func(ctx context.Context, c *remote.Client, h Host) error {
		return r.activateHost(ctx, c, h, b.Index)
	})
	if err := ctx.Err(); err != nil {
		return err
	}
	failed := r.failedCount()
	breached := failed > r.plan.MaxFailAllowed
	back := r.rollbackBatch(ctx, b, todo, breached)
	if err := r.register(ctx, b, union(todo, carried, back)); err != nil {
		return err
	}
	r.mark(ctx, append(todo, carried...))
	if breached {
		r.mu.Lock()
		state := r.rep.BatchState(b.Index)
		r.mu.Unlock()
		r.ev.emit(Event{Batch: b.Index, Stage: StageBatch, Status: StatusFail,
			Message: fmt.Sprintf("%d hosts failed, max-fail allows %d: stopped; %s", failed, r.plan.MaxFailAllowed, state)})
		return &MaxFailError{Batch: b.Index, Failed: failed, Allowed: r.plan.MaxFailAllowed, Hosts: r.rep.Failed()}
	}
	if err := r.analyzeCanary(ctx, b); err != nil {
		return err
	}
	r.rep.BatchesDone = max(r.rep.BatchesDone, b.Index)
	r.ev.emit(Event{Batch: b.Index, Stage: StageBatch, Status: StatusOK})
	return nil
}

// carried lists, on a resumed run, the hosts of the batch that was interrupted which the
// journal shows activated: the interrupted run took them out of the load balancer and was
// killed before it put them back and marked them, so this run does both.
func (r *run) carried(b Batch, todo []string) []string {
	if r.rep.Resumes == 0 || b.Index <= r.rep.BatchesDone {
		return nil
	}
	var out []string
	for _, n := range b.Hosts {
		if r.state(n) == OutcomeActivated && !slices.Contains(todo, n) {
			out = append(out, n)
		}
	}
	return out
}

// todo lists the batch's hosts still to activate: staged (deploy) or pending (rollback).
func (r *run) todo(b Batch) []string {
	want := OutcomeStaged
	if r.plan.Kind == KindRollback {
		want = OutcomePending
	}
	var out []string
	for _, n := range b.Hosts {
		if r.state(n) == want {
			out = append(out, n)
		}
	}
	return out
}

// resumeCheck, on a resumed run, reads the markers of hosts the journal does not show as done:
// a host that finished (its marker names this run's release and current points at it) is
// recorded activated without being touched again.
func (r *run) resumeCheck(ctx context.Context, b Batch, todo []string) error {
	if r.rep.Resumes == 0 {
		return nil
	}
	r.fanOut(ctx, todo, func(ctx context.Context, c *remote.Client, h Host) error {
		out, err := runOK(ctx, c, ReadMarkCommand(r.cfg.Path, r.plan.RunID))
		if err != nil {
			return nil // the activation will report it
		}
		m := parseLines(out)
		if rel := strings.TrimPrefix(m["marker"], "activated "); m["marker"] != "" && rel == m["current"] {
			r.update(h.Name, func(hr *HostReport) { hr.State = OutcomeActivated })
			r.ev.emit(Event{Host: h.Name, Batch: b.Index, Stage: StageDone, Status: StatusSkip, Message: "finished before the interruption"})
		}
		return nil
	})
	return ctx.Err()
}

// skipCurrent leaves alone the hosts of a deploy that already run the release and pass the
// health gate (a redeploy of the same artifact): no LB change, no restart. A host whose
// current link points at the release but whose process does not pass (a run interrupted
// between flip and restart) is activated normally.
func (r *run) skipCurrent(ctx context.Context, b Batch, todo []string) {
	if r.plan.Kind != KindDeploy {
		return
	}
	var wg sync.WaitGroup
	for _, n := range todo {
		r.mu.Lock()
		was := r.byName[n].WasCurrent
		r.mu.Unlock()
		if !was {
			continue
		}
		wg.Go(func() {
			if !r.cfg.SkipHealthGate {
				url := r.hosts[n].healthURL(r.cfg)
				for range r.cfg.HealthPasses {
					if checkOnce(ctx, r.d.httpClient(), url, r.expectVersion()) != nil {
						return
					}
				}
			}
			r.updateSoon(n, func(hr *HostReport) {
				hr.State, hr.Note = OutcomeActivated, "already current and healthy: not restarted"
			})
			r.ev.emit(Event{Host: n, Batch: b.Index, Stage: StageDone, Status: StatusSkip, Message: "already current"})
		})
	}
	wg.Wait()
}

// activateHost flips, restarts and health-gates one host.
func (r *run) activateHost(ctx context.Context, c *remote.Client, h Host, batch int) error {
	start := time.Now()
	cfg := r.cfg
	fail := func(stage Stage, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.update(h.Name, func(hr *HostReport) { hr.ActivateMS = time.Since(start).Milliseconds() })
		r.hostFailed(h.Name, stage, fmt.Errorf("%s on %s: %w", stage, h.Name, err))
		return errRecorded
	}
	r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageFlip, Status: StatusStart})
	flip := ActivateCommand(cfg.Path, r.plan.Release, cfg.Binary)
	if r.plan.Kind == KindRollback {
		flip = RollbackCommand(cfg.Path, r.plan.Release, cfg.Binary)
	}
	out, err := runOK(ctx, c, flip)
	if err != nil {
		return fail(StageFlip, err)
	}
	m := parseLines(out)
	r.update(h.Name, func(hr *HostReport) {
		if !hr.Flipped {
			hr.Previous, hr.Flipped = m["previous"], true
		}
	})
	r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageFlip, Status: StatusOK, Message: "previous " + orDash(m["previous"])})
	if err := r.restartAndGate(ctx, c, h, batch, r.expectVersion()); err != nil {
		return fail(err.stage, err.err)
	}
	r.update(h.Name, func(hr *HostReport) {
		hr.State, hr.ActivateMS = OutcomeActivated, time.Since(start).Milliseconds()
	})
	return nil
}

// stageErr is a failure and the step it happened in.
type stageErr struct {
	stage Stage
	err   error
}

// restartAndGate restarts the service and waits for its health gate.
func (r *run) restartAndGate(ctx context.Context, c *remote.Client, h Host, batch int, version string) *stageErr {
	restart, _ := r.cfg.restartCommand()
	r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageRestart, Status: StatusStart})
	if _, err := runOK(ctx, c, restart); err != nil {
		return &stageErr{StageRestart, err}
	}
	if r.cfg.SkipHealthGate {
		return nil
	}
	r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageHealth, Status: StatusStart})
	if err := r.healthGate(ctx, h, version); err != nil {
		return &stageErr{StageHealth, err}
	}
	r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageHealth, Status: StatusOK})
	return nil
}

// expectVersion is the version the health body must mention, if the plan checks it.
func (r *run) expectVersion() string {
	if r.cfg.VerifyVersion && r.plan.Kind == KindDeploy {
		return r.plan.Artifact.Version
	}
	return ""
}

// rollbackBatch returns hosts of the batch to their previous release and lists them: the
// failed ones that flipped, and, when max-fail is breached, every host that flipped.
func (r *run) rollbackBatch(ctx context.Context, b Batch, todo []string, breached bool) []string {
	names, earlier := r.rollbackSet(b, todo, breached)
	if len(names) == 0 {
		return nil
	}
	r.fanOut(ctx, names, func(ctx context.Context, c *remote.Client, h Host) error {
		r.rollbackHost(ctx, c, h, b.Index, slices.Contains(earlier, h.Name))
		return nil
	})
	return names
}

// rollbackSet lists the hosts of batch b that the journal shows on the new release (flipped
// and not yet switched back) and that must go back: the failed ones, or all of them when
// max-fail is breached. It looks at every host of the batch, not only todo (the ones this
// run activated): on a resumed run the interrupted run may have flipped some (activated, or
// failed before its rollback) before it was killed; earlier lists those.
func (r *run) rollbackSet(b Batch, todo []string, breached bool) (names, earlier []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range b.Hosts {
		h := r.byName[n]
		if !h.Flipped || h.State == OutcomeRolledBack || h.State == OutcomeStopped {
			continue
		}
		if h.failed() || breached {
			names = append(names, n)
			if !slices.Contains(todo, n) {
				earlier = append(earlier, n)
			}
		}
	}
	return names, earlier
}

// union is the names of all lists, each once, in order of first appearance.
func union(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		for _, n := range l {
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

// earlierNote ends the report note of a host rolled back by a resumed run that the
// interrupted run had flipped.
const earlierNote = "the interrupted run this one resumed had switched it to the new release"

// rollbackHost flips one host back to the release it ran before this run. byEarlier says
// the interrupted run this one resumes flipped it, which its report says.
func (r *run) rollbackHost(ctx context.Context, c *remote.Client, h Host, batch int, byEarlier bool) {
	r.mu.Lock()
	prev := r.byName[h.Name].Previous
	r.mu.Unlock()
	if prev == "" && r.plan.Kind == KindDeploy {
		r.retractHost(ctx, c, h, batch)
		if byEarlier {
			r.update(h.Name, func(hr *HostReport) { hr.Note += "; " + earlierNote })
		}
		return
	}
	r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageRollback, Status: StatusStart, Message: "to " + orText(prev, "previous release")})
	err := func() error {
		target := prev
		if target == r.plan.Release {
			target = "" // flipped twice (resumed): the history knows the one before
		}
		if _, err := runOK(ctx, c, RollbackCommand(r.cfg.Path, target, r.cfg.Binary)); err != nil {
			return err
		}
		if se := r.restartAndGate(ctx, c, h, batch, ""); se != nil {
			return fmt.Errorf("%s: %w", se.stage, se.err)
		}
		return nil
	}()
	r.update(h.Name, func(hr *HostReport) {
		if err != nil {
			hr.State, hr.RollbackError = OutcomeFailed, ErrorLine(err)
			return
		}
		hr.State, hr.RollbackError = OutcomeRolledBack, "" // a killed run's failed attempt is over
		if hr.Error == "" {
			hr.Note = fmt.Sprintf("rolled back: batch %d breached max-fail", batch)
		}
		if byEarlier {
			hr.Note = strings.TrimPrefix(hr.Note+"; ", "; ") + earlierNote
		}
	})
	if err != nil {
		r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageRollback, Status: StatusFail, Err: fmt.Errorf("rollback on %s: %w", h.Name, err)})
		return
	}
	r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageRollback, Status: StatusOK, Message: "back on " + orText(prev, "previous release")})
}

// retractHost is the rollback of a host that ran no release before this deploy: there is
// nothing to flip back to, so it is returned to its state before the run as far as that
// is safe: the service stopped (it was not serving before), current removed, the release
// left staged.
func (r *run) retractHost(ctx context.Context, c *remote.Client, h Host, batch int) {
	rel := r.plan.Release
	r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageRollback, Status: StatusStart,
		Message: "no earlier release on this host: stopping the service"})
	stop, canStop := r.cfg.stopCommand()
	err := func() error {
		if canStop {
			if _, err := runOK(ctx, c, stop); err != nil {
				return fmt.Errorf("stop the service: %w", err)
			}
		}
		if _, err := runOK(ctx, c, RetractCommand(r.cfg.Path, rel)); err != nil {
			return fmt.Errorf("remove the current link: %w", err)
		}
		return nil
	}()
	note := fmt.Sprintf("no earlier release to return to: service stopped, no release current, %s stays staged", rel)
	if !canStop {
		note = fmt.Sprintf("no earlier release to return to: no release current, %s stays staged; "+
			"the service was left as the custom restart command left it", rel)
	}
	r.update(h.Name, func(hr *HostReport) {
		if err != nil {
			hr.State, hr.RollbackError = OutcomeFailed, ErrorLine(err)
			hr.Note = fmt.Sprintf("no earlier release to return to: %s is still current", rel)
			return
		}
		hr.State, hr.Note = OutcomeStopped, note
	})
	if err != nil {
		r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageRollback, Status: StatusFail,
			Err: fmt.Errorf("undo the first deploy on %s: %w", h.Name, err)})
		return
	}
	r.ev.emit(Event{Host: h.Name, Batch: batch, Stage: StageRollback, Status: StatusOK, Message: note})
}

// mark writes the per-host marker of the hosts that finished.
func (r *run) mark(ctx context.Context, todo []string) {
	var names []string
	for _, n := range todo {
		if r.state(n) == OutcomeActivated {
			names = append(names, n)
		}
	}
	release := r.plan.Release
	r.fanOut(ctx, names, func(ctx context.Context, c *remote.Client, h Host) error {
		rel := release
		if rel == "" {
			rel = r.currentOf(ctx, c)
		}
		if _, err := runOK(ctx, c, MarkCommand(r.cfg.Path, r.plan.RunID, rel)); err != nil {
			r.ev.emit(Event{Host: h.Name, Stage: StageDone, Status: StatusFail, Err: fmt.Errorf("marker on %s: %w", h.Name, err)})
			return nil
		}
		r.ev.emit(Event{Host: h.Name, Stage: StageDone, Status: StatusOK})
		return nil
	})
}

// currentOf reads the host's current release id.
func (r *run) currentOf(ctx context.Context, c *remote.Client) string {
	out, err := runOK(ctx, c, ReadMarkCommand(r.cfg.Path, r.plan.RunID))
	if err != nil {
		return ""
	}
	return parseLines(out)["current"]
}

// healthGate polls the host's health URL until HealthPasses consecutive 200s (whose body
// mentions version, when set), or fails after HealthTimeout.
func (r *run) healthGate(ctx context.Context, h Host, version string) error {
	url := h.healthURL(r.cfg)
	ctx, cancel := context.WithTimeout(ctx, r.cfg.HealthTimeout)
	defer cancel()
	passes, checks := 0, 0
	var last error
	for {
		checks++
		err := checkOnce(ctx, r.d.httpClient(), url, version)
		if err == nil {
			passes++
			if passes >= r.cfg.HealthPasses {
				return nil
			}
		} else {
			passes, last = 0, err
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return fmt.Errorf("GET %s: not healthy within %v (%d checks, %d/%d consecutive passes): %w",
				url, r.cfg.HealthTimeout, checks, passes, r.cfg.HealthPasses, last)
		case <-time.After(r.cfg.HealthInterval):
		}
	}
}

// checkOnce is one health check.
func checkOnce(ctx context.Context, hc *http.Client, url, version string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, errtext.OneLine(string(body)))
	}
	if version != "" && !strings.Contains(string(body), version) {
		return fmt.Errorf("healthy but reports another version (want %s): %s", version, errtext.OneLine(string(body)))
	}
	return nil
}
