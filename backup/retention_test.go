package backup

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/stack"
)

var clock = time.Date(2026, 3, 15, 12, 30, 0, 0, time.UTC)

func mkSet(id string, age time.Duration, state string) Set {
	return Set{ID: id, Target: "pg", Host: "pg-1", Time: clock.Add(-age), State: state}
}

func kept(ds []Decision) map[string]bool {
	out := map[string]bool{}
	for _, d := range ds {
		if d.Keep {
			out[d.Set.ID] = true
		}
	}
	return out
}

func TestPlanRetention(t *testing.T) {
	h := time.Hour
	day := 24 * h
	tests := []struct {
		name string
		sets []Set
		ret  stack.Retention
		keep []string
	}{
		{"hourly keeps newest per hour", []Set{
			mkSet("a", 10*time.Minute, StateComplete), mkSet("b", 20*time.Minute, StateComplete),
			mkSet("c", 70*time.Minute, StateComplete), mkSet("d", 130*time.Minute, StateComplete),
		}, stack.Retention{Hourly: 2}, []string{"a", "c"}},
		{"daily and weekly", []Set{
			mkSet("today", h, StateComplete), mkSet("yday", day, StateComplete), mkSet("yday2", day+h, StateComplete),
			mkSet("lastweek", 8*day, StateComplete), mkSet("old", 40*day, StateComplete),
		}, stack.Retention{Daily: 2, Weekly: 2}, []string{"today", "yday", "lastweek"}},
		{"monthly", []Set{
			mkSet("m0", h, StateComplete), mkSet("m1", 31*day, StateComplete), mkSet("m1b", 32*day, StateComplete),
			mkSet("m2", 62*day, StateComplete), mkSet("m3", 93*day, StateComplete),
		}, stack.Retention{Monthly: 3}, []string{"m0", "m1", "m2"}},
		{"zero retention keeps newest complete", []Set{
			mkSet("new", h, StateComplete), mkSet("old", 2*h, StateComplete),
		}, stack.Retention{}, []string{"new"}},
		{"newest verified survives even outside retention", []Set{
			mkSet("new", h, StateComplete), mkSet("ver", 100*day, StateVerified), mkSet("ver-old", 200*day, StateVerified),
		}, stack.Retention{Hourly: 1}, []string{"new", "ver"}},
		{"min verified keeps several verified", []Set{
			mkSet("new", h, StateComplete), mkSet("v1", 10*day, StateVerified), mkSet("v2", 20*day, StateVerified),
			mkSet("v3", 30*day, StateVerified),
		}, stack.Retention{MinVerified: 2}, []string{"new", "v1", "v2"}},
		{"partial deleted, pending kept, partial never counts as newest", []Set{
			mkSet("pend", 0, StatePending), mkSet("part", 5*time.Minute, StatePartial), mkSet("ok", 2*h, StateComplete),
			mkSet("older", 3*h, StateComplete),
		}, stack.Retention{}, []string{"pend", "ok"}},
		{"partial deleted even inside the hourly window", []Set{
			mkSet("part", 5*time.Minute, StatePartial), mkSet("ok", 10*time.Minute, StateComplete),
		}, stack.Retention{Hourly: 24}, []string{"ok"}},
		{"series are independent", []Set{
			mkSet("pg", h, StateComplete),
			{ID: "redis", Target: "redis", Host: "redis-1", Time: clock.Add(-50 * day), State: StateComplete},
		}, stack.Retention{}, []string{"pg", "redis"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := kept(PlanRetention(tt.sets, tt.ret))
			want := map[string]bool{}
			for _, k := range tt.keep {
				want[k] = true
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("kept %v, want %v\n%+v", got, want, PlanRetention(tt.sets, tt.ret))
			}
		})
	}
}

