package shardmap

import (
	"fmt"
	"time"
)

// EpochMillis is the custom epoch of IDs in Unix milliseconds (Instagram's, 2011-08-24).
const EpochMillis int64 = 1314220021721

// MaxShards is the number of logical shards the 13 shard bits of an ID can name.
const MaxShards = 1 << 13

const (
	seqBits   = 10
	shardBits = 13
)

// ShardOf returns the logical shard encoded in id.
func ShardOf(id int64) int { return int((id >> seqBits) & (MaxShards - 1)) }

// IDTime returns the creation time encoded in id (millisecond precision).
func IDTime(id int64) time.Time {
	return time.UnixMilli((id >> (seqBits + shardBits)) + EpochMillis)
}

// MakeID builds an ID from its parts, as next_id() does; tests and data generators use it.
func MakeID(t time.Time, shard int, seq int64) int64 {
	return (t.UnixMilli()-EpochMillis)<<(seqBits+shardBits) | int64(shard)<<seqBits | seq%1024
}

// SchemaName returns the schema holding logical shard shard ("shard_0042").
func SchemaName(shard int) string { return fmt.Sprintf("shard_%04d", shard) }

// Tables lists the tables in every shard schema, parents before children.
var Tables = []string{"users", "follows", "photos", "likes", "comments"}
