package app

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the app's Prometheus series, on a registry of its own (no globals).
type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	fanouts     prometheus.Counter
	cacheHits   prometheus.Counter
	cacheMisses prometheus.Counter
	enqueueErrs prometheus.Counter
	// switchRefusals counts requests refused by a switch; fanoutDeferred fan-out jobs parked.
	switchRefusals *prometheus.CounterVec
	fanoutDeferred prometheus.Counter
}

func newMetrics(a *App, build Build, release string) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "instagram_http_requests_total", Help: "HTTP requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "instagram_http_request_duration_seconds", Help: "HTTP request latency by route pattern.",
			// Fine buckets so a canary analysis can tell latency distributions apart (a
			// superset of the earlier bounds, so queries on those keep working).
			Buckets: []float64{.0005, .001, .0015, .002, .0025, .003, .004, .005, .0065, .008, .01, .0125, .015, .02, .025,
				.03, .04, .05, .065, .08, .1, .125, .15, .2, .25, .3, .4, .5, .75, 1, 1.5, 2, 2.5, 5, 10},
		}, []string{"route"}),
		fanouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "instagram_feed_fanout_pushes_total", Help: "Photo ids pushed into followers' feeds.",
		}),
		cacheHits:   prometheus.NewCounter(prometheus.CounterOpts{Name: "instagram_photo_cache_hits_total", Help: "Photo objects found in memcached."}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{Name: "instagram_photo_cache_misses_total", Help: "Photo objects read from Postgres."}),
		enqueueErrs: prometheus.NewCounter(prometheus.CounterOpts{Name: "instagram_fanout_enqueue_errors_total", Help: "Uploads whose fan-out job could not be queued."}),
	}
	m.switchRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "instagram_switch_refusals_total", Help: "Requests refused because a degradation switch is off (or readonly on).",
	}, []string{"name"})
	m.fanoutDeferred = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "instagram_fanout_deferred_total", Help: "Fan-out jobs queued for later because feed.fanout was off.",
	})
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "instagram_build_info", Help: "Build and release of this server (always 1).",
		ConstLabels: prometheus.Labels{"version": build.Version, "commit": build.Commit, "release": release},
	})
	info.Set(1)
	m.reg.MustRegister(m.requests, m.latency, m.fanouts, m.cacheHits, m.cacheMisses, m.enqueueErrs, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stateCollector{a: a}, m.switchRefusals, m.fanoutDeferred, &switchCollector{a: a})
	return m
}

// instrument records count and latency per ServeMux pattern (r.Pattern is set by the mux).
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		m.requests.WithLabelValues(route, r.Method, strconv.Itoa(sw.code)).Inc()
		m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

// WriteHeader records the status code.
func (s *statusWriter) WriteHeader(code int) { s.code = code; s.ResponseWriter.WriteHeader(code) }

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// stateCollector reports live state at scrape time: pool stats per node, map version, retries.
type stateCollector struct{ a *App }

var (
	descPoolConns    = prometheus.NewDesc("instagram_db_pool_conns", "Connections in the pgx pool by node and state.", []string{"node", "state"}, nil)
	descPoolMax      = prometheus.NewDesc("instagram_db_pool_max_conns", "Pool size limit by node.", []string{"node"}, nil)
	descPoolAcquires = prometheus.NewDesc("instagram_db_pool_acquires_total", "Connection acquisitions by node.", []string{"node"}, nil)
	descPoolWaits    = prometheus.NewDesc("instagram_db_pool_empty_acquires_total", "Acquisitions that had to wait for a connection.", []string{"node"}, nil)
	descPoolWaitSecs = prometheus.NewDesc("instagram_db_pool_acquire_seconds_total", "Time spent acquiring connections.", []string{"node"}, nil)
	descMapVersion   = prometheus.NewDesc("instagram_shard_map_version", "Version of the cached shard map.", nil, nil)
	descFenceRetries = prometheus.NewDesc("instagram_fence_retries_total", "Operations retried after a shard fence error.", nil, nil)
	descEpoch        = prometheus.NewDesc("instagram_topology_epoch", "Epoch of each replication group the app follows (bumped at every change of primary).", []string{"group"}, nil)
	descStale        = prometheus.NewDesc("instagram_topology_stale_refused_total", "Topologies or notifications refused because their epoch was older than the one held.", nil, nil)
	descListens      = prometheus.NewDesc("instagram_control_listener_connects_total", "Times the shard map and topology listener connected to the control database (reconnects after the first).", nil, nil)
	descFailover     = prometheus.NewDesc("instagram_failover_retries_total", "Operations that lost their primary (read-only, shut down, connection failed before sending) and waited for a topology change to retry once.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPoolConns, descPoolMax, descPoolAcquires, descPoolWaits, descPoolWaitSecs, descMapVersion, descFenceRetries, descEpoch, descStale, descFailover, descListens} {
		ch <- d
	}
}

// Collect implements prometheus.Collector, reading pool stats and the map at scrape time.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.a.router
	for node, s := range r.Stats() {
		ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(s.AcquiredConns()), node, "acquired")
		ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(s.IdleConns()), node, "idle")
		ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(s.ConstructingConns()), node, "constructing")
		ch <- prometheus.MustNewConstMetric(descPoolMax, prometheus.GaugeValue, float64(s.MaxConns()), node)
		ch <- prometheus.MustNewConstMetric(descPoolAcquires, prometheus.CounterValue, float64(s.AcquireCount()), node)
		ch <- prometheus.MustNewConstMetric(descPoolWaits, prometheus.CounterValue, float64(s.EmptyAcquireCount()), node)
		ch <- prometheus.MustNewConstMetric(descPoolWaitSecs, prometheus.CounterValue, s.AcquireDuration().Seconds(), node)
	}
	ch <- prometheus.MustNewConstMetric(descMapVersion, prometheus.GaugeValue, float64(r.Map().Version))
	ch <- prometheus.MustNewConstMetric(descFenceRetries, prometheus.CounterValue, float64(r.FenceRetries()))
	for group, epoch := range r.Epochs() {
		ch <- prometheus.MustNewConstMetric(descEpoch, prometheus.GaugeValue, float64(epoch), group)
	}
	ch <- prometheus.MustNewConstMetric(descStale, prometheus.CounterValue, float64(r.StaleRefused()))
	ch <- prometheus.MustNewConstMetric(descFailover, prometheus.CounterValue, float64(r.FailoverRetries()))
	ch <- prometheus.MustNewConstMetric(descListens, prometheus.CounterValue, float64(r.ListenerConnects()))
}
