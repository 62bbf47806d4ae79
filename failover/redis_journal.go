package failover

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// redisJournalVersion is the format of redisJournal; a journal of another version is refused.
const redisJournalVersion = 1

// Operations a Redis journal records.
const (
	redisOpSwitchover = "switchover"
	redisOpFailover   = "failover"
)

// Steps of a Redis journal, each recorded before the side effect it names.
const (
	// redisStepPrepare: setting min-replicas-to-write on the replica before a switchover.
	redisStepPrepare = "prepare"
	// redisStepFailoverSent: FAILOVER TO is about to be sent; Redis may complete or roll it
	// back on its own even if instactl dies right after.
	redisStepFailoverSent = "failover-sent"
	// redisStepFence: the old master is about to be fenced through the RedisFencer.
	redisStepFence = "fence"
	// redisStepPromote: REPLICAOF NO ONE is about to be sent to the replica.
	redisStepPromote = "promote"
	// redisStepRecord: the new master serves; topology.RecordPrimary is about to run.
	redisStepRecord = "record"
	// redisStepKillClients: CLIENT KILL TYPE normal on the old master is about to run.
	redisStepKillClients = "kill-clients"
)

// redisJournal is the state of one operation on a Redis group, in <dir>/<group>.json. It
// exists from the first side effect until the operation ends (done or rolled back); its
// presence means "stopped half way: run resume or abort".
type redisJournal struct {
	Version int    `json:"version"`
	Op      string `json:"op"`
	Group   string `json:"group"`
	// OldMaster and NewMaster are host names (topology members).
	OldMaster string `json:"old_master"`
	NewMaster string `json:"new_master"`
	// Epoch is the group's topology epoch when the operation started: RecordPrimary's
	// compare-and-set expects it.
	Epoch int64  `json:"epoch"`
	Step  string `json:"step"`
	// OldOffset is the old master's last known master_repl_offset (0: unknown).
	OldOffset int64 `json:"old_offset,omitempty"`
	// NewOffset is the replica's offset when it was promoted (failover).
	NewOffset int64 `json:"new_offset,omitempty"`
	// TimeoutMS is FAILOVER's TIMEOUT (switchover).
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// Fenced is set once the fencer stopped the old master (failover).
	Fenced  bool      `json:"fenced,omitempty"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
}

func redisJournalPath(dir, group string) string { return filepath.Join(dir, group+".json") }

// redisWriteJournal replaces the journal atomically and durably: write a temporary file, fsync
// it, rename it over the journal, fsync the directory.
func redisWriteJournal(dir string, j *redisJournal) error {
	j.Version = redisJournalVersion
	j.Updated = time.Now().UTC()
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("encode redis journal: %w", err)
	}
	path := redisJournalPath(dir, j.Group)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write redis journal: %w", err)
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write redis journal %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync redis journal %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write redis journal %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write redis journal: %w", err)
	}
	return redisSyncDir(dir)
}

func redisSyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// redisReadJournal returns the journal of group, or nil when there is none.
func redisReadJournal(dir, group string) (*redisJournal, error) {
	data, err := os.ReadFile(redisJournalPath(dir, group))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read redis journal: %w", err)
	}
	var j redisJournal
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("read redis journal %s: %w", redisJournalPath(dir, group), err)
	}
	if j.Version != redisJournalVersion {
		return nil, fmt.Errorf("redis journal %s has version %d, this instactl reads version %d", redisJournalPath(dir, group), j.Version, redisJournalVersion)
	}
	if j.Group != group {
		return nil, fmt.Errorf("redis journal %s is for group %q, not %q", redisJournalPath(dir, group), j.Group, group)
	}
	return &j, nil
}

// redisRemoveJournal ends the operation: no journal, nothing to resume.
func redisRemoveJournal(dir, group string) error {
	if err := os.Remove(redisJournalPath(dir, group)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove redis journal: %w", err)
	}
	return redisSyncDir(dir)
}

// redisLock is the exclusive operation lock of one group.
type redisLock struct{ f *os.File }

// redisLockGroup takes the exclusive lock <dir>/<group>.lock without waiting; an operation
// that holds it already makes it fail with RedisErrBusy. The lock dies with the process, so a
// crashed run never leaves the group locked.
func redisLockGroup(dir, group string) (*redisLock, error) {
	if dir == "" {
		return nil, fmt.Errorf("no journal directory: %w", RedisErrBadInput)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal directory: %w", err)
	}
	path := filepath.Join(dir, group+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: another operation holds group %s: %w", path, group, RedisErrBusy)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &redisLock{f: f}, nil
}

func (l *redisLock) unlock() {
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	_ = l.f.Close()
}
