// Package loadgen drives the app server with an open-loop mix of sign-ups, follows, uploads,
// likes, comments and feed reads at a target rate, records every acknowledged write (kind, id,
// payload sha256) to a JSONL file, and summarises the run: throughput, latency percentiles
// (p50/p99/max) overall, per operation and per second for timelines, and errors by cause.
//
// Verify checks every recorded write through the API, whose reads follow the current shard map
// straight to Postgres: each must be present exactly once with its recorded payload. A write the
// server acknowledged and then lost or applied twice (during a deploy, a shard move, a restore)
// shows up as missing, mismatched or duplicated.
package loadgen
