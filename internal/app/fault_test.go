package app

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestParseFaults(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want Faults
	}{
		{"", Faults{}},
		{"errors=5%", Faults{ErrorRatio: 0.05}},
		{"errors=0.25", Faults{ErrorRatio: 0.25}},
		{"delay=50ms", Faults{Delay: 50 * time.Millisecond}},
		{"errors=1%, delay=2ms", Faults{ErrorRatio: 0.01, Delay: 2 * time.Millisecond}},
	} {
		got, err := ParseFaults(tc.spec)
		if err != nil || got != tc.want {
			t.Errorf("ParseFaults(%q) = %+v, %v; want %+v", tc.spec, got, err, tc.want)
		}
	}
	for _, bad := range []string{"errors=0", "errors=150%", "errors=x", "delay=-1s", "delay=soon", "slow", "latency=5ms"} {
		if _, err := ParseFaults(bad); err == nil {
			t.Errorf("ParseFaults(%q) accepted", bad)
		}
	}
}

// TestFaultsServeAndCount sends requests through the metrics middleware and a faulty mux:
// exactly 5% of the API requests answer 500 and are counted for their route, the health
// check and /metrics never fail, and a delay build is slower on the API only.
func TestFaultsServeAndCount(t *testing.T) {
	m := newMetrics(&App{}, Build{}, "r1")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	h := m.instrument(withFaults(Faults{ErrorRatio: 0.05}, mux))
	codes := map[int]int{}
	for range 400 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/users/7", nil))
		codes[rec.Code]++
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("health check answered %d in a fault build", rec.Code)
		}
	}
	if codes[500] != 20 || codes[200] != 380 {
		t.Errorf("codes %v; want 20 of 400 answered 500", codes)
	}
	var c dto.Metric
	if err := m.requests.WithLabelValues("GET /users/{id}", "GET", "500").Write(&c); err != nil {
		t.Fatal(err)
	}
	if got := c.GetCounter().GetValue(); got != 20 {
		t.Errorf("500s counted for the route: %g, want 20", got)
	}

	slow := m.instrument(withFaults(Faults{Delay: 30 * time.Millisecond}, mux))
	start := time.Now()
	rec := httptest.NewRecorder()
	slow.ServeHTTP(rec, httptest.NewRequest("GET", "/users/7", nil))
	if d := time.Since(start); rec.Code != http.StatusOK || d < 30*time.Millisecond {
		t.Errorf("delay build: %d after %s; want 200 after at least 30ms", rec.Code, d)
	}
	if h := withFaults(Faults{}, mux); h != http.Handler(mux) {
		t.Error("no fault: the mux is wrapped anyway")
	}
}
