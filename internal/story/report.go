package story

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
	"time"

	"github.com/instactl/instactl/internal/loadgen"
)

// Op is one operation on the timeline.
type Op struct {
	Name  string        `json:"name"`
	Start time.Duration `json:"start"` // since the load started
	End   time.Duration `json:"end"`
	// Detail is a one-line result ("window 12 ms", "3 hosts").
	Detail string `json:"detail,omitempty"`
	OK     bool   `json:"ok"`
}

// Phase is latency over one stretch of the timeline.
type Phase struct {
	Name     string  `json:"name"`
	Requests int     `json:"requests"`
	Errors   int     `json:"errors"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
}

// Summary is what the story reports at the end.
type Summary struct {
	Stack          string `json:"stack"`
	Requests       int    `json:"requests"`
	FailedRequests int    `json:"failed_requests"`
	// NotSent counts requests the load generator never sent because its in-flight bound was
	// reached: a sign of a slow machine or slow answers, not a failed request.
	NotSent           int           `json:"not_sent"`
	AcknowledgedWrite int           `json:"acknowledged_writes"`
	WritesVerified    bool          `json:"writes_verified"`
	WritesChecked     int           `json:"writes_checked"`
	DeployDuration    time.Duration `json:"deploy_duration"`
	FreezeWindow      time.Duration `json:"freeze_window"`
	MoveWindow        time.Duration `json:"move_window"`
	BackupVerified    bool          `json:"backup_verified"`
	// SwitchoverBlock is the longest write block of the planned switchovers.
	SwitchoverBlock time.Duration `json:"switchover_block"`
	// FailoverDuration is the failover command's wall time after the power cut.
	FailoverDuration time.Duration `json:"failover_duration"`
	// FailoverLossWindow is the failover's possible loss window ("0 bytes", "unknown").
	FailoverLossWindow string `json:"failover_loss_window,omitempty"`
	// FailoverFailedRequests are the requests that failed while a primary was dead, counted
	// apart from FailedRequests.
	FailoverFailedRequests int              `json:"failover_failed_requests"`
	Phases                 []Phase          `json:"phases"`
	Ops                    []Op             `json:"ops"`
	Buckets                []loadgen.Bucket `json:"buckets"`
	Elapsed                time.Duration    `json:"elapsed"`
	ReportPath             string           `json:"report_path,omitempty"`
}

// Phases splits the load's per-second buckets into before, during and after each operation.
func Phases(buckets []loadgen.Bucket, ops []Op) []Phase {
	var out []Phase
	prevEnd := time.Duration(0)
	for _, op := range ops {
		out = append(out, phaseOf("before "+op.Name, buckets, prevEnd, op.Start))
		out = append(out, phaseOf("during "+op.Name, buckets, op.Start, op.End))
		prevEnd = op.End
	}
	out = append(out, phaseOf("after all", buckets, prevEnd, time.Duration(math.MaxInt64)))
	var kept []Phase
	for _, p := range out {
		if p.Requests > 0 {
			kept = append(kept, p)
		}
	}
	return kept
}

// phaseOf aggregates buckets whose second lies in [from, to). Percentiles of a stretch are
// taken as the request-weighted mean of the per-second percentiles for p50 and the maximum for
// p99: per-second buckets do not keep raw samples.
func phaseOf(name string, buckets []loadgen.Bucket, from, to time.Duration) Phase {
	p := Phase{Name: name}
	var weighted float64
	for _, b := range buckets {
		at := time.Duration(b.Second) * time.Second
		if at < from.Truncate(time.Second) || at >= to {
			continue
		}
		p.Requests += b.Requests
		p.Errors += b.Errors
		weighted += b.P50Ms * float64(b.Requests)
		p.P99Ms = max(p.P99Ms, b.P99Ms)
	}
	if p.Requests > 0 {
		p.P50Ms = weighted / float64(p.Requests)
	}
	return p
}

// chart is one SVG line/bar chart of a series over seconds, with operations shaded.
type chart struct {
	Title  string
	Width  int
	Height int
	Bands  []band
	Paths  []path
	Bars   []bar
	YTicks []tick
	XTicks []tick
}

type band struct {
	X, W  float64
	Label string
	Color string
}

type path struct {
	D, Color, Label string
}

type bar struct{ X, Y, W, H float64 }

type tick struct {
	Pos   float64
	Label string
}

const (
	chartW, chartH = 900.0, 220.0
	padL, padB     = 50.0, 24.0
)

var opColors = []string{"#fde2b8", "#cde8cf", "#d6def7", "#f7d6e6", "#e4d6f7", "#d6f2f7"}

func scaleX(sec, total float64) float64 { return padL + sec/total*(chartW-padL-10) }

func newChart(title string, secs float64, ops []Op, yMax float64, unit string) chart {
	c := chart{Title: title, Width: int(chartW), Height: int(chartH)}
	for i, op := range ops {
		x0 := scaleX(op.Start.Seconds(), secs)
		x1 := scaleX(op.End.Seconds(), secs)
		c.Bands = append(c.Bands, band{X: x0, W: max(x1-x0, 2), Label: op.Name, Color: opColors[i%len(opColors)]})
	}
	for i := 0; i <= 4; i++ {
		v := yMax * float64(i) / 4
		c.YTicks = append(c.YTicks, tick{Pos: scaleY(v, yMax), Label: fmt.Sprintf("%.0f%s", v, unit)})
	}
	step := math.Max(10, math.Round(secs/8/10)*10)
	for s := 0.0; s <= secs; s += step {
		c.XTicks = append(c.XTicks, tick{Pos: scaleX(s, secs), Label: fmt.Sprintf("%.0fs", s)})
	}
	return c
}

func scaleY(v, yMax float64) float64 {
	if yMax <= 0 {
		yMax = 1
	}
	return (chartH - padB) - v/yMax*(chartH-padB-10)
}

func linePath(buckets []loadgen.Bucket, secs, yMax float64, val func(loadgen.Bucket) float64) string {
	var b strings.Builder
	for i, bk := range buckets {
		cmd := "L"
		if i == 0 {
			cmd = "M"
		}
		fmt.Fprintf(&b, "%s%.1f,%.1f ", cmd, scaleX(float64(bk.Second), secs), scaleY(min(val(bk), yMax), yMax))
	}
	return b.String()
}

func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func charts(s *Summary) []chart {
	secs := 1.0
	var maxP99, maxReq float64
	for _, b := range s.Buckets {
		secs = max(secs, float64(b.Second+1))
		maxP99 = max(maxP99, b.P99Ms)
		maxReq = max(maxReq, float64(b.Requests))
	}
	lat := newChart("Latency through the load balancer (p50 and p99 per second)", secs, s.Ops, niceMax(maxP99), " ms")
	yl := niceMax(maxP99)
	lat.Paths = []path{
		{D: linePath(s.Buckets, secs, yl, func(b loadgen.Bucket) float64 { return b.P99Ms }), Color: "#c0392b", Label: "p99"},
		{D: linePath(s.Buckets, secs, yl, func(b loadgen.Bucket) float64 { return b.P50Ms }), Color: "#2471a3", Label: "p50"},
	}
	yr := niceMax(maxReq)
	thr := newChart("Throughput (requests per second; failed requests in red)", secs, s.Ops, yr, "")
	w := (chartW - padL - 10) / secs
	for _, b := range s.Buckets {
		y := scaleY(float64(b.Requests), yr)
		thr.Bars = append(thr.Bars, bar{X: scaleX(float64(b.Second), secs), Y: y, W: max(w-1, 1), H: chartH - padB - y})
	}
	thr.Paths = []path{{D: linePath(s.Buckets, secs, yr, func(b loadgen.Bucket) float64 { return float64(b.Errors) }), Color: "#c0392b", Label: "failed"}}
	return []chart{lat, thr}
}

var reportTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"ms":  func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) },
	"s":   func(d time.Duration) string { return d.Round(100 * time.Millisecond).String() },
	"f1":  func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"sub": func(a, b time.Duration) time.Duration { return a - b },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>instactl story: {{.S.Stack}}</title>
<style>
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:960px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:1.6em} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:right} th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.ok{color:#1e8449;font-weight:600}.bad{color:#c0392b;font-weight:600} svg{background:#fff;border:1px solid #eee}
</style></head><body>
<h1>instactl: a day of running {{.S.Stack}}</h1>
<p>{{.S.Requests}} requests through the load balancer, <span class="{{if eq .S.FailedRequests 0}}ok{{else}}bad{{end}}">{{.S.FailedRequests}} failed</span>;
{{.S.AcknowledgedWrite}} acknowledged writes, <span class="{{if .S.WritesVerified}}ok{{else}}bad{{end}}">{{if .S.WritesVerified}}all verified{{else}}NOT all verified{{end}}</span>.
Rolling deploy {{s .S.DeployDuration}}; backup freeze window {{ms .S.FreezeWindow}}; shard move write-blocked window {{ms .S.MoveWindow}};
backup restore drill <span class="{{if .S.BackupVerified}}ok{{else}}bad{{end}}">{{if .S.BackupVerified}}passed{{else}}failed{{end}}</span>.
Planned switchovers held writes for at most {{ms .S.SwitchoverBlock}}; after a power cut the failover took {{s .S.FailoverDuration}}
(loss window {{.S.FailoverLossWindow}}; {{.S.FailoverFailedRequests}} requests failed while the primary was dead, not counted above). Story took {{s .S.Elapsed}}.</p>
{{range .Charts}}<h2>{{.Title}}</h2>
<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}" viewBox="0 0 {{.Width}} {{.Height}}">
{{range .Bands}}<rect x="{{f1 .X}}" y="0" width="{{f1 .W}}" height="196" fill="{{.Color}}"><title>{{.Label}}</title></rect><text x="{{f1 .X}}" y="11" font-size="10" fill="#555">{{.Label}}</text>
{{end}}{{range .YTicks}}<line x1="50" x2="890" y1="{{f1 .Pos}}" y2="{{f1 .Pos}}" stroke="#eee"/><text x="46" y="{{f1 .Pos}}" font-size="10" text-anchor="end" fill="#666">{{.Label}}</text>
{{end}}{{range .XTicks}}<text x="{{f1 .Pos}}" y="212" font-size="10" text-anchor="middle" fill="#666">{{.Label}}</text>
{{end}}{{range .Bars}}<rect x="{{f1 .X}}" y="{{f1 .Y}}" width="{{f1 .W}}" height="{{f1 .H}}" fill="#7fb3d5"/>
{{end}}{{range .Paths}}<path d="{{.D}}" fill="none" stroke="{{.Color}}" stroke-width="1.5"><title>{{.Label}}</title></path>
{{end}}</svg>
{{end}}
<h2>Operations</h2>
<table><tr><th>operation</th><th>start</th><th>duration</th><th>result</th></tr>
{{range .S.Ops}}<tr><td>{{.Name}}</td><td>{{s .Start}}</td><td>{{s (sub .End .Start)}}</td><td class="{{if .OK}}ok{{else}}bad{{end}}">{{.Detail}}</td></tr>
{{end}}</table>
<h2>Latency before, during and after each operation</h2>
<table><tr><th>phase</th><th>requests</th><th>failed</th><th>p50</th><th>p99</th></tr>
{{range .S.Phases}}<tr><td>{{.Name}}</td><td>{{.Requests}}</td><td>{{.Errors}}</td><td>{{f1 .P50Ms}} ms</td><td>{{f1 .P99Ms}} ms</td></tr>
{{end}}</table>
</body></html>
`))

// WriteHTML renders the self-contained report: no scripts, no network, charts as inline SVG.
func WriteHTML(w io.Writer, s *Summary) error {
	return reportTmpl.Execute(w, struct {
		S      *Summary
		Charts []chart
	}{s, charts(s)})
}
