// Package controldb owns the schema of the control database: the shard map and its node
// registry, the shard-move journal, the replication topology, and whatever later features keep
// there. Every table is created by one ordered list of migrations, recorded in schema_version,
// applied by [Migrate] in one transaction under an advisory lock, so concurrent runs and
// re-runs are safe and a control database created by an older instactl (the shard map and the
// journal without a schema_version table) is upgraded in place.
//
// The packages that use those tables (shardmap, shardmove, topology) call [Migrate] before
// they first touch them; none creates a table itself.
package controldb
