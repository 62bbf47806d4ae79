// Package canary judges a canary by its metrics: it compares what the canary hosts served
// with what as many baseline hosts (still on the previous release, behind the same load
// balancer) served over the same window, and says pass, fail or inconclusive and how sure
// it is.
//
// The samples are the app server's own Prometheus series (internal/app/metrics.go): the
// request counter by route and status code, and the latency histogram by route. A [Runner]
// scrapes every host's /metrics at the start and at the end of the window; the difference
// ([Snapshot.Sub]) is what the host served in between, so counters since process start and
// traffic before the window do not count. [Compare] then tests, overall and per endpoint:
//
//   - errors (5xx): a one-sided two-proportion z-test ([TwoProportionZ]) of "the canary's
//     error ratio is higher than the baseline's by more than max_error_ratio_increase";
//   - latency: a one-sided Mann–Whitney U test ([MannWhitneyWeighted]) of "the canary's
//     latencies tend to be larger than the baseline's multiplied by 1+max_latency_increase",
//     on the histogram buckets: every observation in a bucket is a tie, the variance is
//     tie-corrected, and the baseline is scaled bucket by bucket ([ScaleBuckets]). p50 and
//     p99 are interpolated from the buckets ([Quantile]) like histogram_quantile, for the
//     table only: a p99 of a few hundred requests rests on a handful of them.
//
// Testing against the tolerance rather than against no difference at all is what keeps a
// healthy canary from failing: a test of "any difference" fails one healthy canary in
// 1/(1-confidence) by definition, and a large enough sample finds a difference too small
// to matter. A row fails when its test is sure (p-value below 1-confidence) that the canary
// is worse beyond the tolerance; it is inconclusive when the canary looks worse beyond the
// tolerance (error ratio increase above it; more than half the canary's requests slower
// than the scaled baseline's) but the test is not that sure, or when either side served
// fewer than min_requests (the minimum-sample guard: a few requests can neither fail a
// healthy canary nor pass a bad one); otherwise it passes.
// Endpoint rows are judged at a Bonferroni-corrected level.
//
// An inconclusive look extends the window up to max_window. The deploy (package deploy)
// rolls the canary back on fail, and goes on, with a warning in its report, on pass and on
// an inconclusive verdict at max_window: low traffic is no evidence against a release.
package canary
