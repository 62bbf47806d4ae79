package provision_test

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/sandbox"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
)

// stoppedStack: pg×1 with a volume, app×1 behind the load balancer.
func stoppedStack(name, zone, image, typ string) *stack.Stack {
	return &stack.Stack{
		Name: name, Zone: zone, Image: image,
		Roles: []stack.Role{
			{Name: "app", InstanceType: typ, Count: 1, Port: 8000},
			{Name: "pg", InstanceType: typ, Count: 1, Port: 5432, Volumes: stack.VolumeSet{Count: 1, SizeGiB: 1, Type: "standard"}},
		},
		LoadBalancer: stack.LoadBalancer{ListenerPort: 80, TargetRole: "app", TargetPort: 8000,
			HealthCheck: "/healthz", DrainTimeout: time.Second},
	}
}

// checkStoppedIsKept provisions st, stops every host (as failover fences a dead primary) and
// checks that a stopped instance is still the stack's: the plan has no change (no replacement
// is created), the inventory lists it "stopped" with its volume and load balancer, and destroy
// terminates it like a running one.
func checkStoppedIsKept(t *testing.T, p cloud.Provider, st *stack.Stack) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d := desired(t, st)
	apply(t, p, plan(t, p, d))
	before, err := provision.Inventory(ctx, p, st.Name)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, h := range before {
		ids = append(ids, h.ID)
	}
	if len(ids) != 2 {
		t.Fatalf("inventory after apply = %+v, want 2 hosts", before)
	}
	if err := p.StopInstances(ctx, ids, true); err != nil {
		t.Fatal(err)
	}

	if pl := plan(t, p, d); pl.HasChanges() {
		var b strings.Builder
		_ = pl.Render(&b)
		t.Errorf("plan with stopped hosts is not empty:\n%s", b.String())
	}
	after, err := provision.Inventory(ctx, p, st.Name)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("inventory with stopped hosts = %+v; want the hosts of %+v", after, before)
	}
	for i, h := range after {
		b := before[i]
		if h.ID != b.ID || h.State != "stopped" || len(h.Volumes) != len(b.Volumes) || !slices.Equal(h.LoadBalancers, b.LoadBalancers) {
			t.Errorf("stopped host = %+v; want %+v, stopped", h, b)
		}
	}

	destroy, err := provision.Destroy(ctx, p, st.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		found := false
		for _, c := range destroy.Changes {
			found = found || (c.Kind == provision.KindInstance && c.Action == provision.Delete && c.ID == id)
		}
		if !found {
			t.Errorf("destroy plan does not terminate stopped instance %s: %s", id, destroy.Summary())
		}
	}
	apply(t, p, destroy)
	r, err := p.Describe(ctx, st.Name)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Instances)+len(r.Volumes)+len(r.LoadBalancers)+len(r.SecurityGroups) != 0 {
		t.Errorf("after destroy, the stack still holds %+v", *r)
	}
}

func TestStoppedInstanceMoto(t *testing.T) {
	m := startMoto(t)
	checkStoppedIsKept(t, m.p, stoppedStack("stopped", "us-east-1a", "ami-785db401", "t2.micro"))
}

func TestStoppedInstanceSandbox(t *testing.T) {
	testenv.RequireRoot(t)
	for bin, pkg := range map[string]string{"sshd": "openssh-server", "nginx": "nginx", "mkfs.xfs": "xfsprogs",
		"losetup": "mount", "unshare": "util-linux", "nsenter": "util-linux"} {
		testenv.Require(t, bin, pkg)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		testenv.Missing(t, "no loop devices (/dev/loop-control)")
	}
	p, err := sandbox.New(sandbox.Config{Dir: t.TempDir(), AddressBase: netip.MustParseAddr("127.0.62.0"),
		LBPort: testenv.FreePort(t, "127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := p.Down(ctx); err != nil {
			t.Errorf("sandbox down: %v", err)
		}
	})
	checkStoppedIsKept(t, p, stoppedStack("stopped", sandbox.DefaultZone, "debian-12", "sandbox"))
}
