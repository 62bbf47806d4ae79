-- The control schema as instactl created it before schema_version existed (shardmap controlDDL
-- and shardmove journalDDL at commit 2189f7d), with a little data: the upgrade fixture.
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
INSERT INTO shard_nodes (name, dsn) VALUES ('pg-0', 'postgres://app@127.0.0.1:5432/instagram'), ('pg-2', 'postgres://app@127.0.0.3:5432/instagram');
INSERT INTO shard_map_meta (version, logical_shards) VALUES (7, 2);
INSERT INTO shard_map (shard, node, epoch) VALUES (0, 'pg-0', 1), (1, 'pg-2', 3);
INSERT INTO shard_moves (shard, from_node, to_node, from_epoch, state, step, plan) VALUES (1, 'pg-0', 'pg-2', 2, 'completed', 'complete', '{}');
