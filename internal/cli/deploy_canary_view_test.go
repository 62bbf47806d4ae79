package cli

import (
	"strings"
	"testing"

	"github.com/instactl/instactl/canary"
)

func TestDeployRenderCanary(t *testing.T) {
	row := func(name string, v canary.Verdict) canary.Comparison {
		return canary.Comparison{Endpoint: name, Verdict: v,
			Canary:    canary.Side{Requests: 401, Errors: 20, ErrorRatio: 20.0 / 401, P50: 0.0016, P99: 0.03},
			Baseline:  canary.Side{Requests: 400, P50: 0.0016, P99: 0.04},
			ErrorTest: canary.ProportionTest{Z: 3.67, P: 0.000122}, LatencyTest: canary.RankTest{Z: -2.63, P: 0.996}}
	}
	a := &canary.Analysis{Verdict: canary.Fail, Reason: "canary serves more errors at 99% confidence: ...",
		Canary: []string{"app-0"}, Baseline: []string{"app-1"}, WindowMS: 20000, Looks: 2,
		Overall: row(canary.Overall, canary.Fail), Endpoints: []canary.Comparison{row("GET /users/{id}/feed", canary.Inconclusive)}}
	var b strings.Builder
	if err := deployRenderCanary(&b, a); err != nil {
		t.Fatal(err)
	}
	want := `
Canary analysis: FAIL after 20s, 2 looks: app-0 against app-1
  canary serves more errors at 99% confidence: ...
ENDPOINT              REQUESTS c/b  ERRORS c/b   P50 c/b      P99 c/b        ERRORS z (p)     LATENCY z (p)  VERDICT
overall               401/400       4.99%/0.00%  1.6ms/1.6ms  30.0ms/40.0ms  3.67 (0.000122)  -2.63 (0.996)  fail
GET /users/{id}/feed  401/400       4.99%/0.00%  1.6ms/1.6ms  30.0ms/40.0ms  3.67 (0.000122)  -2.63 (0.996)  inconclusive
`
	if b.String() != want {
		t.Errorf("rendered:\n%s\nwant:\n%s", b.String(), want)
	}

	// Inconclusive without a table (no look: no baseline): the warning, unless the policy
	// rolled the canary back.
	a = &canary.Analysis{Verdict: canary.Inconclusive, Reason: "no baseline: ...", Canary: []string{"app-0"}}
	b.Reset()
	deployRenderCanary(&b, a)
	if got := b.String(); !strings.Contains(got, "Canary analysis: INCONCLUSIVE after 0s: app-0 against -\n") ||
		!strings.Contains(got, "warning: the deploy went on without a verdict") || strings.Contains(got, "ENDPOINT") {
		t.Errorf("inconclusive, continue:\n%s", got)
	}
	a.Config.OnInconclusive = canary.OnInconclusiveRollback
	b.Reset()
	deployRenderCanary(&b, a)
	if strings.Contains(b.String(), "warning") {
		t.Errorf("inconclusive, rolled back, still warns that the deploy went on:\n%s", b.String())
	}
	b.Reset()
	if deployRenderCanary(&b, nil); b.Len() != 0 {
		t.Errorf("no analysis rendered %q", b.String())
	}
}
