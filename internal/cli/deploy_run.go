package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/internal/errtext"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/jackc/pgx/v5/pgconn"
)

// deployEnv is what every command of the deploy family needs: the stack, the deploy settings
// for the role, the role's hosts as the cloud lists them, and the cloud (for the LB steps).
type deployEnv struct {
	st    *stack.Stack
	cfg   deploy.Config
	hosts []deploy.Host
	prov  cloud.Provider
	state string
}

// deployLoad resolves the stack, the role (default deploy.role) and its live hosts.
func deployLoad(ctx context.Context, f *Factory, role string) (*deployEnv, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, err
	}
	if role != "" && role != st.Deploy.Role {
		if st.Role(role) == nil {
			return nil, usageErrorf("--role %q: the stack has no such role (roles: %s)", role, strings.Join(deployRoleNames(st), ", "))
		}
		cp := *st
		cp.Deploy.Role = role
		st = &cp
	}
	state, err := f.StateDir()
	if err != nil {
		return nil, fmt.Errorf("local state directory: %w", err)
	}
	cfg := deploy.ConfigFromStack(st, state)
	prov, err := f.Provider(ctx)
	if err != nil {
		return nil, err
	}
	res, err := prov.Describe(ctx, st.Name)
	if err != nil {
		return nil, fmt.Errorf("list the hosts of stack %s: %w", st.Name, err)
	}
	hosts := deploy.HostsFromInstances(res.Instances, cfg.Role)
	if len(hosts) == 0 {
		return nil, fmt.Errorf("stack %s has no %s hosts running; create them first (instactl apply, or instactl sandbox up)", st.Name, cfg.Role)
	}
	return &deployEnv{st: st, cfg: cfg, hosts: hosts, prov: prov, state: state}, nil
}

func deployRoleNames(st *stack.Stack) []string {
	var names []string
	for _, r := range st.Roles {
		names = append(names, r.Name)
	}
	return names
}

// deployApplyFlags applies the flags shared by deploy and rollback to the stack's settings.
func deployApplyFlags(cfg *deploy.Config, batches []string, maxFail, message string) {
	if len(batches) > 0 {
		cfg.Batches = batches
	}
	if maxFail != "" {
		cfg.MaxFail = maxFail
	}
	cfg.Message = message
}

// deployRun is `instactl deploy`.
func deployRun(ctx context.Context, f *Factory, out Output, o *DeployOptions) error {
	if o.Resume != "" {
		return deployResume(ctx, f, out, o)
	}
	env, err := deployLoad(ctx, f, o.Role)
	if err != nil {
		return err
	}
	if err := deployCheckShardMap(ctx, f, env); err != nil {
		if !o.DryRun {
			return err
		}
		f.IO.Statusf("note: a real deploy would be refused now: %v", err)
	}
	deployApplyFlags(&env.cfg, o.Batches, o.MaxFail, o.Message)
	a, cleanup, err := deployArtifact(ctx, f, env.state, o)
	if err != nil {
		return err
	}
	defer cleanup()
	env.cfg.VerifyVersion = a.Version != ""
	p, err := deploy.NewPlan(deploy.KindDeploy, env.cfg, env.hosts, a, "", deploy.NewRunID(time.Now()))
	if err != nil {
		return usageErrorf("plan the deploy: %v", err)
	}
	if o.DryRun {
		return deployRenderPlan(f, out, p)
	}
	f.IO.Statusf("deploy %s: release %s%s to %d %s hosts in %d batches", p.RunID, a.ID, deployVersionNote(a.Version),
		len(p.Hosts), env.cfg.Role, len(p.Batches))
	return deployExecute(ctx, f, out, env, p, o.AcceptNew, o.LockWait, (*deploy.Deployer).Deploy)
}

