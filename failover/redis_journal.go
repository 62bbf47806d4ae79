package failover

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
	if err := writeDurable(redisJournalPath(dir, j.Group), append(data, '\n')); err != nil {
		return fmt.Errorf("write redis journal: %w", err)
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
	return syncDir(dir)
}

// redisLockGroup takes the group's exclusive operation lock, the one Postgres operations take
// (RedisErrBusy when another instactl holds it).
func redisLockGroup(dir, group string) (*lock, error) { return acquire(dir, group) }
