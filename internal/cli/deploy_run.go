package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/monitor"
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
	if o.Staging != "" {
		env.cfg.Staging = o.Staging
	}
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
	e, err := newShardEnv(ctx, f)
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
				"Run `%s` first, then deploy again. No host was touched.\n(PostgreSQL said: %s)", st.Name, st.Shards.ControlDatabase, e.site.ControlNode(), init, pe.Message)
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
	pool, err := deployPool(ctx, f, o.AcceptNew)
	if err != nil {
		return err
	}
	defer pool.Close()
	st, err := f.Stack()
	if err != nil {
		return err
	}
	store, err := deployStore(ctx, st, p)
	if err != nil {
		return err
	}
	prog := deployNewProgress(f.IO, p)
	d := &deploy.Deployer{Dialer: pool, LB: prov, OnEvent: prog.event, LockWait: o.LockWait, Store: store}
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
	pool, err := deployPool(ctx, f, acceptNew)
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := deployStore(ctx, env.st, p)
	if err != nil {
		return err
	}
	prog := deployNewProgress(f.IO, p)
	var rep *deploy.Report
	// The role's hosts restart and run two releases side by side while this runs: silence
	// exactly that, for exactly as long (monitor.DeploySilence).
	err = silenceOperation(ctx, f, monitor.DeploySilence(env.cfg.Role), fmt.Sprintf("instactl %s %s of role %s", p.Kind, p.RunID, env.cfg.Role), func() error {
		var rerr error
		rep, rerr = run(&deploy.Deployer{Dialer: pool, LB: env.prov, OnEvent: prog.event, LockWait: lockWait, Store: store}, ctx, p)
		return rerr
	})
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
		dir, err := os.Getwd()
		if err != nil {
			return deploy.Artifact{}, noop, err
		}
		var ok bool
		if src, ok = deploy.FindModule(dir); !ok {
			return deploy.Artifact{}, noop, usageErrorf("%s is not inside the instactl source tree, so the app server cannot be built: "+
				"run from the checkout, pass --source DIR, or ship a binary with --artifact FILE", dir)
		}
	}
	store := deploy.BuildStore{Dir: filepath.Join(state, "artifacts"), Keep: 5}
	f.IO.Statusf("build: cmd/instagram-app for linux/amd64 from %s", src)
	start := time.Now()
	a, cleanup, err := store.Build(ctx, deploy.BuildOptions{ModuleDir: src, Version: o.Version}, !o.DryRun)
	if err != nil {
		return a, cleanup, err
	}
	f.IO.Statusf("build: release %s%s, %s, in %s", a.ID, deployVersionNote(a.Version), humanBytes(a.Size), time.Since(start).Round(100*time.Millisecond))
	return a, cleanup, nil
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
	var ce *deploy.CanaryError
	switch {
	case errors.As(err, &ce) && rep != nil:
		return withCode(ExitError, fmt.Errorf("%w; %s; later batches were not touched", err, rep.BatchState(ce.Batch)))
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