// deployCheckShardMap refuses, before any host is touched, a deploy of the app servers on a
// stack whose control database holds no shard map: the app server reads the map at start, so
// every host would fail its health gate and the canary would stop the deploy with an error
// that does not say why. Stacks without the shards role, and roles other than app, need no map.
func deployCheckShardMap(ctx context.Context, f *Factory, env *deployEnv) error {
	st := env.st
	if env.cfg.Role != templates.RoleApp || st.Role(st.Shards.Role) == nil {
		return nil
	}
	e, err := newShardEnv(f)
	if err != nil {
		return err
	}
	defer e.close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := shardLoadMap(ctx, e); err != nil {
		init := shardCmdLine(f, "shard", "init")
		var pe *pgconn.PgError
		// 3D000: no such database; 42P01: no such table.
		if errors.As(err, &pe) && (pe.Code == "3D000" || pe.Code == "42P01") {
			return usageErrorf("stack %s has no shard map yet (control database %s on %s): the app server cannot start without it.\n"+
				"Run `%s` first, then deploy again. No host was touched.\n(%v)", st.Name, st.Shards.ControlDatabase, e.nodes[0].Name, init, err)
		}
		return fmt.Errorf("read the shard map before deploying (the app server cannot start without it); no host was touched: %w", err)
	}
	return nil
}

// deployResume is `instactl deploy --resume RUN`.
func deployResume(ctx context.Context, f *Factory, out Output, o *DeployOptions) error {
	state, err := f.StateDir()
	if err != nil {
		return err
	}
	p, _, err := deploy.LoadJournal(state, o.Resume)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return usageErrorf("--resume %s: no such run in %s (run ids are in `instactl lock status` and the audit log)",
				o.Resume, filepath.Join(state, "runs"))
		}
		return fmt.Errorf("read the journal of run %s: %w", o.Resume, err)
	}
	prov, err := f.Provider(ctx)
	if err != nil {
		return err
	}
	pool, err := f.SSH(o.AcceptNew)
	if err != nil {
		return err
	}
	defer pool.Close()
	prog := deployNewProgress(f.IO, p)
	d := &deploy.Deployer{Dialer: pool, LB: prov, OnEvent: prog.event, LockWait: o.LockWait}
	f.IO.Statusf("resuming %s %s: release %s on %d hosts", p.Kind, p.RunID, orDash(p.Release), len(p.Hosts))
	rep, err := d.Resume(ctx, state, o.Resume)
	prog.finish()
	return deployFinish(f, out, rep, err)
}

// deployRollbackRun is `instactl rollback`.
func deployRollbackRun(ctx context.Context, f *Factory, out Output, o *RollbackOptions) error {
	env, err := deployLoad(ctx, f, o.Role)
	if err != nil {
		return err
	}
	deployApplyFlags(&env.cfg, o.Batches, o.MaxFail, o.Message)
	p, err := deploy.NewPlan(deploy.KindRollback, env.cfg, env.hosts, deploy.Artifact{}, o.To, deploy.NewRunID(time.Now()))
	if err != nil {
		return usageErrorf("plan the rollback: %v", err)
	}
	if o.DryRun {
		return deployRenderPlan(f, out, p)
	}
	f.IO.Statusf("rollback %s: %d %s hosts to %s", p.RunID, len(p.Hosts), env.cfg.Role, deployOrText(o.To, "their previous release"))
	return deployExecute(ctx, f, out, env, p, o.AcceptNew, o.LockWait, (*deploy.Deployer).Rollback)
}

// deployExecute runs a deploy or rollback plan over one SSH pool with live progress, and
// renders the report.
func deployExecute(ctx context.Context, f *Factory, out Output, env *deployEnv, p *deploy.Plan, acceptNew bool, lockWait time.Duration,
	run func(*deploy.Deployer, context.Context, *deploy.Plan) (*deploy.Report, error)) error {
	pool, err := f.SSH(acceptNew)
	if err != nil {
		return err
	}
	defer pool.Close()
	prog := deployNewProgress(f.IO, p)
	rep, err := run(&deploy.Deployer{Dialer: pool, LB: env.prov, OnEvent: prog.event, LockWait: lockWait}, ctx, p)
	prog.finish()
	return deployFinish(f, out, rep, err)
}

