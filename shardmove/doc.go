// Package shardmove moves logical shards (one PostgreSQL schema each) between physical nodes
// online, with PostgreSQL 15 logical replication and a short fenced cutover.
//
// A move is planned first ([Mover.PlanMove]: pre-checks that refuse with a reason, and the list
// of steps), then run ([Mover.Move]). Every step is recorded in a journal in the control
// database (tables shard_moves and shard_move_steps) and is idempotent, so after a crash
// (kill -9 at any point) [Mover.Resume] finishes the move and [Mover.Abort] undoes it; both
// converge. The map flip ([shardmap.Flip]) is the commit point: before it the source is
// authoritative and an abort leaves it unfenced with nothing left on the target; after it the
// target is, and only [Mover.Rollback] (a move back) returns the shard.
//
// Data is copied one of two ways (MovePlan.Copy, chosen by size or by Options.Copy):
// CopyLogical lets the subscription do its built-in initial sync; CopySnapshot, for large
// shards, creates the slot on a replication connection with an exported snapshot, copies every
// table with parallel binary COPY under that snapshot into bare tables, builds the indexes,
// then subscribes to the existing slot without a copy. Its steps are journaled like the
// others: a crash mid-copy makes the next run drop the slot and truncate and copy again.
//
// Verification compares chunked row-hash digests of both sides with VerifyWorkers session
// pairs, until the chunks converge.
//
// The cutover fences the source (statement triggers raising [shardmap.FenceSQLState]) together
// with a marker row in one transaction with a short lock_timeout, waits for the marker on the
// target, sets the target sequence past the source's, checks the target clock against the
// newest id, flips the map and lifts the target's fence. The write-blocked window is measured
// and bounded: if it would exceed [Options.WindowBound] before the flip, the source is unfenced
// and nothing has changed.
//
// [Mover.Recover] is a per-shard point-in-time recovery: one shard's schema copied from a
// restored copy of its node (package backup restores it) into a temporary schema on the live
// node, verified, and swapped in by one short locked transaction that keeps the old schema
// aside; it is journaled with the moves (kind recover), so Resume and Abort finish or undo it.
//
// [InitSite] makes a stack's shards exist (control database, grants, the shard map, every
// shard schema) on a [Site]: the PostgreSQL groups of the topology, reached at their primary
// now. [CollectLoads] reads every shard's size and write rate, [FreeBytes] a node's free disk.
// [Rebalance] is a pure planner proposing moves that even out node load.
//
// The package never prints; progress goes to [Options.Progress].
package shardmove
