package failover

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	"github.com/instactl/instactl/topology"
)

// Operations a journal records.
const (
	OpSwitchover = "switchover"
	OpFailover   = "failover"
	OpRejoin     = "rejoin"
)

// Steps, in the order a switchover or failover runs them. A step is written to the journal
// before its side effect, so a journal at step S says "S may have happened, nothing after it
// did".
const (
	StepCheckpoint  = "checkpoint"   // switchover: CHECKPOINT on the old primary
	StepPause       = "pause"        // switchover: PAUSE the group on the pooler
	StepStopOld     = "stop-old"     // switchover: fast shutdown of the old primary
	StepCatchUp     = "catch-up"     // switchover: standby received the shutdown checkpoint
	StepFencePooler = "fence-pooler" // failover: KILL the group on the pooler
	StepFenceHost   = "fence-host"   // failover: stop the old primary's host
	StepChoose      = "choose"       // failover: pick the standby that received the most WAL
	StepPromote     = "promote"      // pg_promote on the new primary: no way back after this
	StepRecord      = "record"       // topology.RecordPrimary
	StepRepoint     = "repoint"      // the pooler points at the new primary
	StepResume      = "resume"       // RESUME on the pooler
	StepRejoin      = "rejoin"       // switchover: the old primary follows the new one
	StepDone        = "done"         // finished forward
	StepRolledBack  = "rolled-back"  // finished backward: the old primary serves
)

// Journal is the record of one operation on a group, kept at <dir>/<group>.json.
type Journal struct {
	Op    string `json:"op"`
	Group string `json:"group"`
	// Step is the step under way (see the Step constants); StepDone or StepRolledBack when
	// the operation ended.
	Step string `json:"step"`
	// Promoting is set before pg_promote is sent: from then on only forward is safe.
	Promoting  bool           `json:"promoting"`
	OldPrimary string         `json:"old_primary"`
	OldAddr    netip.AddrPort `json:"old_addr"`
	NewPrimary string         `json:"new_primary"`
	NewAddr    netip.AddrPort `json:"new_addr"`
	// Standbys are the group's standbys at the start (a failover chooses among them).
	Standbys []topology.Member `json:"standbys,omitempty"`
	// Force is FailoverOptions.Force.
	Force bool `json:"force,omitempty"`
	// Epoch is the group's epoch the operation started from (0 when it was unknown: a
	// failover of the control group reads it only after the promotion).
	Epoch        int64     `json:"epoch"`
	ShutdownLSN  LSN       `json:"shutdown_lsn,omitempty"`
	ReceiveLSN   LSN       `json:"receive_lsn,omitempty"`
	LastKnownLSN LSN       `json:"last_known_lsn,omitempty"`
	PausedAt     time.Time `json:"paused_at,omitzero"`
	Started      time.Time `json:"started"`
	Timeouts     Timeouts  `json:"timeouts"`
	Updated      time.Time `json:"updated"`
	// Error is the last step's error when the operation stopped on one.
	Error string `json:"error,omitempty"`
	// Report is what was done so far.
	Report Report `json:"report"`
}

// Ended reports whether the journal's operation finished (forward or backward).
func (j Journal) Ended() bool { return j.Step == StepDone || j.Step == StepRolledBack }

// groupName is what a group's name may be; it names the journal's files.
var groupName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// lock is an exclusive flock on <dir>/<group>.lock held for an operation.
type lock struct{ f *os.File }

func acquire(dir, group string) (*lock, error) {
	if dir == "" {
		return nil, fmt.Errorf("%w: no journal directory", ErrBadInput)
	}
	if !groupName.MatchString(group) {
		return nil, fmt.Errorf("%w: %q is not a replication group name", ErrBadInput, group)
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
			return nil, fmt.Errorf("%w: %s is locked by another instactl (%s)", ErrBusy, group, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &lock{f: f}, nil
}

func (l *lock) release() {
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
}

func journalPath(dir, group string) string { return filepath.Join(dir, group+".json") }

// ReadJournal reads the journal of group in dir; ok is false when there is none.
func ReadJournal(dir, group string) (j Journal, ok bool, err error) {
	b, err := os.ReadFile(journalPath(dir, group))
	if errors.Is(err, fs.ErrNotExist) {
		return Journal{}, false, nil
	}
	if err != nil {
		return Journal{}, false, fmt.Errorf("read journal: %w", err)
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return Journal{}, false, fmt.Errorf("read journal %s: %w", journalPath(dir, group), err)
	}
	return j, true, nil
}

// writeJournal replaces the journal atomically and durably: temporary file, fsync, rename,
// fsync of the directory.
func writeJournal(dir string, j *Journal) error {
	j.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	if err := writeDurable(journalPath(dir, j.Group), append(b, '\n')); err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	return nil
}
