package app

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/instactl/instactl/switches"
)

// The degradation switches (package switches) as this server applies them:
//   - readonly on: every write (any method but GET, HEAD, OPTIONS) answers 503 with
//     Retry-After and a body naming the switch; reads work.
//   - uploads off: POST /photos answers 503 with Retry-After.
//   - feed.ranking off: the home feed comes from Redis alone (ids, owners from the owner
//     index), never memcached or Postgres.
//   - feed.fanout off: a fan-out job for an owner with at least Config.FanoutBigFollowers
//     followers is parked on the queue's deferred list; it goes back to the pending list when
//     the switch is on again (checked on every change and every SwitchRefresh).
//
// The board starts from the state file and follows the control database on its own LISTEN
// connection; GET /internal/switches reports the version applied, which `instactl switch set`
// waits for.

// startSwitches follows the control database and undefers parked fan-out while feed.fanout is on.
func (a *App) startSwitches(ctx context.Context) {
	go a.switches.Watch(ctx, a.cfg.ControlDSN, a.cfg.SwitchRefresh)
	go func() {
		t := time.NewTicker(a.cfg.SwitchRefresh)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-a.switchChanged:
			case <-t.C:
			}
			a.undefer(ctx)
		}
	}()
}

// switchApplied runs after the board installs a newer state.
func (a *App) switchApplied(old, new switches.Applied) {
	now := time.Now()
	for _, d := range switches.Known {
		if b, n := old.On(d.Name, now), new.On(d.Name, now); b != n {
			a.log.Info("switch changed", "switch", d.Name, "from", switches.Word(b), "to", switches.Word(n), "version", new.Version)
		}
	}
	select {
	case a.switchChanged <- struct{}{}:
	default:
	}
}

// undefer moves parked fan-out jobs back to the queue while feed.fanout is on.
func (a *App) undefer(ctx context.Context) {
	if !a.switches.On(switches.FeedFanout) {
		return
	}
	n, err := a.queue.Undefer(ctx)
	if err != nil {
		a.log.Warn("undefer fan-out", "err", err)
	}
	if n > 0 {
		a.log.Info("fan-out resumed: parked jobs queued again", "jobs", n)
	}
}

// gate refuses what the switches switch off, before the handler runs. It sets r.Pattern so the
// metrics count the refusal under its route.
func (a *App) gate(next http.Handler) http.Handler {
	// next is the mux, or a fault-injection build's wrapper of it: either finds the pattern.
	mux, _ := next.(patternFinder)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/internal/") || r.URL.Path == "/healthz" || r.URL.Path == "/metrics" {
			next.ServeHTTP(w, r)
			return
		}
		write := r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodOptions
		var refused switches.Status
		switch {
		case write && a.switches.On(switches.ReadOnly):
			refused = a.switches.Status(switches.ReadOnly)
		case r.Method == http.MethodPost && r.URL.Path == "/photos" && !a.switches.On(switches.Uploads):
			refused = a.switches.Status(switches.Uploads)
		case !a.router.Loaded():
			// Started without the control database (RouterConfig.StartWithoutMap).
			if mux != nil {
				_, r.Pattern = mux.Handler(r)
			}
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "no shard map yet: the control database has not answered since this server started"})
			return
		default:
			next.ServeHTTP(w, r)
			return
		}
		if mux != nil {
			_, r.Pattern = mux.Handler(r)
		}
		a.metrics.switchRefusals.WithLabelValues(refused.Name).Inc()
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter(refused, time.Now())))
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": refusal(refused), "switch": refused.Name})
	})
}

// defaultRetryAfter is the Retry-After of a refusal by a switch set without expiry.
const defaultRetryAfter = 30

// retryAfter is the seconds until the setting expires (at least 1), or defaultRetryAfter.
func retryAfter(s switches.Status, now time.Time) int {
	if s.Setting == nil || s.Setting.ExpiresAt == nil {
		return defaultRetryAfter
	}
	return max(1, min(int(math.Ceil(s.Setting.ExpiresAt.Sub(now).Seconds())), 3600))
}

