package deploy

import (
	"fmt"
	"strings"

	"github.com/instactl/instactl/stack"
)

// Count is a number of hosts given as "N" or as a percentage "P%" of a total.
type Count struct {
	N       int  `json:"n"`
	Percent bool `json:"percent,omitempty"`
}

// ParseCount parses "3" or "25%".
func ParseCount(s string) (Count, error) {
	n, pct, err := stack.ParseCount(s)
	if err != nil {
		return Count{}, err
	}
	return Count{N: n, Percent: pct}, nil
}

// String is the form ParseCount reads.
func (c Count) String() string {
	if c.Percent {
		return fmt.Sprintf("%d%%", c.N)
	}
	return fmt.Sprint(c.N)
}

// Of resolves the count against total hosts. A percentage rounds up, so "10%" of 5 hosts is 1.
func (c Count) Of(total int) int {
	if !c.Percent {
		return c.N
	}
	return (c.N*total + 99) / 100
}

// ParseBatches parses batch sizes such as ["1", "10%", "100%"] (a single comma-separated
// string such as "1,10%,100%" is accepted too).
func ParseBatches(specs []string) ([]Count, error) {
	var out []Count
	for _, s := range specs {
		for _, part := range strings.Split(s, ",") {
			c, err := ParseCount(part)
			if err != nil {
				return nil, fmt.Errorf("batch %q: %w", part, err)
			}
			if c.N == 0 {
				return nil, fmt.Errorf("batch %q: a batch must hold at least one host", part)
			}
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no batches given: use e.g. 1,10%%,100%%")
	}
	return out, nil
}

// SplitBatches cuts hosts, in order, into batches. Each spec is the size of one batch
// (percentages of len(hosts), rounded up); the last spec repeats until every host is in a
// batch, and no batch is larger than what remains. So [1, 10%, 100%] over 100 hosts is 1, 10
// and 89 hosts, and [25%] is four batches of 25.
func SplitBatches[T any](hosts []T, specs []Count) [][]T {
	var out [][]T
	for i, rest := 0, hosts; len(rest) > 0; i++ {
		spec := specs[min(i, len(specs)-1)]
		n := min(max(spec.Of(len(hosts)), 1), len(rest))
		out = append(out, rest[:n])
		rest = rest[n:]
	}
	return out
}

// MaxFail is the failure policy: how many hosts may fail before the deploy stops.
type MaxFail struct {
	Count
}

// ParseMaxFail parses "N" or "P%"; "" means 0.
func ParseMaxFail(s string) (MaxFail, error) {
	if strings.TrimSpace(s) == "" {
		return MaxFail{}, nil
	}
	c, err := ParseCount(s)
	if err != nil {
		return MaxFail{}, fmt.Errorf("max-fail: %w", err)
	}
	return MaxFail{c}, nil
}

// Allowed is how many of total hosts may fail. A percentage rounds down, so "10%" of 5 hosts
// allows none: the policy never tolerates more than it says.
func (m MaxFail) Allowed(total int) int {
	if !m.Percent {
		return m.N
	}
	return m.N * total / 100
}

// Breached reports whether failed hosts out of total exceed the policy.
func (m MaxFail) Breached(failed, total int) bool { return failed > m.Allowed(total) }