func deployOrText(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

func deployVersionNote(v string) string {
	if v == "" {
		return ""
	}
	return " (" + v + ")"
}

func deployRenderPlan(f *Factory, out Output, p *deploy.Plan) error {
	if err := render(f.IO, out, p, p.Render); err != nil {
		return err
	}
	f.IO.Statusf("Dry run: nothing was changed. Run again without --dry-run to apply.")
	return nil
}

// deployArtifact opens --artifact or builds the app server. A build for a real deploy is kept
// under the state directory (a resumed run re-reads it); a dry run's is removed afterwards.
func deployArtifact(ctx context.Context, f *Factory, state string, o *DeployOptions) (deploy.Artifact, func(), error) {
	noop := func() {}
	if o.Artifact != "" {
		a, err := deploy.OpenArtifact(o.Artifact)
		if err != nil {
			return a, noop, usageErrorf("--artifact %s: %v", o.Artifact, err)
		}
		a.Version = o.Version
		return a, noop, nil
	}
	src := o.Source
	if src == "" {
		var err error
		if src, err = deployFindModule(); err != nil {
			return deploy.Artifact{}, noop, err
		}
	}
	dir := filepath.Join(state, "artifacts")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return deploy.Artifact{}, noop, err
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return deploy.Artifact{}, noop, err
	}
	bo := deploy.BuildOptions{ModuleDir: src, Output: filepath.Join(tmp, "instagram-app"), Version: o.Version}
	f.IO.Statusf("build: cmd/instagram-app for linux/amd64 from %s", src)
	start := time.Now()
	a, err := deploy.Build(ctx, bo)
	if err != nil {
		os.RemoveAll(tmp)
		return a, noop, fmt.Errorf("build the app server: %w", err)
	}
	f.IO.Statusf("build: release %s%s, %s, in %s", a.ID, deployVersionNote(a.Version), humanBytes(a.Size), time.Since(start).Round(100*time.Millisecond))
	if o.DryRun {
		return a, func() { os.RemoveAll(tmp) }, nil
	}
	final := filepath.Join(dir, a.ID)
	if _, err := os.Stat(final); err == nil {
		os.RemoveAll(tmp)
	} else if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return a, noop, err
	}
	a.Path = filepath.Join(final, "instagram-app")
	deployPruneArtifacts(dir, 5)
	return a, noop, nil
}

// deployPruneArtifacts keeps the newest keep local builds.
func deployPruneArtifacts(dir string, keep int) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type built struct {
		path string
		mod  time.Time
	}
	var all []built
	for _, e := range ents {
		if info, err := e.Info(); err == nil && e.IsDir() && !strings.HasPrefix(e.Name(), "build-") {
			all = append(all, built{filepath.Join(dir, e.Name()), info.ModTime()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mod.After(all[j].mod) })
	for i := keep; i < len(all); i++ {
		os.RemoveAll(all[i].path)
	}
}

// deployFindModule finds the instactl source tree containing the working directory.
func deployFindModule() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/instactl/instactl\n")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			break
		}
	}
	return "", usageErrorf("%s is not inside the instactl source tree, so the app server cannot be built: "+
		"run from the checkout, pass --source DIR, or ship a binary with --artifact FILE", dir)
}

// deployFinish renders the report and turns the outcome into the exit code.
func deployFinish(f *Factory, out Output, rep *deploy.Report, err error) error {
	var le *deploy.LockedError
	if errors.As(err, &le) {
		if out == OutputJSON && rep != nil {
			_ = render(f.IO, out, rep, nil)
		}
		return withCode(ExitLocked, errors.New(deployLockedText(le)))
	}
	if rep != nil {
		if rerr := render(f.IO, out, rep, func(w io.Writer) error { return deployRenderReport(w, rep) }); rerr != nil {
			return rerr
		}
	}
	var mf *deploy.MaxFailError
	switch {
	case errors.As(err, &mf) && rep == nil:
		return withCode(ExitError, err)
	case errors.As(err, &mf):
		return withCode(ExitError, fmt.Errorf("%w; %s; later batches were not touched", err, rep.BatchState(mf.Batch)))
	case errors.Is(err, deploy.ErrInterrupted) || errors.Is(err, context.Canceled):
		id := "RUN"
		if rep != nil {
			id = rep.RunID
		}
		return withCode(ExitError, fmt.Errorf("%w; the deploy lock stays held: finish with instactl deploy --resume %s", err, id))
	case err != nil:
		return err
	case rep != nil && rep.Result == deploy.ResultPartial:
		failed := rep.Failed()
		return withCode(ExitPartial, fmt.Errorf("%d of %d hosts failed (within --max-fail); fix them and deploy again: hosts already on release %s are skipped",
			len(failed), len(rep.Hosts), rep.Release))
	}
	return nil
}

