package deploy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/remote"
)

// LoadBalancer is the part of cloud.Provider a deploy uses to take hosts out of rotation and
// put them back.
type LoadBalancer interface {
	RegisterInstances(ctx context.Context, lbName string, instanceIDs []string) error
	DeregisterInstances(ctx context.Context, lbName string, instanceIDs []string) error
	InstanceHealth(ctx context.Context, lbName string) ([]cloud.InstanceHealth, error)
}

var _ LoadBalancer = cloud.Provider(nil)

// Deployer runs plans. Its zero value is not usable: set Dialer.
type Deployer struct {
	// Dialer opens SSH connections. Each run keeps one connection per host (a remote.Pool
	// over Dialer) and reuses it for every step.
	Dialer remote.Dialer
	// LB is the load balancer provider; nil (or an empty Config.LoadBalancer) skips the LB
	// steps.
	LB LoadBalancer
	// OnEvent receives progress events, one at a time, in order per host. It must not block
	// for long: the run waits for it.
	OnEvent func(Event)
	// HTTPClient runs health checks (default: a client with a 2s timeout and no keep-alive,
	// so every check opens a fresh connection to the new process).
	HTTPClient *http.Client
	// Now is the clock (default time.Now).
	Now func() time.Time
	// LockWait is how long a run waits for a lock held by a live run before it gives up with
	// *LockedError (0: it does not wait). A lock whose holder is gone is never waited for.
	LockWait time.Duration
	// Store is the object store S3 staging uploads to (Config.Staging StagingS3). Without it
	// an S3-staged plan stages over SSH, and the report says why.
	Store ObjectStore

	// fetchURL, when set, replaces the presigned URL host h fetches (tests: a host that
	// cannot reach S3).
	fetchURL func(h Host, url string) string
}

func (d *Deployer) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Deployer) httpClient() *http.Client {
	if d.HTTPClient != nil {
		return d.HTTPClient
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// Deploy runs a deploy plan (NewPlan with KindDeploy): lock, stage on every host in parallel,
// activate batch by batch, prune, audit, unlock; or, when every host already runs the
// release and the lock is free, nothing but one probe per host (see the package doc). The returned report is complete even with an
// error. Errors: *LockedError when another run holds the lock, *MaxFailError when too many
// hosts failed (the failing batch is rolled back), ErrInterrupted (wrapped) when ctx ended
// (the lock stays held; Resume finishes the run).
func (d *Deployer) Deploy(ctx context.Context, p *Plan) (*Report, error) {
	if p.Kind != KindDeploy {
		return nil, fmt.Errorf("deploy: plan is a %s", p.Kind)
	}
	return d.execute(ctx, p, nil)
}

// Rollback runs a rollback plan (NewPlan with KindRollback): every host switches back to its
// previous release (or the named one) batch by batch, with the same LB, health and max-fail
// handling as a deploy, and without uploading anything.
func (d *Deployer) Rollback(ctx context.Context, p *Plan) (*Report, error) {
	if p.Kind != KindRollback {
		return nil, fmt.Errorf("rollback: plan is a %s", p.Kind)
	}
	return d.execute(ctx, p, nil)
}

// Resume finishes run runID from its journal in stateDir: hosts already activated (by the
// journal or by their on-host marker) are left alone; the others are staged if needed and
// activated in their planned batches. The lock must be free or held by that same run.
func (d *Deployer) Resume(ctx context.Context, stateDir, runID string) (*Report, error) {
	p, rep, err := LoadJournal(stateDir, runID)
	if err != nil {
		return nil, err
	}
	if rep.Result != ResultInterrupted && rep.Result != "" {
		return rep, fmt.Errorf("run %s finished (%s); nothing to resume", runID, rep.Result)
	}
	p.Config.StateDir = stateDir
	rep.Resumes++
	return d.execute(ctx, p, rep)
}

// execute runs p, starting from prior (a resumed run's report) when not nil.
func (d *Deployer) execute(ctx context.Context, p *Plan, prior *Report) (*Report, error) {
	if d.Dialer == nil {
		return nil, errors.New("deployer: no SSH dialer")
	}
	pool, done := d.pool()
	defer done()
	r := newRun(d, p, prior, pool)
	r.startJournal()
	ctx = withSent(ctx, &r.sent)
	err := r.do(ctx)
	return r.finish(ctx, err)
}
