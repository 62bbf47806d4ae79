package backup

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/instactl/instactl/remote"
)

// A set of a Postgres standby is taken inside a non-exclusive base backup of that standby:
// pg_backup_start before WAL replay is paused and the volumes frozen, pg_backup_stop after they
// are thawed, on one session held open across both (a non-exclusive backup ends with its
// session: a killed run leaves nothing behind). The backup label pg_backup_stop returns is kept
// in the manifest, not in the snapshot: a point-in-time restore writes it into the restored data
// directory, so recovery starts at the label's checkpoint and replays archived WAL from its
// start LSN (the set's WAL horizon: retention keeps everything from there on).

// labelSession is a psql session on the standby holding a base backup open.
type labelSession struct {
	in    *io.PipeWriter
	lines chan string
	done  chan sessionEnd
}

type sessionEnd struct {
	res remote.Result
	err error
}

// lineWriter sends every complete output line to ch.
type lineWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		i := bytes.IndexByte(w.buf.Bytes(), '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.buf.Next(i + 1))
		select {
		case w.ch <- strings.TrimSpace(line):
		default: // nobody waits for it; the full output is in the result too
		}
	}
}

// psqlSession is psql on the local socket reading SQL from stdin, one result line per query.
func (c commands) psqlSession(pgBin string, port int) remote.Command {
	return c.asPostgres(pgBin+"/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", pgSocketDir,
		"-p", strconv.Itoa(port), "-d", "postgres")
}

// backupStartSQL starts a non-exclusive base backup labelled with the set id. fast: the
// restartpoint was just requested by CHECKPOINT, so waiting for a spread one buys nothing.
func backupStartSQL(set string) string {
	return "SELECT 'started|' || pg_backup_start(" + sqlLiteral("instactl "+set) + ", true);\n"
}

// backupStopSQL ends it without waiting for the archive (the standby cannot force a WAL
// switch; a restore waits for the archive to pass its target instead) and prints the stop LSN
// and the backup label, base64 so it stays on one line.
const backupStopSQL = "SELECT 'stopped|' || lsn || '|' || translate(encode(convert_to(labelfile, 'UTF8'), 'base64'), E'\\n', '') FROM pg_backup_stop(false);\n"

// startBackup opens the session and waits for pg_backup_start to return its start LSN.
func (r *run) startBackup(ctx context.Context) (*labelSession, error) {
	pr, pw := io.Pipe()
	s := &labelSession{in: pw, lines: make(chan string, 16), done: make(chan sessionEnd, 1)}
	go func() {
		res, err := r.c.RunStream(context.WithoutCancel(ctx), r.cmds.psqlSession(r.o.pgBin(), r.h.role.Port), pr,
			&lineWriter{ch: s.lines}, nil)
		s.done <- sessionEnd{res, err}
	}()
	if _, err := io.WriteString(pw, backupStartSQL(r.m.SetID)); err != nil {
		return nil, fmt.Errorf("backup %s: pg_backup_start: %w", r.h.name(), err)
	}
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l := <-s.lines:
			if lsn, ok := strings.CutPrefix(l, "started|"); ok {
				r.walStart = lsn
				r.emit("backup-start", "pg_backup_start at %s", lsn)
				return s, nil
			}
		case end := <-s.done:
			return nil, fmt.Errorf("backup %s: pg_backup_start: %w", r.h.name(), sessionErr(end))
		case <-timeout:
			pw.Close()
			return nil, fmt.Errorf("backup %s: pg_backup_start did not return within 2m", r.h.name())
		}
	}
}

func sessionErr(end sessionEnd) error {
	if end.err != nil {
		return end.err
	}
	if err := end.res.Err(); err != nil {
		return err
	}
	return fmt.Errorf("psql ended early: %s", strings.TrimSpace(string(end.res.Stderr)))
}

// abort ends the session without pg_backup_stop: Postgres aborts the backup.
func (s *labelSession) abort() { s.in.Close() }

// TagWALStart is on every snapshot of a Postgres set taken inside a base backup: where the WAL
// that restores the set to a later point begins, as WALStart.String.
const TagWALStart = "instactl:backup-wal-start"

// WALStart is a set's WAL horizon: the group and cluster whose archive holds its WAL, and the
// timeline and LSN the base backup started at.
type WALStart struct {
	Group    string `json:"group"`
	SystemID string `json:"system_id"`
	Timeline uint32 `json:"timeline"`
	LSN      string `json:"lsn"`
}

// String is the tag value: "pg-0 7312345678901234567 1 0/2000028".
func (w WALStart) String() string {
	return w.Group + " " + w.SystemID + " " + strconv.FormatUint(uint64(w.Timeline), 10) + " " + w.LSN
}

