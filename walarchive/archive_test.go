package walarchive

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/instactl/instactl/internal/testenv"
)

// motoArchive returns an archive on a fresh moto_server bucket.
func motoArchive(t *testing.T) (*Archive, Config) {
	t.Helper()
	ep := testenv.Moto(t)
	cfg := Config{Bucket: "st-wal", Group: "pg-0", Endpoint: ep, Region: "us-east-1", AccessKey: "testing", SecretKey: "testing"}
	ctx := context.Background()
	cl, err := cfg.S3Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(cfg.Bucket)}); err != nil {
		t.Fatal(err)
	}
	a, err := cfg.Open(ctx, "7312345678901234567")
	if err != nil {
		t.Fatal(err)
	}
	return a, cfg
}

func writeFile(t *testing.T, dir, name string, body []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, body, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func segBody(i int) []byte { return bytes.Repeat([]byte{byte(i), 0x5a}, 4096) }

func TestPushIdempotentAndConflict(t *testing.T) {
	a, _ := motoArchive(t)
	ctx := context.Background()
	dir := t.TempDir()
	p := writeFile(t, dir, "000000010000000000000003", segBody(3))
	r, err := a.Push(ctx, p)
	if err != nil || r.Already {
		t.Fatalf("first push: %+v %v", r, err)
	}
	r, err = a.Push(ctx, p)
	if err != nil || !r.Already {
		t.Fatalf("second push of the same content must succeed as already archived: %+v %v", r, err)
	}
	other := writeFile(t, t.TempDir(), "000000010000000000000003", segBody(4))
	_, err = a.Push(ctx, other)
	var ce *ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("push of other content under the same name: want *ConflictError, got %v", err)
	}
	h := writeFile(t, dir, "00000002.history", []byte("1\t0/3000000\tno recovery target specified\n"))
	if _, err := a.Push(ctx, h); err != nil {
		t.Fatalf("push history: %v", err)
	}
	if _, err := a.Push(ctx, writeFile(t, dir, "RECOVERYXLOG", []byte("x"))); err == nil {
		t.Fatal("push of a file that is no WAL file name was accepted")
	}
	files, err := a.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[0].Name != "000000010000000000000003" || files[1].Name != "00000002.history" {
		t.Fatalf("list: %+v", files)
	}
	got, err := a.Read(ctx, "000000010000000000000003")
	if err != nil || !bytes.Equal(got, segBody(3)) {
		t.Fatalf("archived content changed by the conflicting push: %v", err)
	}
}

func TestFetchPrefetchesIntoSpool(t *testing.T) {
	a, _ := motoArchive(t)
	ctx := context.Background()
	src := t.TempDir()
	for i := 1; i <= 5; i++ {
		if _, err := a.Push(ctx, writeFile(t, src, SegmentName(1, uint64(i)), segBody(i))); err != nil {
			t.Fatal(err)
		}
	}
	data := t.TempDir()
	spool := filepath.Join(data, "spool")
	opt := FetchOptions{Spool: spool, Prefetch: 3}
	dest := filepath.Join(data, "RECOVERYXLOG")
	r, err := a.Fetch(ctx, SegmentName(1, 1), dest, opt)
	if err != nil || r.Spooled || r.Prefetched != 2 {
		t.Fatalf("fetch 1: %+v %v", r, err)
	}
	for i := 2; i <= 5; i++ {
		r, err := a.Fetch(ctx, SegmentName(1, uint64(i)), dest, opt)
		if err != nil {
			t.Fatalf("fetch %d: %v", i, err)
		}
		if b, _ := os.ReadFile(dest); !bytes.Equal(b, segBody(i)) {
			t.Fatalf("fetch %d: wrong content", i)
		}
		if wantSpooled := i == 2 || i == 3 || i == 5; r.Spooled != wantSpooled {
			t.Errorf("fetch %d: spooled %v, want %v (%+v)", i, r.Spooled, wantSpooled, r)
		}
	}
	_, err = a.Fetch(ctx, SegmentName(1, 6), dest, opt)
	if !IsNotArchived(err) {
		t.Fatalf("fetch past the end: want not archived, got %v", err)
	}
	if _, err := a.Fetch(ctx, "00000002.history", dest, opt); !IsNotArchived(err) {
		t.Fatalf("fetch of a missing history file: want not archived, got %v", err)
	}
	left, _ := os.ReadDir(spool)
	if len(left) != 0 {
		t.Errorf("spool keeps %d files after replay passed them", len(left))
	}
	if err := a.Delete(ctx, []string{SegmentName(1, 1), SegmentName(1, 2)}); err != nil {
		t.Fatal(err)
	}
	files, _ := a.List(ctx)
	if len(files) != 3 {
		t.Fatalf("after delete: %+v", files)
	}
}

func TestContinuityAcrossTimelines(t *testing.T) {
	a, _ := motoArchive(t)
	ctx := context.Background()
	dir := t.TempDir()
	// Timeline 1: segments 2-5; timeline 2 branches in segment 5 and goes on to 7.
	for seg := uint64(2); seg <= 5; seg++ {
		if _, err := a.Push(ctx, writeFile(t, dir, SegmentName(1, seg), segBody(int(seg)))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Push(ctx, writeFile(t, dir, "00000002.history", []byte("1\t0/5000100\tno recovery target specified\n"))); err != nil {
		t.Fatal(err)
	}
	for seg := uint64(5); seg <= 7; seg++ {
		if _, err := a.Push(ctx, writeFile(t, dir, SegmentName(2, seg), segBody(int(seg)))); err != nil {
			t.Fatal(err)
		}
	}
	c, err := a.CheckContinuity(ctx, 1, 0x2000028, 0)
	if err != nil || c.Segments != 6 || len(c.Path) != 2 || c.To != SegmentName(2, 7) {
		t.Fatalf("unbroken archive: %+v %v", c, err)
	}
	// A base taken after the branch point on timeline 1 has no descendant: only timeline 1.
	c, err = a.CheckContinuity(ctx, 1, 0x5000200, 0)
	if err != nil || len(c.Path) != 1 || c.Segments != 1 {
		t.Fatalf("base after the branch: %+v %v", c, err)
	}
	if err := a.Delete(ctx, []string{SegmentName(1, 3), SegmentName(2, 6)}); err != nil {
		t.Fatal(err)
	}
	_, err = a.CheckContinuity(ctx, 1, 0x2000028, 0)
	var gap *GapError
	if !errors.As(err, &gap) || len(gap.Missing) != 2 || gap.Missing[0] != SegmentName(1, 3) || gap.Missing[1] != SegmentName(2, 6) {
		t.Fatalf("archive with two segments deleted: %v, want a gap naming both", err)
	}
	// Up to the primary's segment: one past the archive is missing too.
	if _, err := a.CheckContinuity(ctx, 2, 0x7000000, 8); !errors.As(err, &gap) || gap.Missing[0] != SegmentName(2, 8) {
		t.Fatalf("check up to a segment not yet archived: %v", err)
	}
}
