package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/instactl/instactl/remote"
)

// run is one execution of a plan: its connections, its report and its journal.
type run struct {
	d    *Deployer
	plan *Plan
	cfg  Config
	pool *remote.Pool
	ev   *emitter

	mu     sync.Mutex // guards rep and its hosts
	saveMu sync.Mutex // serializes journal writes: one temporary file, newest snapshot last
	jw     journalWriter
	rep    *Report
	byName map[string]*HostReport
	// sent counts the bytes this execution sends from here; sentBefore is what the runs it
	// resumes sent.
	sent       sentCounter
	sentBefore int64
	obj        storeObject
	hosts      map[string]Host
	locked     bool
	// noop says the unchanged check found nothing to change and the run ended without the
	// lock (see unchanged); absent lists the hosts whose release that check found absent.
	noop   bool
	absent map[string]bool
}

func newRun(d *Deployer, p *Plan, prior *Report, pool *remote.Pool) *run {
	r := &run{d: d, plan: p, cfg: p.Config, pool: pool,
		byName: map[string]*HostReport{}, hosts: map[string]Host{}}
	r.ev = &emitter{fn: d.OnEvent, runID: p.RunID, now: d.now}
	r.rep = prior
	if r.rep == nil {
		r.rep = &Report{RunID: p.RunID, Kind: p.Kind, Stack: r.cfg.Stack, Role: r.cfg.Role,
			Operator: r.cfg.Operator, Message: r.cfg.Message, Release: p.Release,
			Version: p.Artifact.Version, Commit: p.Artifact.Commit, SHA256: p.Artifact.SHA256,
			Started: d.now()}
		for _, b := range p.Batches {
			for _, h := range b.Hosts {
				r.rep.Hosts = append(r.rep.Hosts, HostReport{Host: h, Batch: b.Index, State: OutcomePending})
			}
		}
	}
	r.rep.Result, r.rep.Error = "", ""
	r.sentBefore = r.rep.BytesSent
	if p.Kind == KindDeploy && r.cfg.stagingMethod() == StagingS3 {
		r.rep.S3 = &S3Staging{Bucket: r.cfg.Bucket, Key: StageKey(r.cfg.StagePrefix, p.Artifact.SHA256)}
	}
	for i := range r.rep.Hosts {
		h := &r.rep.Hosts[i]
		if h.State == OutcomeNotStarted {
			h.State = OutcomePending
		}
		r.byName[h.Host] = h
	}
	for _, h := range p.Hosts {
		r.hosts[h.Name] = h
	}
	return r
}

// update changes one host's report under the lock and saves the journal before it returns:
// what activation records before its next step on the hosts, so a killed run's journal
// holds every host it switched.
func (r *run) update(host string, fn func(h *HostReport)) {
	r.mu.Lock()
	fn(r.byName[host])
	r.mu.Unlock()
	r.save()
}

// updateSoon is update with the journal saved in the background: for changes a resumed run
// finds again by itself (a probe's result, a sealed release, a host left alone because it
// already runs the release), so that 50 hosts finishing at once do not queue one after the
// other behind 50 journal writes.
func (r *run) updateSoon(host string, fn func(h *HostReport)) {
	r.mu.Lock()
	fn(r.byName[host])
	r.mu.Unlock()
	r.saveSoon()
}

// journalWriter writes the journal in the background for updateSoon: any number of updates
// cost one or two writes, each of the newest state.
type journalWriter struct {
	mu      sync.Mutex
	stopped bool
	kick    chan struct{} // capacity 1: one pending write stands for any number of updates
	quit    chan struct{}
	done    chan struct{}
}

// startJournal starts the background journal writer; stopJournal must follow.
func (r *run) startJournal() {
	w := &r.jw
	w.kick, w.quit, w.done = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.kick:
				r.save()
			case <-w.quit:
				return
			}
		}
	}()
}

// saveSoon has the background writer save the journal, or saves it now once the writer is
// stopped (or was never started).
func (r *run) saveSoon() {
	w := &r.jw
	w.mu.Lock()
	direct := w.stopped || w.kick == nil
	w.mu.Unlock()
	if direct {
		r.save()
		return
	}
	select {
	case w.kick <- struct{}{}:
	default: // a write is already pending; it will take this update too
	}
}

