package walarchive

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// DefaultPrefetch is how many segments fetch downloads at once when the one asked for is not
// spooled yet.
const DefaultPrefetch = 8

// FetchOptions configures Fetch.
type FetchOptions struct {
	// Spool is the directory prefetched segments wait in. It must be on the same file system as
	// the destination (rename); restore puts it beside pg_wal. Empty disables prefetch.
	Spool string
	// Prefetch is how many segments to download in parallel, the one asked for included
	// (default DefaultPrefetch; 1 is one sequential fetch per segment, the slow path).
	Prefetch int
}

// FetchResult says where a fetched file came from.
type FetchResult struct {
	// Spooled is true when the file was already in the spool (an earlier batch fetched it).
	Spooled bool `json:"spooled"`
	// Prefetched counts the further segments this call downloaded into the spool.
	Prefetched int `json:"prefetched"`
}

// Fetch writes the archived file name to dest. A segment is served from the spool when an
// earlier call prefetched it; otherwise it and the next Prefetch-1 segments of its timeline are
// downloaded in parallel, the rest into the spool. A file not archived is ErrNotArchived.
func (a *Archive) Fetch(ctx context.Context, name, dest string, o FetchOptions) (FetchResult, error) {
	f, err := ParseName(name)
	if err != nil {
		return FetchResult{}, fmt.Errorf("wal fetch: %w", err)
	}
	n := o.Prefetch
	if n <= 0 {
		n = DefaultPrefetch
	}
	if f.Kind != KindSegment || o.Spool == "" || n == 1 {
		return FetchResult{}, a.get(ctx, name, dest)
	}
	if err := os.MkdirAll(o.Spool, 0o700); err != nil {
		return FetchResult{}, fmt.Errorf("wal fetch: spool: %w", err)
	}
	a.dropConsumed(o.Spool, f)
	spooled := filepath.Join(o.Spool, name)
	if err := os.Rename(spooled, dest); err == nil {
		return FetchResult{Spooled: true}, nil
	}
	// Download this segment to dest and the next ones to the spool, all at once.
	var wg sync.WaitGroup
	errs := make([]error, n)
	started := make([]bool, n)
	for i := 0; i < n; i++ {
		target := dest
		seg := SegmentName(f.Timeline, f.SegNo+uint64(i))
		if i > 0 {
			target = filepath.Join(o.Spool, seg)
			if _, err := os.Stat(target); err == nil {
				continue
			}
		}
		started[i] = true
		wg.Add(1)
		go func(i int, seg, target string) {
			defer wg.Done()
			errs[i] = a.get(ctx, seg, target)
		}(i, seg, target)
	}
	wg.Wait()
	res := FetchResult{}
	for i := 1; i < n; i++ {
		if started[i] && errs[i] == nil {
			res.Prefetched++
		}
	}
	// A prefetched segment not archived yet is no error: replay may end before it.
	return res, errs[0]
}

// dropConsumed removes spooled segments of f's timeline before f: replay has moved past them.
// Segments of other timelines stay; a restore that switches timeline asks for them by name.
func (a *Archive) dropConsumed(spool string, f File) {
	ents, err := os.ReadDir(spool)
	if err != nil {
		return
	}
	for _, e := range ents {
		g, err := ParseName(e.Name())
		if err != nil {
			if filepath.Ext(e.Name()) == ".tmp" {
				_ = os.Remove(filepath.Join(spool, e.Name())) // a download cut short
			}
			continue
		}
		if g.Kind == KindSegment && g.Timeline == f.Timeline && g.SegNo < f.SegNo {
			_ = os.Remove(filepath.Join(spool, e.Name()))
		}
	}
}

// IsNotArchived reports whether err says the file is not in the archive.
func IsNotArchived(err error) bool { return errors.Is(err, ErrNotArchived) }
