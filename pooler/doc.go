// Package pooler owns the control of the PgBouncer instances that sit beside every app server
// (the write path of docs/failover.md): one admin connection per pooler, opened together and
// kept for a whole operation, so PAUSE, RELOAD and RESUME cost one round trip each and run on
// every pooler in parallel.
//
// A pooler's [databases] section has one entry per Postgres replication group, named after the
// group ("pg-0") and pointing at the group's primary now; it lives in [DatabasesFile], pulled
// into pgbouncer.ini with %include, so [Set.Repoint] rewrites that one small file and sends
// RELOAD. [Set.Pause] bounds PgBouncer's PAUSE (which has no timeout of its own) by its
// context and undoes itself when the bound passes.
//
// The package knows nothing of stacks or topologies: callers give it the poolers' addresses
// and the admin credentials (user [AdminUser]; the sandbox trusts loopback, on AWS the password
// is the stack's replication password).
package pooler