// ParseWALStart reads a TagWALStart value.
func ParseWALStart(s string) (WALStart, error) {
	f := strings.Fields(s)
	if len(f) != 4 {
		return WALStart{}, fmt.Errorf("wal start %q: want GROUP SYSTEM-ID TIMELINE LSN", s)
	}
	tli, err := strconv.ParseUint(f[2], 10, 32)
	if err != nil {
		return WALStart{}, fmt.Errorf("wal start %q: timeline: %w", s, err)
	}
	return WALStart{Group: f[0], SystemID: f[1], Timeline: uint32(tli), LSN: f[3]}, nil
}

// WALStartOf is a set's WAL horizon, from its manifest or, on a machine without it, its tags;
// false for a set taken without a base backup.
func WALStartOf(s Set) (WALStart, bool) {
	if m := s.Manifest; m != nil && m.Postgres != nil && m.Postgres.StartLSN != "" && m.Topology != nil {
		return WALStart{Group: m.Topology.Group, SystemID: m.Postgres.SystemID, Timeline: uint32(m.Postgres.StartTimeline), LSN: m.Postgres.StartLSN}, true
	}
	for _, sn := range s.Snapshots {
		if v := sn.Tags[TagWALStart]; v != "" {
			if w, err := ParseWALStart(v); err == nil {
				return w, true
			}
		}
	}
	return WALStart{}, false
}

// stop runs pg_backup_stop, closes the session and records the label in the manifest.
func (r *run) stopBackup(ctx context.Context, s *labelSession) error {
	if _, err := io.WriteString(s.in, backupStopSQL); err != nil {
		return fmt.Errorf("backup %s: pg_backup_stop: %w", r.h.name(), err)
	}
	s.in.Close()
	var end sessionEnd
	select {
	case end = <-s.done:
	case <-ctx.Done():
		return fmt.Errorf("backup %s: pg_backup_stop: %w", r.h.name(), ctx.Err())
	}
	if end.err != nil || end.res.Err() != nil {
		return fmt.Errorf("backup %s: pg_backup_stop: %w", r.h.name(), sessionErr(end))
	}
	for _, l := range strings.Split(string(end.res.Stdout), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(l), "stopped|")
		if !ok {
			continue
		}
		lsn, b64, _ := strings.Cut(rest, "|")
		label, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return fmt.Errorf("backup %s: pg_backup_stop: backup label: %w", r.h.name(), err)
		}
		info, err := ParseBackupLabel(string(label))
		if err != nil {
			return fmt.Errorf("backup %s: %w", r.h.name(), err)
		}
		p := r.m.Postgres
		p.BackupLabel, p.StartLSN, p.StopLSN = string(label), info.StartLSN, lsn
		p.CheckpointLSN, p.StartTimeline, p.StartWALFile = info.CheckpointLSN, info.Timeline, info.StartWALFile
		p.BackupStopAt = r.o.now().UTC()
		r.emit("backup-stop", "pg_backup_stop at %s; WAL from %s (timeline %d) restores this set", lsn, info.StartLSN, info.Timeline)
		return nil
	}
	return fmt.Errorf("backup %s: pg_backup_stop printed no result: %s", r.h.name(), strings.TrimSpace(string(end.res.Stdout)))
}

// LabelInfo is what a backup label says.
type LabelInfo struct {
	StartLSN      string
	StartWALFile  string
	CheckpointLSN string
	Timeline      int
	From          string
}

var (
	labelStartRe = regexp.MustCompile(`(?m)^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)$`)
	labelCkptRe  = regexp.MustCompile(`(?m)^CHECKPOINT LOCATION: ([0-9A-F]+/[0-9A-F]+)$`)
	labelTLIRe   = regexp.MustCompile(`(?m)^START TIMELINE: ([0-9]+)$`)
	labelFromRe  = regexp.MustCompile(`(?m)^BACKUP FROM: (\w+)$`)
)

// ParseBackupLabel reads the start LSN, checkpoint, timeline and source of a backup label.
func ParseBackupLabel(label string) (LabelInfo, error) {
	var li LabelInfo
	m := labelStartRe.FindStringSubmatch(label)
	c := labelCkptRe.FindStringSubmatch(label)
	t := labelTLIRe.FindStringSubmatch(label)
	if m == nil || c == nil || t == nil {
		return li, fmt.Errorf("backup label lacks START WAL LOCATION, CHECKPOINT LOCATION or START TIMELINE:\n%s", label)
	}
	li.StartLSN, li.StartWALFile, li.CheckpointLSN = m[1], m[2], c[1]
	li.Timeline, _ = strconv.Atoi(t[1])
	if f := labelFromRe.FindStringSubmatch(label); f != nil {
		li.From = f[1]
	}
	return li, nil
}
