package backup

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/instactl/instactl/walarchive"
)

// simWAL is a group's WAL archive in moto as a simulation fills it: segments pushed as the
// year goes on, a timeline switch with its history file and the old timeline's partial segment.
type simWAL struct {
	a            *walarchive.Archive
	dir          string
	tli          uint32
	seg          uint64
	pushed       map[string]bool
	deletedTotal int
}

const simSystemID = "7312345678901234567"

func newSimWAL(t *testing.T, endpoint string) *simWAL {
	t.Helper()
	ctx := context.Background()
	cfg := walarchive.Config{Bucket: "yr-wal", Group: "pg-0", Endpoint: endpoint, Region: "us-east-1", AccessKey: "testing", SecretKey: "testing"}
	cl, err := cfg.S3Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(cfg.Bucket)}); err != nil {
		t.Fatal(err)
	}
	a, err := cfg.Open(ctx, simSystemID)
	if err != nil {
		t.Fatal(err)
	}
	return &simWAL{a: a, dir: t.TempDir(), tli: 1, seg: 1, pushed: map[string]bool{}}
}

func (w *simWAL) open(ctx context.Context, group, systemID string) (*walarchive.Archive, error) {
	if group != "pg-0" || systemID != simSystemID {
		return nil, os.ErrNotExist
	}
	return w.a, nil
}

func (w *simWAL) pushFile(t *testing.T, name string) {
	t.Helper()
	p := filepath.Join(w.dir, name)
	if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := w.a.Push(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	w.pushed[name] = true
}

// push archives the next n segments of the current timeline.
func (w *simWAL) push(t *testing.T, n int) {
	for range n {
		w.pushFile(t, walarchive.SegmentName(w.tli, w.seg))
		w.seg++
	}
}

// setStart is the TagWALStart of a set starting now: early in the current segment.
func (w *simWAL) setStart() string {
	lsn := walarchive.LSN(w.seg*walarchive.SegmentSize + 0x28)
	return WALStart{Group: "pg-0", SystemID: simSystemID, Timeline: w.tli, LSN: lsn.String()}.String()
}

// failover ends timeline 1 halfway into the current segment and starts timeline 2 there.
func (w *simWAL) failover(t *testing.T) {
	end := walarchive.LSN(w.seg*walarchive.SegmentSize + walarchive.SegmentSize/2)
	p := filepath.Join(w.dir, walarchive.HistoryName(2))
	if err := os.WriteFile(p, []byte("1\t"+end.String()+"\tno recovery target specified\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := w.a.Push(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	w.pushed[walarchive.HistoryName(2)] = true
	w.pushFile(t, walarchive.SegmentName(1, w.seg)+".partial")
	w.tli = 2
}

// check holds the archive to the rule after a prune: every segment below the start LSN of the
// oldest retained verified set is gone, every one at or above it is there, and every history
// file is there; with no verified set retained, everything is there.
func (w *simWAL) check(t *testing.T, ctx context.Context, env Env) {
	t.Helper()
	sets, err := List(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	var horizon walarchive.LSN
	found := false
	for _, s := range sets {
		if s.Target != TargetPostgres || s.State != StateVerified {
			continue
		}
		ws, ok := WALStartOf(s)
		if !ok {
			t.Fatalf("retained set %s has no WAL start", s.ID)
		}
		lsn, err := walarchive.ParseLSN(ws.LSN)
		if err != nil {
			t.Fatal(err)
		}
		if !found || lsn < horizon {
			horizon, found = lsn, true
		}
	}
	files, err := w.a.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range files {
		have[f.Name] = true
	}
	for name := range w.pushed {
		f, err := walarchive.ParseName(name)
		if err != nil {
			t.Fatal(err)
		}
		below := found && f.Kind != walarchive.KindHistory && f.SegNo < horizon.SegNo()
		switch {
		case below && have[name]:
			t.Fatalf("%s is below the horizon %s (oldest retained verified set) and was not pruned", name, horizon)
		case !below && !have[name]:
			t.Fatalf("%s was pruned, but it is at or above the horizon %s (found %v) or a history file", name, horizon, found)
		}
	}
	w.deletedTotal = len(w.pushed) - len(files)
}
