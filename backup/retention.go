package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/stack"
)

// Decision is the retention verdict on one set.
type Decision struct {
	Set  Set  `json:"set"`
	Keep bool `json:"keep"`
	// Reasons say why: "newest complete set", "hourly 3/24", "outside retention", "partial set".
	Reasons []string `json:"reasons"`
	// Deleted is set by Prune once the deletion is confirmed by describing again.
	Deleted bool `json:"deleted,omitempty"`
}

// PrunePlan is what Prune would do (or did, when applied).
type PrunePlan struct {
	Retention stack.Retention `json:"retention"`
	Decisions []Decision      `json:"decisions"`
	// WAL is the retention of each group's WAL archive (stacks with backup.wal_archive).
	WAL     []WALPrune `json:"wal,omitempty"`
	Applied bool       `json:"applied"`
}

// Deletes returns the decisions that delete a set.
func (p *PrunePlan) Deletes() []Decision {
	var out []Decision
	for _, d := range p.Decisions {
		if !d.Keep {
			out = append(out, d)
		}
	}
	return out
}

// PlanRetention applies grandfather-father-son retention to sets, per series (target and host),
// ordered by snapshot start time. Within a series, sets are kept when they are:
// pending (being taken); the newest complete-or-verified set; the newest verified set; among
// the MinVerified newest verified sets; or the newest set of one of the Hourly newest hours,
// Daily newest days, Weekly newest ISO weeks or Monthly newest months (UTC) that hold a usable
// set. Partial sets are deleted; everything else outside retention is deleted.
func PlanRetention(sets []Set, r stack.Retention) []Decision {
	series := map[string][]Set{}
	var names []string
	for _, s := range sets {
		if _, ok := series[s.Series()]; !ok {
			names = append(names, s.Series())
		}
		series[s.Series()] = append(series[s.Series()], s)
	}
	sort.Strings(names)
	var out []Decision
	for _, n := range names {
		out = append(out, planSeries(series[n], r)...)
	}
	return out
}

type bucketRule struct {
	name  string
	keep  int
	key   func(time.Time) string
	count int
	last  string
}

func planSeries(sets []Set, r stack.Retention) []Decision {
	sort.SliceStable(sets, func(i, j int) bool {
		if !sets[i].Time.Equal(sets[j].Time) {
			return sets[i].Time.After(sets[j].Time)
		}
		return sets[i].ID > sets[j].ID
	})
	rules := []*bucketRule{
		{name: "hourly", keep: r.Hourly, key: func(t time.Time) string { return t.UTC().Format("2006-01-02T15") }},
		{name: "daily", keep: r.Daily, key: func(t time.Time) string { return t.UTC().Format("2006-01-02") }},
		{name: "weekly", keep: r.Weekly, key: func(t time.Time) string {
			y, w := t.UTC().ISOWeek()
			return fmt.Sprintf("%d-W%02d", y, w)
		}},
		{name: "monthly", keep: r.Monthly, key: func(t time.Time) string { return t.UTC().Format("2006-01") }},
	}
	newestUsable, newestVerified := false, false
	verifiedKept := 0
	out := make([]Decision, 0, len(sets))
	for _, s := range sets {
		d := Decision{Set: s}
		switch s.State {
		case StatePending:
			d.Reasons = append(d.Reasons, "pending: still being taken")
		case StatePartial:
			d.Reasons = append(d.Reasons, "partial set")
		case StateComplete, StateVerified:
			if !newestUsable {
				newestUsable = true
				d.Reasons = append(d.Reasons, "newest complete set")
			}
			if s.State == StateVerified {
				if !newestVerified {
					newestVerified = true
					d.Reasons = append(d.Reasons, "newest verified set")
				}
				if verifiedKept < r.MinVerified {
					verifiedKept++
					d.Reasons = append(d.Reasons, fmt.Sprintf("min_verified %d/%d", verifiedKept, r.MinVerified))
				}
			}
			for _, b := range rules {
				k := b.key(s.Time)
				if k == b.last || b.count >= b.keep {
					continue
				}
				b.last = k
				b.count++
				d.Reasons = append(d.Reasons, fmt.Sprintf("%s %d/%d", b.name, b.count, b.keep))
			}
		default:
			d.Reasons = append(d.Reasons, "unknown state "+s.State+": kept")
		}
		switch s.State {
		case StatePending:
			d.Keep = true
		case StatePartial:
			d.Keep = false
		default:
			d.Keep = len(d.Reasons) > 0
			if !d.Keep {
				d.Reasons = append(d.Reasons, "outside retention")
			}
		}
		out = append(out, d)
	}
	return out
}

