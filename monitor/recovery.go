package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/topology"
)

// Sample is one series of an instant query's answer.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Querier runs PromQL instant queries. PromClient implements it.
type Querier interface {
	Query(ctx context.Context, expr string) ([]Sample, error)
}

// PromClient queries one Prometheus over its HTTP API (/api/v1/query).
type PromClient struct {
	// URL is the base URL, such as http://127.0.0.1:9090.
	URL string
	// HTTP is the client used (nil: one with a 10 s timeout).
	HTTP *http.Client
}

// NewPromClient returns a client of the Prometheus at base URL.
func NewPromClient(base string) *PromClient {
	return &PromClient{URL: strings.TrimRight(base, "/"), HTTP: &http.Client{Timeout: 10 * time.Second}}
}

// Query runs an instant query whose result is a vector.
func (c *PromClient) Query(ctx context.Context, expr string) ([]Sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/api/v1/query?"+url.Values{"query": {expr}}.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("prometheus %s: %w", c.URL, err)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prometheus %s unreachable: %w", c.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("prometheus query %s: %w", expr, err)
	}
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return nil, fmt.Errorf("prometheus query %s: %s: unexpected answer: %w", expr, resp.Status, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("prometheus query %s: %s: %s", expr, resp.Status, body.Error)
	}
	if body.Data.ResultType != "vector" {
		return nil, fmt.Errorf("prometheus query %s: a %s, not a vector", expr, body.Data.ResultType)
	}
	out := make([]Sample, 0, len(body.Data.Result))
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("prometheus query %s: value %v: %w", expr, r.Value[1], err)
		}
		out = append(out, Sample{Labels: r.Metric, Value: v})
	}
	return out, nil
}

// RecoveryPoint is what one replication group could be restored to now, from the metrics the
// alerts read: the newest usable backup set of its members (the backup metrics file) and, for
// Postgres, the newest WAL segment archived (postgres_exporter's pg_stat_archiver on its
// members).
type RecoveryPoint struct {
	Group string `json:"group"`
	Kind  string `json:"kind"`
	// LastBackup is the end of the newest usable backup set of a member, BackupHost that member
	// (zero and "" when there is none).
	LastBackup time.Time `json:"last_backup,omitempty"`
	BackupHost string    `json:"backup_host,omitempty"`
	// ArchivedTo is when the newest WAL segment was archived (zero: no archiving seen). The
	// archiver never skips a segment, so WAL up to it follows the base backup without a gap.
	ArchivedTo time.Time `json:"archived_to,omitempty"`
	// RecoverableTo is the newest point a restore reaches: ArchivedTo when WAL is archived past
	// the newest backup, else the backup's own time; zero when the group has no backup.
	RecoverableTo time.Time `json:"recoverable_to,omitempty"`
}

// The queries behind RecoveryPoints.
const (
	queryLastBackup = MetricBackupLastSuccess
	queryArchivedTo = `time() - (pg_stat_archiver_last_archive_age{job="postgres"}` +
		` and on(instance) pg_stat_archiver_archived_count{job="postgres"} > 0)`
	queryMetricsFileAge = `time() - node_textfile_mtime_seconds{job="node",file=~".*/instactl_backup\\.prom"}`
)

// RecoveryPoints asks Prometheus, for every group of topo (in its order), for its newest backup
// and archived WAL, and how old the backup metrics file is (-1: no node exporter serves it, so
// no backup time is known).
func RecoveryPoints(ctx context.Context, q Querier, topo topology.Topology) (points []RecoveryPoint, fileAge time.Duration, err error) {
	backups, err := q.Query(ctx, queryLastBackup)
	if err != nil {
		return nil, 0, err
	}
	archived, err := q.Query(ctx, queryArchivedTo)
	if err != nil {
		return nil, 0, err
	}
	files, err := q.Query(ctx, queryMetricsFileAge)
	if err != nil {
		return nil, 0, err
	}
	fileAge = -1
	for _, s := range files {
		if d := seconds(s.Value); fileAge < 0 || d < fileAge {
			fileAge = d
		}
	}
	var out []RecoveryPoint
	for _, g := range topo.Groups {
		rp := RecoveryPoint{Group: g.Name, Kind: g.Kind}
		member := func(host string) bool { _, ok := g.Member(host); return ok }
		for _, s := range backups {
			if !member(s.Labels["host"]) || !finite(s.Value) {
				continue
			}
			if t := unixTime(s.Value); t.After(rp.LastBackup) {
				rp.LastBackup, rp.BackupHost = t, s.Labels["host"]
			}
		}
		for _, s := range archived {
			if g.Kind != topology.KindPostgres || !member(s.Labels["instance"]) || !finite(s.Value) {
				continue
			}
			if t := unixTime(s.Value); t.After(rp.ArchivedTo) {
				rp.ArchivedTo = t
			}
		}
		if !rp.LastBackup.IsZero() {
			rp.RecoverableTo = rp.LastBackup
			if rp.ArchivedTo.After(rp.LastBackup) {
				rp.RecoverableTo = rp.ArchivedTo
			}
		}
		out = append(out, rp)
	}
	return out, fileAge, nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// unixTime is a Prometheus timestamp in seconds, to the millisecond.
func unixTime(s float64) time.Time { return time.UnixMilli(int64(math.Round(s * 1000))).UTC() }

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
