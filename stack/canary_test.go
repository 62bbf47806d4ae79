package stack

import (
	"strings"
	"testing"
	"time"
)

func TestCanaryKeys(t *testing.T) {
	base := "name: c\nroles:\n  app:\n    count: 4\n"
	st, err := Parse("s.yaml", []byte(base))
	if err != nil || st.Deploy.Canary != nil {
		t.Fatalf("no deploy.canary: %v, canary %+v; want none", err, st.Deploy.Canary)
	}
	st, err = Parse("s.yaml", []byte(base+"deploy:\n  canary: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Canary{Window: 30 * time.Second, MaxWindow: 2 * time.Minute, MinRequests: 200, MaxErrorRatioIncrease: 0.01,
		MaxLatencyIncrease: 0.2, Confidence: 0.95, OnInconclusive: "continue"}
	if c := st.Deploy.Canary; c == nil || *c != want {
		t.Fatalf("canary: {} = %+v; want the defaults %+v", c, want)
	}
	st, err = Parse("s.yaml", []byte(base+"deploy:\n  canary:\n    window: 10s\n    max_window: 40s\n    min_requests: 50\n"+
		"    max_error_ratio_increase: 0\n    max_latency_increase: 0.5\n    confidence: 0.99\n    on_inconclusive: rollback\n"))
	if err != nil {
		t.Fatal(err)
	}
	want = Canary{Window: 10 * time.Second, MaxWindow: 40 * time.Second, MinRequests: 50, MaxErrorRatioIncrease: 0,
		MaxLatencyIncrease: 0.5, Confidence: 0.99, OnInconclusive: "rollback"}
	if c := st.Deploy.Canary; *c != want {
		t.Fatalf("canary = %+v; want %+v (a written 0 kept)", *c, want)
	}
}

func TestCanaryErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"deploy:\n  canary:\n    window: 0s\n", "s.yaml:7:13: deploy.canary.window: must be positive"},
		{"deploy:\n  canary:\n    window: 1m\n    max_window: 30s\n", "s.yaml:8:17: deploy.canary.max_window: must be at least window (1m0s)"},
		{"deploy:\n  canary:\n    min_requests: 0\n", "s.yaml:7:19: deploy.canary.min_requests: must be >= 1"},
		{"deploy:\n  canary:\n    max_error_ratio_increase: 5\n", "s.yaml:7:31: deploy.canary.max_error_ratio_increase: must be a share"},
		{"deploy:\n  canary:\n    max_latency_increase: -0.1\n", "s.yaml:7:27: deploy.canary.max_latency_increase: must be >= 0"},
		{"deploy:\n  canary:\n    confidence: 95\n", "s.yaml:7:17: deploy.canary.confidence: must be between 0.5 and 1"},
		{"deploy:\n  canary:\n    confidence: high\n", "s.yaml:7:17: deploy.canary.confidence: expected a number such as 0.95, found \"high\""},
		{"deploy:\n  canary:\n    windw: 10s\n", "s.yaml:7:5: deploy.canary.windw"},
		{"deploy:\n  canary:\n    on_inconclusive: stop\n", "s.yaml:7:22: deploy.canary.on_inconclusive: must be continue or rollback (got \"stop\")"},
		{"deploy:\n  canary: yes\n", "s.yaml:6:11: deploy.canary: expected a mapping"},
		{"deploy:\n  batches: [50%, 100%]\n  canary: {}\n", "s.yaml:7:11: deploy.canary: needs a baseline as large as the first batch outside it: the first batch (\"50%\") holds 2 of 3 app hosts; make it at most 1"},
	} {
		_, err := Parse("s.yaml", []byte("name: c\nroles:\n  app:\n    count: 3\n"+tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v\nwant %q", tc.yaml, err, tc.want)
		}
	}
}

func TestSSHPersist(t *testing.T) {
	base := "name: c\nroles:\n  app:\n    count: 3\n"
	for _, tc := range []struct {
		yaml string
		want time.Duration
	}{
		{"", DefaultSSHPersist},
		{"deploy:\n  ssh_persist: 0s\n", 0},
		{"deploy:\n  ssh_persist: 10m\n", 10 * time.Minute},
	} {
		st, err := Parse("s.yaml", []byte(base+tc.yaml))
		if err != nil || st.Deploy.Persist() != tc.want {
			t.Errorf("%q: persist %v, %v; want %v", tc.yaml, st.Deploy.Persist(), err, tc.want)
		}
	}
	for _, tc := range []struct{ yaml, want string }{
		{"deploy:\n  ssh_persist: -1s\n", "s.yaml:6:16: deploy.ssh_persist: must be 0s (off) to 1h, such as 5m (got -1s)"},
		{"deploy:\n  ssh_persist: 2h\n", "s.yaml:6:16: deploy.ssh_persist: must be 0s (off) to 1h, such as 5m (got 2h0m0s)"},
		{"deploy:\n  ssh_persist: forever\n", "s.yaml:6:16: deploy.ssh_persist:"},
	} {
		_, err := Parse("s.yaml", []byte(base+tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v\nwant %q", tc.yaml, err, tc.want)
		}
	}
}
