package canary

import (
	"math"
	"sort"
)

// NormalCDF is Φ(z), the standard normal distribution function.
func NormalCDF(z float64) float64 { return 0.5 * math.Erfc(-z/math.Sqrt2) }

// ProportionTest is the result of a one-sided two-proportion z-test.
type ProportionTest struct {
	// Z is the test statistic: positive when the first sample's proportion is higher.
	Z float64 `json:"z"`
	// P is the one-sided p-value of "the first proportion is higher than the second".
	P float64 `json:"p"`
}

// TwoProportionZ tests whether x1 of n1 is a higher proportion than x2 of n2 by more than
// margin (one-sided). With margin 0 it is the textbook two-proportion z-test with the pooled
// standard error; with a margin the standard error is unpooled (pooling assumes the
// proportions equal, which the hypothesis of a difference of margin excludes): z =
// (p1-p2-margin)/sqrt(p1(1-p1)/n1 + p2(1-p2)/n2). Samples without spread (no events on
// either side, or only events) give z 0 (undefined) and p 0.5 when the difference is
// exactly the margin, else p 1 below it and 0 above. An empty sample (n1 or n2 of 0) is no evidence: z
// 0, p 1.
func TwoProportionZ(x1, n1, x2, n2 uint64, margin float64) ProportionTest {
	if n1 == 0 || n2 == 0 {
		return ProportionTest{Z: 0, P: 1}
	}
	p1, p2 := float64(x1)/float64(n1), float64(x2)/float64(n2)
	var se float64
	if margin == 0 {
		pool := float64(x1+x2) / float64(n1+n2)
		se = math.Sqrt(pool * (1 - pool) * (1/float64(n1) + 1/float64(n2)))
	} else {
		se = math.Sqrt(p1*(1-p1)/float64(n1) + p2*(1-p2)/float64(n2))
	}
	d := p1 - p2 - margin
	if se == 0 {
		// z is undefined; 0 keeps the report's JSON finite.
		switch {
		case d > 0:
			return ProportionTest{Z: 0, P: 0}
		case d < 0:
			return ProportionTest{Z: 0, P: 1}
		}
		return ProportionTest{Z: 0, P: 0.5}
	}
	z := d / se
	return ProportionTest{Z: z, P: 1 - NormalCDF(z)}
}

// RankTest is the result of a one-sided Mann–Whitney U test.
type RankTest struct {
	// U counts the pairs (a, b), one from each sample, in which a is larger, ties counting
	// one half. Its mean under the null hypothesis is na*nb/2.
	U float64 `json:"u"`
	// Z is U standardized with the tie-corrected variance and a continuity correction.
	Z float64 `json:"z"`
	// P is the one-sided p-value of "the first sample tends to be larger".
	P float64 `json:"p"`
	// Effect is the common-language effect size U/(na*nb): the probability that a value
	// drawn from the first sample is larger than one from the second (ties count one half).
	Effect float64 `json:"effect"`
}

// MannWhitneyBuckets runs the Mann–Whitney U test on two samples given as counts per
// ordered bucket (a histogram's non-cumulative buckets, the same bounds on both sides): all
// values in one bucket are tied. It tests whether the first sample tends to be larger, with
// the normal approximation, the tie correction of the variance and a continuity correction
// of 0.5. An empty sample gives z 0 and p 1.
func MannWhitneyBuckets(a, b []uint64) RankTest {
	return MannWhitneyWeighted(floats(a), floats(b))
}

// MannWhitneyWeighted is MannWhitneyBuckets on counts that need not be whole, such as a
// histogram whose observations were scaled (ScaleBuckets); a bucket's weight counts as that
// many tied observations.
func MannWhitneyWeighted(a, b []float64) RankTest {
	var na, nb float64
	for i := range a {
		na += a[i]
	}
	for i := range b {
		nb += b[i]
	}
	if na == 0 || nb == 0 || len(a) != len(b) {
		return RankTest{P: 1}
	}
	var u, below, ties float64
	for i := range a {
		u += a[i] * (below + b[i]/2)
		below += b[i]
		t := a[i] + b[i]
		ties += t*t*t - t
	}
	n := na + nb
	mean := na * nb / 2
	variance := na * nb / 12 * ((n + 1) - ties/(n*(n-1)))
	rt := RankTest{U: u, Effect: u / (na * nb), P: 1}
	if variance <= 0 {
		// Every value tied: the samples cannot be told apart.
		rt.P = 0.5
		return rt
	}
	d := u - mean
	// Continuity correction toward the mean.
	switch {
	case d > 0.5:
		d -= 0.5
	case d < -0.5:
		d += 0.5
	default:
		d = 0
	}
	rt.Z = d / math.Sqrt(variance)
	rt.P = 1 - NormalCDF(rt.Z)
	return rt
}

func floats(c []uint64) []float64 {
	out := make([]float64, len(c))
	for i, x := range c {
		out[i] = float64(x)
	}
	return out
}

// ScaleBuckets is the histogram of the observations multiplied by k (> 0), over the same
// bounds: each bucket's observations are taken as spread evenly over it, from the bound
// before (0 for the first) to its own, the way Quantile and histogram_quantile read a
// bucket, and shared out to the buckets their scaled range overlaps. The +Inf bucket stays
// in +Inf. The counts come out fractional. With k = 1+tolerance it is the baseline a canary
// must be significantly slower than to fail.
func ScaleBuckets(bounds []float64, counts []uint64, k float64) []float64 {
	out := make([]float64, len(bounds))
	for i, c := range counts {
		if c == 0 {
			continue
		}
		hi := bounds[i]
		if math.IsInf(hi, 1) {
			out[i] += float64(c)
			continue
		}
		lo := 0.0
		if i > 0 {
			lo = bounds[i-1]
		}
		slo, shi := k*lo, k*hi
		for j, jhi := range bounds {
			jlo := 0.0
			if j > 0 {
				jlo = bounds[j-1]
			}
			if overlap := min(shi, jhi) - max(slo, jlo); overlap > 0 {
				out[j] += float64(c) * overlap / (shi - slo)
			}
		}
	}
	return out
}

// Quantile estimates the q-quantile (0..1) of a histogram the way Prometheus'
// histogram_quantile does: find the bucket holding the rank and interpolate linearly inside
// it, from the previous bound (0 for the first bucket). bounds are the upper bounds in
// ascending order, the last one +Inf; a rank in the +Inf bucket answers the last finite
// bound. counts are non-cumulative. An empty histogram gives NaN.
func Quantile(q float64, bounds []float64, counts []uint64) float64 {
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 || len(bounds) != len(counts) {
		return math.NaN()
	}
	rank := q * float64(total)
	cum := make([]float64, len(counts))
	var run float64
	for i, c := range counts {
		run += float64(c)
		cum[i] = run
	}
	i := sort.Search(len(cum), func(i int) bool { return cum[i] >= rank })
	if i >= len(cum) {
		i = len(cum) - 1
	}
	if math.IsInf(bounds[i], 1) {
		if i == 0 {
			return math.NaN()
		}
		return bounds[i-1]
	}
	lower, before := 0.0, 0.0
	if i > 0 {
		lower, before = bounds[i-1], cum[i-1]
	}
	inBucket := cum[i] - before
	if inBucket == 0 {
		return bounds[i]
	}
	return lower + (bounds[i]-lower)*(rank-before)/inBucket
}