// refusal is the client's explanation of a refusal by switch s.
func refusal(s switches.Status) string {
	what := "uploads are switched off"
	if s.Name == switches.ReadOnly {
		what = "the service is read-only: writes are refused, reads work"
	}
	msg := fmt.Sprintf("%s (switch %s is %s", what, s.Name, switches.Word(s.On))
	if s.Setting != nil {
		msg += fmt.Sprintf(", set by %s: %s", s.Setting.SetBy, s.Setting.Reason)
	}
	return msg + "); retry later"
}

// handleSwitches reports the switch state this server applies and its version.
func (a *App) handleSwitches(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, switches.NewReport(a.switches.Current(), time.Now()))
}

// degradedPage is the home feed served from Redis alone (feed.ranking off).
type degradedPage struct {
	Photos     []Photo `json:"photos"`
	NextBefore int64   `json:"next_before,omitempty"`
	Degraded   string  `json:"degraded"`
}

// feedFromRedis builds a feed page from the feed list and the owner index, both in Redis:
// photo ids and owners only, no memcached and no Postgres.
func (a *App) feedFromRedis(ctx context.Context, ids []int64, limit int) (degradedPage, error) {
	p := degradedPage{Photos: make([]Photo, 0, len(ids)), Degraded: "feed.ranking is off: photo ids and owners only"}
	for _, id := range ids {
		owner, err := a.owners.Get(ctx, id)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return p, err
		}
		p.Photos = append(p.Photos, Photo{ID: id, UserID: owner})
	}
	if len(ids) == limit {
		p.NextBefore = ids[len(ids)-1]
	}
	return p, nil
}

// fanoutDeferred parks job when feed.fanout is off and owner has at least
// Config.FanoutBigFollowers followers; it reports whether it did.
func (a *App) fanoutDeferred(ctx context.Context, job Job, followers int) (bool, error) {
	if followers < a.cfg.FanoutBigFollowers || a.switches.On(switches.FeedFanout) {
		return false, nil
	}
	if err := a.queue.Defer(ctx, job); err != nil {
		return false, err
	}
	a.metrics.fanoutDeferred.Inc()
	return true, nil
}

// switchCollector reports each switch's effective value and the version applied at scrape time.
type switchCollector struct{ a *App }

var (
	descSwitchState   = prometheus.NewDesc("instagram_switch_state", "Effective value of each degradation switch on this server (1 on, 0 off).", []string{"name", "source"}, nil)
	descSwitchVersion = prometheus.NewDesc("instagram_switch_version", "Global version of the switch state this server applies.", []string{"source"}, nil)
	descSwitchStale   = prometheus.NewDesc("instagram_switch_stale_refused_total", "Switch states refused because they were older than the one held.", nil, nil)
	descSwitchWrite   = prometheus.NewDesc("instagram_switch_file_write_errors_total", "Failed writes of the switch state file.", nil, nil)
	descSwitchLoadErr = prometheus.NewDesc("instagram_switch_load_errors_total", "Failed loads of the switch state from the control database.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *switchCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSwitchState, descSwitchVersion, descSwitchStale, descSwitchWrite, descSwitchLoadErr} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *switchCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.a.switches.Current()
	for _, s := range cur.Statuses(time.Now()) {
		v := 0.0
		if s.On {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descSwitchState, prometheus.GaugeValue, v, s.Name, s.Source)
	}
	ch <- prometheus.MustNewConstMetric(descSwitchVersion, prometheus.GaugeValue, float64(cur.Version), cur.Source)
	_, loadErrs, stale, writeErrs, _ := c.a.switches.Counters()
	ch <- prometheus.MustNewConstMetric(descSwitchStale, prometheus.CounterValue, float64(stale))
	ch <- prometheus.MustNewConstMetric(descSwitchWrite, prometheus.CounterValue, float64(writeErrs))
	ch <- prometheus.MustNewConstMetric(descSwitchLoadErr, prometheus.CounterValue, float64(loadErrs))
}
