package provision_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"

	"github.com/instactl/instactl/cloud"
	awscloud "github.com/instactl/instactl/cloud/aws"
	"github.com/instactl/instactl/cloud/aws/awsfault"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
)

// fastOptions scale the provider's waits and backoff down to milliseconds: the profiles count
// polls and calls, not seconds.
var fastOptions = awscloud.Options{PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond,
	MaxBackoff: 20 * time.Millisecond, ConsistencyWindow: 10 * time.Second, WaitTimeout: time.Minute}

// providerAt is a provider talking to endpoint.
func providerAt(t testing.TB, endpoint string, opts awscloud.Options) *awscloud.Provider {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cfg.BaseEndpoint = aws.String(endpoint)
	return awscloud.New(cfg, opts)
}

// faultStack: app×2 behind the ELB, pg×2 with two volumes each, in two zones; app may fall back
// from c1.xlarge to m1.large.
func faultStack(name, key string) *stack.Stack {
	return &stack.Stack{
		Name: name, Provider: "aws", Region: "us-east-1", Zone: "us-east-1a", Zones: []string{"us-east-1b"},
		Image: "ami-785db401", SSH: stack.SSH{User: "ubuntu", Key: key, Port: 22, AdminCIDR: "203.0.113.0/24"},
		Roles: []stack.Role{
			{Name: "app", InstanceType: "c1.xlarge", InstanceTypes: []string{"m1.large"}, Count: 2, Port: 8000},
			{Name: "pg", InstanceType: "m2.4xlarge", Count: 2, Port: 5432, Replicas: 1,
				Volumes: stack.VolumeSet{Count: 2, SizeGiB: 10, Type: "standard"}},
		},
		LoadBalancer: stack.LoadBalancer{ListenerPort: 80, TargetRole: "app", TargetPort: 8000, HealthCheck: "/healthz"},
	}
}

// faultCase is one run of the matrix: a stack created and destroyed through the injector.
type faultCase struct {
	profile string
	seed    int64
	// applies and destroys are the runs it took (1 = no re-run needed).
	applies, destroys int
	retries           int64
	injected          map[string]int
	firstErr          string
}

// converge runs plan and apply through p until an apply succeeds, at most tries times.
func convergeApply(ctx context.Context, p cloud.Provider, d provision.DesiredState, tries int, firstErr *string) (int, error) {
	var last error
	defer func() {
		if last != nil && firstErr != nil && *firstErr == "" {
			*firstErr = "apply: " + last.Error()
		}
	}()
	for i := 1; i <= tries; i++ {
		actual, err := p.Describe(ctx, d.Stack)
		if err != nil {
			last = err
			continue
		}
		if _, err := provision.Apply(ctx, p, provision.Compute(d, actual)); err != nil {
			last = err
			continue
		}
		return i, nil
	}
	return tries, last
}

func convergeDestroy(ctx context.Context, p cloud.Provider, name string, tries int, firstErr *string) (int, error) {
	var last error
	defer func() {
		if last != nil && *firstErr == "" {
			*firstErr = "destroy: " + last.Error()
		}
	}()
	for i := 1; i <= tries; i++ {
		pl, err := provision.Destroy(ctx, p, name)
		if err != nil {
			last = err
			continue
		}
		if _, err := provision.Apply(ctx, p, pl); err != nil {
			last = err
			continue
		}
		return i, nil
	}
	return tries, last
}

// checkNoDuplicates: one live instance per host, one volume per host and device, one group per
// name, and moto made at most one resource per client token.
func checkNoDuplicates(t *testing.T, r *cloud.Resources, st *stack.Stack, creates map[string]int) {
	t.Helper()
	hosts := map[string]int{}
	for _, in := range r.Instances {
		hosts[in.Role+"["+in.Tags[cloud.TagIndex]+"]"]++
	}
	vols := map[string]int{}
	for _, v := range r.Volumes {
		vols[v.Tags[cloud.TagRole]+"["+v.Tags[cloud.TagIndex]+"]"+v.Tags[cloud.TagDevice]]++
	}
	groups := map[string]int{}
	for _, g := range r.SecurityGroups {
		groups[g.Name]++
	}
	for _, h := range st.Hosts() {
		if n := hosts[fmt.Sprintf("%s[%d]", h.Role, h.Index)]; n != 1 {
			t.Errorf("%s[%d]: %d live instances, want 1", h.Role, h.Index, n)
		}
	}
	for k, n := range vols {
		if n != 1 {
			t.Errorf("volume %s: %d, want 1", k, n)
		}
	}
	for k, n := range groups {
		if n != 1 {
			t.Errorf("group %s: %d, want 1", k, n)
		}
	}
	if len(r.LoadBalancers) != 1 {
		t.Errorf("%d load balancers, want 1", len(r.LoadBalancers))
	}
	for tok, n := range creates {
		if n > 1 {
			t.Errorf("client token %s made %d resources, want at most 1", tok, n)
		}
	}
}

