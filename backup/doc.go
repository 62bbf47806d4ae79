// Package backup takes consistent snapshots of the stack's Postgres standbys and Redis replicas,
// keeps them under grandfather-father-son retention, restores them onto a host, and proves they
// restore with drills.
//
// Which hosts. Create asks the topology (topology.Resolve) which member of every Postgres and
// Redis replication group is primary now and backs up the group's first standby: after a
// recorded failover that is the former primary, and the primary is never frozen. Before `shard
// init` there is no control database; the stack file's groups are then taken as current, and a
// "topology" progress event and each manifest's Topology record say so.
//
// A backup of a Postgres standby runs, on the replica host: a lock (flock held by a remote
// process for as long as the run's SSH connection lives, so a killed run never leaves it
// behind), recovery from an earlier crash (a volume left frozen is thawed, paused WAL replay is
// resumed, a stale thaw guardian is stopped), the safety gate (in recovery, streaming, lag under
// the byte and second thresholds; otherwise an *UnsafeError), CHECKPOINT and sync outside the
// freeze, a thaw guardian armed on the host (a detached `sleep BUDGET; xfs_freeze -u` that thaws
// even when instactl is SIGKILLed or its connection drops), WAL replay paused so the replay LSN
// is exact, xfs_freeze of every data mount, one provider.CreateSnapshots call for all the
// instance's data volumes with the set's tags in the call, thaw as soon as it returns, replay
// resumed, guardian stopped. Redis replicas take a BGSAVE, wait for it to finish with status ok,
// check the RDB with redis-check-rdb, then freeze briefly and snapshot.
//
// Where state lives. The snapshots' tags are the source of truth for what exists (TagStack,
// TagSet, TagTarget, TagHost, TagState, TagVolumes, written in the CreateSnapshots call; TagVerified
// and TagPartial, added later with Provider.TagSnapshots when a drill ends or a run finds its set
// unusable, so every machine lists the same states); a JSON manifest per set (Manifest: volumes
// and order, geometry, filesystem UUIDs, replay LSN, timeline, lag, freeze duration, version,
// verification) is written atomically to Env.StateDir/<stack>/<set>.json. A set whose manifest
// is lost is still listed, pruned and restorable from its tags. Host-side files (lock, guardian
// pid, guardian log) live under HostStateDir and /var/log/instagram, never on a data volume.
//
// The library prints nothing: progress goes to Env.Progress, results are values, and errors a
// caller maps to exit codes are typed (*UnsafeError: 3, *LockedError: 4, *PartialError: 5).
package backup
