package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"

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
	CurrentLSN string                 `json:"current_lsn,omitempty"`
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
	ac.Continuity, err = a.CheckContinuity(ctx, ws.Timeline, start, upTo)
	return err
}

func archiveCheckText(ac ArchiveCheck) string {
	c := ac.Continuity
	if c == nil {
		return "archive not checked: " + ac.Error
	}
	if ac.OK {
		return fmt.Sprintf("archive unbroken: %d segments %s..%s (timelines %v) from set %s", c.Segments, c.From, c.To, c.Path, ac.Set)
	}
	return fmt.Sprintf("archive BROKEN: %d of %d segments %s..%s missing: %v", len(c.Missing), c.Segments, c.From, c.To, c.Missing)
}
