package app

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Faults is what a fault-injection build does wrong on purpose, so tests can ship a bad
// release that still passes its health check and see the canary analysis roll it back. It
// comes only from Build.Fault, which only a build flag sets (cmd/instagram-app's
// -ldflags "-X main.fault=..."): no config file, environment variable or flag reaches it,
// so a production build cannot turn it on by accident.
type Faults struct {
	// ErrorRatio is the share of requests answered 500 (0.05: every 20th request).
	ErrorRatio float64
	// Delay is added to every request.
	Delay time.Duration
}

// ParseFaults reads a fault spec: comma-separated "errors=5%" (or a fraction "errors=0.05")
// and "delay=50ms". The empty spec is no fault.
func ParseFaults(spec string) (Faults, error) {
	var f Faults
	if spec == "" {
		return f, nil
	}
	for _, part := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		switch {
		case ok && k == "errors":
			pct := strings.HasSuffix(v, "%")
			r, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
			if pct {
				r /= 100
			}
			if err != nil || r <= 0 || r > 1 {
				return Faults{}, fmt.Errorf("fault %q: errors must be a share such as 5%% or 0.05", part)
			}
			f.ErrorRatio = r
		case ok && k == "delay":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return Faults{}, fmt.Errorf("fault %q: delay must be a duration such as 50ms", part)
			}
			f.Delay = d
		default:
			return Faults{}, fmt.Errorf("fault %q: expected errors=5%% or delay=50ms", part)
		}
	}
	return f, nil
}

// faultHandler injects f into every request except the health check and /metrics (the
// health gate and the analysis must see the server as it is).
type faultHandler struct {
	f    Faults
	next http.Handler
	n    atomic.Uint64
}

// withFaults wraps the mux; with no fault it returns mux itself.
func withFaults(f Faults, mux http.Handler) http.Handler {
	if f == (Faults{}) {
		return mux
	}
	return &faultHandler{f: f, next: mux}
}

// patternFinder is what *http.ServeMux offers to find the pattern a request matches, so that
// wrappers of the mux (faults, switches) can tell one endpoint from another.
type patternFinder interface {
	Handler(*http.Request) (http.Handler, string)
}

// Handler implements patternFinder by asking the wrapped mux; "" when it is not one.
func (h *faultHandler) Handler(r *http.Request) (http.Handler, string) {
	if m, ok := h.next.(patternFinder); ok {
		return m.Handler(r)
	}
	return h, ""
}

// ServeHTTP implements http.Handler.
func (h *faultHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, pattern := h.Handler(r)
	if pattern == "" || pattern == "GET /healthz" || pattern == "GET /metrics" {
		h.next.ServeHTTP(w, r)
		return
	}
	if h.f.Delay > 0 {
		select {
		case <-time.After(h.f.Delay):
		case <-r.Context().Done():
			return
		}
	}
	// Exactly ErrorRatio of the requests, spread evenly: request n fails when the count of
	// failures due by n grows.
	if n := h.n.Add(1); h.f.ErrorRatio > 0 && uint64(float64(n)*h.f.ErrorRatio) > uint64(float64(n-1)*h.f.ErrorRatio) {
		r.Pattern = pattern // the metrics count the error for its route
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "injected fault (a fault-injection build)"})
		return
	}
	h.next.ServeHTTP(w, r)
}
