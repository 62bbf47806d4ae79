package loadgen_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/instactl/instactl/internal/app/apptest"
	"github.com/instactl/instactl/internal/loadgen"
)

// TestRunAndVerify drives a real app server (two Postgres nodes, Redis, memcached, moto) and
// reads every acknowledged write back; then it tampers with the record file to check that Verify
// notices missing and mismatched writes.
func TestRunAndVerify(t *testing.T) {
	comps := apptest.StartComponents(t, 8)
	srv := apptest.StartApp(t, comps.Config())
	recFile := filepath.Join(t.TempDir(), "writes.jsonl")
	ctx := context.Background()
	res, err := loadgen.Run(ctx, loadgen.Config{
		BaseURL: srv.URL, Rate: 100, Duration: 3 * time.Second, Timeout: 5 * time.Second,
		MaxInFlight: 32, PhotoBytes: 2048, RecordFile: recFile, Seed: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.MarshalIndent(res, "", "  ")
	t.Logf("result: %s", out)
	if res.Requests < 250 || res.Errors != 0 || res.Writes < 50 {
		t.Fatalf("run: %d requests, %d errors (%v), %d writes", res.Requests, res.Errors, res.FirstErrors, res.Writes)
	}
	if len(res.Buckets) < 3 || res.Buckets[0].Requests == 0 || res.Buckets[0].P99Ms < res.Buckets[0].P50Ms {
		t.Fatalf("buckets: %+v", res.Buckets)
	}
	for _, k := range []string{"signup", "follow", "upload", "like", "feed"} {
		if res.ByKind[k].Requests == 0 {
			t.Errorf("no %s requests", k)
		}
	}
	v, err := loadgen.Verify(ctx, srv.URL, recFile)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Clean() || v.Checked != res.Writes {
		t.Fatalf("verify: %+v (writes %d)", v, res.Writes)
	}

	f, _ := os.OpenFile(recFile, os.O_APPEND|os.O_WRONLY, 0)
	enc := json.NewEncoder(f)
	enc.Encode(loadgen.Record{Kind: "photo", ID: 123456789, Ref: 1, SHA256: "00"})
	enc.Encode(loadgen.Record{Kind: "user", ID: firstUser(t, recFile), SHA256: "not-the-name"})
	f.Close()
	v, err = loadgen.Verify(ctx, srv.URL, recFile)
	if err != nil {
		t.Fatal(err)
	}
	if v.Missing != 1 || v.Mismatched != 1 || v.OK != res.Writes {
		t.Fatalf("verify after tampering: %+v", v)
	}
}

func firstUser(t *testing.T, file string) int64 {
	raw, _ := os.ReadFile(file)
	dec := json.NewDecoder(bytesReader(raw))
	for {
		var r loadgen.Record
		if err := dec.Decode(&r); err != nil {
			t.Fatal("no user record")
		}
		if r.Kind == "user" {
			return r.ID
		}
	}
}
