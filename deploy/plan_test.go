package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/instactl/instactl/templates"
)

func testConfig(stateDir string) Config {
	return Config{Stack: "ig", Role: "app", Path: "/opt/instagram", ServiceManager: templates.ServiceManagerSandbox,
		Batches: []string{"1", "50%", "100%"}, MaxFail: "1", HealthPort: 8080, HealthTimeout: 30 * time.Second,
		LoadBalancer: "ig", DrainTimeout: 5 * time.Second, StateDir: stateDir, Operator: "alice@laptop"}
}

func testHosts(n int) []Host {
	var hs []Host
	for i := range n {
		hs = append(hs, Host{Name: fmt.Sprintf("app-%d", i), InstanceID: fmt.Sprintf("i-%d", i), Address: fmt.Sprintf("127.0.40.%d", i+1)})
	}
	return hs
}

// TestPlanGolden pins the dry-run output; regenerate with INSTACTL_UPDATE_GOLDEN=1.
func TestPlanGolden(t *testing.T) {
	a := Artifact{Path: "/tmp/app", SHA256: "3f2a9c0d1e2b" + "00000000000000000000000000000000000000000000000000000", Size: 17 << 20, ID: "3f2a9c0d1e2b", Version: "v1.2.3"}
	p, err := NewPlan(KindDeploy, testConfig("/var/lib/instactl"), testHosts(5), a, "", "20261126T120000Z-abcdef")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(p.Batches); got != "[{1 [app-0]} {2 [app-1 app-2 app-3]} {3 [app-4]}]" {
		t.Errorf("batches = %s", got)
	}
	if p.LockHost != "app-0" || p.MaxFailAllowed != 1 || p.Release != a.ID {
		t.Errorf("plan = lock %s, max-fail %d, release %s", p.LockHost, p.MaxFailAllowed, p.Release)
	}
	var buf bytes.Buffer
	if err := p.Render(&buf); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "plan.golden")
	if os.Getenv("INSTACTL_UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with INSTACTL_UPDATE_GOLDEN=1 to create it)", err)
	}
	if buf.String() != string(want) {
		t.Errorf("plan render differs from %s:\n%s", golden, buf.String())
	}
	// The plan is a value: it survives a JSON round trip (the journal) unchanged.
	b, _ := json.Marshal(p)
	var back Plan
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(&back)
	if !bytes.Equal(b, b2) {
		t.Errorf("plan JSON round trip differs")
	}
}

func TestPlanRefuses(t *testing.T) {
	cfg := testConfig(t.TempDir())
	a := Artifact{ID: "abc", SHA256: "abc"}
	for name, tc := range map[string]struct {
		cfg   func(c *Config)
		hosts []Host
		rel   string
	}{
		"no hosts":        {hosts: nil},
		"duplicate host":  {hosts: append(testHosts(2), testHosts(1)...)},
		"relative path":   {cfg: func(c *Config) { c.Path = "opt/instagram" }, hosts: testHosts(2)},
		"bad batch":       {cfg: func(c *Config) { c.Batches = []string{"0"} }, hosts: testHosts(2)},
		"bad max-fail":    {cfg: func(c *Config) { c.MaxFail = "many" }, hosts: testHosts(2)},
		"no state dir":    {cfg: func(c *Config) { c.StateDir = "" }, hosts: testHosts(2)},
		"service manager": {cfg: func(c *Config) { c.ServiceManager = "init.d" }, hosts: testHosts(2)},
		"bad release":     {hosts: testHosts(2), rel: "../etc"},
	} {
		c := cfg
		if tc.cfg != nil {
			tc.cfg(&c)
		}
		kind := KindDeploy
		if tc.rel != "" {
			kind = KindRollback
		}
		if _, err := NewPlan(kind, c, tc.hosts, a, tc.rel, "run-1"); err == nil {
			t.Errorf("%s: NewPlan succeeded", name)
		}
	}
}
