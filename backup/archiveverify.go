package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/walarchive"
)

// ArchiveCheck is the continuity of one group's WAL archive from its oldest set.
type ArchiveCheck struct {
	Group    string `json:"group"`
	SystemID string `json:"system_id"`
	Archive  string `json:"archive"`
	// Set is the oldest complete or verified set with a WAL start; Start its start LSN.
	Set   string `json:"set"`
	Start string `json:"start"`
	// CurrentLSN is the primary's pg_current_wal_lsn when it could be asked: the check runs to
	// the segment before it. Empty: to the newest archived segment.
	CurrentLSN string `json:"current_lsn,omitempty"`
	// Ready counts the segments in the primary's pg_wal waiting for archive_command; LastFailed
	// is the segment archive_command last failed on, when that came after its last success.
	// Either growing fills pg_wal until the primary stops: reported here before it does.
	Ready      int                    `json:"ready"`
	OldestWait time.Duration          `json:"oldest_wait_ns"`
	LastFailed string                 `json:"last_failed,omitempty"`
	Continuity *walarchive.Continuity `json:"continuity"`
	OK         bool                   `json:"ok"`
	Error      string                 `json:"error,omitempty"`
}

// VerifyArchiveOptions configures VerifyArchive.
type VerifyArchiveOptions struct {
	Env
	// Group limits the check to one Postgres group (pg-0); empty checks every group with sets.
	Group string
	// Archive opens a group's archive (default: the stack's).
	Archive ArchiveOpener
	// MaxWait is how long a completed segment may wait for archive_command before the
	// archive counts as behind (default: archive_timeout plus a minute).
	MaxWait time.Duration
}

