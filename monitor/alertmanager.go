package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// API is what instactl asks of Alertmanager (API v2). Client implements it; tests and callers
// that must not reach a network can supply their own.
type API interface {
	// Alerts lists alerts; with all false only those firing and neither silenced nor inhibited.
	Alerts(ctx context.Context, all bool) ([]Alert, error)
	// PostAlerts sends alerts, as Prometheus does.
	PostAlerts(ctx context.Context, alerts []PostableAlert) error
	// Silences lists every silence Alertmanager keeps (active, pending and expired).
	Silences(ctx context.Context) ([]Silence, error)
	// PutSilence creates a silence, or updates the one with s.ID; it returns the id.
	PutSilence(ctx context.Context, s Silence) (string, error)
	// ExpireSilence ends silence id now.
	ExpireSilence(ctx context.Context, id string) error
}

// Matcher is one label matcher of a silence.
type Matcher struct {
	Name    string `json:"name"`
	Value   string `json:"value"`
	IsRegex bool   `json:"isRegex"`
	// IsEqual false negates the matcher (!= or !~). Alertmanager 0.22+ reads it; nil in JSON
	// means true.
	IsEqual bool `json:"isEqual"`
}

// String is the matcher in Alertmanager's syntax: name="value", name=~"regex".
func (m Matcher) String() string {
	op := "="
	if !m.IsEqual {
		op = "!="
	}
	if m.IsRegex {
		op += "~"
		if !m.IsEqual {
			op = "!~"
		}
	}
	return fmt.Sprintf("%s%s%q", m.Name, op, m.Value)
}

// Equal is the matcher name="value".
func Equal(name, value string) Matcher { return Matcher{Name: name, Value: value, IsEqual: true} }

// Regex is the matcher name=~"regex".
func Regex(name, regex string) Matcher {
	return Matcher{Name: name, Value: regex, IsRegex: true, IsEqual: true}
}

// Silence is an Alertmanager silence.
type Silence struct {
	ID        string    `json:"id,omitempty"`
	Matchers  []Matcher `json:"matchers"`
	StartsAt  time.Time `json:"startsAt"`
	EndsAt    time.Time `json:"endsAt"`
	CreatedBy string    `json:"createdBy"`
	Comment   string    `json:"comment"`
	// Status.State is active, pending or expired (filled by Alertmanager).
	Status struct {
		State string `json:"state"`
	} `json:"status"`
}

// Alert is an alert as Alertmanager reports it.
type Alert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
	Fingerprint string            `json:"fingerprint"`
	Status      struct {
		// State is active, suppressed (silenced or inhibited) or unprocessed.
		State       string   `json:"state"`
		SilencedBy  []string `json:"silencedBy"`
		InhibitedBy []string `json:"inhibitedBy"`
	} `json:"status"`
}

// Name is the alert's alertname.
func (a Alert) Name() string { return a.Labels["alertname"] }

// Command is the instactl command that answers the alert (its command annotation).
func (a Alert) Command() string { return a.Annotations[AnnotationCommand] }

// PostableAlert is an alert sent to Alertmanager.
type PostableAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations,omitempty"`
	StartsAt    time.Time         `json:"startsAt,omitempty"`
	EndsAt      time.Time         `json:"endsAt,omitempty"`
}

// Client talks to one Alertmanager over HTTP.
type Client struct {
	// URL is the base URL, such as http://127.0.0.1:9093.
	URL string
	// HTTP is the client used (nil: one with a 10 s timeout).
	HTTP *http.Client
}

// NewClient returns a client of the Alertmanager at base URL.
func NewClient(base string) *Client {
	return &Client{URL: strings.TrimRight(base, "/"), HTTP: &http.Client{Timeout: 10 * time.Second}}
}

var _ API = (*Client)(nil)

// Alerts implements API.
func (c *Client) Alerts(ctx context.Context, all bool) ([]Alert, error) {
	q := url.Values{}
	if !all {
		q.Set("silenced", "false")
		q.Set("inhibited", "false")
	}
	var out []Alert
	return out, c.do(ctx, http.MethodGet, "/api/v2/alerts?"+q.Encode(), nil, &out)
}

// PostAlerts implements API.
func (c *Client) PostAlerts(ctx context.Context, alerts []PostableAlert) error {
	return c.do(ctx, http.MethodPost, "/api/v2/alerts", alerts, nil)
}

// Silences implements API.
func (c *Client) Silences(ctx context.Context) ([]Silence, error) {
	var out []Silence
	return out, c.do(ctx, http.MethodGet, "/api/v2/silences", nil, &out)
}

