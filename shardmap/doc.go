// Package shardmap is the shared contract between the app servers and the shard mover: the
// shard map, node registry and map version in the control database (whose tables package
// controldb creates and migrates), the per-shard schema with Instagram's next_id(), the fence
// that stops writes to a shard being moved, and the compare-and-set flip that re-routes a
// logical shard to another physical node.
//
// IDs are 64 bits: 41 bits of milliseconds since [EpochMillis], 13 bits of logical shard, 10 bits
// of a per-shard sequence mod 1024. [ShardOf] and [IDTime] read them back.
//
// The fence is a statement trigger named "fence" on every shard table. It is created disabled;
// enabled, it raises SQLSTATE [FenceSQLState] ("IG001", "shard N moved"), which [IsFenced]
// recognises. Apps that see it refresh the map, wait briefly for the flip and retry once.
package shardmap
