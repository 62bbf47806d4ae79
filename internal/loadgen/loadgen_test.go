package loadgen_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/app/apptest"
	"github.com/instactl/instactl/internal/loadgen"
	"github.com/instactl/instactl/shardmap"
)

// TestRunAndVerify drives a real app server (two Postgres nodes, Redis, memcached, moto) and
// reads every acknowledged write back; then it tampers with the record file to check that Verify
// notices missing and mismatched writes.
//
// It checks correctness, never speed: the generator waits for a free slot instead of dropping
// (so a loaded machine slows the run down rather than shedding the writes under test), a request
// that runs out its timeout is load, not a bug, and every other failure is a bug.
func TestRunAndVerify(t *testing.T) {
	comps := apptest.StartComponents(t, 8)
	srv := apptest.StartApp(t, comps.Config())
	recFile := filepath.Join(t.TempDir(), "writes.jsonl")
	ctx := context.Background()
	res, err := loadgen.Run(ctx, loadgen.Config{
		BaseURL: srv.URL, Rate: 100, Duration: 3 * time.Second, Timeout: 30 * time.Second,
		MaxInFlight: 32, WaitForSlot: true, PhotoBytes: 2048, RecordFile: recFile, Seed: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.MarshalIndent(res, "", "  ")
	t.Logf("result: %s", out)
	if bugs := res.Errors - res.ErrorKinds["timeout"]; res.Requests != 300 || res.Dropped != 0 || bugs != 0 {
		t.Fatalf("run: %d requests (want 300), %d dropped (want 0 while waiting for a slot), %d errors other than timeouts (%v: %v)",
			res.Requests, res.Dropped, bugs, res.ErrorKinds, res.FirstErrors)
	}
	if len(res.Buckets) < 3 || res.Buckets[0].Requests == 0 || res.Buckets[0].P99Ms < res.Buckets[0].P50Ms {
		t.Fatalf("buckets: %+v", res.Buckets)
	}
	for _, k := range []string{"signup", "follow", "upload", "like", "feed"} {
		if res.ByKind[k].Requests == 0 {
			t.Errorf("no %s requests", k)
		}
	}
	if res.Writes == 0 {
		t.Fatal("no acknowledged writes to verify")
	}
	v, err := loadgen.Verify(ctx, srv.URL, recFile)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Clean() || v.Checked != res.Writes {
		t.Fatalf("verify: %+v (writes %d)", v, res.Writes)
	}

	// Move the first photo's shard to the other node: every write is still found exactly once
	// (the old copy, left fenced on the source node, is not looked at).
	photo, comment := firstRecord(t, recFile, "photo"), firstRecord(t, recFile, "comment")
	shard := shardmap.ShardOf(photo.ID)
	old := connect(t, moveShard(t, comps, srv, shard))
	var left int
	old.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s.photos WHERE id = $1", shardmap.SchemaName(shard)), photo.ID).Scan(&left)
	if v, err = loadgen.Verify(ctx, srv.URL, recFile); err != nil || !v.Clean() || v.Checked != res.Writes || left != 1 {
		t.Fatalf("verify after moving shard %d: %+v, %v (old copy rows: %d)", shard, v, err, left)
	}

	// Make real duplicates through the API: the bytes of a recorded photo uploaded again for the
	// same owner (now on the new node), and the body of a recorded comment posted again.
	img := fetch(t, "GET", fmt.Sprintf("%s/photos/%d/image", srv.URL, photo.ID), "", nil, 200)
	fetch(t, "POST", fmt.Sprintf("%s/photos?user_id=%d", srv.URL, photo.Ref), "image/jpeg", img, 201)
	var cs struct {
		Comments []struct {
			ID     int64
			UserID int64 `json:"user_id"`
			Body   string
		}
	}
	json.Unmarshal(fetch(t, "GET", fmt.Sprintf("%s/photos/%d/comments", srv.URL, comment.Ref), "", nil, 200), &cs)
	for _, c := range cs.Comments {
		if c.ID == comment.ID {
			body, _ := json.Marshal(map[string]any{"user_id": c.UserID, "body": c.Body})
			fetch(t, "POST", fmt.Sprintf("%s/photos/%d/comments", srv.URL, comment.Ref), "application/json", body, 201)
		}
	}
	// And tamper with the record file: a photo that was never written, a user whose username
	// does not match, and a second user id acknowledged with an existing username.
	user := firstRecord(t, recFile, "user")
	f, _ := os.OpenFile(recFile, os.O_APPEND|os.O_WRONLY, 0)
	enc := json.NewEncoder(f)
	enc.Encode(loadgen.Record{Kind: "photo", ID: 123456789, Ref: 1, SHA256: "00"})
	enc.Encode(loadgen.Record{Kind: "user", ID: user.ID, SHA256: "not-the-name"})
	enc.Encode(loadgen.Record{Kind: "user", ID: 987654321, SHA256: user.SHA256})
	f.Close()
	v, err = loadgen.Verify(ctx, srv.URL, recFile)
	if err != nil {
		t.Fatal(err)
	}
	// Missing: the photo and user 987654321; duplicated: the photo, the comment, and the user
	// whose username now has two ids.
	if v.Missing != 2 || v.Mismatched != 1 || v.Duplicated != 3 || v.OK != res.Writes-3 {
		t.Fatalf("verify after duplicating and tampering: %+v", v)
	}
}

func firstRecord(t *testing.T, file, kind string) loadgen.Record {
	raw, _ := os.ReadFile(file)
	dec := json.NewDecoder(bytesReader(raw))
	for {
		var r loadgen.Record
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("no %s record", kind)
		}
		if r.Kind == kind {
			return r
		}
	}
}

// TestResultStats runs the generator against a stand-in server with known latencies and
// failures, and checks the summary: throughput, percentiles overall and per kind, errors by
// cause. Latency bounds are only those the server's own delays guarantee (a feed answer takes at
// least 30 ms however idle the machine): no assertion needs a fast machine.
func TestResultStats(t *testing.T) {
	var next atomic.Int64
	mux := http.NewServeMux()
	created := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":%d}`, next.Add(1))
	}
	mux.HandleFunc("POST /users", created)
	mux.HandleFunc("POST /photos", created)
	mux.HandleFunc("POST /users/{a}/follow/{b}", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /photos/{id}/likes", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "fenced", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("GET /users/{id}/feed", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(30 * time.Millisecond)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	res, err := loadgen.Run(context.Background(), loadgen.Config{BaseURL: srv.URL, Rate: 200, Duration: time.Second,
		Timeout: time.Minute, WaitForSlot: true, Mix: loadgen.Mix{SignUp: 1, Follow: 1, Upload: 1, Like: 1, Feed: 2}})
	if err != nil {
		t.Fatal(err)
	}
	feed, like, signup := res.ByKind["feed"], res.ByKind["like"], res.ByKind["signup"]
	sent := 0
	for _, ks := range res.ByKind {
		sent += ks.Requests
	}
	switch {
	case res.Requests != 200 || sent != 200 || res.Dropped != 0:
		t.Errorf("%d requests, %d sent, %d dropped; want 200, 200, 0", res.Requests, sent, res.Dropped)
	case res.Elapsed <= 0 || math.Abs(res.Throughput-float64(sent)/res.Elapsed.Seconds()) > 0.01:
		t.Errorf("throughput %.2f req/s, want %d answered in %s", res.Throughput, sent, res.Elapsed)
	case feed.Requests == 0 || feed.P50Ms < 30 || feed.P99Ms < feed.P50Ms || feed.MaxMs < feed.P99Ms:
		t.Errorf("feed latency %+v", feed.Latency)
	case signup.Requests == 0 || signup.Errors != 0:
		t.Errorf("signup %+v", signup)
	case like.Errors == 0 || like.Errors != like.Requests || res.ErrorKinds["http 503"] != like.Errors || res.Errors != like.Errors:
		t.Errorf("likes %+v, errors %d by kind %v", like, res.Errors, res.ErrorKinds)
	case res.Latency.MaxMs < feed.MaxMs || res.Latency.P99Ms < res.Latency.P50Ms || res.Latency.MaxMs < res.Latency.P99Ms:
		t.Errorf("overall latency %+v, feed %+v", res.Latency, feed.Latency)
	}
}

