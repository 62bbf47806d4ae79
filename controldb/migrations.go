package controldb

// Migrations is the control schema, oldest first. Append only: a released migration is never
// edited, since databases out there are recorded at its version.
//
// Version 1 is the schema instactl created before versions were recorded (shardmap's
// controlDDL and shardmove's journalDDL). Every statement in it is IF NOT EXISTS, so on such a
// database it changes nothing and only records the version: that is the in-place upgrade.
var Migrations = []Migration{
	{Version: 1, Name: "shard map and move journal", SQL: shardMapV1 + moveJournalV1},
	{Version: 2, Name: "replication topology", SQL: topologyV2},
	{Version: 3, Name: "replication events", SQL: replicationEventsV3},
	{Version: 4, Name: "degradation switches", SQL: switchesV4},
}

// replicationEventsV3 records every finished switchover, failover and rejoin: what status
// shows as "last switchover" and what an operator reads the morning after.
const replicationEventsV3 = `
CREATE TABLE IF NOT EXISTS replication_events (
	id bigserial PRIMARY KEY,
	group_name text NOT NULL REFERENCES replication_groups (name),
	op text NOT NULL,
	old_primary text NOT NULL,
	new_primary text NOT NULL,
	epoch bigint NOT NULL,
	write_block_ms double precision,
	loss_bytes bigint,
	detail text NOT NULL DEFAULT '',
	at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS replication_events_group ON replication_events (group_name, id);
`

const shardMapV1 = `
CREATE TABLE IF NOT EXISTS shard_nodes (
	name text PRIMARY KEY,
	dsn text NOT NULL
);
CREATE TABLE IF NOT EXISTS shard_map (
	shard int PRIMARY KEY,
	node text NOT NULL REFERENCES shard_nodes (name),
	epoch bigint NOT NULL DEFAULT 1,
	state text NOT NULL DEFAULT 'active'
);
CREATE TABLE IF NOT EXISTS shard_map_meta (
	singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
	version bigint NOT NULL,
	logical_shards int NOT NULL
);
`

const moveJournalV1 = `
CREATE TABLE IF NOT EXISTS shard_moves (
	id bigserial PRIMARY KEY,
	shard int NOT NULL,
	from_node text NOT NULL,
	to_node text NOT NULL,
	from_epoch bigint NOT NULL,
	kind text NOT NULL DEFAULT 'move',
	parent_id bigint REFERENCES shard_moves (id),
	state text NOT NULL,
	step text NOT NULL,
	error text,
	plan jsonb NOT NULL,
	hot_ranges jsonb,
	window_ms double precision,
	cutover_attempts int NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	moved_at timestamptz,
	finished_at timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS shard_moves_one_open ON shard_moves (shard)
	WHERE state NOT IN ('completed', 'aborted', 'rolled_back') AND kind = 'move';
CREATE UNIQUE INDEX IF NOT EXISTS shard_moves_one_open_rollback ON shard_moves (shard)
	WHERE state NOT IN ('completed', 'aborted', 'rolled_back') AND kind = 'rollback';
CREATE TABLE IF NOT EXISTS shard_move_steps (
	id bigserial PRIMARY KEY,
	move_id bigint NOT NULL REFERENCES shard_moves (id),
	step text NOT NULL,
	status text NOT NULL,
	started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	finished_at timestamptz,
	error text,
	details jsonb
);
CREATE INDEX IF NOT EXISTS shard_move_steps_move ON shard_move_steps (move_id, id);
`

// topologyV2: one row per replication group (a physical Postgres node, the Redis pair) with
// the host that is primary now and an epoch bumped at every change; one row per member host.
const topologyV2 = `
CREATE TABLE replication_groups (
	name text PRIMARY KEY,
	kind text NOT NULL CHECK (kind IN ('postgres', 'redis')),
	ordinal int NOT NULL,
	primary_host text NOT NULL,
	epoch bigint NOT NULL DEFAULT 1,
	updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE replication_members (
	group_name text NOT NULL REFERENCES replication_groups (name),
	host text NOT NULL,
	ordinal int NOT NULL,
	address text NOT NULL,
	port int NOT NULL,
	PRIMARY KEY (group_name, host)
);
`

// ReadTables are the tables app servers read (the shard map, its registry, the topology, and
// the schema version, so a reader can tell a schema newer than it knows): GrantRead gives a
// role SELECT on them.
var ReadTables = []string{"schema_version", "shard_map", "shard_nodes", "shard_map_meta", "replication_groups", "replication_members",
	"switches", "switch_meta"}

// switchesV4: the degradation switches (package switches). One row per switch that was ever
// set (a switch never set has its built-in default), one global version bumped by every
// change (what app servers report having applied), and the audit of every change.
const switchesV4 = `
CREATE TABLE switch_meta (
	singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
	version bigint NOT NULL
);
INSERT INTO switch_meta (version) VALUES (0);
CREATE TABLE switches (
	name text PRIMARY KEY,
	enabled bool NOT NULL,
	reason text NOT NULL,
	set_by text NOT NULL,
	set_at timestamptz NOT NULL,
	expires_at timestamptz,
	version bigint NOT NULL
);
CREATE TABLE switch_events (
	id bigserial PRIMARY KEY,
	name text NOT NULL,
	before_enabled bool NOT NULL,
	after_enabled bool NOT NULL,
	reason text NOT NULL,
	set_by text NOT NULL,
	expires_at timestamptz,
	version bigint NOT NULL,
	at timestamptz NOT NULL
);
CREATE INDEX switch_events_name ON switch_events (name, id);
`
