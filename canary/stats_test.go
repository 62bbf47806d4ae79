package canary

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func near(got, want, tol float64) bool { return math.Abs(got-want) <= tol }

func TestNormalCDF(t *testing.T) {
	// Table values of the standard normal distribution.
	for _, tc := range []struct{ z, want float64 }{
		{0, 0.5}, {1.959964, 0.975}, {-1.644854, 0.05}, {2.326348, 0.99}, {1, 0.8413447}, {-3, 0.0013499},
	} {
		if got := NormalCDF(tc.z); !near(got, tc.want, 1e-6) {
			t.Errorf("Φ(%g) = %.7f, want %.7f", tc.z, got, tc.want)
		}
	}
}

func TestTwoProportionZ(t *testing.T) {
	for _, tc := range []struct {
		name           string
		x1, n1, x2, n2 uint64
		margin         float64
		z, p           float64
	}{
		// 5% against 1% of 200 each: pooled 0.03, SE sqrt(0.03*0.97*(2/200)) = 0.0170587.
		{"5% vs 1%", 10, 200, 2, 200, 0, 2.3448415, 0.0095176},
		// 20% against 15% of 1000 each: pooled 0.175, SE 0.0169926.
		{"20% vs 15%", 200, 1000, 150, 1000, 0, 2.9424494, 0.0016281},
		// The other way round: the canary is better, z is negative and p near 1.
		{"better", 150, 1000, 200, 1000, 0, -2.9424494, 0.9983719},
		{"no errors anywhere", 0, 500, 0, 500, 0, 0, 0.5},
		{"empty canary", 0, 0, 3, 100, 0, 0, 1},
		// Against a margin of one point, unpooled: 5% of 400 against none, SE
		// sqrt(0.05*0.95/400) = 0.0108972, z = (0.05-0-0.01)/SE.
		{"5% vs 0, margin 1 point", 20, 400, 0, 400, 0.01, 3.6706517, 0.0001210},
		// 3% against 1% of 1000: two points, only one beyond the margin; not sure.
		{"3% vs 1%, margin 1 point", 30, 1000, 10, 1000, 0.01, 1.6012815, 0.0546573},
		// No errors on either side: below the margin for certain.
		{"no errors, margin", 0, 500, 0, 500, 0.01, 0, 1},
		{"all errors against none, margin", 100, 100, 0, 100, 0.01, 0, 0},
	} {
		got := TwoProportionZ(tc.x1, tc.n1, tc.x2, tc.n2, tc.margin)
		if !near(got.Z, tc.z, 1e-6) || !near(got.P, tc.p, 1e-6) {
			t.Errorf("%s: z %.7f p %.7f, want z %.7f p %.7f", tc.name, got.Z, got.P, tc.z, tc.p)
		}
	}
}

func TestMannWhitneyBucketsKnownValues(t *testing.T) {
	for _, tc := range []struct {
		name       string
		a, b       []uint64
		u, z, p, e float64
	}{
		// Three canary values all above three baseline values, each side tied in one
		// bucket: U = 9 = na*nb; ties 2*(27-3) = 48, var = 9/12*(7-48/30) = 4.05,
		// z = (9-4.5-0.5)/sqrt(4.05).
		{"separated", []uint64{0, 0, 3}, []uint64{3, 0, 0}, 9, 1.9876160, 0.0234271, 1},
		// Mirror image: the canary is faster.
		{"faster", []uint64{3, 0, 0}, []uint64{0, 0, 3}, 0, -1.9876160, 0.9765729, 0},
		// Identical distributions: U at its mean, z 0 after the continuity correction.
		{"same", []uint64{5, 10, 5}, []uint64{5, 10, 5}, 200, 0, 0.5, 0.5},
		// Everything in one bucket: no spread at all.
		{"all tied", []uint64{0, 7, 0}, []uint64{0, 4, 0}, 14, 0, 0.5, 0.5},
		{"empty", []uint64{0, 0}, []uint64{1, 2}, 0, 0, 1, 0},
	} {
		got := MannWhitneyBuckets(tc.a, tc.b)
		if !near(got.U, tc.u, 1e-9) || !near(got.Z, tc.z, 1e-6) || !near(got.P, tc.p, 1e-6) || !near(got.Effect, tc.e, 1e-9) {
			t.Errorf("%s: %+v, want U %g z %.7f p %.7f effect %g", tc.name, got, tc.u, tc.z, tc.p, tc.e)
		}
	}
}

// TestMannWhitneyBucketsMatchesRanks checks the bucket formula against the textbook
// computation on the expanded samples: midranks of the pooled sample, U = R1 - n1(n1+1)/2,
// tie correction from the sizes of the tied groups.
func TestMannWhitneyBucketsMatchesRanks(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		k := 1 + rng.IntN(8)
		a, b := make([]uint64, k), make([]uint64, k)
		for i := range k {
			a[i], b[i] = uint64(rng.IntN(6)), uint64(rng.IntN(6))
		}
		a[rng.IntN(k)]++
		b[rng.IntN(k)]++
		want := ranksU(a, b)
		got := MannWhitneyBuckets(a, b)
		if !near(got.U, want.U, 1e-9) || !near(got.Z, want.Z, 1e-9) {
			t.Fatalf("trial %d: a %v b %v: buckets %+v, ranks %+v", trial, a, b, got, want)
		}
	}
}