// TestDroppedIsNotAnError holds a stand-in server's answers until the generator has dropped a
// request (the in-flight bound is reached for certain, however fast or slow the machine), then
// checks that drops are counted apart from errors: in Dropped and in their bucket, not in
// Errors, ErrorKinds or the latencies.
func TestDroppedIsNotAnError(t *testing.T) {
	firstDrop := make(chan struct{})
	var once sync.Once
	loadgen.SetDropHook(func() { once.Do(func() { close(firstDrop) }) })
	defer loadgen.SetDropHook(nil)
	var sent atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sent.Add(1)
		<-firstDrop
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":%d}`, sent.Load())
	}))
	defer srv.Close()

	res, err := loadgen.Run(context.Background(), loadgen.Config{BaseURL: srv.URL, Rate: 100, Duration: time.Second,
		Timeout: time.Minute, MaxInFlight: 2, Mix: loadgen.Mix{SignUp: 1}})
	if err != nil {
		t.Fatal(err)
	}
	dropped := 0
	for _, b := range res.Buckets {
		dropped += b.Dropped
	}
	answered := res.ByKind["signup"].Requests
	switch {
	case res.Dropped == 0 || dropped != res.Dropped:
		t.Errorf("dropped %d, in buckets %d; want at least one, the same", res.Dropped, dropped)
	case res.Errors != 0 || len(res.ErrorKinds) != 0 || len(res.FirstErrors) != 0:
		t.Errorf("drops counted as errors: %d errors %v %v", res.Errors, res.ErrorKinds, res.FirstErrors)
	case res.Requests != 100 || answered+res.Dropped != 100 || int64(answered) != sent.Load() || res.Writes != answered:
		t.Errorf("%d requests = %d answered + %d dropped (server saw %d, %d writes); want 100 in all",
			res.Requests, answered, res.Dropped, sent.Load(), res.Writes)
	}
}

// A failed request's body is its cause: folded onto one line, never cut.
func TestStatusErrorKeepsWholeBody(t *testing.T) {
	body := "<html>\n<title>502 Bad Gateway</title>\n" + strings.Repeat("padding ", 60) + "upstream app-3 refused the connection</html>"
	got := (&loadgen.StatusError{Method: "GET", Path: "/feed", Code: 502, Body: body}).Error()
	if !strings.HasSuffix(got, "upstream app-3 refused the connection</html>") || strings.Contains(got, "\n") {
		t.Errorf("body cut or not folded: %s", got)
	}
}
