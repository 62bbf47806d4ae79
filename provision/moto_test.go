package provision_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"

	"github.com/instactl/instactl/cloud"
	awscloud "github.com/instactl/instactl/cloud/aws"
	"github.com/instactl/instactl/cloud/cloudtest"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
)

// smallStack: app×apps behind a classic ELB, pg×2 with two volumes each, redis×2 with one,
// memcached×1, and a key pair from keyPath.
func smallStack(name, keyPath string, apps int) *stack.Stack {
	return &stack.Stack{
		Name: name, Provider: "aws", Region: "us-east-1", Zone: "us-east-1a", Image: "ami-785db401",
		SSH: stack.SSH{User: "ubuntu", Key: keyPath, Port: 22, AdminCIDR: "203.0.113.0/24"},
		Roles: []stack.Role{
			{Name: "app", InstanceType: "c1.xlarge", Count: apps, Port: 8000},
			{Name: "pg", InstanceType: "m2.4xlarge", Count: 2, Port: 5432, Replicas: 1,
				Volumes: stack.VolumeSet{Count: 2, SizeGiB: 10, Type: "standard"}},
			{Name: "redis", InstanceType: "m2.4xlarge", Count: 2, Port: 6379, Replicas: 1,
				Volumes: stack.VolumeSet{Count: 1, SizeGiB: 10, Type: "standard"}},
			{Name: "memcached", InstanceType: "m1.xlarge", Count: 1, Port: 11211},
		},
		LoadBalancer: stack.LoadBalancer{ListenerPort: 80, TargetRole: "app", TargetPort: 8000,
			HealthCheck: "/healthz", DrainTimeout: 30 * time.Second},
	}
}

