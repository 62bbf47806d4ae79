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
// Main is the whole program behind cmd/instagram-app: configuration from flags, environment and
// /etc/instagram/app.env, graceful shutdown on SIGTERM.
package app