// matrixSeeds is how many seeds each profile runs with: 2 in CI, AWSFAULT_SEEDS for the longer
// matrix (bench/provision/faults.sh).
func matrixSeeds(t *testing.T) int {
	if s := os.Getenv("AWSFAULT_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("AWSFAULT_SEEDS=%q: want a count such as 20", s)
		}
		return n
	}
	return 2
}

// TestFaultMatrix creates and destroys a stack through each fault profile and seed, against
// moto behind the injector, and checks with moto directly (the oracle) that nothing is
// duplicated, nothing tagged is left unknown, and both converge: after the faults the next plan
// has no changes, and destroy leaves nothing tagged.
func TestFaultMatrix(t *testing.T) {
	endpoint := testenv.Moto(t)
	target, _ := url.Parse(endpoint)
	key := keyFile(t)
	oracle := providerAt(t, endpoint, fastOptions)
	if _, err := oracle.Describe(context.Background(), "warm-up"); err != nil { // moto loads EC2 on first use
		t.Fatal(err)
	}
	profiles := []string{"throttle", "lost-reply", "eventual", "slow", "dead-instance", "chaos", "edge"}
	if p := os.Getenv("AWSFAULT_PROFILES"); p != "" {
		profiles = strings.Split(p, ",")
	}
	var mu sync.Mutex
	var results []faultCase
	t.Cleanup(func() {
		t.Log("| profile | seed | applies | destroys | SDK retries | faults injected | first error |")
		for _, r := range results {
			t.Logf("| %s | %d | %d | %d | %d | %v | %.160s |", r.profile, r.seed, r.applies, r.destroys, r.retries, r.injected, r.firstErr)
		}
	})
	for _, prof := range profiles {
		profile, err := awsfault.Lookup(prof)
		if err != nil {
			t.Fatal(err)
		}
		for seed := int64(1); seed <= int64(matrixSeeds(t)); seed++ {
			t.Run(fmt.Sprintf("%s/seed=%d", prof, seed), func(t *testing.T) {
				t.Parallel()
				name := fmt.Sprintf("f-%s-%d", prof, seed)
				st := faultStack(name, key)
				d := desired(t, st)
				inj := awsfault.New(nil, profile, seed)
				srv := httptest.NewServer(awsfault.NewProxy(target, inj))
				defer srv.Close()
				p := providerAt(t, srv.URL, fastOptions)
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				res := faultCase{profile: prof, seed: seed}
				defer func() {
					res.retries, res.injected = p.Retries(), inj.Stats().Injected
					mu.Lock()
					results = append(results, res)
					mu.Unlock()
				}()
				var err error
				res.applies, err = convergeApply(ctx, p, d, 3, &res.firstErr)
				if err != nil {
					t.Fatalf("apply did not converge in 3 runs: %v", err)
				}
				actual, err := oracle.Describe(ctx, name)
				if err != nil {
					t.Fatal(err)
				}
				checkNoDuplicates(t, actual, st, inj.Stats().Creates)
				if again := provision.Compute(d, actual); again.HasChanges() {
					t.Errorf("after apply, plan (moto directly) = %s", again.Summary())
				}
				res.destroys, err = convergeDestroy(ctx, p, name, 3, &res.firstErr)
				if err != nil {
					t.Fatalf("destroy did not converge in 3 runs: %v", err)
				}
				left, err := oracle.Describe(ctx, name)
				if err != nil {
					t.Fatal(err)
				}
				if n := len(left.Instances) + len(left.Volumes) + len(left.SecurityGroups) + len(left.KeyPairs) + len(left.LoadBalancers); n != 0 {
					t.Errorf("after destroy moto still holds %d resources tagged %s: %+v", n, name, left)
				}
				if e := left.Edge; e != nil && len(e.Buckets)+len(e.Roles)+len(e.Distributions)+len(e.AccessControls) != 0 {
					t.Errorf("after destroy moto still holds the edge of %s: %+v", name, *e)
				}
			})
		}
	}
}