// deployLockedText names the holder, the time, the message and the ways out.
func deployLockedText(le *deploy.LockedError) string {
	i := le.Info
	var b strings.Builder
	fmt.Fprintf(&b, "the deploy lock on %s is held by %s since %s (%s ago)\n", le.Host, deployOrText(i.Holder, "unknown"),
		i.Time.Format(time.RFC3339), time.Since(i.Time).Round(time.Second))
	if i.PID > 0 {
		fmt.Fprintf(&b, "  process: %d on %s\n", i.PID, deployOrText(i.Hostname, "?"))
	}
	fmt.Fprintf(&b, "  run:     %s (%s of release %s)\n", deployOrText(i.RunID, "?"), deployOrText(string(i.Kind), "deploy"), deployOrText(i.Release, "?"))
	if i.Message != "" {
		fmt.Fprintf(&b, "  message: %s\n", i.Message)
	}
	if le.Gone != "" {
		fmt.Fprintf(&b, "the lock is stale: %s, so that run was killed and will not release it\n", le.Gone)
		fmt.Fprintf(&b, "fix: finish that run with instactl deploy --resume %s (it converges every host), "+
			"or break the lock with instactl lock release --force", deployOrText(i.RunID, "RUN"))
		return b.String()
	}
	if le.Waited > 0 {
		fmt.Fprintf(&b, "  waited:  %s (--lock-wait)\n", le.Waited.Round(time.Second))
	}
	fmt.Fprintf(&b, "fix: wait for that run to finish (--lock-wait DURATION waits for it); if it was interrupted, finish it with instactl deploy --resume %s; "+
		"if it is dead, drop the lock with instactl lock release --force", deployOrText(i.RunID, "RUN"))
	return b.String()
}

