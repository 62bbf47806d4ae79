// Package failover changes the primary of a PostgreSQL replication group (package topology):
// a planned [Switchover] that loses no acknowledged write, an unplanned [Failover] when the
// primary is gone, and [Rejoin], which makes a former primary a streaming standby again.
//
// Each operation is a sequence of named steps with deadlines. Before each step's side effect
// the step is written to a local journal (<dir>/<group>.json, fsynced and renamed), under an
// exclusive lock on <dir>/<group>.lock, so an interrupted operation is finished by [Resume] or
// undone by [Abort]. Until the standby is promoted, every failure rolls back: the old primary,
// which never stopped being one (no standby.signal was written), starts again and the pooler
// resumes ([ErrRolledBack]). Once a promotion may have happened only forward is safe: a
// promoted standby may hold acknowledged writes, so it is never demoted.
//
// The package reaches the world through small interfaces the caller wires: [Pooler] (PgBouncer
// beside every app server), [Server] (one member's PostgreSQL; [SSHServer] is the production
// one) and [Fencer] (the cloud provider stopping a host). SQL goes to the members directly
// (pgx) and to the control database through a DSN the caller gives (topology.ControlDSN).
// docs/failover.md is the shared design.
package failover
