package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/instactl/instactl/canary"
)

// deployRenderCanary is the canary analysis in the deploy report: the verdict and why, then
// one row per endpoint (overall first) with both sides side by side, canary/baseline, and
// the tests' statistics and p-values (both against the tolerances, so a healthy canary's z
// is negative).
func deployRenderCanary(w io.Writer, a *canary.Analysis) error {
	if a == nil {
		return nil
	}
	looks := ""
	if a.Looks > 1 {
		looks = fmt.Sprintf(", %d looks", a.Looks)
	}
	fmt.Fprintf(w, "\nCanary analysis: %s after %s%s: %s against %s\n", strings.ToUpper(string(a.Verdict)),
		time.Duration(a.WindowMS)*time.Millisecond, looks, deployOrText(strings.Join(a.Canary, " "), "-"), deployOrText(strings.Join(a.Baseline, " "), "-"))
	fmt.Fprintf(w, "  %s\n", a.Reason)
	if a.Verdict == canary.Inconclusive && a.Config.OnInconclusive != canary.OnInconclusiveRollback {
		fmt.Fprintf(w, "  warning: the deploy went on without a verdict; watch the release (instactl status) or roll back (instactl rollback)\n")
	}
	if a.Looks == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tREQUESTS c/b\tERRORS c/b\tP50 c/b\tP99 c/b\tERRORS z (p)\tLATENCY z (p)\tVERDICT")
	for _, r := range append([]canary.Comparison{a.Overall}, a.Endpoints...) {
		fmt.Fprintf(tw, "%s\t%d/%d\t%.2f%%/%.2f%%\t%s/%s\t%s/%s\t%.2f (%s)\t%.2f (%s)\t%s\n", r.Endpoint,
			r.Canary.Requests, r.Baseline.Requests, 100*r.Canary.ErrorRatio, 100*r.Baseline.ErrorRatio,
			deployLatency(r.Canary.P50), deployLatency(r.Baseline.P50), deployLatency(r.Canary.P99), deployLatency(r.Baseline.P99),
			r.ErrorTest.Z, canary.FormatP(r.ErrorTest.P), r.LatencyTest.Z, canary.FormatP(r.LatencyTest.P), r.Verdict)
	}
	return tw.Flush()
}

func deployLatency(sec float64) string {
	if sec == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", 1000*sec)
}