// PruneOptions configures Prune.
type PruneOptions struct {
	Env
	// Retention overrides the stack's (zero value: the stack's).
	Retention *stack.Retention
	// Apply deletes; without it Prune only plans.
	Apply bool
	// Archive opens a group's WAL archive (default: the stack's when backup.wal_archive is on;
	// setting it prunes WAL whatever the stack says).
	Archive ArchiveOpener
}

// Prune plans retention over the stack's sets and, with Apply, deletes the sets outside it, one
// snapshot at a time, then describes again to confirm each deleted set is gone. The plan is
// returned either way; a set whose deletion is not confirmed is an error.
func Prune(ctx context.Context, opts PruneOptions) (*PrunePlan, error) {
	sets, err := List(ctx, opts.Env)
	if err != nil {
		return nil, err
	}
	ret := opts.Stack.Backup.Retention
	if opts.Retention != nil {
		ret = *opts.Retention
	}
	plan := &PrunePlan{Retention: ret, Decisions: PlanRetention(sets, ret)}
	open := opts.Archive
	if open == nil && opts.Stack.Backup.WALArchive {
		open = stackArchive(opts.Stack)
	}
	if open != nil {
		if plan.WAL, err = planWAL(ctx, open, plan.Decisions); err != nil {
			return plan, err
		}
	}
	if !opts.Apply {
		return plan, nil
	}
	plan.Applied = true
	var errs []error
	for _, d := range plan.Deletes() {
		for _, sn := range d.Set.Snapshots {
			if sn.Tags[cloud.TagStack] != opts.Stack.Name {
				return plan, fmt.Errorf("prune: snapshot %s is not tagged with stack %s; refusing to delete it", sn.ID, opts.Stack.Name)
			}
			if err := opts.Provider.DeleteSnapshot(ctx, sn.ID); err != nil && !errors.Is(err, cloud.ErrNotFound) {
				errs = append(errs, fmt.Errorf("prune set %s: delete snapshot %s: %w", d.Set.ID, sn.ID, err))
			}
		}
		opts.emit(d.Set.ID, d.Set.Host, "prune", "deleting set (%s)", strings.Join(d.Reasons, ", "))
	}
	left, err := opts.Provider.DescribeSnapshots(ctx, opts.Stack.Name)
	if err != nil {
		return plan, errors.Join(append(errs, fmt.Errorf("prune: confirm deletes: %w", err))...)
	}
	still := map[string]bool{}
	for _, sn := range left {
		still[sn.Tags[cloud.TagSet]] = true
	}
	for i := range plan.Decisions {
		d := &plan.Decisions[i]
		if d.Keep {
			continue
		}
		if still[d.Set.ID] {
			errs = append(errs, fmt.Errorf("prune: set %s still has snapshots after deletion", d.Set.ID))
			continue
		}
		d.Deleted = true
		if err := opts.removeManifest(d.Set.ID); err != nil {
			errs = append(errs, err)
		}
	}
	if open != nil {
		if err := applyWAL(ctx, open, plan.WAL); err != nil {
			errs = append(errs, err)
		}
		for _, wp := range plan.WAL {
			if wp.Deleted {
				opts.emit("", wp.Group, "prune", "deleted %d WAL files (%d bytes) below %s, the start of set %s", len(wp.Delete), wp.Bytes, wp.Horizon, wp.HorizonSet)
			}
		}
	}
	return plan, errors.Join(errs...)
}