// TestFaultCapacity: capacity errors move a host to the next zone or type the stack allows, and
// with nothing left to try (or an account limit) apply fails at once, naming the fix, after one
// RunInstances per pool: the SDK does not retry them.
func TestFaultCapacity(t *testing.T) {
	endpoint := testenv.Moto(t)
	target, _ := url.Parse(endpoint)
	key := keyFile(t)
	oracle := providerAt(t, endpoint, fastOptions)
	through := func(t *testing.T, profile string) (*awscloud.Provider, *awsfault.Injector) {
		inj := awsfault.New(nil, awsfault.Profiles[profile], 1)
		srv := httptest.NewServer(awsfault.NewProxy(target, inj))
		t.Cleanup(srv.Close)
		return providerAt(t, srv.URL, fastOptions), inj
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("zone", func(t *testing.T) {
		p, _ := through(t, "no-capacity-zone")
		st := faultStack("cap-zone", key)
		if _, err := convergeApply(ctx, p, desired(t, st), 1, nil); err != nil {
			t.Fatal(err)
		}
		r, err := oracle.Describe(ctx, st.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range r.Instances {
			if in.Zone != "us-east-1b" {
				t.Errorf("%s is in %s, want the fallback zone us-east-1b", in.Name, in.Zone)
			}
		}
		for _, v := range r.Volumes {
			if v.Zone != "us-east-1b" {
				t.Errorf("volume %s is in %s, want its host's zone us-east-1b", v.ID, v.Zone)
			}
		}
		if pl := provision.Compute(desired(t, st), r); pl.HasChanges() {
			t.Errorf("plan after a fallback = %s, want no changes", pl.Summary())
		}
	})
	t.Run("type", func(t *testing.T) {
		p, _ := through(t, "no-capacity-type")
		st := faultStack("cap-type", key)
		if _, err := convergeApply(ctx, p, desired(t, st), 1, nil); err != nil {
			t.Fatal(err)
		}
		r, err := oracle.Describe(ctx, st.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range r.Instances {
			if in.Role == "app" && in.Type != "m1.large" {
				t.Errorf("%s is %s, want the fallback type m1.large", in.Name, in.Type)
			}
		}
		if pl := provision.Compute(desired(t, st), r); pl.HasChanges() {
			t.Errorf("plan after a fallback = %s, want no changes", pl.Summary())
		}
	})
	t.Run("nothing left", func(t *testing.T) {
		p, inj := through(t, "no-capacity-type")
		st := faultStack("cap-none", key)
		st.Roles[0].InstanceTypes = nil
		_, err := convergeApply(ctx, p, desired(t, st), 1, nil)
		if err == nil || !errors.Is(err, cloud.ErrNoCapacity) && !strings.Contains(err.Error(), "no capacity") ||
			!strings.Contains(err.Error(), "roles.app.instance_types") {
			t.Fatalf("err = %v, want no capacity naming roles.app.instance_types", err)
		}
		// app: 2 hosts × 2 zones, one call each; pg's 2 hosts have capacity.
		if n := inj.Stats().Calls["RunInstances"]; n != 6 {
			t.Errorf("%d RunInstances calls, want 6 (one per host and pool, none retried)", n)
		}
	})
	t.Run("limit", func(t *testing.T) {
		p, inj := through(t, "vcpu-limit")
		st := faultStack("cap-limit", key)
		_, err := convergeApply(ctx, p, desired(t, st), 1, nil)
		if err == nil || !strings.Contains(err.Error(), "VcpuLimitExceeded") || !strings.Contains(err.Error(), "Service Quotas") {
			t.Fatalf("err = %v, want VcpuLimitExceeded naming Service Quotas", err)
		}
		if n := inj.Stats().Calls["RunInstances"]; n != 4 {
			t.Errorf("%d RunInstances calls, want 4 (one per host, none retried)", n)
		}
	})
}
