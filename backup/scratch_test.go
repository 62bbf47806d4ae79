package backup

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/sandbox"
	"github.com/instactl/instactl/stack"
)

// fakeProvider answers the few calls scratch hosts and set lookups make; any other call panics
// on the nil embedded interface.
type fakeProvider struct {
	cloud.Provider
	name       string
	instances  []cloud.Instance
	snapshots  []cloud.Snapshot
	refuse     map[string]bool // addresses CreateInstance fails on
	created    []cloud.InstanceSpec
	terminated []string
}

func (p *fakeProvider) Name() string { return p.name }

func (p *fakeProvider) Describe(ctx context.Context, stackName string) (*cloud.Resources, error) {
	return &cloud.Resources{Instances: p.instances}, nil
}

func (p *fakeProvider) DescribeSnapshots(ctx context.Context, stackName string) ([]cloud.Snapshot, error) {
	return p.snapshots, nil
}

func (p *fakeProvider) CreateInstance(ctx context.Context, spec cloud.InstanceSpec) (cloud.Instance, error) {
	if p.refuse[spec.Address] {
		return cloud.Instance{}, errors.New("address " + spec.Address + " is in use by another instance")
	}
	p.created = append(p.created, spec)
	return cloud.Instance{ID: "i-" + spec.Name, Name: spec.Name, Role: spec.Role, PrivateAddress: spec.Address}, nil
}

func (p *fakeProvider) TerminateInstances(ctx context.Context, ids []string) error {
	p.terminated = append(p.terminated, ids...)
	return nil
}

func scratchStack() *stack.Stack {
	return &stack.Stack{Name: "bk", Network: stack.Network{AddressBase: netip.MustParseAddr("127.0.80.1")},
		Roles: []stack.Role{
			{Name: "pg", Count: 2, Replicas: 1, Port: 5432, Volumes: stack.VolumeSet{Count: 1, Mount: "/var/lib/postgresql"}},
			{Name: "redis", Count: 2, Replicas: 1, Port: 6379, Volumes: stack.VolumeSet{Count: 1, Mount: "/var/lib/redis"}},
		}}
}

func TestCreateScratch(t *testing.T) {
	ctx := context.Background()
	// The stack's 4 hosts take .1-.4; .5 is used by another instance, .6 is refused.
	p := &fakeProvider{name: "sandbox", instances: []cloud.Instance{{ID: "i-x", PrivateAddress: "127.0.80.5"}},
		refuse: map[string]bool{"127.0.80.6": true}}
	env := Env{Stack: scratchStack(), Provider: p, StateDir: t.TempDir()}
	in, err := CreateScratch(ctx, env, TargetRedis)
	if err != nil {
		t.Fatal(err)
	}
	spec := p.created[0]
	if spec.Address != "127.0.80.7" || spec.Role != ScratchRole || spec.Tags[cloud.TagStack] != "bk" ||
		spec.Tags[sandbox.TagMounts] != "/var/lib/redis" || !strings.HasPrefix(spec.Name, "bk-scratch-") {
		t.Fatalf("scratch spec %+v", spec)
	}
	if err := TerminateScratch(ctx, env, in); err != nil || len(p.terminated) != 1 || p.terminated[0] != in.ID {
		t.Fatalf("terminate: %v, terminated %v", err, p.terminated)
	}
	env.Provider = &fakeProvider{name: "aws"}
	_, err = CreateScratch(ctx, env, TargetPostgres)
	var no *NoScratchError
	if !errors.As(err, &no) || !strings.Contains(err.Error(), "pass --scratch HOST") || !strings.Contains(err.Error(), "/var/lib/postgresql") {
		t.Fatalf("scratch on aws: %v, want *NoScratchError naming the mount", err)
	}
}

