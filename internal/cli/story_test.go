package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/instactl/instactl/internal/story"
)

// TestDemoStory runs the main job end to end, with a shorter load, exactly as `make demo` does:
// every command of the story against a real sandbox, the real app server under load, and the
// HTML report.
func TestDemoStory(t *testing.T) {
	requireSandbox(t)
	path := sandboxStackFile(t, "127.0.110.1", 18110, 15110, `  app: {count: 2}
  pg: {count: 4, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/postgresql}}
  redis: {count: 2, replicas: 1, volumes: {count: 1, size_gib: 10, mount: /var/lib/redis}}
  memcached: {count: 1}
shards:
  logical: 8
deploy:
  batches: [1, 100%]`)
	sandboxUp(t, path)
	work := t.TempDir()
	stdout, stderr, code := run(t, "--stack", path, "demo", "--source", "../..", "--workdir", work,
		"--rate", "15", "--settle", "2s", "--moves", "1", "-o", "json")
	if code != 0 {
		t.Fatalf("demo: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var sum story.Summary
	if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
		t.Fatalf("demo -o json: %v\n%s", err, stdout)
	}
	if sum.Requests == 0 || sum.FailedRequests != 0 || !sum.WritesVerified || sum.AcknowledgedWrite == 0 || !sum.BackupVerified {
		t.Fatalf("story summary: %+v", sum)
	}
	if sum.FreezeWindow <= 0 || sum.MoveWindow <= 0 || sum.DeployDuration <= 0 {
		t.Errorf("story lacks its windows: freeze %s, move %s, deploy %s", sum.FreezeWindow, sum.MoveWindow, sum.DeployDuration)
	}
	var names []string
	for _, op := range sum.Ops {
		names = append(names, op.Name)
		if !op.OK {
			t.Errorf("operation %s failed: %s", op.Name, op.Detail)
		}
	}
	if sum.SwitchoverBlock <= 0 || sum.FailoverDuration <= 0 {
		t.Errorf("story lacks its switchover and failover: switchover block %s, failover %s", sum.SwitchoverBlock, sum.FailoverDuration)
	}
	for _, want := range []string{"deploy v2", "backup", "verify pg backup", "verify redis backup", "move shard",
		"switchover pg-", "switchover redis-", "power cut of pg-", "failover pg-", "rejoin pg-"} {
		if !strings.Contains(strings.Join(names, ","), want) {
			t.Errorf("story has no %q operation: %v", want, names)
		}
	}
	// The one-screen status sees what the story did.
	stdout, stderr, code = run(t, "--stack", path, "status", "-o", "json")
	var ss StackStatus
	if err := json.Unmarshal([]byte(stdout), &ss); err != nil || code != 0 {
		t.Fatalf("status: exit %d, %v\n%s\n%s", code, err, stdout, stderr)
	}
	if !ss.Healthy || len(ss.Backups) != 2 || len(ss.Shards) != 2 || ss.Lock != nil {
		t.Errorf("status after the story: healthy %v, backups %+v, shards %+v, lock %+v", ss.Healthy, ss.Backups, ss.Shards, ss.Lock)
	}
	for _, h := range ss.Hosts {
		if h.Role == "app" && h.Release == "" {
			t.Errorf("%s runs no release after the story", h.Name)
		}
		if r := h.Replication; r != nil && r.State != "streaming" && r.State != "online" {
			t.Errorf("%s replication %+v", h.Name, r)
		}
	}
	html, err := os.ReadFile(filepath.Join(work, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(html), `<svg class="chart"`); n != 2 {
		t.Errorf("report has %d charts, want 2", n)
	}
}
