// Package topology owns the stack's replication groups: every physical PostgreSQL node of the
// shards role and every Redis primary with its replicas. A group has a stable name (its
// first host's, "pg-0"), its member hosts with their addresses, which member is primary now
// and an epoch bumped at every change of primary.
//
// The stack file is the starting point ([FromStack]); the control database is the truth once
// seeded ([Seed], [Load], [Current]), because a failover changes the primary without changing
// the stack file. [RecordPrimary] is that change: it bumps the group's epoch and announces it
// on [NotifyChannel] in the same transaction, like a shard-map flip, and points the shard map's
// node registry entry of the group at the new primary's address (shardmap.SetNodeAddr). The
// control database itself moves with its group: [ControlDSN] lists every member of the control
// group with target_session_attrs=read-write, so it is found wherever the primary is. Every command that needs
// "the primary of pg-0 now" asks this package; none derives it on its own.
package topology
