package deploy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/instactl/instactl/canary"
)

// Outcome is where a host ended up in a run.
type Outcome string

// Host outcomes.
const (
	// OutcomePending: not reached yet (a run in progress or interrupted).
	OutcomePending Outcome = "pending"
	// OutcomeStaged: the release is on the host; its batch has not run yet.
	OutcomeStaged Outcome = "staged"
	// OutcomeActivated: the host serves the release and passed its health gate.
	OutcomeActivated Outcome = "activated"
	// OutcomeFailed: a step failed and the host could not be returned to its previous release
	// (unreachable, or it had none); see Stage and Error.
	OutcomeFailed Outcome = "failed"
	// OutcomeRolledBack: the host was activated or tried, then switched back to Previous
	// (because it failed, or because its batch breached max-fail).
	OutcomeRolledBack Outcome = "rolled-back"
	// OutcomeStopped: the host failed its first deploy and had no earlier release to return
	// to: its service is stopped and no release is current; this run's release stays staged.
	OutcomeStopped Outcome = "stopped"
	// OutcomeNotStarted: the run stopped before the host's batch.
	OutcomeNotStarted Outcome = "not-started"
)

// HostReport is what happened on one host.
type HostReport struct {
	Host  string  `json:"host"`
	Batch int     `json:"batch"`
	State Outcome `json:"outcome"`
	// Previous is the release that was current before the run flipped the host.
	Previous string `json:"previous,omitempty"`
	// Flipped says current was switched by this run (so a rollback has something to undo).
	Flipped bool `json:"flipped,omitempty"`
	// WasCurrent says the release was already current when staging probed the host.
	WasCurrent bool `json:"was_current,omitempty"`
	// Uploaded says the artifact was sent; false with a staged outcome means it was there.
	Uploaded bool  `json:"uploaded,omitempty"`
	Bytes    int64 `json:"bytes,omitempty"`
	// Via is how the artifact got there: StagingS3 (fetched from the bucket) or StagingSSH.
	Via string `json:"via,omitempty"`
	// Stage is the step that failed, Error the whole error on one line.
	Stage Stage  `json:"stage,omitempty"`
	Error string `json:"error,omitempty"`
	// Note explains an outcome that is not the host's own failure ("rolled back: batch 2
	// breached max-fail").
	Note string `json:"note,omitempty"`
	// RollbackError is why the rollback of this host failed, if it did.
	RollbackError string `json:"rollback_error,omitempty"`
	// StageMS and ActivateMS time the two phases on this host.
	StageMS    int64 `json:"stage_ms,omitempty"`
	ActivateMS int64 `json:"activate_ms,omitempty"`
}

// touched reports whether the run did anything to the host or failed on it: what earns
// the host a line in its own audit log.
func (h *HostReport) touched() bool {
	return h.Uploaded || h.Flipped || h.Error != "" || h.RollbackError != "" ||
		(h.State != OutcomeActivated && h.State != OutcomeNotStarted && h.State != OutcomePending && h.State != OutcomeStaged)
}

// failed reports whether the host counts against max-fail.
func (h *HostReport) failed() bool {
	return h.Error != ""
}

// Result sums up a run.
type Result string

// Run results.
const (
	ResultOK          Result = "ok"
	ResultPartial     Result = "partial"     // some hosts failed, within max-fail
	ResultFailed      Result = "failed"      // max-fail breached, or the run could not proceed
	ResultInterrupted Result = "interrupted" // cancelled; resume with the run id
)

// Report is the outcome of a run: what the CLI summarises and what the audit log records.
type Report struct {
	RunID    string `json:"run_id"`
	Kind     Kind   `json:"kind"`
	Stack    string `json:"stack"`
	Role     string `json:"role"`
	Operator string `json:"operator"`
	Message  string `json:"message,omitempty"`
	Release  string `json:"release"`
	Version  string `json:"version,omitempty"`
	Commit   string `json:"commit,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	Result   Result `json:"result"`
	// Error is the run's error, if any, on one line.
	Error string `json:"error,omitempty"`
	// BatchesDone counts batches that completed; Resumes counts resumptions.
	BatchesDone int       `json:"batches_done"`
	Resumes     int       `json:"resumes,omitempty"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished,omitzero"`
	// StageMS is the staging phase's wall time, ActivateMS the batches'.
	StageMS    int64 `json:"stage_ms"`
	ActivateMS int64 `json:"activate_ms"`
	// BytesSent is what the run sent from this machine: command lines, stdin (uploads, audit
	// lines) and the S3 upload, not counting SSH/TLS framing and key exchanges.
	BytesSent int64 `json:"bytes_sent"`
	// S3 is what S3 staging did (nil when the plan stages over SSH).
	S3    *S3Staging   `json:"s3,omitempty"`
	Hosts []HostReport `json:"hosts"`
	// Canary is the canary analysis of the first batch, when the deploy ran one.
	Canary *canary.Analysis `json:"canary,omitempty"`
}

// Count returns how many hosts ended in outcome o.
func (r *Report) Count(o Outcome) int {
	n := 0
	for _, h := range r.Hosts {
		if h.State == o {
			n++
		}
	}
	return n
}

// Failed lists the hosts that failed, with their errors.
func (r *Report) Failed() []HostReport {
	var out []HostReport
	for _, h := range r.Hosts {
		if h.failed() {
			out = append(out, h)
		}
	}
	return out
}

