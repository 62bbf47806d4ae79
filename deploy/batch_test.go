package deploy

import (
	"fmt"
	"testing"
)

func TestSplitBatches(t *testing.T) {
	hosts := func(n int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = i
		}
		return out
	}
	for _, tc := range []struct {
		specs []string
		n     int
		want  string
	}{
		{[]string{"1", "10%", "100%"}, 100, "[1 10 89]"},
		{[]string{"1,10%,100%"}, 100, "[1 10 89]"},
		{[]string{"25%"}, 100, "[25 25 25 25]"},
		{[]string{"25%"}, 5, "[2 2 1]"},
		{[]string{"1", "50%", "100%"}, 3, "[1 2]"},
		{[]string{"1", "50%", "100%"}, 1, "[1]"},
		{[]string{"1"}, 3, "[1 1 1]"},
		{[]string{"100%"}, 50, "[50]"},
		{[]string{"5", "1%"}, 7, "[5 1 1]"},
	} {
		specs, err := ParseBatches(tc.specs)
		if err != nil {
			t.Fatal(err)
		}
		var sizes []int
		total := 0
		for _, b := range SplitBatches(hosts(tc.n), specs) {
			sizes = append(sizes, len(b))
			for _, h := range b {
				if h != total {
					t.Fatalf("%v over %d: host order broken", tc.specs, tc.n)
				}
				total++
			}
		}
		if got := fmt.Sprint(sizes); got != tc.want || total != tc.n {
			t.Errorf("%v over %d hosts = %s; want %s", tc.specs, tc.n, got, tc.want)
		}
	}
}

func TestParseBatchesErrors(t *testing.T) {
	for _, bad := range [][]string{nil, {"0"}, {"150%"}, {"x"}, {"1,,2"}, {"-1"}} {
		if _, err := ParseBatches(bad); err == nil {
			t.Errorf("ParseBatches(%q) succeeded", bad)
		}
	}
}

func TestMaxFail(t *testing.T) {
	for _, tc := range []struct {
		spec           string
		total, allowed int
	}{
		{"", 10, 0}, {"0", 10, 0}, {"2", 10, 2}, {"10%", 10, 1}, {"10%", 5, 0},
		{"25%", 20, 5}, {"100%", 3, 3}, {"34%", 3, 1},
	} {
		m, err := ParseMaxFail(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Allowed(tc.total); got != tc.allowed {
			t.Errorf("max-fail %q of %d allows %d; want %d", tc.spec, tc.total, got, tc.allowed)
		}
		if m.Breached(tc.allowed, tc.total) || !m.Breached(tc.allowed+1, tc.total) {
			t.Errorf("max-fail %q of %d: breach boundary is not at %d", tc.spec, tc.total, tc.allowed+1)
		}
	}
	if _, err := ParseMaxFail("ten"); err == nil {
		t.Error("ParseMaxFail(ten) succeeded")
	}
}