func TestFindSetAndHost(t *testing.T) {
	ctx := context.Background()
	t0 := time.Unix(1700000000, 0)
	snap := func(id, set, target string, at time.Time, extra map[string]string) cloud.Snapshot {
		tags := SetTags("bk", set, target, target+"-1", StateComplete, 1)
		for k, v := range extra {
			tags[k] = v
		}
		return cloud.Snapshot{ID: id, State: "completed", StartTime: at, Tags: tags}
	}
	p := &fakeProvider{name: "sandbox",
		instances: []cloud.Instance{{ID: "i-1", Name: "bk-pg-0"}, {ID: "i-2", Name: "bk-redis-1"}},
		snapshots: []cloud.Snapshot{
			snap("snap-1", "pg-old", "pg", t0, nil),
			snap("snap-2", "pg-new-partial", "pg", t0.Add(time.Hour), map[string]string{TagPartial: "budget"}),
			snap("snap-3", "redis-1", "redis", t0.Add(2*time.Hour), nil),
		}}
	env := Env{Stack: scratchStack(), Provider: p, StateDir: t.TempDir()}
	for _, tc := range []struct{ id, target, want string }{
		{"", "pg", "pg-old"}, {"", "", "redis-1"}, {"pg-new-partial", "", "pg-new-partial"},
	} {
		s, err := FindSet(ctx, env, tc.id, tc.target)
		if err != nil || s.ID != tc.want {
			t.Errorf("FindSet(%q, %q) = %s, %v; want %s", tc.id, tc.target, s.ID, err, tc.want)
		}
	}
	_, err := FindSet(ctx, env, "nope", "")
	var nf *SetNotFoundError
	if !errors.As(err, &nf) || !errors.Is(err, cloud.ErrNotFound) || !strings.Contains(err.Error(), "does not exist in stack bk") {
		t.Errorf("unknown set: %v", err)
	}
	p.snapshots = nil
	if _, err := FindSet(ctx, env, "", "redis"); err == nil || !strings.Contains(err.Error(), "no complete redis backup set of stack bk") {
		t.Errorf("no set: %v", err)
	}
	for _, name := range []string{"pg-0", "bk-pg-0", "i-1"} {
		if in, err := FindHost(ctx, env, name); err != nil || in.ID != "i-1" {
			t.Errorf("FindHost(%s) = %+v, %v", name, in, err)
		}
	}
	_, err = FindHost(ctx, env, "app-9")
	var hnf *HostNotFoundError
	if !errors.As(err, &hnf) || err.Error() != "app-9: no such host in stack bk (hosts: pg-0, redis-1)" {
		t.Errorf("unknown host: %v", err)
	}
}

// TestDrillRefusals: an unknown set or scratch host, or no way to make a scratch host, ends the
// drill before any host is created.
func TestDrillRefusals(t *testing.T) {
	ctx := context.Background()
	set := SetTags("bk", "pg-set", "pg", "pg-1", StateComplete, 1)
	for _, tc := range []struct {
		name     string
		provider string
		opts     DrillOptions
		check    func(error) bool
	}{
		{"unknown set", "sandbox", DrillOptions{Set: "nope"}, func(err error) bool { var e *SetNotFoundError; return errors.As(err, &e) }},
		{"no set of target", "sandbox", DrillOptions{Target: "redis"}, func(err error) bool { var e *SetNotFoundError; return errors.As(err, &e) }},
		{"unknown scratch host", "sandbox", DrillOptions{Scratch: "app-9"}, func(err error) bool { var e *HostNotFoundError; return errors.As(err, &e) }},
		{"no scratch on aws", "aws", DrillOptions{}, func(err error) bool { var e *NoScratchError; return errors.As(err, &e) }},
	} {
		p := &fakeProvider{name: tc.provider, instances: []cloud.Instance{{ID: "i-1", Name: "bk-pg-0"}},
			snapshots: []cloud.Snapshot{{ID: "snap-1", State: "completed", Tags: set}}}
		opts := tc.opts
		opts.Env = Env{Stack: scratchStack(), Provider: p, StateDir: t.TempDir()}
		res, err := Drill(ctx, opts)
		if res != nil || !tc.check(err) || len(p.created) != 0 {
			t.Errorf("%s: %+v, %v, created %d hosts", tc.name, res, err, len(p.created))
		}
	}
}