// BatchState says in one sentence where the hosts of a batch that breached max-fail ended
// up, for the run's final verdict. It says the batch is back on its previous release only
// when every host of it is; otherwise it counts each state and says how to go on. Batch 0
// (staging failed) switched no host.
func (r *Report) BatchState(batch int) string {
	if batch == 0 {
		return "no host was switched to the new release"
	}
	var back, stopped, stuck int
	for _, h := range r.Hosts {
		if h.Batch != batch {
			continue
		}
		switch {
		case h.State == OutcomeStopped:
			stopped++
		case h.State == OutcomeFailed && h.Flipped:
			stuck++
		default:
			back++ // rolled back, or never switched (failed before the flip, or already current)
		}
	}
	if stopped == 0 && stuck == 0 {
		return fmt.Sprintf("batch %d is back on its previous release", batch)
	}
	var parts []string
	if back > 0 {
		parts = append(parts, fmt.Sprintf("%d on their previous release", back))
	}
	if stopped > 0 {
		parts = append(parts, fmt.Sprintf("%d had no earlier release to return to: "+
			"their service is stopped and no release is current (release %s stays staged); "+
			"fix the app and run instactl deploy again", stopped, r.Release))
	}
	if stuck > 0 {
		parts = append(parts, fmt.Sprintf("%d could not be rolled back and may still run release %s "+
			"(see their rollback errors; instactl releases shows each host)", stuck, r.Release))
	}
	return fmt.Sprintf("of the %d hosts of batch %d: %s", back+stopped+stuck, batch, strings.Join(parts, "; "))
}

// LockedError is returned when another run holds the stack-wide lock. The CLI maps it to
// exit code 4 and shows the holder.
type LockedError struct {
	// Host holds the lock directory.
	Host string
	Info LockInfo
	// Gone, when set, says why the holder is known to be dead (see [HolderGone]): the lock
	// is stale, and waiting for it is pointless.
	Gone string
	// Waited is how long the run waited for the lock before giving up.
	Waited time.Duration
}

func (e *LockedError) Error() string {
	i := e.Info
	msg := fmt.Sprintf("deploy lock on %s is held by %s since %s (%s of %s, run %s)",
		e.Host, orText(i.Holder, "unknown"), i.Time.Format(time.RFC3339), orText(string(i.Kind), "run"),
		orText(i.Release, "?"), orText(i.RunID, "?"))
	if i.Message != "" {
		msg += ": " + i.Message
	}
	if e.Gone != "" {
		return msg + "; the lock is stale: " + e.Gone + "; finish that run with instactl deploy --resume " +
			orText(i.RunID, "RUN") + ", or break the lock with instactl lock release --force"
	}
	if e.Waited > 0 {
		msg += fmt.Sprintf(" (waited %s)", e.Waited.Round(time.Second))
	}
	return msg + "; wait for it to finish, resume it with --resume " + orText(i.RunID, "RUN") +
		", or, if it is dead, run: instactl lock release --force"
}

// MaxFailError is returned when more hosts failed than the policy allows; the run stopped and
// the failing batch was rolled back.
type MaxFailError struct {
	Batch   int
	Failed  int
	Allowed int
	// Hosts are the failed hosts and their errors.
	Hosts []HostReport
}

func (e *MaxFailError) Error() string {
	where := fmt.Sprintf("in batch %d", e.Batch)
	if e.Batch == 0 {
		where = "while staging"
	}
	msg := fmt.Sprintf("deploy stopped %s: %d hosts failed, max-fail allows %d", where, e.Failed, e.Allowed)
	if len(e.Hosts) > 0 {
		msg += fmt.Sprintf("; first: %s at %s: %s", e.Hosts[0].Host, e.Hosts[0].Stage, e.Hosts[0].Error)
	}
	return msg
}

// ErrInterrupted marks a run stopped by its context; the lock stays held for Resume.
var ErrInterrupted = errors.New("run interrupted")

// journal is the run's local record: the plan and the report so far.
type journal struct {
	Plan   *Plan   `json:"plan"`
	Report *Report `json:"report"`
}

// JournalPath is where the journal of run runID lives under stateDir.
func JournalPath(stateDir, runID string) string {
	return filepath.Join(stateDir, "runs", runID+".json")
}

// AuditLogPath is the local audit log under stateDir.
func AuditLogPath(stateDir string) string { return filepath.Join(stateDir, "audit.jsonl") }

func saveJournal(stateDir string, j journal) error {
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("encode run journal: %w", err)
	}
	p := JournalPath(stateDir, j.Plan.RunID)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("run journal: %w", err)
	}
	if err := writeFileAtomic(p, b); err != nil {
		return fmt.Errorf("run journal: %w", err)
	}
	return nil
}

// LoadJournal reads the journal of run runID: its plan and the report so far.
func LoadJournal(stateDir, runID string) (*Plan, *Report, error) {
	if err := checkID("run id", runID); err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(JournalPath(stateDir, runID))
	if err != nil {
		return nil, nil, fmt.Errorf("run %s: %w", runID, err)
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, nil, fmt.Errorf("run %s: journal %s: %w", runID, JournalPath(stateDir, runID), err)
	}
	if j.Plan == nil || j.Report == nil {
		return nil, nil, fmt.Errorf("run %s: journal is incomplete", runID)
	}
	return j.Plan, j.Report, nil
}

// appendAuditLocal appends one line to the local audit log under an exclusive flock.
func appendAuditLocal(stateDir string, line []byte) error {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	f, err := os.OpenFile(AuditLogPath(stateDir), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}
