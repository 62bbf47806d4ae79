// Package walarchive is the continuous WAL archive of the stack's Postgres primaries: a store
// of WAL segments and timeline history files in S3, written by archive_command (`instactl wal
// push %p`) and read by restore_command (`instactl wal fetch %f %p`) during a point-in-time
// restore.
//
// Layout. One directory per replication group and cluster:
// <bucket>/wal/<group>/<system id>/<file name>, where the file name is Postgres' own
// (000000020000000100000034, 00000002.history). The group (pg-0) is the physical node, stable
// across switchovers and failovers; the system identifier, read from global/pg_control of the
// archiving cluster, stays the same when a standby is promoted. So a failover's new timeline,
// its .history file and the old timeline's segments land in one directory, where a restore that
// knows the set's system id finds them all; a group rebuilt with a fresh initdb gets a new
// directory instead of colliding with the old cluster's names.
//
// Pushing is idempotent, like pgBackRest's archive-push: an object already archived under the
// same name with the same SHA-256 is success (Postgres retries archive_command after a crash),
// the same name with other content is a loud error and Postgres keeps the file in pg_wal.
//
// Fetching serves restore_command from a local spool: a segment asked for that is not spooled
// is downloaded together with the next Prefetch segments of its timeline, in parallel, so
// replay waits for S3 once per batch rather than once per segment.
package walarchive
