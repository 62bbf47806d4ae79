package walarchive

import (
	"context"
	"fmt"
	"strings"
)

// Continuity is what a restore from a base backup needs of the archive, checked: every
// segment from the backup's start along the timeline path to the newest timeline descending
// from it, up to a last segment.
type Continuity struct {
	// Path is the timelines recovery follows, oldest first.
	Path []uint32 `json:"path"`
	// From and To are the first and last segments checked (names on their timelines).
	From string `json:"from"`
	To   string `json:"to"`
	// Segments counts the segments checked; Missing names those not archived.
	Segments int      `json:"segments"`
	Missing  []string `json:"missing"`
}

// GapError says segments a restore needs are not in the archive.
type GapError struct {
	Location string
	Missing  []string
}

func (e *GapError) Error() string {
	return fmt.Sprintf("wal archive %s is missing %d segment(s) a restore needs: %s; a point-in-time restore cannot pass the first of them (take a new set to start a new unbroken chain)",
		e.Location, len(e.Missing), strings.Join(e.Missing, ", "))
}

// CheckContinuity checks the archive from LSN start on timeline tli (a set's WAL start) to
// segment upTo (the segment number before the primary's current one; 0: the newest archived
// segment of the path's last timeline). A missing segment is a *GapError naming each.
func (a *Archive) CheckContinuity(ctx context.Context, tli uint32, start LSN, upTo uint64) (*Continuity, error) {
	files, err := a.List(ctx)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, f := range files {
		have[f.Name] = true
	}
	target, err := a.TargetTimeline(ctx, tli, start)
	if err != nil {
		return nil, err
	}
	// The switch points along the path: timeline path[i] is read from segment begin[i] on.
	path, begin := []uint32{tli}, []uint64{start.SegNo()}
	if target != tli {
		body, err := a.Read(ctx, HistoryName(target))
		if err != nil {
			return nil, err
		}
		hist, err := ParseHistory(string(body))
		if err != nil {
			return nil, fmt.Errorf("wal archive %s%s: %w", a.Location(), HistoryName(target), err)
		}
		on := false
		for i, s := range hist {
			if s.Parent == tli {
				on = true
			}
			if !on {
				continue
			}
			next := target
			if i+1 < len(hist) {
				next = hist[i+1].Parent
			}
			path, begin = append(path, next), append(begin, s.End.SegNo())
		}
	}
	last := path[len(path)-1]
	if upTo == 0 {
		for _, f := range files {
			if f.Kind == KindSegment && f.Timeline == last && f.SegNo > upTo {
				upTo = f.SegNo
			}
		}
	}
	c := &Continuity{Path: path, From: SegmentName(tli, start.SegNo()), To: SegmentName(last, upTo), Missing: []string{}}
	for i, t := range path {
		end := upTo
		if i+1 < len(path) {
			end = min(upTo, begin[i+1]-1)
			if begin[i+1] == 0 {
				continue
			}
		}
		for seg := begin[i]; seg <= end; seg++ {
			c.Segments++
			if name := SegmentName(t, seg); !have[name] {
				c.Missing = append(c.Missing, name)
			}
		}
	}
	if len(c.Missing) > 0 {
		return c, &GapError{Location: a.Location(), Missing: c.Missing}
	}
	return c, nil
}
