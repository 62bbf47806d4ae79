package aws

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/internal/testenv"
)

// slowProxy stands between the SDK and moto and makes moto asynchronous, as EC2 is: the first
// hold describes of an instance or volume by id answer "pending" or "creating".
type slowProxy struct {
	next http.Handler
	hold int

	mu    sync.Mutex
	polls map[string]int
	// stopping: answer "stopping" instead of "stopped" (and nothing else) while holding.
	stopping bool
	// force is the Force parameter of the last StopInstances call.
	force string
}

func (s *slowProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	form, _ := url.ParseQuery(string(body))
	rec := httptest.NewRecorder()
	s.next.ServeHTTP(rec, r)
	out := rec.Body.Bytes()
	id := form.Get("InstanceId.1") + form.Get("VolumeId.1")
	if form.Get("Action") == "StopInstances" {
		s.mu.Lock()
		s.force = form.Get("Force")
		s.mu.Unlock()
	}
	if a := form.Get("Action"); id != "" && (a == "DescribeInstances" || a == "DescribeVolumes") {
		s.mu.Lock()
		s.polls[id]++
		n, stopping := s.polls[id], s.stopping
		s.mu.Unlock()
		switch {
		case n <= s.hold && stopping:
			out = bytes.ReplaceAll(out, []byte("<code>80</code>"), []byte("<code>64</code>"))
			out = bytes.ReplaceAll(out, []byte("<name>stopped</name>"), []byte("<name>stopping</name>"))
		case n <= s.hold:
			out = bytes.ReplaceAll(out, []byte("<code>16</code>"), []byte("<code>0</code>"))
			out = bytes.ReplaceAll(out, []byte("<name>running</name>"), []byte("<name>pending</name>"))
			out = bytes.ReplaceAll(out, []byte("<status>available</status>"), []byte("<status>creating</status>"))
		}
	}
	for k, v := range rec.Header() {
		if k != "Content-Length" {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(out)
}

// rehold holds the next describes of id again: "stopping" for "stopped" if stopping, else
// "pending" for "running".
func (s *slowProxy) rehold(id string, stopping bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.polls[id], s.stopping = 0, stopping
}

func (s *slowProxy) pollsOf(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.polls[id]
}

func slowMoto(t *testing.T, hold int, opts Options) (*Provider, *slowProxy) {
	t.Helper()
	target, err := url.Parse(testenv.Moto(t))
	if err != nil {
		t.Fatal(err)
	}
	sp := &slowProxy{next: httputil.NewSingleHostReverseProxy(target), hold: hold, polls: map[string]int{}}
	srv := httptest.NewServer(sp) // 127.0.0.1
	t.Cleanup(srv.Close)
	t.Setenv("AWS_ENDPOINT_URL", srv.URL)
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return New(cfg, opts), sp
}

func TestWaitsUntilReady(t *testing.T) {
	p, sp := slowMoto(t, 3, Options{PollMin: 20 * time.Millisecond, PollMax: 40 * time.Millisecond})
	ctx := context.Background()
	in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: "w", Role: "app", Type: "t2.micro", Image: "ami-785db401",
		Zone: "us-east-1a", Tags: map[string]string{cloud.TagStack: "wait"}})
	if err != nil {
		t.Fatal(err)
	}
	if in.State != "running" || sp.pollsOf(in.ID) != 4 {
		t.Errorf("CreateInstance returned %s after %d polls; want running after 4", in.State, sp.pollsOf(in.ID))
	}
	v, err := p.CreateVolume(ctx, cloud.VolumeSpec{Zone: "us-east-1a", SizeGiB: 1, Tags: map[string]string{cloud.TagStack: "wait"}})
	if err != nil {
		t.Fatal(err)
	}
	if v.State != "available" || sp.pollsOf(v.ID) != 4 {
		t.Errorf("CreateVolume returned %s after %d polls; want available after 4", v.State, sp.pollsOf(v.ID))
	}
}

func TestWaitTimesOut(t *testing.T) {
	p, _ := slowMoto(t, 1<<30, Options{PollMin: 20 * time.Millisecond, PollMax: 40 * time.Millisecond, WaitTimeout: 300 * time.Millisecond})
	if _, err := p.Describe(context.Background(), "wait"); err != nil { // moto loads its EC2 backend on first use
		t.Fatal(err)
	}
	// The outer deadline is 200 times the wait budget: only a wait that never gives up reaches it,
	// however loaded the machine.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: "w", Role: "app", Type: "t2.micro",
		Image: "ami-785db401", Zone: "us-east-1a", Tags: map[string]string{cloud.TagStack: "wait"}})
	if err == nil || !strings.Contains(err.Error(), "wait for instance") || ctx.Err() != nil {
		t.Fatalf("err = %v, want the provider's own wait timeout", err)
	}
}

// TestStopStartWait: StopInstances returns only once EC2 says stopped (not while it says
// stopping), StartInstances only once it says running (not pending).
func TestStopStartWait(t *testing.T) {
	p, sp := slowMoto(t, 2, Options{PollMin: 20 * time.Millisecond, PollMax: 40 * time.Millisecond})
	ctx := context.Background()
	in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: "w", Role: "pg", Type: "t2.micro", Image: "ami-785db401",
		Zone: "us-east-1a", Tags: map[string]string{cloud.TagStack: "stopwait"}})
	if err != nil {
		t.Fatal(err)
	}
	state := func() string {
		t.Helper()
		r, err := p.Describe(ctx, "stopwait")
		if err != nil || len(r.Instances) != 1 {
			t.Fatalf("describe: %+v, %v", r, err)
		}
		return r.Instances[0].State
	}
	// Polls: 1 before the stop (running), 2 after it held as stopping, 3 stopped.
	sp.rehold(in.ID, true)
	if err := p.StopInstances(ctx, []string{in.ID}, true); err != nil {
		t.Fatal(err)
	}
	if n := sp.pollsOf(in.ID); n != 3 {
		t.Errorf("StopInstances returned after %d polls; want 3 (it must wait out \"stopping\")", n)
	}
	sp.mu.Lock()
	force := sp.force
	sp.mu.Unlock()
	if force != "true" {
		t.Errorf("StopInstances sent Force=%q, want true", force)
	}
	if st := state(); st != "stopped" {
		t.Errorf("after StopInstances, state %s", st)
	}
	// Polls: 1 before the start (stopped), 2 after it held as pending, 3 running.
	sp.rehold(in.ID, false)
	if err := p.StartInstances(ctx, []string{in.ID}); err != nil {
		t.Fatal(err)
	}
	if n := sp.pollsOf(in.ID); n != 3 {
		t.Errorf("StartInstances returned after %d polls; want 3 (it must wait out \"pending\")", n)
	}
	if st := state(); st != "running" {
		t.Errorf("after StartInstances, state %s", st)
	}
}