// stopJournal stops the background writer and saves the journal with every update so far;
// later updates save synchronously.
func (r *run) stopJournal() {
	w := &r.jw
	w.mu.Lock()
	started := w.kick != nil && !w.stopped
	w.stopped = true
	w.mu.Unlock()
	if started {
		close(w.quit)
		<-w.done
	}
	r.save()
}

// save writes the journal; a failure is reported as an event, not fatal (the hosts' markers
// still let Resume converge).
func (r *run) save() {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	r.mu.Lock()
	b, err := json.Marshal(r.rep)
	r.mu.Unlock()
	if err == nil {
		var rep Report
		if err = json.Unmarshal(b, &rep); err == nil {
			err = saveJournal(r.cfg.StateDir, journal{Plan: r.plan, Report: &rep})
		}
	}
	if err != nil {
		r.ev.emit(Event{Stage: StageDone, Status: StatusFail, Err: err})
	}
}

// hostFailed records a failure of host at stage.
func (r *run) hostFailed(host string, stage Stage, err error) {
	r.update(host, func(h *HostReport) {
		h.State, h.Stage, h.Error = OutcomeFailed, stage, ErrorLine(err)
	})
	r.ev.emit(Event{Host: host, Batch: r.byName[host].Batch, Stage: stage, Status: StatusFail, Err: err})
}

// failedCount counts hosts that failed so far.
func (r *run) failedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, h := range r.rep.Hosts {
		if h.failed() {
			n++
		}
	}
	return n
}

func (r *run) state(host string) Outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byName[host].State
}

// do is the whole run up to, not including, prune/audit/unlock.
func (r *run) do(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.save()
	r.predial(ctx)
	start := time.Now()
	if r.unchanged(ctx) {
		r.noop = true
		r.rep.StageMS += time.Since(start).Milliseconds()
		for _, b := range r.plan.Batches {
			if err := r.batch(ctx, b); err != nil { // every host activated: nothing to do
				return err
			}
		}
		return nil
	}
	r.rep.StageMS += time.Since(start).Milliseconds()
	if err := r.lock(ctx); err != nil {
		return err
	}
	if r.plan.Kind == KindDeploy {
		start := time.Now()
		err := r.stage(ctx)
		r.rep.StageMS += time.Since(start).Milliseconds()
		if err != nil {
			return err
		}
	}
	start = time.Now()
	defer func() { r.rep.ActivateMS += time.Since(start).Milliseconds() }()
	for _, b := range r.plan.Batches {
		if err := r.batch(ctx, b); err != nil {
			return err
		}
	}
	return nil
}

// predial opens every host's connection at once, so that each host's first step (the
// unchanged check's probe) follows its own handshake. Failures are left to the step
// that needs the connection (it dials again and records them).
func (r *run) predial(ctx context.Context) {
	for _, h := range r.plan.Hosts {
		go func() { _, _ = r.pool.Get(ctx, h.Target()) }()
	}
}

// lock takes the stack-wide lock on the lock host.
func (r *run) lock(ctx context.Context) error {
	lh, err := lockHostOf(r.plan.LockHost, r.plan.Hosts)
	if err != nil {
		return err
	}
	r.ev.emit(Event{Host: lh.Name, Stage: StageLock, Status: StatusStart})
	c, err := r.pool.Get(ctx, lh.Target())
	if err == nil {
		err = r.acquireWaiting(ctx, c, lh)
	}
	if err != nil {
		r.ev.emit(Event{Host: lh.Name, Stage: StageLock, Status: StatusFail, Err: err})
		var le *LockedError
		if errors.As(err, &le) {
			return err
		}
		return fmt.Errorf("deploy lock on %s: %w", lh.Name, err)
	}
	r.locked = true
	r.ev.emit(Event{Host: lh.Name, Stage: StageLock, Status: StatusOK})
	return nil
}

// lockPoll is how often a run waiting for the lock (Deployer.LockWait) asks again.
const lockPoll = time.Second

