// Package app is the bundled Instagram app server: JSON over HTTP for sign-ups, follows, photo
// uploads (bytes to S3, metadata to the owner's Postgres shard), likes, comments and a home feed
// built by fan-out on upload into capped Redis lists, with photo objects cached in memcached.
//
// Writes are routed by the shard map (package shardmap), cached here and refreshed on
// LISTEN/NOTIFY and a timer. A write that hits a shard's fence (SQLSTATE IG001) refreshes the
// map, waits up to Config.FenceWait for the shard's epoch to change, and is retried once on the
// new route; if the shard has not moved by then the request fails with 503 and Retry-After, and
// nothing was written. Fan-out jobs go through a durable Redis queue (BLMOVE into a per-worker
// processing list, with heartbeats and recovery of dead workers' items).
//
// The app follows the replication topology (package topology, docs/failover.md): with
// Config.PgBouncer it reaches shard node N through the local PgBouncer as database N, which
// instactl repoints at N's primary; it LISTENs on the topology channel beside the shard map's,
// keeps the highest epoch per group (an older one is refused), resets a node's pool at a new
// epoch and points its Redis client at the Redis group's primary. A statement that lost its
// primary (read-only 25006, session ended 57P01, or a connection that failed before anything
// was sent) waits up to Config.FenceWait for a new epoch or map and is retried once, like a
// fenced one; a connection lost after a statement was sent is an unknown outcome and is not
// retried. The control DSN may list every member of the control group with
// target_session_attrs=read-write: the listener reconnects, with backoff, to whichever is
// primary now.
//
// Main is the whole program behind cmd/instagram-app: configuration from flags, environment and
// /etc/instagram/app.env, graceful shutdown on SIGTERM.
package app
