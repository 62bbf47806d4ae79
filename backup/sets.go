package backup

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/cloud"
)

// Set is one backup set as the cloud holds it: the snapshots sharing a TagSet, with the
// manifest when this machine has it.
type Set struct {
	ID     string `json:"id"`
	Target string `json:"target"`
	Host   string `json:"host"`
	// Time is the earliest snapshot start time of the set.
	Time time.Time `json:"time"`
	// State is pending, complete, partial or verified.
	State string `json:"state"`
	// CrashConsistent is true for a set snapshotted without a freeze.
	CrashConsistent bool             `json:"crash_consistent,omitempty"`
	SizeGiB         int              `json:"size_gib"`
	Snapshots       []cloud.Snapshot `json:"snapshots"`
	Manifest        *Manifest        `json:"manifest,omitempty"`
}

// Series is the retention series a set belongs to: its target and host.
func (s Set) Series() string { return s.Target + "/" + s.Host }

// List returns the stack's backup sets, newest first. Only snapshots tagged with this stack and
// a set id are considered.
func List(ctx context.Context, env Env) ([]Set, error) {
	if err := env.check(); err != nil {
		return nil, err
	}
	snaps, err := env.Provider.DescribeSnapshots(ctx, env.Stack.Name)
	if err != nil {
		return nil, fmt.Errorf("list backup sets: %w", err)
	}
	sets, err := groupSets(env.Stack.Name, snaps)
	if err != nil {
		return nil, err
	}
	for i := range sets {
		m, err := env.loadManifest(sets[i].ID)
		if err != nil {
			return nil, err
		}
		sets[i].Manifest = m
		sets[i].State = setState(sets[i])
	}
	return sets, nil
}

// OfTarget returns the sets of target ("pg" or "redis") in their order; an empty target keeps
// every set. The result is never nil, so that it encodes as an empty JSON list.
func OfTarget(sets []Set, target string) []Set {
	out := []Set{}
	for _, s := range sets {
		if target == "" || s.Target == target {
			out = append(out, s)
		}
	}
	return out
}

// groupSets groups snapshots into sets, newest first; State is left to setState.
func groupSets(stackName string, snaps []cloud.Snapshot) ([]Set, error) {
	byID := map[string]*Set{}
	var order []string
	for _, sn := range snaps {
		id := sn.Tags[cloud.TagSet]
		if sn.Tags[cloud.TagStack] != stackName || id == "" || sn.Tags[TagTarget] == "" {
			continue
		}
		s, ok := byID[id]
		if !ok {
			s = &Set{ID: id, Target: sn.Tags[TagTarget], Host: sn.Tags[TagHost], Time: sn.StartTime,
				CrashConsistent: sn.Tags[TagState] == StateCrashConsistent}
			byID[id] = s
			order = append(order, id)
		}
		if sn.StartTime.Before(s.Time) {
			s.Time = sn.StartTime
		}
		s.SizeGiB += sn.SizeGiB
		s.Snapshots = append(s.Snapshots, sn)
	}
	out := make([]Set, 0, len(order))
	for _, id := range order {
		s := byID[id]
		sort.Slice(s.Snapshots, func(i, j int) bool { return s.Snapshots[i].ID < s.Snapshots[j].ID })
		s.State = setState(*s)
		out = append(out, *s)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.After(out[j].Time)
		}
		return out[i].ID > out[j].ID
	})
	return out, nil
}

// setState derives a set's state from its snapshots, tags and manifest.
func setState(s Set) string {
	want := 0
	// Tags are what every machine sees: a verification tag outranks this machine's manifest.
	verified, tagged, partial := false, false, false
	for _, sn := range s.Snapshots {
		if n, err := strconv.Atoi(sn.Tags[TagVolumes]); err == nil && n > want {
			want = n
		}
		if sn.Tags[TagPartial] != "" {
			partial = true
		}
		if v := sn.Tags[TagVerified]; v != "" {
			tagged, verified = true, !strings.HasPrefix(v, verifyFailed)
		}
	}
	if s.Manifest != nil {
		if s.Manifest.State == StatePartial {
			return StatePartial
		}
		if n := len(s.Manifest.Volumes); n > want {
			want = n
		}
		if v := s.Manifest.Verification; v != nil && !tagged {
			verified = v.OK
		}
	}
	if partial {
		return StatePartial
	}
	if len(s.Snapshots) < want {
		return StatePartial
	}
	pending := false
	for _, sn := range s.Snapshots {
		switch sn.State {
		case "error":
			return StatePartial
		case "pending":
			pending = true
		}
	}
	switch {
	case pending:
		return StatePending
	case verified:
		return StateVerified
	}
	return StateComplete
}