// TestRetentionYearProperties simulates a year of hourly backups with random states and checks
// the safety rules on every day's plan.
func TestRetentionYearProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ret := stack.Retention{Hourly: 24, Daily: 7, Weekly: 4, Monthly: 6, MinVerified: 2}
	var sets []Set
	start := clock.Add(-365 * 24 * time.Hour)
	for i := 0; i < 365*24; i++ {
		st := StateComplete
		switch r := rng.IntN(100); {
		case r < 5:
			st = StatePartial
		case r < 10:
			st = StateVerified
		}
		sets = append(sets, Set{ID: "s" + strconv.Itoa(i), Target: "pg", Host: "pg-1", Time: start.Add(time.Duration(i) * time.Hour), State: st})
	}
	for day := 30; day <= 365; day += 7 {
		n := day * 24
		cur := append([]Set(nil), sets[:n]...)
		ds := PlanRetention(cur, ret)
		keep := kept(ds)
		var newest, newestVer *Set
		verKept := 0
		for i := len(cur) - 1; i >= 0; i-- {
			s := &cur[i]
			if newest == nil && (s.State == StateComplete || s.State == StateVerified) {
				newest = s
			}
			if s.State == StateVerified {
				if newestVer == nil {
					newestVer = s
				}
				if keep[s.ID] {
					verKept++
				}
			}
			if s.State == StatePartial && keep[s.ID] {
				t.Fatalf("day %d: partial set %s kept", day, s.ID)
			}
		}
		if !keep[newest.ID] || !keep[newestVer.ID] {
			t.Fatalf("day %d: newest complete %s or newest verified %s deleted", day, newest.ID, newestVer.ID)
		}
		if verKept < ret.MinVerified {
			t.Fatalf("day %d: only %d verified kept", day, verKept)
		}
		if len(keep) > ret.Hourly+ret.Daily+ret.Weekly+ret.Monthly+ret.MinVerified+1 {
			t.Fatalf("day %d: kept %d sets, more than retention allows", day, len(keep))
		}
	}
}

func TestSetState(t *testing.T) {
	snap := func(state string, tags map[string]string) cloud.Snapshot {
		all := map[string]string{cloud.TagStack: "s", cloud.TagSet: "x", TagTarget: "pg", TagVolumes: "2"}
		for k, v := range tags {
			all[k] = v
		}
		return cloud.Snapshot{ID: "snap-" + state, State: state, Tags: all}
	}
	tests := []struct {
		name string
		set  Set
		want string
	}{
		{"complete", Set{Snapshots: []cloud.Snapshot{snap("completed", nil), snap("completed", nil)}}, StateComplete},
		{"missing volume", Set{Snapshots: []cloud.Snapshot{snap("completed", nil)}}, StatePartial},
		{"pending", Set{Snapshots: []cloud.Snapshot{snap("completed", nil), snap("pending", nil)}}, StatePending},
		{"error", Set{Snapshots: []cloud.Snapshot{snap("completed", nil), snap("error", nil)}}, StatePartial},
		{"verified tag", Set{Snapshots: []cloud.Snapshot{snap("completed", map[string]string{TagVerified: "t"}), snap("completed", nil)}}, StateVerified},
		{"manifest partial", Set{Snapshots: []cloud.Snapshot{snap("completed", nil), snap("completed", nil)}, Manifest: &Manifest{State: StatePartial}}, StatePartial},
		{"manifest verified", Set{Snapshots: []cloud.Snapshot{snap("completed", nil), snap("completed", nil)}, Manifest: &Manifest{State: StateComplete, Verification: &Verification{OK: true}}}, StateVerified},
	}
	for _, tt := range tests {
		if got := setState(tt.set); got != tt.want {
			t.Errorf("%s: state %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestGroupSetsOnlyThisStack(t *testing.T) {
	snaps := []cloud.Snapshot{
		{ID: "a", StartTime: clock, Tags: map[string]string{cloud.TagStack: "s", cloud.TagSet: "1", TagTarget: "pg", TagVolumes: "1"}},
		{ID: "b", StartTime: clock, Tags: map[string]string{cloud.TagStack: "other", cloud.TagSet: "2", TagTarget: "pg"}},
		{ID: "c", StartTime: clock, Tags: map[string]string{cloud.TagStack: "s"}},
	}
	sets, err := groupSets("s", snaps)
	if err != nil {
		t.Fatal(err)
	}
	if len(sets) != 1 || sets[0].ID != "1" {
		t.Fatalf("sets %+v, want only set 1", sets)
	}
}
