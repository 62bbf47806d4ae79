package deploy

import (
	"sync"
	"time"

	"github.com/instactl/instactl/errtext"
)

// Stage names a step of a run, as events and reports carry it.
type Stage string

// Stages of a run.
const (
	StageLock       Stage = "lock"
	StageConnect    Stage = "connect"
	StageProbe      Stage = "probe"
	StageUpload     Stage = "upload"
	StageStore      Stage = "s3"    // S3 staging's one upload to the bucket (run-wide)
	StageFetch      Stage = "fetch" // a host's download from the bucket
	StageBatch      Stage = "batch"
	StageDeregister Stage = "deregister"
	StageDrain      Stage = "drain"
	StageFlip       Stage = "flip"
	StageRestart    Stage = "restart"
	StageHealth     Stage = "health"
	StageRegister   Stage = "register"
	StageRollback   Stage = "rollback"
	StagePrune      Stage = "prune"
	StageAudit      Stage = "audit"
	StageDone       Stage = "done"
)

// Status is where an event is within its stage.
type Status string

// Statuses of an event.
const (
	StatusStart    Status = "start"
	StatusProgress Status = "progress"
	StatusOK       Status = "ok"
	StatusSkip     Status = "skip"
	StatusFail     Status = "fail"
)

// Event is one thing that happened during a run, for the CLI to render (a live view on a
// terminal, one line per event otherwise, JSON for CI). The library never prints.
type Event struct {
	Time  time.Time `json:"time"`
	RunID string    `json:"run_id"`
	// Host is empty for run-wide events (lock, batch).
	Host   string `json:"host,omitempty"`
	Batch  int    `json:"batch,omitempty"`
	Stage  Stage  `json:"stage"`
	Status Status `json:"status"`
	// Bytes and Total count upload progress.
	Bytes int64 `json:"bytes,omitempty"`
	Total int64 `json:"total,omitempty"`
	// Message is a short detail ("release 3f2a9c0d1e2b already staged", "previous v1").
	Message string `json:"message,omitempty"`
	// Err is set on StatusFail.
	Err error `json:"-"`
}

// emitter calls the user's callback one event at a time, so the callback needs no locking.
type emitter struct {
	mu    sync.Mutex
	fn    func(Event)
	runID string
	now   func() time.Time
}

func (e *emitter) emit(ev Event) {
	if e == nil || e.fn == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	ev.RunID = e.runID
	if ev.Time.IsZero() {
		ev.Time = e.now()
	}
	if ev.Err != nil && ev.Message == "" {
		ev.Message = ErrorLine(ev.Err)
	}
	e.fn(ev)
}

// ErrorLine renders err on one line for per-host summaries and the report: a remote error
// may span lines (a script's stderr), and its cause is often on the last one, so line breaks
// are folded and nothing is cut.
func ErrorLine(err error) string {
	if err == nil {
		return ""
	}
	return errtext.OneLine(err.Error())
}
