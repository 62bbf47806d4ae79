package walarchive

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Has reports whether name is archived.
func (a *Archive) Has(ctx context.Context, name string) (bool, error) {
	_, err := a.archivedSHA(ctx, name)
	if errors.Is(err, ErrNotArchived) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("wal archive: %w", err)
	}
	return true, nil
}

// Switch is one line of a timeline history file: timeline Parent ended at LSN End, where its
// child began.
type Switch struct {
	Parent uint32
	End    LSN
}

// ParseHistory parses a timeline history file ("1\t0/3000000\tno recovery target specified"
// lines, oldest first).
func ParseHistory(body string) ([]Switch, error) {
	var out []Switch
	for n, l := range strings.Split(body, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		if len(f) < 2 {
			return nil, fmt.Errorf("history line %d: want TIMELINE<TAB>LSN<TAB>REASON, got %q", n+1, l)
		}
		tli, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("history line %d: timeline %q: %w", n+1, f[0], err)
		}
		end, err := ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("history line %d: %w", n+1, err)
		}
		out = append(out, Switch{Parent: uint32(tli), End: end})
	}
	return out, nil
}

// TargetTimeline returns the newest timeline in the archive that descends from timeline from
// after LSN at (a base backup's stop LSN): the timeline a restore from that backup must follow
// to see everything archived. A timeline that forked off from before at is not a descendant
// (the base already holds WAL the fork never had). With no history files it is from.
func (a *Archive) TargetTimeline(ctx context.Context, from uint32, at LSN) (uint32, error) {
	files, err := a.List(ctx)
	if err != nil {
		return 0, err
	}
	var newest uint32
	for _, f := range files {
		if f.Kind == KindHistory && f.Timeline > newest {
			newest = f.Timeline
		}
	}
	for tli := newest; tli > from; tli-- {
		body, err := a.Read(ctx, HistoryName(tli))
		if errors.Is(err, ErrNotArchived) {
			continue
		}
		if err != nil {
			return 0, err
		}
		hist, err := ParseHistory(string(body))
		if err != nil {
			return 0, fmt.Errorf("wal archive %s%s: %w", a.Location(), HistoryName(tli), err)
		}
		if Descends(hist, from, at) {
			return tli, nil
		}
	}
	if from > 1 {
		// Recovery reads the history of the timeline it starts on.
		if ok, err := a.Has(ctx, HistoryName(from)); err != nil {
			return 0, err
		} else if !ok {
			return 0, fmt.Errorf("wal archive %s: %s is missing: a restore onto timeline %d cannot start (was the promoted primary's archiver running?)",
				a.Location(), HistoryName(from), from)
		}
	}
	return from, nil
}

// Descends reports whether a timeline with history hist passes through timeline from at LSN
// at: from is among its ancestors and ended at or after at.
func Descends(hist []Switch, from uint32, at LSN) bool {
	for _, s := range hist {
		if s.Parent == from {
			return s.End >= at
		}
	}
	return false
}
