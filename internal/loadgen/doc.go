// Package loadgen drives the app server with an open-loop mix of sign-ups, follows, uploads,
// likes, comments and feed reads at a target rate, records every acknowledged write (kind, id,
// payload sha256) to a JSONL file, and summarises latency and errors per second for timelines.
// Verify reads every recorded write back through the API: a write the server acknowledged and
// then lost (during a deploy, a shard move, a restore) shows up as missing or mismatched.
package loadgen