// VerifyArchive checks, per Postgres group, that the WAL archive holds every segment from the
// start LSN of the group's oldest complete set to the segment before the primary's current
// one, along the timelines the archive's history files lead to. A missing segment is an error
// naming it (*walarchive.GapError inside).
func VerifyArchive(ctx context.Context, o VerifyArchiveOptions) ([]ArchiveCheck, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	open := o.Archive
	if open == nil {
		open = stackArchive(o.Stack)
	}
	sets, err := List(ctx, o.Env)
	if err != nil {
		return nil, err
	}
	oldest := map[string]Set{}
	starts := map[string]WALStart{}
	for _, s := range sets {
		if s.Target != TargetPostgres || (s.State != StateComplete && s.State != StateVerified) {
			continue
		}
		ws, ok := WALStartOf(s)
		if !ok || (o.Group != "" && ws.Group != o.Group) {
			continue
		}
		k := ws.Group + " " + ws.SystemID
		if cur, seen := oldest[k]; !seen || s.Time.Before(cur.Time) {
			oldest[k], starts[k] = s, ws
		}
	}
	if len(oldest) == 0 {
		what := "any Postgres group"
		if o.Group != "" {
			what = o.Group
		}
		return nil, fmt.Errorf("verify archive: no complete set of %s was taken with a base backup (instactl backup create), so there is no start to check from", what)
	}
	keys := make([]string, 0, len(oldest))
	for k := range oldest {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []ArchiveCheck
	var errs []error
	for _, k := range keys {
		ws := starts[k]
		ac := ArchiveCheck{Group: ws.Group, SystemID: ws.SystemID, Set: oldest[k].ID, Start: ws.LSN}
		err := o.checkOne(ctx, open, ws, &ac)
		ac.OK = err == nil
		if err != nil {
			ac.Error = err.Error()
			errs = append(errs, fmt.Errorf("%s: %w", ws.Group, err))
		}
		o.emit(ac.Set, ws.Group, "verify-archive", "%s", archiveCheckText(ac))
		out = append(out, ac)
	}
	return out, errors.Join(errs...)
}

func (o *VerifyArchiveOptions) checkOne(ctx context.Context, open ArchiveOpener, ws WALStart, ac *ArchiveCheck) error {
	a, err := open(ctx, ws.Group, ws.SystemID)
	if err != nil {
		return err
	}
	ac.Archive = a.Location()
	start, err := walarchive.ParseLSN(ws.LSN)
	if err != nil {
		return fmt.Errorf("set %s: %w", ac.Set, err)
	}
	var upTo uint64
	p := PITROptions{Env: o.Env}
	if cur, err := p.primaryLSN(ctx, ws.Group); err == nil {
		if lsn, err := walarchive.ParseLSN(cur); err == nil && lsn.SegNo() > 0 {
			ac.CurrentLSN, upTo = cur, lsn.SegNo()-1
		}
	}
	var lagErr error
	if out, err := p.onPrimary(ctx, ws.Group, archiverSQL); err == nil {
		maxWait := o.MaxWait
		if maxWait <= 0 {
			maxWait = o.Stack.Backup.ArchiveTimeout + time.Minute
		}
		lagErr = ac.archiverState(out, maxWait)
	}
	ac.Continuity, err = a.CheckContinuity(ctx, ws.Timeline, start, upTo)
	return errors.Join(err, lagErr)
}

// archiverSQL reads the primary's archiver: segments waiting and for how long the oldest has
// (milliseconds), and the last failure when it is newer than the last success. Both are
// needed: an archive_command that is missing or killed (exit above 125) takes the archiver
// down before it counts a failure, so only the waiting segments show it.
const archiverSQL = `SELECT (SELECT count(*) || '|' || coalesce(floor(extract(epoch FROM now() - min(modification)) * 1000), 0) ` +
	`FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') || '|' || ` +
	`coalesce((SELECT last_failed_wal FROM pg_stat_archiver WHERE last_failed_time > coalesce(last_archived_time, '-infinity')), '')`

// maxReady is how many waiting segments are reported as an archive falling behind (repmgr
// refuses a switchover above the same number).
const maxReady = 16

// ArchiverError says the primary's archiver fails or falls behind: pg_wal grows until the
// primary stops, and the archive holds nothing newer for a restore.
type ArchiverError struct {
	Group      string
	Ready      int
	OldestWait time.Duration
	LastFailed string
}

func (e *ArchiverError) Error() string {
	if e.LastFailed != "" {
		return fmt.Sprintf("the archiver of %s's primary is failing: archive_command last failed on %s and has not succeeded since; %d segments wait in pg_wal (look at the primary's log for archive_command errors)",
			e.Group, e.LastFailed, e.Ready)
	}
	return fmt.Sprintf("the archive of %s is falling behind: %d segments (%d MiB) wait in the primary's pg_wal, the oldest for %s; pg_wal fills until the primary stops (look at the primary's log for archive_command errors)",
		e.Group, e.Ready, e.Ready*walarchive.SegmentSize>>20, e.OldestWait.Round(time.Second))
}

func (ac *ArchiveCheck) archiverState(out string, maxWait time.Duration) error {
	f := strings.SplitN(out, "|", 3)
	if len(f) != 3 {
		return nil
	}
	ac.Ready, _ = strconv.Atoi(f[0])
	ms, _ := strconv.ParseInt(f[1], 10, 64)
	ac.OldestWait = time.Duration(ms) * time.Millisecond
	ac.LastFailed = f[2]
	if ac.LastFailed != "" || ac.Ready > maxReady || (ac.Ready > 0 && ac.OldestWait > maxWait) {
		return &ArchiverError{Group: ac.Group, Ready: ac.Ready, OldestWait: ac.OldestWait, LastFailed: ac.LastFailed}
	}
	return nil
}

func archiveCheckText(ac ArchiveCheck) string {
	c := ac.Continuity
	if c == nil {
		return "archive not checked: " + ac.Error
	}
	if ac.OK {
		return fmt.Sprintf("archive unbroken: %d segments %s..%s (timelines %v) from set %s; %d segments waiting on the primary", c.Segments, c.From, c.To, c.Path, ac.Set, ac.Ready)
	}
	if len(c.Missing) == 0 {
		return "archive unbroken but the archiver is failing or behind: " + ac.Error
	}
	return fmt.Sprintf("archive BROKEN: %d of %d segments %s..%s missing: %v", len(c.Missing), c.Segments, c.From, c.To, c.Missing)
}