// PutSilence implements API.
func (c *Client) PutSilence(ctx context.Context, s Silence) (string, error) {
	if len(s.Matchers) == 0 {
		return "", errors.New("a silence needs at least one matcher")
	}
	body := struct {
		ID        string    `json:"id,omitempty"`
		Matchers  []Matcher `json:"matchers"`
		StartsAt  time.Time `json:"startsAt"`
		EndsAt    time.Time `json:"endsAt"`
		CreatedBy string    `json:"createdBy"`
		Comment   string    `json:"comment"`
	}{s.ID, s.Matchers, s.StartsAt, s.EndsAt, s.CreatedBy, s.Comment}
	var out struct {
		SilenceID string `json:"silenceID"`
	}
	if err := c.do(ctx, http.MethodPost, "/api/v2/silences", body, &out); err != nil {
		return "", err
	}
	return out.SilenceID, nil
}

// ExpireSilence implements API.
func (c *Client) ExpireSilence(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v2/silence/"+url.PathEscape(id), nil, nil)
}

// do sends one request; a non-2xx answer is an error with Alertmanager's own words.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.URL+path, body)
	if err != nil {
		return fmt.Errorf("alertmanager %s: %w", c.URL, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("alertmanager %s unreachable: %w", c.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("alertmanager %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("alertmanager %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("alertmanager %s %s: unexpected answer: %w", method, path, err)
	}
	return nil
}

// SilenceTTL is how far ahead SilenceDuring's silence ends; it is pushed on every half of it
// while the operation runs, so a killed instactl leaves a silence that lapses within it.
const SilenceTTL = 5 * time.Minute

// SilenceDuring runs fn with the alerts matching matchers silenced, for exactly as long as fn
// runs: the silence ends SilenceTTL ahead, is extended while fn runs and is expired when fn
// returns. Alertmanager trouble never stops fn: it is returned in warnings (am nil silences
// nothing). err is fn's.
func SilenceDuring(ctx context.Context, am API, matchers []Matcher, reason string, fn func() error) (warnings []error, err error) {
	if am == nil || len(matchers) == 0 {
		return nil, fn()
	}
	callCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	}
	s := Silence{Matchers: matchers, StartsAt: time.Now(), EndsAt: time.Now().Add(SilenceTTL), CreatedBy: "instactl", Comment: reason}
	cctx, cancel := callCtx()
	id, perr := am.PutSilence(cctx, s)
	cancel()
	if perr != nil {
		return []error{fmt.Errorf("no silence for %s: %w", matcherText(matchers), perr)}, fn()
	}
	s.ID = id
	done := make(chan struct{})
	extended := make(chan []error, 1)
	go func() {
		var errs []error
		tick := time.NewTicker(SilenceTTL / 2)
		defer tick.Stop()
		for {
			select {
			case <-done:
				extended <- errs
				return
			case <-tick.C:
				s.EndsAt = time.Now().Add(SilenceTTL)
				cctx, cancel := callCtx()
				nid, err := am.PutSilence(cctx, s)
				cancel()
				if err != nil {
					errs = append(errs, fmt.Errorf("extend silence %s: %w", s.ID, err))
				} else {
					s.ID = nid
				}
			}
		}
	}()
	err = fn()
	close(done)
	warnings = <-extended
	cctx, cancel = callCtx()
	defer cancel()
	if xerr := am.ExpireSilence(cctx, s.ID); xerr != nil {
		warnings = append(warnings, fmt.Errorf("expire silence %s (it lapses within %s): %w", s.ID, SilenceTTL, xerr))
	}
	return warnings, err
}

func matcherText(ms []Matcher) string {
	var parts []string
	for _, m := range ms {
		parts = append(parts, m.String())
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// SwitchoverSilence matches what a switchover of group is expected to trip: its members'
// alerts while the primary changes (no primary for a moment, the old primary down and not
// streaming until it follows). Fleet-wide alerts (SLO burn) stay loud.
func SwitchoverSilence(group string) []Matcher {
	return []Matcher{Equal(LabelGroup, group)}
}

// DeploySilence matches what a deploy of role is expected to trip: its hosts' app scrapes and
// health probes while they restart, and two releases running side by side. The SLO alerts
// are not silenced: a deploy that burns the error budget should page.
func DeploySilence(role string) []Matcher {
	return []Matcher{Equal(LabelGroup, role), Regex("alertname", strings.Join([]string{AlertExporterDown, AlertProbeFailed, AlertAppVersionDrift}, "|"))}
}

// BackupSilence matches what a backup is expected to trip: replication lag of the standbys
// whose replay it pauses while it snapshots. A volume frozen past the budget is not silenced.
func BackupSilence() []Matcher {
	return []Matcher{Regex("alertname", AlertPostgresLagBytes+"|"+AlertPostgresLagTime)}
}
