// Package story runs the main job end to end on the sandbox — a day of running the stack under
// live traffic: bring it up, initialise shards, deploy, deploy again under load, back up and
// verify, move the busiest shards, verify every acknowledged write — and writes a
// self-contained HTML report of latency and throughput with each operation on the timeline.
//
// Every step is the same instactl command an operator would run, executed in-process through a
// Runner, so the story proves the commands themselves.
package story
