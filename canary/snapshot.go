package canary

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The app server's series the analysis reads (internal/app/metrics.go): requests by route
// pattern, method and status code, and the latency histogram by route pattern.
const (
	RequestsMetric = "instagram_http_requests_total"
	LatencyMetric  = "instagram_http_request_duration_seconds"
)

// excludedRoutes are not user traffic: the health checks of the load balancer and of
// instactl itself, and scrapes (the analysis' own among them).
var excludedRoutes = []string{"GET /healthz", "GET /metrics"}

// Series is what one route served: requests, server errors (5xx) and the latency histogram.
type Series struct {
	Requests uint64 `json:"requests"`
	Errors   uint64 `json:"errors"`
	// Bounds are the histogram's upper bounds in ascending order, the last one +Inf; Counts
	// the observations in each bucket (not cumulative).
	Bounds []float64 `json:"-"`
	Counts []uint64  `json:"-"`
}

// Snapshot is the routes of one app server (or of several, merged) at one moment, or the
// difference between two moments.
type Snapshot struct {
	Routes map[string]Series
}

// ParseSnapshot reads the Prometheus text exposition of an app server's /metrics.
func ParseSnapshot(r io.Reader) (Snapshot, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return Snapshot{}, fmt.Errorf("parse metrics: %w", err)
	}
	s := Snapshot{Routes: map[string]Series{}}
	if f := fams[RequestsMetric]; f != nil && f.GetType() != dto.MetricType_COUNTER {
		return Snapshot{}, fmt.Errorf("parse metrics: %s is a %s, not a counter", RequestsMetric, f.GetType())
	}
	if f := fams[LatencyMetric]; f != nil && f.GetType() != dto.MetricType_HISTOGRAM {
		return Snapshot{}, fmt.Errorf("parse metrics: %s is a %s, not a histogram", LatencyMetric, f.GetType())
	}
	if f := fams[RequestsMetric]; f != nil {
		for _, m := range f.GetMetric() {
			route := label(m, "route")
			if slices.Contains(excludedRoutes, route) {
				continue
			}
			n := uint64(math.Round(m.GetCounter().GetValue()))
			ser := s.Routes[route]
			ser.Requests += n
			if strings.HasPrefix(label(m, "code"), "5") {
				ser.Errors += n
			}
			s.Routes[route] = ser
		}
	}
	if f := fams[LatencyMetric]; f != nil {
		for _, m := range f.GetMetric() {
			route := label(m, "route")
			if slices.Contains(excludedRoutes, route) {
				continue
			}
			bounds, counts := histogram(m.GetHistogram())
			ser := s.Routes[route]
			ser.Bounds, ser.Counts = bounds, counts
			s.Routes[route] = ser
		}
	}
	// An app server that served nothing yet has no request series, but always its build info.
	if fams[RequestsMetric] == nil && fams["instagram_build_info"] == nil {
		return Snapshot{}, fmt.Errorf("parse metrics: no %s series: is this the app server's /metrics?", RequestsMetric)
	}
	return s, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// histogram turns a client_model histogram (cumulative buckets, +Inf implied by the count)
// into bounds with +Inf last and non-cumulative counts.
func histogram(h *dto.Histogram) ([]float64, []uint64) {
	var bounds []float64
	var counts []uint64
	var prev uint64
	for _, b := range h.GetBucket() {
		if math.IsInf(b.GetUpperBound(), 1) {
			continue
		}
		c := b.GetCumulativeCount()
		bounds = append(bounds, b.GetUpperBound())
		counts = append(counts, c-min(prev, c))
		prev = c
	}
	bounds = append(bounds, math.Inf(1))
	counts = append(counts, h.GetSampleCount()-min(prev, h.GetSampleCount()))
	return bounds, counts
}

// Sub is what happened between earlier and s, route by route. A route whose request count
// went down belongs to a process that restarted in between: its whole count is from after
// the restart, as Prometheus' rate() treats a counter reset.
func (s Snapshot) Sub(earlier Snapshot) Snapshot {
	out := Snapshot{Routes: map[string]Series{}}
	for route, now := range s.Routes {
		before, ok := earlier.Routes[route]
		if !ok || now.Requests < before.Requests || now.Errors < before.Errors || !sameBounds(now.Bounds, before.Bounds) {
			out.Routes[route] = now
			continue
		}
		d := Series{Requests: now.Requests - before.Requests, Errors: now.Errors - before.Errors,
			Bounds: now.Bounds, Counts: make([]uint64, len(now.Counts))}
		for i := range now.Counts {
			d.Counts[i] = now.Counts[i] - min(before.Counts[i], now.Counts[i])
		}
		out.Routes[route] = d
	}
	return out
}

func sameBounds(a, b []float64) bool { return slices.Equal(a, b) }

// Merge sums snapshots (several hosts of one side). Histograms with different bounds (two
// releases with different buckets) are summed over the bounds they share.
func Merge(snaps ...Snapshot) Snapshot {
	out := Snapshot{Routes: map[string]Series{}}
	for _, s := range snaps {
		for route, ser := range s.Routes {
			out.Routes[route] = add(out.Routes[route], ser)
		}
	}
	return out
}

// Total sums every route of s into one series.
func (s Snapshot) Total() Series {
	var t Series
	for _, route := range s.RouteNames() {
		t = add(t, s.Routes[route])
	}
	return t
}

// RouteNames lists the routes of s in order.
func (s Snapshot) RouteNames() []string {
	var names []string
	for r := range s.Routes {
		names = append(names, r)
	}
	slices.Sort(names)
	return names
}

// add sums two series, their histograms over the bounds both have.
func add(a, b Series) Series {
	out := Series{Requests: a.Requests + b.Requests, Errors: a.Errors + b.Errors}
	switch {
	case len(a.Bounds) == 0:
		out.Bounds, out.Counts = b.Bounds, slices.Clone(b.Counts)
	case len(b.Bounds) == 0:
		out.Bounds, out.Counts = a.Bounds, slices.Clone(a.Counts)
	default:
		bounds := CommonBounds(a.Bounds, b.Bounds)
		ca, cb := Rebucket(a.Bounds, a.Counts, bounds), Rebucket(b.Bounds, b.Counts, bounds)
		out.Bounds, out.Counts = bounds, make([]uint64, len(bounds))
		for i := range bounds {
			out.Counts[i] = ca[i] + cb[i]
		}
	}
	return out
}

// CommonBounds are the bounds a and b share, in order (+Inf always).
func CommonBounds(a, b []float64) []float64 {
	var out []float64
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	if len(out) == 0 || !math.IsInf(out[len(out)-1], 1) {
		out = append(out, math.Inf(1))
	}
	return out
}

// Rebucket folds counts over bounds into the coarser bounds to (each a member of bounds,
// +Inf last): every observation lands in the first bucket of to whose bound holds it.
func Rebucket(bounds []float64, counts []uint64, to []float64) []uint64 {
	out := make([]uint64, len(to))
	j := 0
	for i, b := range bounds {
		for j < len(to)-1 && to[j] < b {
			j++
		}
		out[j] += counts[i]
	}
	return out
}
