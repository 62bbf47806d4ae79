package provision

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/cloudtest"
)

func planFor(t *testing.T, p cloud.Provider, d DesiredState) Plan {
	t.Helper()
	actual, err := p.Describe(context.Background(), d.Stack)
	if err != nil {
		t.Fatal(err)
	}
	return Compute(d, actual)
}

// converge applies d and checks a second plan is empty.
func converge(t *testing.T, p cloud.Provider, d DesiredState, opts ...ApplyOption) []Result {
	t.Helper()
	res, err := Apply(context.Background(), p, planFor(t, p, d), opts...)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if again := planFor(t, p, d); again.HasChanges() {
		var b strings.Builder
		_ = again.Render(&b)
		t.Fatalf("plan after apply is not empty:\n%s", b.String())
	}
	return res
}

func TestApplyFakeConverges(t *testing.T) {
	f := cloudtest.NewFake()
	d := mustDesired(t, testStack(2))
	res := converge(t, f, d)
	if len(res) != 27 {
		t.Errorf("%d results, want 27", len(res))
	}
	for _, r := range res {
		if r.Err != "" || (r.Kind == KindInstance && r.ID == "") {
			t.Errorf("result %+v", r)
		}
	}
	hosts, err := Inventory(context.Background(), f, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 7 {
		t.Fatalf("inventory has %d hosts, want 7", len(hosts))
	}
	var pg0 Host
	for _, h := range hosts {
		if h.Role == "pg" && h.Index == 0 {
			pg0 = h
		}
		if h.Role == "app" && (len(h.LoadBalancers) != 1 || h.LoadBalancers[0] != "demo") {
			t.Errorf("app host not behind the LB: %+v", h)
		}
	}
	if len(pg0.Volumes) != 2 || pg0.Volumes[0].Device != "/dev/sdf" || pg0.Volumes[1].Device != "/dev/sdg" {
		t.Errorf("pg[0] volumes = %+v", pg0.Volumes)
	}

	// Scale up then down: one create and one registration, then the reverse.
	up := mustDesired(t, testStack(3))
	if s := planFor(t, f, up).Summary(); s.Add != 2 || s.Change+s.Destroy != 0 {
		t.Errorf("scale up plan = %s", s)
	}
	converge(t, f, up)
	converge(t, f, d)
	if n := f.Calls("CreateInstance"); n != 8 {
		t.Errorf("CreateInstance called %d times, want 8", n)
	}
	if n := f.Calls("RegisterInstances"); n != 2 {
		t.Errorf("RegisterInstances called %d times, want 2 (one batch per apply)", n)
	}
}

func TestApplyPartialFailureThenConverge(t *testing.T) {
	f := cloudtest.NewFake()
	var fail atomic.Bool
	fail.Store(true)
	f.Fail = func(op, key string) error {
		if fail.Load() && op == "CreateInstance" && key == "demo-pg-1" {
			return errTest
		}
		return nil
	}
	d := mustDesired(t, testStack(2))
	res, err := Apply(context.Background(), f, planFor(t, f, d))
	if err == nil || !strings.Contains(err.Error(), "instance.pg[1]") {
		t.Fatalf("apply error = %v, want the pg[1] failure", err)
	}
	status := map[string]Result{}
	for _, r := range res {
		status[r.Address] = r
	}
	if r := status["instance.pg[1]"]; r.Err == "" || r.Skipped {
		t.Errorf("pg[1] = %+v, want failed", r)
	}
	if r := status["attachment.pg[1].sdf"]; !r.Skipped {
		t.Errorf("attachment of the failed host = %+v, want skipped", r)
	}
	if r := status["volume.pg[1].sdf"]; !r.Skipped {
		t.Errorf("volume of the failed host = %+v, want skipped: it is made in its host's zone, for its host", r)
	}
	if r := status["registration.app[0]"]; r.Err != "" || r.ID == "" {
		t.Errorf("independent registration = %+v, want done", r)
	}
	fail.Store(false)
	rest := planFor(t, f, d)
	if s := rest.Summary(); s.Add != 5 || s.Change+s.Destroy != 0 {
		t.Errorf("plan after partial failure = %s, want 5 to add (pg[1], its two volumes and their attachments)", s)
	}
	converge(t, f, d)
	if n := f.Calls("CreateVolume"); n != 6 {
		t.Errorf("CreateVolume called %d times, want 6: no duplicate volumes", n)
	}
}

func TestApplyCancelledThenResumed(t *testing.T) {
	f := cloudtest.NewFake()
	f.Latency = 20 * time.Millisecond
	d := mustDesired(t, testStack(6))
	ctx, cancel := context.WithCancel(context.Background())
	var created atomic.Int32
	_, err := Apply(ctx, f, planFor(t, f, d), WithProgress(func(r Result) {
		if r.Kind == KindInstance && r.Err == "" && created.Add(1) == 3 {
			cancel()
		}
	}))
	if !errors.Is(err, context.Canceled) && (err == nil || !strings.Contains(err.Error(), "canceled")) {
		t.Fatalf("apply after cancel: err = %v", err)
	}
	mid, _ := f.Describe(context.Background(), "demo")
	if len(mid.Instances) >= 11 {
		t.Fatalf("the cancel came too late to test anything (%d instances)", len(mid.Instances))
	}
	converge(t, f, d)
	after, _ := f.Describe(context.Background(), "demo")
	seen := map[string]bool{}
	for _, in := range after.Instances {
		k := hostKey(in.Role, in.Index)
		if seen[k] {
			t.Errorf("duplicate instance for %s", k)
		}
		seen[k] = true
	}
	if len(after.Instances) != 11 || len(after.Volumes) != 6 {
		t.Errorf("after resume: %d instances, %d volumes; want 11 and 6", len(after.Instances), len(after.Volumes))
	}
}

func TestApplyIsParallelAndBounded(t *testing.T) {
	f := cloudtest.NewFake()
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	inFlight, peak := 0, 0
	var giveUp time.Time
	// Each CreateInstance holds its slot until four are in flight at once, which only a parallel
	// apply reaches. A serial one waits out one shared deadline and fails on the peak below; no
	// figure here depends on how fast the machine is.
	f.Fail = func(op, key string) error {
		if op != "CreateInstance" {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if giveUp.IsZero() {
			giveUp = time.Now().Add(10 * time.Second)
			time.AfterFunc(10*time.Second, func() { mu.Lock(); cond.Broadcast(); mu.Unlock() })
		}
		inFlight++
		peak = max(peak, inFlight)
		cond.Broadcast()
		for peak < 4 && time.Now().Before(giveUp) {
			cond.Wait()
		}
		inFlight--
		return nil
	}
	d := mustDesired(t, testStack(20))
	converge(t, f, d, WithParallelism(8))
	if peak < 4 || peak > 8 {
		t.Errorf("peak concurrent CreateInstance = %d, want between 4 and 8", peak)
	}
}

func TestApplyRefusesStaleAndRefusedPlans(t *testing.T) {
	f := cloudtest.NewFake()
	d := mustDesired(t, testStack(1))
	converge(t, f, d)
	plan := planFor(t, f, mustDesired(t, testStack(2)))
	// The world changes between plan and apply.
	if _, err := f.CreateInstance(context.Background(), cloud.InstanceSpec{Name: "x", Role: "app", Index: 7,
		Tags: map[string]string{cloud.TagStack: "demo"}}); err != nil {
		t.Fatal(err)
	}
	before := f.Calls("CreateInstance")
	if _, err := Apply(context.Background(), f, plan); !errors.Is(err, ErrStale) {
		t.Errorf("stale plan: err = %v, want ErrStale", err)
	}
	st := testStack(2)
	st.Image = "ami-other"
	refused := planFor(t, f, mustDesired(t, st))
	if _, err := Apply(context.Background(), f, refused); !errors.Is(err, ErrRefused) {
		t.Errorf("refused plan: err = %v, want ErrRefused", err)
	} else if !strings.Contains(err.Error(), "instance.app[0]: image cannot change on a running instance; re-run with --replace instance.app[0]") {
		t.Errorf("a refused plan must say why each change is refused:\n%v", err)
	}
	if f.Calls("CreateInstance") != before {
		t.Errorf("a refused plan created instances")
	}
}

func TestDestroyOnlyItsStack(t *testing.T) {
	f := cloudtest.NewFake()
	converge(t, f, mustDesired(t, testStack(2)))
	other := testStack(1)
	other.Name = "other"
	converge(t, f, mustDesired(t, other))
	plan, err := Destroy(context.Background(), f, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if s := plan.Summary(); s.Destroy != 2+1+7+6+5 || s.Add+s.Change != 0 {
		t.Errorf("destroy plan = %s", s)
	}
	if _, err := Apply(context.Background(), f, plan); err != nil {
		t.Fatal(err)
	}
	gone, _ := f.Describe(context.Background(), "demo")
	if n := len(gone.Instances) + len(gone.Volumes) + len(gone.SecurityGroups) + len(gone.LoadBalancers) + len(gone.KeyPairs); n != 0 {
		t.Errorf("destroy left %d resources: %+v", n, gone)
	}
	left, _ := f.Describe(context.Background(), "other")
	if len(left.Instances) != 6 || len(left.LoadBalancers) != 1 || len(left.SecurityGroups) != 5 {
		t.Errorf("destroy touched the other stack: %d instances, %d LBs, %d groups", len(left.Instances), len(left.LoadBalancers), len(left.SecurityGroups))
	}
	if again, _ := Destroy(context.Background(), f, "demo"); again.HasChanges() {
		t.Errorf("second destroy is not empty")
	}
}

// A plan saved as JSON and read back applies like the original (plan -out, apply later).
func TestApplySavedPlan(t *testing.T) {
	f := cloudtest.NewFake()
	converge(t, f, mustDesired(t, testStack(1)))
	b, err := json.Marshal(planFor(t, f, mustDesired(t, testStack(3))))
	if err != nil {
		t.Fatal(err)
	}
	var saved Plan
	if err := json.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	res, err := Apply(context.Background(), f, saved)
	if err != nil {
		t.Fatal(err)
	}
	var made []string
	for _, r := range res {
		if r.Action == Create {
			made = append(made, r.Address)
		}
	}
	want := []string{"instance.app[1]", "instance.app[2]", "registration.app[1]", "registration.app[2]"}
	if !slices.Equal(made, want) {
		t.Errorf("created %v, want %v", made, want)
	}
	if planFor(t, f, mustDesired(t, testStack(3))).HasChanges() {
		t.Errorf("saved plan did not converge")
	}
	if _, err := Apply(context.Background(), f, saved); !errors.Is(err, ErrStale) {
		t.Errorf("applying the saved plan twice: err = %v, want ErrStale", err)
	}
}
