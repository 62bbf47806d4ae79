package monitor

import (
	"fmt"
	"time"
)

// Options are the knobs of the generated configuration that the stack file does not hold. The
// zero value of a field takes the default DefaultOptions gives.
type Options struct {
	// ScrapeInterval is Prometheus's scrape and rule evaluation interval.
	ScrapeInterval time.Duration `json:"scrape_interval"`
	// BackupInterval is how often `instactl backup create` runs (its cron cadence); a target
	// with no usable set newer than 1.5 × it is stale.
	BackupInterval time.Duration `json:"backup_interval"`
	// ArchiveMaxAge is how old the newest archived WAL segment of a primary may get. It needs
	// archive_timeout well under it, or an idle primary (no WAL) fires it.
	ArchiveMaxAge time.Duration `json:"archive_max_age"`
	// Availability is the app's availability SLO: the fraction of requests (health checks and
	// metrics excluded) that must not answer 5xx.
	Availability float64 `json:"availability"`
	// LatencyTarget is the fraction of requests that must finish within LatencyThreshold.
	LatencyTarget float64 `json:"latency_target"`
	// LatencyThreshold is the latency SLO's bound in seconds; it must be a bucket boundary of
	// the app's request duration histogram.
	LatencyThreshold float64 `json:"latency_threshold"`
	// MinRequestRate is the request rate (per second, over the burn rule's long window) below
	// which burn-rate alerts stay quiet: a handful of errors on an idle fleet is no outage.
	MinRequestRate float64 `json:"min_request_rate"`
	// PgBouncerMaxClientConn is PgBouncer's max_client_conn (the pgbouncer exporter does not
	// export it).
	PgBouncerMaxClientConn int `json:"pgbouncer_max_client_conn"`
	// WebhookURL receives critical alerts (Alertmanager's webhook receiver); the default is a
	// placeholder on the monitor host to be replaced by a pager's.
	WebhookURL string `json:"webhook_url"`
	// MaxFor, when set, caps every alert's for: duration (and the disk prediction window), so a
	// test can see alerts fire in seconds. Production leaves it 0.
	MaxFor time.Duration `json:"max_for"`
}

// latencyBuckets are the app's histogram bucket boundaries (internal/app/metrics.go).
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// DefaultOptions are the defaults: 15 s scrapes, hourly backups, 99.9 % availability and 99 %
// of requests within 250 ms.
func DefaultOptions() Options {
	return Options{
		ScrapeInterval:         15 * time.Second,
		BackupInterval:         time.Hour,
		ArchiveMaxAge:          15 * time.Minute,
		Availability:           0.999,
		LatencyTarget:          0.99,
		LatencyThreshold:       0.25,
		MinRequestRate:         0.1,
		PgBouncerMaxClientConn: 2000,
		WebhookURL:             "http://127.0.0.1:5001/instactl-webhook-placeholder",
	}
}

// withDefaults fills zero fields from DefaultOptions and checks the rest.
func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	if o.ScrapeInterval == 0 {
		o.ScrapeInterval = d.ScrapeInterval
	}
	if o.BackupInterval == 0 {
		o.BackupInterval = d.BackupInterval
	}
	if o.ArchiveMaxAge == 0 {
		o.ArchiveMaxAge = d.ArchiveMaxAge
	}
	if o.Availability == 0 {
		o.Availability = d.Availability
	}
	if o.LatencyTarget == 0 {
		o.LatencyTarget = d.LatencyTarget
	}
	if o.LatencyThreshold == 0 {
		o.LatencyThreshold = d.LatencyThreshold
	}
	if o.MinRequestRate == 0 {
		o.MinRequestRate = d.MinRequestRate
	}
	if o.PgBouncerMaxClientConn == 0 {
		o.PgBouncerMaxClientConn = d.PgBouncerMaxClientConn
	}
	if o.WebhookURL == "" {
		o.WebhookURL = d.WebhookURL
	}
	switch {
	case o.ScrapeInterval < time.Second:
		return o, fmt.Errorf("scrape interval must be at least 1s (got %s)", o.ScrapeInterval)
	case o.Availability <= 0 || o.Availability >= 1:
		return o, fmt.Errorf("availability SLO must be between 0 and 1, such as 0.999 (got %g)", o.Availability)
	case o.LatencyTarget <= 0 || o.LatencyTarget >= 1:
		return o, fmt.Errorf("latency SLO target must be between 0 and 1, such as 0.99 (got %g)", o.LatencyTarget)
	case o.BackupInterval < time.Minute:
		return o, fmt.Errorf("backup interval must be at least 1m (got %s)", o.BackupInterval)
	// A drill (the sandbox's archive_timeout of a few seconds) runs a short archive max age.
	case o.ArchiveMaxAge < 10*time.Second:
		return o, fmt.Errorf("archive max age must be at least 10s (got %s)", o.ArchiveMaxAge)
	case o.MaxFor < 0 || o.MinRequestRate < 0 || o.PgBouncerMaxClientConn < 0:
		return o, fmt.Errorf("max for, minimum request rate and max_client_conn must not be negative")
	}
	for _, b := range latencyBuckets {
		if b == o.LatencyThreshold {
			return o, nil
		}
	}
	return o, fmt.Errorf("latency threshold %gs is not a bucket of %s (buckets: %v)", o.LatencyThreshold, MetricAppLatency, latencyBuckets)
}
