package provision

import (
	"testing"
	"time"
)

// TestLoadBalancerConfiguredInPlace: a load balancer whose health check or drain timeout differ
// from the stack file (changed by its owner, or made by a run killed before it configured them)
// is configured again in place, with its registrations kept; its listener still needs
// --replace.
func TestLoadBalancerConfiguredInPlace(t *testing.T) {
	d := mustDesired(t, testStack(2))
	actual := actualFrom(d)
	actual.LoadBalancers[0].HealthCheck = "/"
	actual.LoadBalancers[0].DrainTimeout = 300 * time.Second
	p := Compute(d, actual)
	if s := p.Summary(); s.Change != 1 || s.Refused != 0 || s.Add != 0 || s.Destroy != 0 {
		t.Fatalf("plan = %+v, want 1 change in place", s)
	}
	for _, c := range p.Changes {
		if c.Kind == KindLoadBalancer && (c.Action != Update || c.ForceReplace || c.Refuse != "" || len(c.Diffs) != 2) {
			t.Errorf("lb change = %+v, want an update in place of health_check and drain_timeout", c)
		}
	}

	actual.LoadBalancers[0].ListenerPort = 8080
	if s := Compute(d, actual).Summary(); s.Refused != 1 {
		t.Errorf("listener changed: plan = %+v, want the load balancer refused (needs --replace)", s)
	}
}
