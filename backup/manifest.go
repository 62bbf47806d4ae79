package backup

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// ManifestFormat is the manifest's format version.
const ManifestFormat = 1

// Manifest records one set: what was snapshotted, how, and what it holds. It is written to
// Env.StateDir/<stack>/<set>.json when the set is taken and updated by Verify.
type Manifest struct {
	Format int    `json:"format"`
	SetID  string `json:"set_id"`
	Stack  string `json:"stack"`
	// Target is "pg" or "redis"; Host and InstanceID name the replica it was taken from.
	Target     string `json:"target"`
	Host       string `json:"host"`
	InstanceID string `json:"instance_id"`
	Zone       string `json:"zone"`
	// State is StateComplete, StateCrashConsistent or StatePartial (with PartialReason).
	State         string `json:"state"`
	PartialReason string `json:"partial_reason,omitempty"`
	// StartedAt is when the run began; SnapshotAt when the snapshot call was made.
	StartedAt  time.Time `json:"started_at"`
	SnapshotAt time.Time `json:"snapshot_at"`
	// FreezeDuration is from the first xfs_freeze to the end of the thaw (zero when unfrozen).
	FreezeDuration time.Duration `json:"freeze_duration_ns"`
	FreezeBudget   time.Duration `json:"freeze_budget_ns"`
	// Volumes in set order (by device on the instance).
	Volumes     []VolumeRecord     `json:"volumes"`
	Filesystems []FilesystemRecord `json:"filesystems"`
	// Topology is the replication group the host was a standby of when the run began.
	Topology *TopologyRecord `json:"topology,omitempty"`
	Postgres *PostgresRecord `json:"postgres,omitempty"`
	Redis    *RedisRecord    `json:"redis,omitempty"`
	// Recovered lists what this run undid from an earlier crash.
	Recovered       []string      `json:"recovered,omitempty"`
	InstactlVersion string        `json:"instactl_version"`
	Verification    *Verification `json:"verification,omitempty"`
}

// VolumeRecord is one volume of a set.
type VolumeRecord struct {
	Order      int    `json:"order"`
	VolumeID   string `json:"volume_id"`
	Device     string `json:"device"`
	SizeGiB    int    `json:"size_gib"`
	Type       string `json:"type,omitempty"`
	SnapshotID string `json:"snapshot_id,omitempty"`
}

// FilesystemRecord is one frozen mount: its block device, file system UUID and geometry.
type FilesystemRecord struct {
	Mount  string `json:"mount"`
	Source string `json:"source"`
	Type   string `json:"type"`
	UUID   string `json:"uuid"`
	// Geometry holds xfs_info's numbers (bsize, agcount, agsize, blocks, sunit, swidth...).
	Geometry map[string]string `json:"geometry,omitempty"`
}

// TopologyRecord is the replication group a set's host was backed up as a standby of, as the
// topology had it: Source "control" is the control database, "stack" the stack file (before
// `shard init`, or with the control database unreadable).
type TopologyRecord struct {
	Group   string `json:"group"`
	Primary string `json:"primary"`
	Epoch   int64  `json:"epoch"`
	Source  string `json:"source"`
}

// PostgresRecord is the standby's position when its volumes were frozen (WAL replay paused).
type PostgresRecord struct {
	ReplayLSN  string  `json:"replay_lsn"`
	ReceiveLSN string  `json:"receive_lsn"`
	Timeline   int     `json:"timeline"`
	SystemID   string  `json:"system_id"`
	LagBytes   int64   `json:"lag_bytes"`
	LagSeconds float64 `json:"lag_seconds"`
	PrimaryLSN string  `json:"primary_lsn"`
	DataDir    string  `json:"data_dir"`
	Port       int     `json:"port"`
	// The base backup the snapshot was taken inside (pg_backup_start/pg_backup_stop on the
	// standby): its label, which a point-in-time restore writes as backup_label; the start LSN
	// (the set's WAL horizon), the checkpoint recovery starts from, the stop LSN recovery must
	// pass before the copy is consistent, and the timeline. Empty on sets taken before.
	BackupLabel   string `json:"backup_label,omitempty"`
	StartLSN      string `json:"start_lsn,omitempty"`
	StartWALFile  string `json:"start_wal_file,omitempty"`
	CheckpointLSN string `json:"checkpoint_lsn,omitempty"`
	StopLSN       string `json:"stop_lsn,omitempty"`
	StartTimeline int    `json:"start_timeline,omitempty"`
	// BackupStopAt is when pg_backup_stop returned: a restore to a time after it reaches
	// consistency before its target.
	BackupStopAt time.Time `json:"backup_stop_at,omitzero"`
}

// RedisRecord is the replica's state at the BGSAVE the set holds.
type RedisRecord struct {
	// MasterReplOffset is the replica's replication offset read just before BGSAVE: every write
	// of the master's stream up to it is in the RDB (later ones may be too).
	MasterReplOffset int64 `json:"master_repl_offset"`
	// Keys is the key count of the RDB as redis-check-rdb read it, with a TTL or not.
	Keys int64 `json:"keys"`
	// Expires is how many of Keys carry a TTL, and ExpiredAtSave how many of those had their TTL
	// run out when the RDB was checked right after the save. What the set promises a restore
	// is Keys - Expires keys without a TTL, plus the keys whose TTL has not run out by then.
	Expires       int64 `json:"expires"`
	ExpiredAtSave int64 `json:"expired_at_save"`
	// DBSize is DBSIZE when the save finished (the live replica may already hold more).
	DBSize    int64  `json:"dbsize"`
	LastSave  int64  `json:"lastsave"`
	RDBPath   string `json:"rdb_path"`
	RDBSHA256 string `json:"rdb_sha256"`
	Port      int    `json:"port"`
}

// Verification is the outcome of a restore drill.
type Verification struct {
	Time     time.Time     `json:"time"`
	OK       bool          `json:"ok"`
	Host     string        `json:"host"`
	Duration time.Duration `json:"duration_ns"`
	Checks   []string      `json:"checks"`
	Error    string        `json:"error,omitempty"`
}

var setIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func (e *Env) manifestPath(set string) (string, error) {
	if !setIDRe.MatchString(set) {
		return "", fmt.Errorf("invalid set id %q", set)
	}
	return filepath.Join(e.StateDir, e.Stack.Name, set+".json"), nil
}

// saveManifest writes m atomically (temporary file, fsync, rename).
func (e *Env) saveManifest(m *Manifest) error {
	path, err := e.manifestPath(m.SetID)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save manifest: %w", err)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest %s: %w", m.SetID, err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("save manifest: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("save manifest: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save manifest: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save manifest: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save manifest: %w", err)
	}
	return nil
}

// loadManifest reads the manifest of set; (nil, nil) when there is none.
func (e *Env) loadManifest(set string) (*Manifest, error) {
	path, err := e.manifestPath(set)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parse manifest %s: %w", path, err)
	}
	return &m, nil
}

// removeManifest deletes the manifest of a pruned set.
func (e *Env) removeManifest(set string) error {
	path, err := e.manifestPath(set)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove manifest: %w", err)
	}
	return nil
}
