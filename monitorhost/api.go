package monitorhost

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/instactl/instactl/errtext"
	"github.com/instactl/instactl/remote"
)

// API reads Prometheus' and Alertmanager's HTTP APIs on the monitor host through an SSH
// connection to it (their address is private on AWS).
type API struct {
	host   Host
	client *http.Client
}

// NewAPI returns an API whose requests travel through c, a connection to h.
func NewAPI(c *remote.Client, h Host) *API {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.SSH().DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}
	return &API{host: h, client: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Target is one scrape target as Prometheus sees it.
type Target struct {
	Job      string `json:"job"`
	Host     string `json:"host"`
	Instance string `json:"instance"`
	// Health is "up", "down" or "unknown" (not scraped yet).
	Health         string    `json:"health"`
	LastError      string    `json:"last_error,omitempty"`
	LastScrape     time.Time `json:"last_scrape"`
	ScrapeDuration float64   `json:"scrape_duration_seconds"`
}

// RuleGroup is one rule group's evaluation health.
type RuleGroup struct {
	Name string `json:"name"`
	File string `json:"file"`
	// Rules counts the group's rules; Unhealthy those whose last evaluation failed (Errors has
	// their errors); Firing and Pending the alerting rules in those states.
	Rules          int       `json:"rules"`
	Unhealthy      int       `json:"unhealthy"`
	Firing         int       `json:"firing"`
	Pending        int       `json:"pending"`
	Errors         []string  `json:"errors,omitempty"`
	LastEvaluation time.Time `json:"last_evaluation"`
	EvaluationTime float64   `json:"evaluation_seconds"`
}

// Alert is one alert of Prometheus' /api/v1/alerts.
type Alert struct {
	Name        string            `json:"name"`
	State       string            `json:"state"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	ActiveAt    time.Time         `json:"active_at"`
}

// Targets lists the active scrape targets.
func (a *API) Targets(ctx context.Context) ([]Target, error) {
	var data struct {
		ActiveTargets []struct {
			Labels             map[string]string `json:"labels"`
			Health             string            `json:"health"`
			LastError          string            `json:"lastError"`
			LastScrape         time.Time         `json:"lastScrape"`
			LastScrapeDuration float64           `json:"lastScrapeDuration"`
		} `json:"activeTargets"`
	}
	if err := a.get(ctx, "/api/v1/targets?state=active", &data); err != nil {
		return nil, err
	}
	out := make([]Target, 0, len(data.ActiveTargets))
	for _, t := range data.ActiveTargets {
		// Package monitor labels a target instance = its host name; a label host, when set, wins.
		host := t.Labels["host"]
		if host == "" {
			host = t.Labels["instance"]
		}
		out = append(out, Target{Job: t.Labels["job"], Host: host, Instance: t.Labels["instance"],
			Health: t.Health, LastError: t.LastError, LastScrape: t.LastScrape, ScrapeDuration: t.LastScrapeDuration})
	}
	return out, nil
}

// RuleGroups lists the rule groups with the health of their last evaluation.
func (a *API) RuleGroups(ctx context.Context) ([]RuleGroup, error) {
	var data struct {
		Groups []struct {
			Name           string    `json:"name"`
			File           string    `json:"file"`
			LastEvaluation time.Time `json:"lastEvaluation"`
			EvaluationTime float64   `json:"evaluationTime"`
			Rules          []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
				Type      string `json:"type"`
				State     string `json:"state"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := a.get(ctx, "/api/v1/rules", &data); err != nil {
		return nil, err
	}
	var out []RuleGroup
	for _, g := range data.Groups {
		rg := RuleGroup{Name: g.Name, File: g.File, Rules: len(g.Rules), LastEvaluation: g.LastEvaluation, EvaluationTime: g.EvaluationTime}
		for _, r := range g.Rules {
			if r.Health == "err" {
				rg.Unhealthy++
				rg.Errors = append(rg.Errors, r.Name+": "+r.LastError)
			}
			switch r.State {
			case "firing":
				rg.Firing++
			case "pending":
				rg.Pending++
			}
		}
		out = append(out, rg)
	}
	return out, nil
}

// Alerts lists the alerts Prometheus holds now: pending and firing.
func (a *API) Alerts(ctx context.Context) ([]Alert, error) {
	var data struct {
		Alerts []struct {
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
			State       string            `json:"state"`
			ActiveAt    time.Time         `json:"activeAt"`
		} `json:"alerts"`
	}
	if err := a.get(ctx, "/api/v1/alerts", &data); err != nil {
		return nil, err
	}
	out := make([]Alert, 0, len(data.Alerts))
	for _, al := range data.Alerts {
		out = append(out, Alert{Name: al.Labels["alertname"], State: al.State, Labels: al.Labels, Annotations: al.Annotations, ActiveAt: al.ActiveAt})
	}
	return out, nil
}

// get reads a Prometheus API response's data into v.
func (a *API) get(ctx context.Context, path string, v any) error {
	u := a.host.PrometheusURL() + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("prometheus on %s: %w", a.host.Target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("prometheus on %s: GET %s: %w", a.host.Target, path, err)
	}
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.Status != "success" {
		return fmt.Errorf("%s", errtext.Cause(fmt.Sprintf("prometheus on %s: GET %s: HTTP %d", a.host.Target, path, resp.StatusCode), string(body)))
	}
	if err := json.Unmarshal(env.Data, v); err != nil {
		return fmt.Errorf("prometheus on %s: GET %s: %w", a.host.Target, path, err)
	}
	return nil
}

// waitReady polls base/-/ready until the service answers 200 or limit passes.
func (a *API) waitReady(ctx context.Context, base string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/-/ready", nil)
		if err != nil {
			return err
		}
		resp, err := a.client.Do(req)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %s", limit, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// reload asks the service at base to read its configuration again; both answer 200 only when
// the new configuration loaded.
func (a *API) reload(ctx context.Context, base string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/-/reload", nil)
	if err != nil {
		return err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", errtext.Cause(fmt.Sprintf("POST %s/-/reload: HTTP %d", base, resp.StatusCode), string(b)))
	}
	return nil
}
