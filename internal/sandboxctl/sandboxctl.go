package sandboxctl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-multierror"
	"github.com/instactl/instactl/cloud/sandbox"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"golang.org/x/sync/errgroup"
)

// UpReport says what `sandbox up` did.
type UpReport struct {
	Stack     string        `json:"stack"`
	Dir       string        `json:"dir"`
	Plan      string        `json:"plan"` // the plan's summary line, "No changes." on a second up
	Restarted []string      `json:"restarted,omitempty"`
	Hosts     int           `json:"hosts"`
	S3        string        `json:"s3_endpoint"`
	LB        string        `json:"load_balancer"`
	Duration  time.Duration `json:"duration"`
}

// Moto returns the stack's local AWS API.
func MotoFor(st *stack.Stack) Moto {
	return Moto{Dir: filepath.Join(st.Sandbox.Dir, "moto"), Port: st.Sandbox.MotoPort}
}

// Up makes the sandbox match the stack: moto and the photo bucket, then the same plan/apply as
// AWS through the sandbox provider, then every host's bootstrap. A second Up changes nothing.
// progress receives one line per phase.
func Up(ctx context.Context, st *stack.Stack, p *sandbox.Provider, progress func(string)) (*UpReport, error) {
	start := time.Now()
	if err := Preflight(); err != nil {
		return nil, err
	}
	rep := &UpReport{Stack: st.Name, Dir: st.Sandbox.Dir}
	// Another stack in the way is said once, with the command that frees it, before anything
	// starts: its plan would otherwise destroy or refuse to change the other stack's hosts, or
	// fail once per host.
	if err := checkOwner(st); err != nil {
		return nil, err
	}
	if err := checkAddresses(st, p); err != nil {
		return nil, err
	}
	if err := recordOwner(st); err != nil {
		return nil, err
	}
	// Hosts left from an earlier session whose processes are gone come back first.
	restarted, err := p.StartStopped(ctx)
	if err != nil {
		return nil, fmt.Errorf("restart stopped hosts: %w", err)
	}
	rep.Restarted = restarted
	moto := MotoFor(st)
	progress("starting moto_server (S3) on " + moto.Endpoint())
	if err := moto.Start(ctx); err != nil {
		return nil, err
	}
	rep.S3 = moto.Endpoint()
	if err := moto.EnsureBucket(ctx, st.Region, templates.PhotoBucket(st)); err != nil {
		return nil, err
	}
	if err := moto.AllowPhotoReads(ctx, st.Region, templates.PhotoBucket(st)); err != nil {
		return nil, err
	}
	env, err := templates.AppEnv(st)
	if err != nil {
		return nil, err
	}
	desired, err := provision.Desired(st, func(h stack.HostRef) (string, error) { return templates.ForHost(st, h, env) })
	if err != nil {
		return nil, err
	}
	actual, err := p.Describe(ctx, st.Name)
	if err != nil {
		return nil, err
	}
	plan := provision.Compute(desired, actual)
	rep.Plan = plan.Summary().String()
	progress(rep.Plan)
	if refused := plan.Refused(); len(refused) > 0 {
		var lines []string
		for _, c := range refused {
			lines = append(lines, "  "+c.Address+": "+c.Refuse)
		}
		return nil, fmt.Errorf("%s: %d change(s) cannot be applied to the sandbox, so nothing was:\n%s\nchange the stack file back, or run instactl --stack %s apply --replace ADDR to replace a host",
			st.Path, len(refused), strings.Join(lines, "\n"), st.Path)
	}
	if plan.HasChanges() {
		if _, err := provision.Apply(ctx, p, plan, provision.WithParallelism(8)); err != nil {
			return nil, fmt.Errorf("apply the stack to the sandbox: %w", err)
		}
	}
	inv, err := provision.Inventory(ctx, p, st.Name)
	if err != nil {
		return nil, err
	}
	progress(fmt.Sprintf("waiting for %d hosts to bootstrap", len(inv)))
	if err := waitBootstrap(ctx, p, inv); err != nil {
		return nil, err
	}
	rep.Hosts = len(inv)
	rep.LB = fmt.Sprintf("http://127.0.0.1:%d", st.Sandbox.LBPort)
	rep.Duration = time.Since(start).Round(time.Millisecond)
	return rep, nil
}

func waitBootstrap(ctx context.Context, p *sandbox.Provider, inv []provision.Host) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var all multierror.Error
	g := new(errgroup.Group)
	errs := make([]error, len(inv))
	for i, h := range inv {
		g.Go(func() error {
			if err := p.WaitBootstrap(ctx, h.ID); err != nil {
				errs[i] = fmt.Errorf("%s: %w", stack.HostName(h.Role, h.Index), err)
			}
			return nil
		})
	}
	_ = g.Wait()
	for _, err := range errs {
		if err != nil {
			all.Errors = append(all.Errors, err)
		}
	}
	return all.ErrorOrNil()
}

// Down removes everything the sandbox made: hosts and their processes, volumes and loop devices,
// snapshots, the load balancer, moto, and the sandbox directory.
func Down(ctx context.Context, st *stack.Stack, p *sandbox.Provider) error {
	var result *multierror.Error
	if err := MotoFor(st).Stop(); err != nil && !errors.Is(err, os.ErrNotExist) {
		result = multierror.Append(result, fmt.Errorf("stop moto_server: %w", err))
	}
	if err := p.Down(ctx); err != nil {
		result = multierror.Append(result, err)
	}
	return result.ErrorOrNil()
}
