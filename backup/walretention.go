package backup

import (
	"context"
	"fmt"
	"sort"

	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
	"github.com/instactl/instactl/walarchive"
)

// ArchiveOpener opens the WAL archive of a group's cluster.
type ArchiveOpener func(ctx context.Context, group, systemID string) (*walarchive.Archive, error)

// stackArchive opens archives where the stack configures them (templates.WALArchiveFor).
func stackArchive(st *stack.Stack) ArchiveOpener {
	return func(ctx context.Context, group, systemID string) (*walarchive.Archive, error) {
		return templates.WALArchiveFor(st, group).Config().Open(ctx, systemID)
	}
}

// WALPrune is retention of one cluster's WAL archive: by LSN, never by object age. Everything
// below the start LSN of the oldest retained verified set (on any timeline) is deleted, nothing
// at or above it, and timeline history files never.
type WALPrune struct {
	Group    string `json:"group"`
	SystemID string `json:"system_id"`
	Archive  string `json:"archive"`
	// Horizon is the start LSN of HorizonSet, the oldest retained verified set; empty when no
	// verified set is retained, and then nothing is pruned.
	Horizon    string `json:"horizon,omitempty"`
	HorizonSet string `json:"horizon_set,omitempty"`
	// Delete lists the files below the horizon; Bytes their size; Kept counts the rest.
	Delete []string `json:"delete"`
	Bytes  int64    `json:"bytes"`
	Kept   int      `json:"kept"`
	// Reason says why nothing is pruned, when so.
	Reason  string `json:"reason,omitempty"`
	Deleted bool   `json:"deleted,omitempty"`
}

// planWAL plans WAL retention for every cluster a retained Postgres set names.
func planWAL(ctx context.Context, open ArchiveOpener, decisions []Decision) ([]WALPrune, error) {
	type key struct{ group, sys string }
	horizon := map[key]walarchive.LSN{}
	horizonSet := map[key]string{}
	var keys []key
	for _, d := range decisions {
		if !d.Keep || d.Set.Target != TargetPostgres {
			continue
		}
		ws, ok := WALStartOf(d.Set)
		if !ok {
			continue
		}
		k := key{ws.Group, ws.SystemID}
		if _, seen := horizonSet[k]; !seen {
			keys = append(keys, k)
			horizonSet[k] = ""
		}
		if d.Set.State != StateVerified {
			continue
		}
		lsn, err := walarchive.ParseLSN(ws.LSN)
		if err != nil {
			return nil, fmt.Errorf("wal retention: set %s: %w", d.Set.ID, err)
		}
		if h := horizonSet[k]; h == "" || lsn < horizon[k] {
			horizon[k], horizonSet[k] = lsn, d.Set.ID
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].group != keys[j].group {
			return keys[i].group < keys[j].group
		}
		return keys[i].sys < keys[j].sys
	})
	var out []WALPrune
	for _, k := range keys {
		a, err := open(ctx, k.group, k.sys)
		if err != nil {
			return out, fmt.Errorf("wal retention of %s: %w", k.group, err)
		}
		wp := WALPrune{Group: k.group, SystemID: k.sys, Archive: a.Location(), Delete: []string{}}
		files, err := a.List(ctx)
		if err != nil {
			return out, err
		}
		if horizonSet[k] == "" {
			wp.Reason = "no verified set of " + k.group + " is retained: nothing is pruned until one is"
			wp.Kept = len(files)
			out = append(out, wp)
			continue
		}
		wp.Horizon, wp.HorizonSet = horizon[k].String(), horizonSet[k]
		for _, f := range files {
			if f.Kind != walarchive.KindHistory && f.SegNo < horizon[k].SegNo() {
				wp.Delete = append(wp.Delete, f.Name)
				wp.Bytes += f.Size
			} else {
				wp.Kept++
			}
		}
		out = append(out, wp)
	}
	return out, nil
}

// applyWAL deletes what the plan lists.
func applyWAL(ctx context.Context, open ArchiveOpener, plan []WALPrune) error {
	for i := range plan {
		wp := &plan[i]
		if len(wp.Delete) == 0 {
			continue
		}
		a, err := open(ctx, wp.Group, wp.SystemID)
		if err != nil {
			return fmt.Errorf("wal retention of %s: %w", wp.Group, err)
		}
		if err := a.Delete(ctx, wp.Delete); err != nil {
			return fmt.Errorf("wal retention of %s: %w", wp.Group, err)
		}
		wp.Deleted = true
	}
	return nil
}