// acquireWaiting takes the lock, waiting up to Deployer.LockWait while a live run holds it.
// A stale lock (its holder is gone) is returned at once: only an operator may break it.
func (r *run) acquireWaiting(ctx context.Context, c *remote.Client, lh Host) error {
	host, _ := os.Hostname()
	start := time.Now()
	for waiting := false; ; {
		err := acquireLock(ctx, c, r.cfg.Path, LockInfo{Holder: r.cfg.Operator, Hostname: host, PID: os.Getpid(),
			Time: r.d.now().UTC(), Kind: r.plan.Kind, Release: r.plan.Release, Message: r.cfg.Message,
			RunID: r.plan.RunID, Stack: r.cfg.Stack})
		var le *LockedError
		if !errors.As(err, &le) || le.Gone != "" {
			return err
		}
		if time.Since(start) >= r.d.LockWait {
			if waiting {
				le.Waited = time.Since(start)
			}
			return le
		}
		if !waiting {
			waiting = true
			r.ev.emit(Event{Host: lh.Name, Stage: StageLock, Status: StatusProgress,
				Message: fmt.Sprintf("waiting up to %s for the lock held by %s (run %s)", r.d.LockWait, orText(le.Info.Holder, "unknown"), orText(le.Info.RunID, "?"))})
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(lockPoll, max(r.d.LockWait-time.Since(start), time.Millisecond))):
		}
	}
}

// fanOut runs fn on the named hosts over the pool, at most Config.Parallel at a time. A host
// whose connection cannot be opened is recorded failed at StageConnect.
func (r *run) fanOut(ctx context.Context, names []string, fn func(ctx context.Context, c *remote.Client, h Host) error) {
	targets := make([]remote.Target, len(names))
	byTarget := map[remote.Target]Host{}
	for i, n := range names {
		h := r.hosts[n]
		targets[i] = h.Target()
		byTarget[targets[i]] = h
	}
	results := r.pool.FanOut(ctx, targets, r.cfg.Parallel, func(ctx context.Context, c *remote.Client, t remote.Target) error {
		return fn(ctx, c, byTarget[t])
	})
	for i, res := range results {
		// fn records its own failures; what is left is a failure to connect or to start.
		if res.Err == nil || errors.Is(res.Err, errRecorded) {
			continue
		}
		// An interrupt (Ctrl-C, or the caller's deadline) is no failure of the host: its state
		// stays what the journal says, and --resume picks it up from there.
		if ctx.Err() != nil && errors.Is(res.Err, ctx.Err()) {
			continue
		}
		r.hostFailed(names[i], StageConnect, res.Err)
	}
}

// errRecorded tells fanOut that fn already recorded the host's failure.
var errRecorded = errors.New("failure recorded")

// finish prunes and audits what finished, releases the lock unless interrupted, and returns
// the report with the run's error.
func (r *run) finish(ctx context.Context, err error) (*Report, error) {
	r.stopJournal()
	interrupted := err != nil && ctx.Err() != nil
	r.mu.Lock()
	for i := range r.rep.Hosts {
		h := &r.rep.Hosts[i]
		if !interrupted && (h.State == OutcomePending || h.State == OutcomeStaged) {
			h.State = OutcomeNotStarted
		}
	}
	r.mu.Unlock()
	switch {
	case interrupted:
		r.rep.Result = ResultInterrupted
		err = fmt.Errorf("%w: %w; the lock stays held: finish with --resume %s", ErrInterrupted, err, r.plan.RunID)
	case err != nil:
		r.rep.Result = ResultFailed
	case r.failedCount() > 0:
		r.rep.Result = ResultPartial
	default:
		r.rep.Result = ResultOK
	}
	if err != nil {
		r.rep.Error = ErrorLine(err)
	}
	if !r.locked && !r.noop {
		// Refused or failed before doing anything: no audit line, and no journal that
		// Resume could pick up.
		_ = os.Remove(JournalPath(r.cfg.StateDir, r.plan.RunID))
		return r.rep, err
	}
	bg := context.WithoutCancel(ctx)
	if !interrupted && r.plan.Kind == KindDeploy {
		r.prune(bg)
	}
	r.rep.Finished = r.d.now()
	r.rep.BytesSent = r.sentBefore + r.sent.n.Load()
	r.save()
	if !interrupted {
		r.audit(bg)
	}
	if r.locked && !interrupted {
		r.unlock(bg)
	}
	r.rep.BytesSent = r.sentBefore + r.sent.n.Load() // with the audit lines and the unlock
	r.ev.emit(Event{Stage: StageDone, Status: statusOf(err), Message: string(r.rep.Result), Err: err})
	return r.rep, err
}

