package story

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/loadgen"
	"github.com/instactl/instactl/internal/testenv"
)

func sampleSummary() *Summary {
	s := &Summary{Stack: "instagram", Requests: 1200, AcknowledgedWrite: 300, WritesVerified: true,
		WritesChecked: 300, BackupVerified: true, DeployDuration: 9 * time.Second,
		FreezeWindow: 120 * time.Millisecond, MoveWindow: 15 * time.Millisecond, Elapsed: 3 * time.Minute}
	for i := 0; i < 60; i++ {
		s.Buckets = append(s.Buckets, loadgen.Bucket{Second: i, Requests: 20, P50Ms: 4 + float64(i%5), P99Ms: 20 + float64(i%7)})
	}
	s.Ops = []Op{{Name: "deploy v2", Start: 10 * time.Second, End: 19 * time.Second, OK: true, Detail: "3 hosts"},
		{Name: "backup", Start: 25 * time.Second, End: 31 * time.Second, OK: true},
		{Name: "shard move", Start: 40 * time.Second, End: 48 * time.Second, OK: true}}
	s.Phases = Phases(s.Buckets, s.Ops)
	return s
}

func TestPhases(t *testing.T) {
	s := sampleSummary()
	if len(s.Phases) != 7 {
		t.Fatalf("phases = %d: %+v", len(s.Phases), s.Phases)
	}
	total := 0
	for _, p := range s.Phases {
		total += p.Requests
	}
	if total != 1200 {
		t.Fatalf("phases cover %d requests, want all 1200", total)
	}
	if s.Phases[1].Name != "during deploy v2" || s.Phases[1].Requests != 9*20 {
		t.Fatalf("during deploy: %+v", s.Phases[1])
	}
}

func TestHTMLSelfContained(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHTML(&b, sampleSummary()); err != nil {
		t.Fatal(err)
	}
	html := b.String()
	for _, bad := range []string{"<script", "http://", "https://", "<link"} {
		if strings.Contains(strings.ReplaceAll(html, `xmlns="http://www.w3.org/2000/svg"`, ""), bad) {
			t.Errorf("report is not self-contained: contains %q", bad)
		}
	}
	if n := strings.Count(html, `<svg class="chart"`); n != 2 {
		t.Errorf("charts = %d, want 2", n)
	}
}

// TestHTMLRendersInChromium opens the report in headless Chromium and checks, from the DOM it
// built, that both charts are there with their lines and operation bands.
func TestHTMLRendersInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	bin := testenv.Require(t, "chromium", "chromium")
	dir := t.TempDir()
	path := filepath.Join(dir, "report.html")
	var b bytes.Buffer
	if err := WriteHTML(&b, sampleSummary()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+filepath.Join(dir, "profile"), "--dump-dom", "file://"+path)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	dom := string(out)
	if n := strings.Count(dom, `class="chart"`); n != 2 {
		t.Fatalf("chromium DOM has %d charts, want 2", n)
	}
	for _, want := range []string{"<path", "deploy v2", "shard move", "0 failed"} {
		if !strings.Contains(dom, want) {
			t.Errorf("chromium DOM lacks %q", want)
		}
	}
	png := filepath.Join(dir, "shot.png")
	shot := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+filepath.Join(dir, "profile2"), "--window-size=1000,900", "--screenshot="+png, "file://"+path)
	if err := shot.Run(); err != nil {
		t.Fatalf("chromium screenshot: %v", err)
	}
	if st, err := os.Stat(png); err != nil || st.Size() < 10000 {
		t.Fatalf("screenshot missing or blank: %v", err)
	}
	if os.Getenv("INSTACTL_KEEP_SCREENSHOT") != "" {
		_ = exec.Command("cp", png, os.Getenv("INSTACTL_KEEP_SCREENSHOT")).Run()
	}
}

func TestFindDuration(t *testing.T) {
	js := `{"sets":[{"manifest":{"freeze_duration_ns":61870538}},{"manifest":{"freeze_duration_ns":120000000}}],"moves":[{"window_ms":12.5}]}`
	if d, ok := findDurationMs(js, "freeze_duration_ns"); !ok || d != 120*time.Millisecond {
		t.Errorf("freeze = %s, %v", d, ok)
	}
	if d, ok := findDurationMs(js, "window_ns", "window_ms"); !ok || d != 12500*time.Microsecond {
		t.Errorf("window = %s, %v", d, ok)
	}
	if _, ok := findDurationMs("not json", "x"); ok {
		t.Error("found a duration in garbage")
	}
	owners := shardOwners(`{"shards":[{"shard":0,"node":"pg-0"},{"shard":1,"node":"pg-2"}]}`)
	if len(owners) != 2 || owners[1] != "pg-2" {
		t.Errorf("owners = %v", owners)
	}
}