// keyFile writes a public key next to a (never used) private key path and returns that path.
func keyFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(p+".pub", []byte(cloudtest.PublicKey(t)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

type motoEnv struct {
	endpoint string
	p        *awscloud.Provider
}

func startMoto(t testing.TB) motoEnv {
	t.Helper()
	endpoint := testenv.Moto(t)
	os.Setenv("AWS_ENDPOINT_URL", endpoint)
	t.Cleanup(func() { os.Unsetenv("AWS_ENDPOINT_URL") })
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatalf("aws config: %v", err)
	}
	return motoEnv{endpoint: endpoint, p: awscloud.New(cfg, awscloud.Options{PollMin: 200 * time.Millisecond})}
}

func desired(t testing.TB, st *stack.Stack) provision.DesiredState {
	t.Helper()
	d, err := provision.Desired(st, func(h stack.HostRef) (string, error) { return "#cloud-config\nhostname: " + h.Name() + "\n", nil })
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func plan(t testing.TB, p cloud.Provider, d provision.DesiredState) provision.Plan {
	t.Helper()
	actual, err := p.Describe(context.Background(), d.Stack)
	if err != nil {
		t.Fatal(err)
	}
	return provision.Compute(d, actual)
}

func apply(t testing.TB, p cloud.Provider, pl provision.Plan) {
	t.Helper()
	start := time.Now()
	defer func() { t.Logf("apply %s: %s", pl.Summary(), time.Since(start).Round(time.Millisecond)) }()
	if _, err := provision.Apply(context.Background(), p, pl); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

// cli runs the aws command line (an independent client) and decodes its JSON answer.
func cli(t testing.TB, endpoint string, out any, args ...string) {
	t.Helper()
	bin := testenv.Require(t, "aws", "awscli")
	cmd := exec.Command(bin, append([]string{"--endpoint-url", endpoint, "--output", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "AWS_DEFAULT_REGION=us-east-1")
	b, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("aws %s: %v", strings.Join(args, " "), err)
	}
}

// world is what the aws CLI sees of a stack.
type world struct {
	hosts   map[string]string // "app[0]" -> instance id (live instances only)
	dups    int               // live instances beyond one per host
	volumes map[string]string // volume id -> "instance device"
	groups  map[string]string // group name -> id
	lb      []string          // registered instance ids, nil if no LB
	keys    []string
}

type cliTag struct{ Key, Value string }

func tagOf(ts []cliTag, k string) string {
	for _, t := range ts {
		if t.Key == k {
			return t.Value
		}
	}
	return ""
}

// seeAll asks the aws CLI for everything tagged by instactl, by stack; the five listings run
// concurrently (each CLI start costs a second of Python).
func seeAll(t testing.TB, endpoint string, full bool) map[string]*world {
	t.Helper()
	filter := "Name=tag-key,Values=" + cloud.TagStack
	var (
		di struct {
			Reservations []struct {
				Instances []struct {
					InstanceId string
					Tags       []cliTag
				}
			}
		}
		dv struct {
			Volumes []struct {
				VolumeId    string
				Tags        []cliTag
				Attachments []struct{ InstanceId, Device string }
			}
		}
		dg struct {
			SecurityGroups []struct {
				GroupId, GroupName string
				Tags               []cliTag
			}
		}
		dk struct {
			KeyPairs []struct {
				KeyName string
				Tags    []cliTag
			}
		}
		dl struct {
			LoadBalancerDescriptions []struct {
				LoadBalancerName string
				Instances        []struct{ InstanceId string }
			}
		}
	)
	calls := []func(){
		func() {
			cli(t, endpoint, &di, "ec2", "describe-instances", "--filters", filter, "Name=instance-state-name,Values=pending,running")
		},
		func() { cli(t, endpoint, &dv, "ec2", "describe-volumes", "--filters", filter) },
		func() { cli(t, endpoint, &dl, "elb", "describe-load-balancers") },
	}
	if full {
		calls = append(calls,
			func() { cli(t, endpoint, &dg, "ec2", "describe-security-groups", "--filters", filter) },
			func() { cli(t, endpoint, &dk, "ec2", "describe-key-pairs", "--filters", filter) })
	}
	var wg sync.WaitGroup
	for _, f := range calls {
		wg.Go(f)
	}
	start := time.Now()
	wg.Wait()
	t.Logf("aws CLI round: %s", time.Since(start).Round(time.Millisecond))
	all := map[string]*world{}
	get := func(stack string) *world {
		if all[stack] == nil {
			all[stack] = &world{hosts: map[string]string{}, volumes: map[string]string{}, groups: map[string]string{}}
		}
		return all[stack]
	}
	for _, r := range di.Reservations {
		for _, in := range r.Instances {
			w := get(tagOf(in.Tags, cloud.TagStack))
			k := fmt.Sprintf("%s[%s]", tagOf(in.Tags, cloud.TagRole), tagOf(in.Tags, cloud.TagIndex))
			if _, ok := w.hosts[k]; ok {
				w.dups++
			}
			w.hosts[k] = in.InstanceId
		}
	}
	for _, v := range dv.Volumes {
		w := get(tagOf(v.Tags, cloud.TagStack))
		w.volumes[v.VolumeId] = ""
		for _, a := range v.Attachments {
			w.volumes[v.VolumeId] = a.InstanceId + " " + a.Device
		}
	}
	for _, g := range dg.SecurityGroups {
		get(tagOf(g.Tags, cloud.TagStack)).groups[g.GroupName] = g.GroupId
	}
	for _, k := range dk.KeyPairs {
		w := get(tagOf(k.Tags, cloud.TagStack))
		w.keys = append(w.keys, k.KeyName)
	}
	for _, lb := range dl.LoadBalancerDescriptions {
		// The stacks of these tests name their ELB after themselves.
		w := get(lb.LoadBalancerName)
		w.lb = []string{}
		for _, in := range lb.Instances {
			w.lb = append(w.lb, in.InstanceId)
		}
		slices.Sort(w.lb)
	}
	return all
}

// checkWorld compares what the CLI sees with what the stack asks for.
func checkWorld(t *testing.T, endpoint string, st *stack.Stack, full bool) world {
	t.Helper()
	w := world{}
	if p := seeAll(t, endpoint, full)[st.Name]; p != nil {
		w = *p
	}
	var wantHosts, apps []string
	for _, h := range st.Hosts() {
		k := fmt.Sprintf("%s[%d]", h.Role, h.Index)
		wantHosts = append(wantHosts, k)
		if h.Role == "app" {
			apps = append(apps, w.hosts[k])
		}
	}
	got := slices.Sorted(func(yield func(string) bool) {
		for k := range w.hosts {
			if !yield(k) {
				return
			}
		}
	})
	slices.Sort(wantHosts)
	if !slices.Equal(got, wantHosts) || w.dups != 0 {
		t.Errorf("CLI sees hosts %v (%d duplicates), want exactly %v", got, w.dups, wantHosts)
	}
	want := map[string]string{}
	for _, r := range st.Roles {
		for i := range r.Count {
			for v := range r.Volumes.Count {
				want[w.hosts[fmt.Sprintf("%s[%d]", r.Name, i)]+" "+provision.Devices[v]] = "x"
			}
		}
	}
	var gotAtt []string
	for _, a := range w.volumes {
		gotAtt = append(gotAtt, a)
	}
	slices.Sort(gotAtt)
	var wantAtt []string
	for a := range want {
		wantAtt = append(wantAtt, a)
	}
	slices.Sort(wantAtt)
	if !slices.Equal(gotAtt, wantAtt) {
		t.Errorf("CLI sees volumes attached at %v, want %v", gotAtt, wantAtt)
	}
	if full && (len(w.groups) != 5 || len(w.keys) != 1) {
		t.Errorf("CLI sees groups %v and keys %v, want 5 groups and 1 key", w.groups, w.keys)
	}
	slices.Sort(apps)
	if !slices.Equal(w.lb, apps) {
		t.Errorf("CLI sees %v behind the ELB, want the app hosts %v", w.lb, apps)
	}
	return w
}

// cancelAfter is a provider that cancels the apply's context once n instances were created: a
// crash in the middle of an apply.
type cancelAfter struct {
	cloud.Provider
	n      int32
	count  atomic.Int32
	cancel context.CancelFunc
}

func (c *cancelAfter) CreateInstance(ctx context.Context, spec cloud.InstanceSpec) (cloud.Instance, error) {
	in, err := c.Provider.CreateInstance(ctx, spec)
	if err == nil && c.count.Add(1) == c.n {
		c.cancel()
	}
	return in, err
}

func TestProvisionMoto(t *testing.T) {
	m := startMoto(t)
	key := keyFile(t)
	st := smallStack("ig", key, 2)

	first := plan(t, m.p, desired(t, st))
	if s := first.Summary(); s.Add != 1+5+7+6+6+1+2+3 { // +3: photo bucket, app role, CDN
		t.Errorf("first plan = %s", s)
	}
	apply(t, m.p, first)
	w := checkWorld(t, m.endpoint, st, true)

	if again := plan(t, m.p, desired(t, st)); again.HasChanges() {
		var b strings.Builder
		_ = again.Render(&b)
		t.Fatalf("re-plan after apply is not empty:\n%s", b.String())
	}

	st3 := smallStack("ig", key, 3)
	scale := plan(t, m.p, desired(t, st3))
	var changed []string
	for _, c := range scale.Changes {
		if c.Action != provision.NoOp {
			changed = append(changed, string(c.Action)+" "+c.Address)
		}
	}
	if !slices.Equal(changed, []string{"create instance.app[2]", "create registration.app[2]"}) {
		t.Errorf("scale 2->3 plan = %v, want exactly one instance and its registration", changed)
	}
	apply(t, m.p, scale)
	// The provider's view here; the CLI checks again after the crash below.
	inv, err := provision.Inventory(context.Background(), m.p, "ig")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range inv {
		if id := w.hosts[fmt.Sprintf("%s[%d]", h.Role, h.Index)]; id != "" && id != h.ID {
			t.Errorf("scaling replaced %s[%d]: %s became %s", h.Role, h.Index, id, h.ID)
		}
	}
	if len(inv) != 8 {
		t.Errorf("after scaling, %d hosts, want 8", len(inv))
	}

	// Crash: cancel the context after two of four new instances, then plan and apply again.
	st7 := smallStack("ig", key, 7)
	ctx, cancel := context.WithCancel(context.Background())
	crash := &cancelAfter{Provider: m.p, n: 2, cancel: cancel}
	if _, err := provision.Apply(ctx, crash, plan(t, m.p, desired(t, st7)), provision.WithParallelism(2)); err == nil {
		t.Fatalf("apply with a crash in the middle succeeded")
	}
	apply(t, m.p, plan(t, m.p, desired(t, st7)))
	checkWorld(t, m.endpoint, st7, false)
	if again := plan(t, m.p, desired(t, st7)); again.HasChanges() {
		t.Errorf("re-plan after resume is not empty: %s", again.Summary())
	}

	hosts, err := provision.Inventory(context.Background(), m.p, "ig")
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 12 || hosts[0].Role != "app" || hosts[0].Index != 0 || len(hosts[0].LoadBalancers) != 1 {
		t.Errorf("inventory = %+v", hosts)
	}

	// A second stack that destroy must leave alone.
	other := &stack.Stack{Name: "other", Zone: "us-east-1a", Image: "ami-785db401",
		Roles: []stack.Role{{Name: "app", InstanceType: "t2.micro", Count: 1, Port: 8000}}}
	apply(t, m.p, plan(t, m.p, desired(t, other)))
	otherBefore, err := provision.Inventory(context.Background(), m.p, "other")
	if err != nil || len(otherBefore) != 1 {
		t.Fatalf("other stack: %v, %v", otherBefore, err)
	}

	destroy, err := provision.Destroy(context.Background(), m.p, "ig")
	if err != nil {
		t.Fatal(err)
	}
	if s := destroy.Summary(); s.Destroy != 7+1+12+6+5+1+3 || s.Add+s.Change != 0 { // +3: the edge
		t.Errorf("destroy plan = %s", s)
	}
	apply(t, m.p, destroy)
	after := seeAll(t, m.endpoint, true)
	if gone := after["ig"]; gone != nil {
		t.Errorf("after destroy the CLI still sees %+v", *gone)
	}
	otherAfter := after["other"]
	if otherAfter == nil || otherAfter.hosts["app[0]"] != otherBefore[0].ID || len(otherAfter.groups) != 1 {
		t.Errorf("destroy touched the other stack: before %+v, after %+v", otherBefore, otherAfter)
	}
}