func statusOf(err error) Status {
	if err != nil {
		return StatusFail
	}
	return StatusOK
}

func (r *run) unlock(ctx context.Context) {
	lh, err := lockHostOf(r.plan.LockHost, r.plan.Hosts)
	if err == nil {
		var c *remote.Client
		if c, err = r.pool.Get(ctx, lh.Target()); err == nil {
			err = releaseLock(ctx, c, r.cfg.Path, r.plan.RunID)
		}
	}
	if err != nil {
		r.ev.emit(Event{Host: lh.Name, Stage: StageLock, Status: StatusFail,
			Err: fmt.Errorf("release deploy lock on %s: %w (release it with: instactl lock release --force)", lh.Name, err)})
		return
	}
	r.ev.emit(Event{Host: lh.Name, Stage: StageLock, Status: StatusOK, Message: "released"})
}

// prune removes old releases on the hosts that took the release.
func (r *run) prune(ctx context.Context) {
	// Only hosts that took a release this run have anything new to prune: an unchanged
	// redeploy prunes nothing and saves a round trip per host (the next deploy that ships
	// something prunes as usual; Deployer.Prune does it on demand).
	var names []string
	for _, h := range r.rep.Hosts {
		if h.State == OutcomeActivated && h.Uploaded {
			names = append(names, h.Host)
		}
	}
	cmd := PruneCommand(r.cfg.Path, r.cfg.Binary, r.cfg.KeepReleases)
	r.pool.FanOut(ctx, targetsOf(r, names), r.cfg.Parallel, func(ctx context.Context, c *remote.Client, t remote.Target) error {
		out, err := runOK(ctx, c, cmd)
		if err != nil {
			r.ev.emit(Event{Host: t.Name, Stage: StagePrune, Status: StatusFail, Err: fmt.Errorf("prune on %s: %w", t.Name, err)})
			return nil
		}
		if n := countPrefix(out, "pruned "); n > 0 {
			r.ev.emit(Event{Host: t.Name, Stage: StagePrune, Status: StatusOK, Message: fmt.Sprintf("%d old releases removed", n)})
		}
		return nil
	})
}

// audit appends the report as one JSON line locally and on every host the run changed or
// failed on (a host that already ran the release and was left alone keeps its log as is).
func (r *run) audit(ctx context.Context) {
	line, err := json.Marshal(r.rep)
	if err == nil {
		err = appendAuditLocal(r.cfg.StateDir, line)
	}
	if err != nil {
		r.ev.emit(Event{Stage: StageAudit, Status: StatusFail, Err: err})
	}
	var names []string
	for _, h := range r.rep.Hosts {
		if h.Stage != StageConnect && h.touched() {
			names = append(names, h.Host)
		}
	}
	cmd := AppendCommand(r.cfg.AuditPath)
	r.pool.FanOut(ctx, targetsOf(r, names), r.cfg.Parallel, func(ctx context.Context, c *remote.Client, t remote.Target) error {
		line := r.hostAuditLine(t.Name)
		countSent(ctx, cmdBytes(cmd)+int64(len(line))+1)
		res, err := c.Run(ctx, cmd, bytesReader(append(line, '\n')))
		if err == nil {
			err = res.Err()
		}
		if err != nil {
			r.ev.emit(Event{Host: t.Name, Stage: StageAudit, Status: StatusFail, Err: fmt.Errorf("audit log on %s: %w", t.Name, err)})
		}
		return nil
	})
}

// hostAuditLine is the audit line a host keeps: the run's report with that host's own entry
// only, so what a deploy sends grows with the hosts, not with their square (the local audit
// log has every host).
func (r *run) hostAuditLine(host string) []byte {
	r.mu.Lock()
	rep := *r.rep
	rep.Hosts = nil
	if h := r.byName[host]; h != nil {
		rep.Hosts = []HostReport{*h}
	}
	r.mu.Unlock()
	b, _ := json.Marshal(&rep)
	return b
}

func targetsOf(r *run, names []string) []remote.Target {
	out := make([]remote.Target, len(names))
	for i, n := range names {
		out[i] = r.hosts[n].Target()
	}
	return out
}
