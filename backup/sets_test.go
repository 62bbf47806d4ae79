package backup

import (
	"encoding/json"
	"testing"
)

func TestOfTarget(t *testing.T) {
	sets := []Set{{ID: "a", Target: TargetPostgres}, {ID: "b", Target: TargetRedis}, {ID: "c", Target: TargetPostgres}}
	ids := func(ss []Set) string {
		s := ""
		for _, x := range ss {
			s += x.ID
		}
		return s
	}
	if got := ids(OfTarget(sets, TargetPostgres)); got != "ac" {
		t.Errorf("pg sets = %q, want \"ac\" in order", got)
	}
	if got := ids(OfTarget(sets, "")); got != "abc" {
		t.Errorf("every set = %q, want \"abc\"", got)
	}
	b, err := json.Marshal(OfTarget(sets, "nothing"))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "[]" {
		t.Errorf("no match encodes as %s, want [] (never null)", b)
	}
}