func ranksU(a, b []uint64) RankTest {
	type obs struct {
		v    int
		from int
	}
	var all []obs
	for i, c := range a {
		for range c {
			all = append(all, obs{i, 0})
		}
	}
	for i, c := range b {
		for range c {
			all = append(all, obs{i, 1})
		}
	}
	slices.SortFunc(all, func(x, y obs) int { return x.v - y.v })
	n := float64(len(all))
	var r1, na, ties float64
	for i := 0; i < len(all); {
		j := i
		for j < len(all) && all[j].v == all[i].v {
			j++
		}
		mid := float64(i+j+1) / 2 // ranks i+1..j
		for k := i; k < j; k++ {
			if all[k].from == 0 {
				r1 += mid
				na++
			}
		}
		t := float64(j - i)
		ties += t*t*t - t
		i = j
	}
	nb := n - na
	u := r1 - na*(na+1)/2
	sigma := math.Sqrt(na * nb / 12 * ((n + 1) - ties/(n*(n-1))))
	d := u - na*nb/2
	switch {
	case d > 0.5:
		d -= 0.5
	case d < -0.5:
		d += 0.5
	default:
		d = 0
	}
	if sigma == 0 {
		return RankTest{U: u}
	}
	return RankTest{U: u, Z: d / sigma}
}

func TestQuantile(t *testing.T) {
	inf := math.Inf(1)
	for _, tc := range []struct {
		q      float64
		bounds []float64
		counts []uint64
		want   float64
	}{
		{0.5, []float64{0.1, 0.2, inf}, []uint64{10, 10, 0}, 0.1},
		{0.75, []float64{0.1, 0.2, inf}, []uint64{10, 10, 0}, 0.15},
		{0.25, []float64{0.1, 0.2, inf}, []uint64{10, 10, 0}, 0.05},
		// A rank in the +Inf bucket answers the highest finite bound.
		{0.99, []float64{0.1, 0.2, inf}, []uint64{10, 0, 10}, 0.2},
		// Empty buckets before the rank are skipped.
		{0.5, []float64{0.001, 0.005, 0.01, inf}, []uint64{0, 0, 4, 0}, 0.0075},
	} {
		if got := Quantile(tc.q, tc.bounds, tc.counts); !near(got, tc.want, 1e-12) {
			t.Errorf("Quantile(%g, %v, %v) = %g, want %g", tc.q, tc.bounds, tc.counts, got, tc.want)
		}
	}
	if got := Quantile(0.5, []float64{1, inf}, []uint64{0, 0}); !math.IsNaN(got) {
		t.Errorf("empty histogram: %g, want NaN", got)
	}
}

func TestRebucket(t *testing.T) {
	inf := math.Inf(1)
	fine := []float64{0.001, 0.002, 0.0025, 0.005, 0.01, inf}
	coarse := []float64{0.001, 0.0025, 0.005, 0.01, 0.025, inf}
	common := CommonBounds(fine, coarse)
	if !slices.Equal(common, []float64{0.001, 0.0025, 0.005, 0.01, inf}) {
		t.Fatalf("common bounds %v", common)
	}
	if got := Rebucket(fine, []uint64{1, 2, 3, 4, 5, 6}, common); !slices.Equal(got, []uint64{1, 5, 4, 5, 6}) {
		t.Errorf("fine onto common = %v", got)
	}
	// The coarse side's 0.025 bucket folds into +Inf: above 0.01 is all the fine side knows.
	if got := Rebucket(coarse, []uint64{1, 2, 3, 4, 5, 6}, common); !slices.Equal(got, []uint64{1, 2, 3, 4, 11}) {
		t.Errorf("coarse onto common = %v", got)
	}
}

func TestScaleBuckets(t *testing.T) {
	inf := math.Inf(1)
	b := []float64{0.001, 0.002, 0.004, inf}
	if got := ScaleBuckets(b, []uint64{3, 4, 5, 6}, 1); !slices.Equal(got, []float64{3, 4, 5, 6}) {
		t.Errorf("k 1 = %v; want the counts unchanged", got)
	}
	// Doubled: (0, 1ms] becomes (0, 2ms], half in each of the first two buckets; (1, 2ms]
	// becomes (2, 4ms]; (2, 4ms] becomes (4, 8ms], beyond the last bound: +Inf.
	if got := ScaleBuckets(b, []uint64{4, 2, 1, 1}, 2); !slices.Equal(got, []float64{2, 2, 2, 2}) {
		t.Errorf("k 2 = %v; want [2 2 2 2]", got)
	}
	// 1.5: (1, 2ms] becomes (1.5, 3ms]: a third in (1, 2ms], two thirds in (2, 4ms].
	got := ScaleBuckets(b, []uint64{0, 3, 0, 0}, 1.5)
	if !near(got[1], 1, 1e-12) || !near(got[2], 2, 1e-12) || got[0] != 0 || got[3] != 0 {
		t.Errorf("k 1.5 = %v; want [0 1 2 0]", got)
	}
}