// deployRenderReport is the human result: one line per batch (not per host), then the hosts
// that failed with their first error line.
func deployRenderReport(w io.Writer, rep *deploy.Report) error {
	fmt.Fprintf(w, "%s %s: release %s%s on %d %s hosts: %s\n", rep.Kind, rep.RunID, orDash(rep.Release),
		deployVersionNote(rep.Version), len(rep.Hosts), rep.Role, strings.ToUpper(string(rep.Result)))
	if rep.Kind == deploy.KindDeploy {
		uploaded, bytes := 0, int64(0)
		for _, h := range rep.Hosts {
			if h.Uploaded {
				uploaded++
				bytes += h.Bytes
			}
		}
		fmt.Fprintf(w, "  stage    %d hosts uploaded (%s), %d already had it, %s\n", uploaded, humanBytes(bytes),
			len(rep.Hosts)-uploaded, deployMS(rep.StageMS))
	}
	var batches []int
	byBatch := map[int][]deploy.HostReport{}
	for _, h := range rep.Hosts {
		if _, ok := byBatch[h.Batch]; !ok {
			batches = append(batches, h.Batch)
		}
		byBatch[h.Batch] = append(byBatch[h.Batch], h)
	}
	slices.Sort(batches)
	for _, b := range batches {
		hs := byBatch[b]
		counts := map[deploy.Outcome]int{}
		var order []deploy.Outcome
		for _, h := range hs {
			if counts[h.State] == 0 {
				order = append(order, h.State)
			}
			counts[h.State]++
		}
		var parts []string
		for _, o := range order {
			parts = append(parts, fmt.Sprintf("%s %d", o, counts[o]))
		}
		fmt.Fprintf(w, "  batch %d  %-3d hosts %-22s %s\n", b, len(hs), deployHostRange(hs), strings.Join(parts, ", "))
	}
	if rep.ActivateMS > 0 {
		fmt.Fprintf(w, "  activated in %s\n", deployMS(rep.ActivateMS))
	}
	var bad []deploy.HostReport
	for _, h := range rep.Hosts {
		if h.Error != "" || h.RollbackError != "" || h.State == deploy.OutcomeFailed || h.State == deploy.OutcomeRolledBack ||
			h.State == deploy.OutcomeStopped {
			bad = append(bad, h)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nHosts that failed:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tBATCH\tOUTCOME\tSTAGE\tERROR")
	for _, h := range bad {
		msg := h.Error
		if msg == "" {
			msg = h.Note
		} else if h.Note != "" {
			msg += "; " + h.Note
		}
		if h.RollbackError != "" {
			msg += "; rollback failed: " + h.RollbackError
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", h.Host, h.Batch, h.State, orDash(string(h.Stage)), orDash(errtext.OneLine(msg)))
	}
	return tw.Flush()
}

// deployHostRange names a batch's hosts compactly: "app-0", "app-1 app-2", "app-3..app-49".
func deployHostRange(hs []deploy.HostReport) string {
	switch len(hs) {
	case 0:
		return "-"
	case 1:
		return hs[0].Host
	case 2:
		return hs[0].Host + " " + hs[1].Host
	}
	return hs[0].Host + ".." + hs[len(hs)-1].Host
}

func deployMS(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).Round(100 * time.Millisecond).String()
}

// deployProgress renders a run's events on stderr: one "host | stage status" line per host
// event, and a line per batch as it completes. On a terminal, upload progress is one status
// line rewritten in place instead of a line per chunk.
type deployProgress struct {
	io      *IOStreams
	start   time.Time
	batches int
	// per batch: hosts that finished and failed, from the events
	done, failed map[int]map[string]bool
	batchOf      map[string]int
	// upload progress per host, for the terminal's status line
	sent, total map[string]int64
	status      bool
}

func deployNewProgress(io *IOStreams, p *deploy.Plan) *deployProgress {
	d := &deployProgress{io: io, start: time.Now(), batches: len(p.Batches),
		done: map[int]map[string]bool{}, failed: map[int]map[string]bool{}, batchOf: map[string]int{},
		sent: map[string]int64{}, total: map[string]int64{}}
	for _, b := range p.Batches {
		for _, h := range b.Hosts {
			d.batchOf[h] = b.Index
		}
	}
	return d
}

// event is called by the library one event at a time.
func (p *deployProgress) event(ev deploy.Event) {
	if ev.Stage == deploy.StageUpload && ev.Status == deploy.StatusProgress {
		p.sent[ev.Host], p.total[ev.Host] = ev.Bytes, ev.Total
		if p.io.ErrTTY {
			p.showUploads()
		}
		return
	}
	if ev.Stage == deploy.StageUpload && ev.Status == deploy.StatusOK {
		p.sent[ev.Host], p.total[ev.Host] = ev.Total, ev.Total
	}
	if b := p.batchOf[ev.Host]; b > 0 {
		switch {
		case ev.Status == deploy.StatusFail:
			deployMark(p.failed, b, ev.Host)
		case ev.Stage == deploy.StageDone && ev.Status != deploy.StatusFail:
			deployMark(p.done, b, ev.Host)
		}
	}
	p.clearStatus()
	p.line(ev)
	if ev.Stage == deploy.StageBatch && ev.Status != deploy.StatusStart {
		p.batchLine(ev)
	}
}

func deployMark(m map[int]map[string]bool, batch int, host string) {
	if m[batch] == nil {
		m[batch] = map[string]bool{}
	}
	m[batch][host] = true
}

func (p *deployProgress) elapsed() string {
	return fmt.Sprintf("[%6.1fs]", time.Since(p.start).Seconds())
}

// line writes one event as "[  1.2s] app-0 | upload ok: 21.0 MB".
func (p *deployProgress) line(ev deploy.Event) {
	who := ev.Host
	if who == "" {
		who = "run"
		if ev.Batch > 0 {
			who = fmt.Sprintf("batch %d/%d", ev.Batch, p.batches)
		}
	}
	msg := ev.Message
	if ev.Stage == deploy.StageUpload && ev.Status == deploy.StatusOK && ev.Total > 0 {
		msg = humanBytes(ev.Total)
	}
	if msg != "" {
		msg = ": " + msg
	}
	what := string(ev.Stage) + " " + string(ev.Status)
	if ev.Stage == deploy.StageBatch {
		what = string(ev.Status)
	}
	fmt.Fprintf(p.io.ErrOut, "%s %s | %s%s\n", p.elapsed(), who, what, msg)
}

// batchLine is the summary that grows by one line per batch.
func (p *deployProgress) batchLine(ev deploy.Event) {
	fmt.Fprintf(p.io.ErrOut, "%s == batch %d/%d %s: %d hosts done, %d failed\n", p.elapsed(), ev.Batch, p.batches,
		ev.Status, len(p.done[ev.Batch]), len(p.failed[ev.Batch]))
}

func (p *deployProgress) showUploads() {
	var sent, total int64
	busy := 0
	for h, t := range p.total {
		sent += p.sent[h]
		total += t
		if p.sent[h] < t {
			busy++
		}
	}
	fmt.Fprintf(p.io.ErrOut, "\r\033[Kstaging: %d hosts uploading, %s of %s", busy, humanBytes(sent), humanBytes(total))
	p.status = true
}

func (p *deployProgress) clearStatus() {
	if p.status {
		fmt.Fprint(p.io.ErrOut, "\r\033[K")
		p.status = false
	}
}

func (p *deployProgress) finish() { p.clearStatus() }

// deployReleasesRun is `instactl releases`.
func deployReleasesRun(ctx context.Context, f *Factory, out Output, o *ReleasesOptions) error {
	env, err := deployLoad(ctx, f, o.Role)
	if err != nil {
		return err
	}
	pool, err := f.SSH(o.AcceptNew)
	if err != nil {
		return err
	}
	defer pool.Close()
	d := &deploy.Deployer{Dialer: pool}
	rels, err := d.Releases(ctx, env.cfg, env.hosts)
	if err != nil {
		return err
	}
	if err := render(f.IO, out, rels, func(w io.Writer) error { return deployRenderReleases(w, rels) }); err != nil {
		return err
	}
	failed := 0
	for _, h := range rels {
		if h.Error != "" {
			failed++
		}
	}
	return deployHostsExit(failed, len(rels), "could not list releases")
}

// deployHostsExit is 0 when no host failed, 5 when some did, 1 when all did.
func deployHostsExit(failed, total int, what string) error {
	switch {
	case failed == 0:
		return nil
	case failed == total:
		return withCode(ExitError, fmt.Errorf("%s on all %d hosts", what, total))
	}
	return withCode(ExitPartial, fmt.Errorf("%s on %d of %d hosts", what, failed, total))
}

func deployRenderReleases(w io.Writer, rels []deploy.HostReleases) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\t \tRELEASE\tSTAGED\tSIZE\tNOTE")
	for _, h := range rels {
		if h.Error != "" {
			fmt.Fprintf(tw, "%s\t \t-\t-\t-\tERROR: %s\n", h.Host, errtext.OneLine(h.Error))
			continue
		}
		if len(h.Releases) == 0 {
			fmt.Fprintf(tw, "%s\t \t-\t-\t-\tnothing deployed\n", h.Host)
		}
		for _, r := range h.Releases {
			mark, note := " ", ""
			if r.Current {
				mark, note = "*", "current"
			}
			if r.Previous {
				note = "previous (rollback target)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", h.Host, mark, r.ID, r.StagedAt.Local().Format("2006-01-02 15:04:05"),
				humanBytes(r.Size), note)
		}
	}
	return tw.Flush()
}

// deployLockState is `instactl lock status -o json`.
type deployLockState struct {
	Held bool             `json:"held"`
	Host string           `json:"host"`
	Info *deploy.LockInfo `json:"info,omitempty"`
	// Stale says why the holder is known to be dead, if it is.
	Stale string `json:"stale,omitempty"`
}

// deployLockStatusRun is `instactl lock status`; it exits 4 when the lock is held.
func deployLockStatusRun(ctx context.Context, f *Factory, out Output, o *LockOptions) error {
	env, err := deployLoad(ctx, f, o.Role)
	if err != nil {
		return err
	}
	pool, err := f.SSH(false)
	if err != nil {
		return err
	}
	defer pool.Close()
	d := &deploy.Deployer{Dialer: pool}
	info, host, err := d.LockStatus(ctx, env.cfg, env.hosts)
	if err != nil {
		return err
	}
	st := deployLockState{Held: info != nil, Host: host, Info: info}
	if info != nil {
		st.Stale = deploy.HolderGone(*info)
	}
	err = render(f.IO, out, st, func(w io.Writer) error {
		if info == nil {
			_, err := fmt.Fprintf(w, "The deploy lock of %s (on %s) is free.\n", env.st.Name, host)
			return err
		}
		_, err := fmt.Fprintln(w, deployLockedText(&deploy.LockedError{Host: host, Info: *info, Gone: st.Stale}))
		return err
	})
	if err != nil {
		return err
	}
	if info != nil {
		return silentExit{ExitLocked}
	}
	return nil
}

// deployLockReleaseRun is `instactl lock release`.
func deployLockReleaseRun(ctx context.Context, f *Factory, o *LockOptions) error {
	env, err := deployLoad(ctx, f, o.Role)
	if err != nil {
		return err
	}
	pool, err := f.SSH(false)
	if err != nil {
		return err
	}
	defer pool.Close()
	d := &deploy.Deployer{Dialer: pool}
	if err := d.ReleaseLock(ctx, env.cfg, env.hosts, o.Run, o.Force); err != nil {
		var le *deploy.LockedError
		if errors.As(err, &le) {
			return withCode(ExitLocked, errors.New(deployLockedText(le)))
		}
		return err
	}
	f.IO.Statusf("The deploy lock of %s is released.", env.st.Name)
	return nil
}

// deployRunResult is one host's outcome of `instactl run` (-o json).
type deployRunResult struct {
	Host       string `json:"host"`
	Address    string `json:"address"`
	ExitCode   int    `json:"exit_code"`
	Signal     string `json:"signal,omitempty"`
	Stdout     string `json:"stdout,omitempty"`
	Stderr     string `json:"stderr,omitempty"`
	DurationMS int64  `json:"duration_ms"`
	// Error is set when the command did not run to completion (connection, host key).
	Error string `json:"error,omitempty"`
}

// deployRunTargets picks the hosts of `instactl run`: a role, named hosts, or all of them.
func deployRunTargets(ctx context.Context, f *Factory, o *RunOptions) ([]deploy.Host, error) {
	st, err := f.Stack()
	if err != nil {
		return nil, err
	}
	if o.Role != "" && st.Role(o.Role) == nil {
		return nil, usageErrorf("--role %q: the stack has no such role (roles: %s)", o.Role, strings.Join(deployRoleNames(st), ", "))
	}
	prov, err := f.Provider(ctx)
	if err != nil {
		return nil, err
	}
	res, err := prov.Describe(ctx, st.Name)
	if err != nil {
		return nil, fmt.Errorf("list the hosts of stack %s: %w", st.Name, err)
	}
	var all []deploy.Host
	for _, r := range st.Roles {
		if o.Role == "" || o.Role == r.Name {
			all = append(all, deploy.HostsFromInstances(res.Instances, r.Name)...)
		}
	}
	if len(o.Hosts) == 0 {
		if len(all) == 0 {
			return nil, fmt.Errorf("stack %s has no matching hosts running; create them first (instactl apply, or instactl sandbox up)", st.Name)
		}
		return all, nil
	}
	byName := map[string]deploy.Host{}
	var names []string
	for _, h := range all {
		byName[h.Name] = h
		// Hosts may be named after the stack ("instagram-app-0"); "app-0" is enough.
		byName[strings.TrimPrefix(h.Name, st.Name+"-")] = h
		names = append(names, h.Name)
	}
	var sel []deploy.Host
	for _, n := range o.Hosts {
		h, ok := byName[n]
		if !ok {
			return nil, usageErrorf("--hosts: no running host %q in stack %s (hosts: %s)", n, st.Name, strings.Join(names, ", "))
		}
		sel = append(sel, h)
	}
	return sel, nil
}

// deployRunCommand is the remote command: one argument is a shell script, several an argv.
func deployRunCommand(args []string) remote.Command {
	if len(args) == 1 {
		return remote.Script(args[0])
	}
	return remote.Cmd(args...)
}

// deployRunCmdRun is `instactl run`.
func deployRunCmdRun(ctx context.Context, f *Factory, out Output, o *RunOptions) error {
	hosts, err := deployRunTargets(ctx, f, o)
	if err != nil {
		return err
	}
	pool, err := f.SSH(o.AcceptNew)
	if err != nil {
		return err
	}
	defer pool.Close()
	cmd := deployRunCommand(o.Command)
	targets := make([]remote.Target, len(hosts))
	results := make([]deployRunResult, len(hosts))
	index := map[remote.Target]int{}
	for i, h := range hosts {
		targets[i] = h.Target()
		index[targets[i]] = i
		results[i] = deployRunResult{Host: h.Name, Address: h.Address, ExitCode: -1}
	}
	stdout, stderr := remote.NewSharedWriter(f.IO.Out), remote.NewSharedWriter(f.IO.ErrOut)
	var mu sync.Mutex
	res := pool.FanOut(ctx, targets, o.Parallel, func(ctx context.Context, c *remote.Client, t remote.Target) error {
		var ow, ew io.Writer
		var closers []io.Closer
		if out != OutputJSON {
			pw, pe := remote.NewPrefixWriter(stdout, t.Name), remote.NewPrefixWriter(stderr, t.Name)
			ow, ew, closers = pw, pe, []io.Closer{pw, pe}
		}
		r, err := c.RunStream(ctx, cmd, nil, ow, ew)
		for _, cl := range closers {
			cl.Close()
		}
		if err != nil {
			return err
		}
		mu.Lock()
		res := &results[index[t]]
		res.ExitCode, res.Signal = r.ExitCode, r.Signal
		if out == OutputJSON {
			res.Stdout, res.Stderr = string(r.Stdout), string(r.Stderr)
		}
		mu.Unlock()
		return r.Err()
	})
	failed := 0
	for i, r := range res {
		results[i].DurationMS = r.Duration.Milliseconds()
		if r.Err != nil {
			failed++
			var ee *remote.ExitError
			if !errors.As(r.Err, &ee) {
				results[i].Error = deploy.ErrorLine(r.Err)
			}
		}
	}
	if out == OutputJSON {
		if err := render(f.IO, out, results, nil); err != nil {
			return err
		}
	} else {
		deployRunSummary(f.IO.ErrOut, results, failed)
	}
	if failed > 0 {
		return deployRunExit(failed, len(results))
	}
	return nil
}

// deployRunExit ends `run` after its summary: 5 if some hosts failed, 1 if all did.
func deployRunExit(failed, total int) error {
	if failed == total {
		return silentExit{ExitError}
	}
	return silentExit{ExitPartial}
}

// deployRunSummary is the table of exit codes after the hosts' output.
func deployRunSummary(w io.Writer, results []deployRunResult, failed int) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tEXIT\tTIME\tERROR")
	for _, r := range results {
		code := fmt.Sprint(r.ExitCode)
		if r.ExitCode < 0 {
			code = "-"
		} else if r.Signal != "" {
			code += " (SIG" + r.Signal + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Host, code, deployMS(r.DurationMS), orDash(r.Error))
	}
	tw.Flush()
	if failed == 0 {
		fmt.Fprintf(w, "%d hosts: all exited 0\n", len(results))
		return
	}
	fmt.Fprintf(w, "%d hosts: %d ok, %d failed\n", len(results), len(results)-failed, failed)
}
