package failover

// The Redis half of this package moves the master of a Redis replication group (kind "redis"
// in package topology: one master and its replica) from one member to the other:
//
//   - RedisSwitchover, planned: Redis's own FAILOVER TO (no FORCE, bounded by TIMEOUT) pauses
//     writes on the master until the replica has every acknowledged write, then swaps the
//     roles; on timeout Redis rolls back by itself and the old master keeps serving.
//   - RedisFailover, the master is gone: fence it (RedisFencer), then REPLICAOF NO ONE on the
//     replica, and report how many bytes of the old master's stream may be lost.
//   - RedisRejoin: the former master becomes a replica of the current one.
//   - RedisResume and RedisAbort: after a crash at any step, converge on exactly one master that
//     accepts writes and a topology that names it.
//
// Every change of master is recorded with topology.RecordPrimary (compare-and-set on the
// group's epoch, NOTIFY topology) so app servers follow. A master always runs with
// min-replicas-to-write 1 and min-replicas-max-lag 10 while it has a replica, so a master cut
// off from its replica stops taking writes after ~10 s (it fences itself); a master promoted
// by a failover has no replica and runs with min-replicas-to-write 0 until RedisRejoin gives
// it one back (otherwise it would refuse every write).
//
// Each operation holds an exclusive lock on <dir>/<group>.lock and records its step in the
// journal <dir>/<group>.json (fsync and rename) before every side effect.
