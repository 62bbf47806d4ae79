package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/errtext"
)

// deployLockedText names the holder, the time, the message and the ways out.
func deployLockedText(le *deploy.LockedError) string {
	i := le.Info
	var b strings.Builder
	fmt.Fprintf(&b, "the deploy lock on %s is held by %s since %s (%s ago)\n", le.Host, deployOrText(i.Holder, "unknown"),
		i.Time.Format(time.RFC3339), time.Since(i.Time).Round(time.Second))
	if i.PID > 0 {
		fmt.Fprintf(&b, "  process: %d on %s\n", i.PID, deployOrText(i.Hostname, "?"))
	}
	fmt.Fprintf(&b, "  run:     %s (%s of release %s)\n", deployOrText(i.RunID, "?"), deployOrText(string(i.Kind), "deploy"), deployOrText(i.Release, "?"))
	if i.Message != "" {
		fmt.Fprintf(&b, "  message: %s\n", i.Message)
	}
	if le.Gone != "" {
		fmt.Fprintf(&b, "the lock is stale: %s, so that run was killed and will not release it\n", le.Gone)
		fmt.Fprintf(&b, "fix: finish that run with instactl deploy --resume %s (it converges every host), "+
			"or break the lock with instactl lock release --force", deployOrText(i.RunID, "RUN"))
		return b.String()
	}
	if le.Waited > 0 {
		fmt.Fprintf(&b, "  waited:  %s (--lock-wait)\n", le.Waited.Round(time.Second))
	}
	fmt.Fprintf(&b, "fix: wait for that run to finish (--lock-wait DURATION waits for it); if it was interrupted, finish it with instactl deploy --resume %s; "+
		"if it is dead, drop the lock with instactl lock release --force", deployOrText(i.RunID, "RUN"))
	return b.String()
}

// deployRenderReport is the human result: one line per batch (not per host), then the hosts
// that failed with their first error line.
func deployRenderReport(w io.Writer, rep *deploy.Report) error {
	fmt.Fprintf(w, "%s %s: release %s%s on %d %s hosts: %s\n", rep.Kind, rep.RunID, orDash(rep.Release),
		deployVersionNote(rep.Version), len(rep.Hosts), rep.Role, strings.ToUpper(string(rep.Result)))
	if rep.Kind == deploy.KindDeploy {
		deployRenderStaging(w, rep)
	}
	var batches []int
	byBatch := map[int][]deploy.HostReport{}
	for _, h := range rep.Hosts {
		if _, ok := byBatch[h.Batch]; !ok {
			batches = append(batches, h.Batch)
		}
		byBatch[h.Batch] = append(byBatch[h.Batch], h)
	}
	slices.Sort(batches)
	for _, b := range batches {
		hs := byBatch[b]
		counts := map[deploy.Outcome]int{}
		var order []deploy.Outcome
		for _, h := range hs {
			if counts[h.State] == 0 {
				order = append(order, h.State)
			}
			counts[h.State]++
		}
		var parts []string
		for _, o := range order {
			parts = append(parts, fmt.Sprintf("%s %d", o, counts[o]))
		}
		fmt.Fprintf(w, "  batch %d  %-3d hosts %-22s %s\n", b, len(hs), deployHostRange(hs), strings.Join(parts, ", "))
	}
	if rep.ActivateMS > 0 {
		fmt.Fprintf(w, "  activated in %s\n", deployMS(rep.ActivateMS))
	}
	if err := deployRenderCanary(w, rep.Canary); err != nil {
		return err
	}
	var bad []deploy.HostReport
	for _, h := range rep.Hosts {
		if h.Error != "" || h.RollbackError != "" || h.State == deploy.OutcomeFailed || h.State == deploy.OutcomeRolledBack ||
			h.State == deploy.OutcomeStopped {
			bad = append(bad, h)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nHosts that failed:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tBATCH\tOUTCOME\tSTAGE\tERROR")
	for _, h := range bad {
		msg := h.Error
		if msg == "" {
			msg = h.Note
		} else if h.Note != "" {
			msg += "; " + h.Note
		}
		if h.RollbackError != "" {
			msg += "; rollback failed: " + h.RollbackError
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", h.Host, h.Batch, h.State, orDash(string(h.Stage)), orDash(errtext.OneLine(msg)))
	}
	return tw.Flush()
}

// deployRenderStaging is the staging line of the summary: how the hosts got the artifact,
// the S3 upload, the bytes sent from this machine, and one line per host that fell back from
// S3 to SSH, with why.
func deployRenderStaging(w io.Writer, rep *deploy.Report) {
	var viaS3, viaSSH int
	var bytes int64
	var fellBack []deploy.HostReport
	for _, h := range rep.Hosts {
		switch {
		case !h.Uploaded:
		case h.Via == deploy.StagingS3:
			viaS3++
		default:
			viaSSH++
			bytes += h.Bytes
			if rep.S3 != nil && rep.S3.Error == "" {
				fellBack = append(fellBack, h)
			}
		}
	}
	had := len(rep.Hosts) - viaS3 - viaSSH
	if rep.S3 == nil {
		fmt.Fprintf(w, "  stage    %d hosts uploaded over SSH (%s), %d already had it, %s; sent from here %s\n", viaSSH, humanBytes(bytes),
			had, deployMS(rep.StageMS), humanBytes(rep.BytesSent))
		return
	}
	s3 := "already in s3://" + rep.S3.Bucket + "/" + rep.S3.Key
	switch {
	case rep.S3.Error != "":
		s3 = "S3 unavailable (" + rep.S3.Error + ")"
	case rep.S3.Uploaded:
		s3 = fmt.Sprintf("uploaded once to s3://%s/%s (%s)", rep.S3.Bucket, rep.S3.Key, humanBytes(rep.S3.Bytes))
	case viaS3 == 0 && viaSSH == 0:
		s3 = "S3 not needed"
	}
	fmt.Fprintf(w, "  stage    %s; %d hosts fetched it from S3, %d over SSH, %d already had it, %s; sent from here %s\n",
		s3, viaS3, viaSSH, had, deployMS(rep.StageMS), humanBytes(rep.BytesSent))
	for _, h := range fellBack {
		fmt.Fprintf(w, "  %s: %s\n", h.Host, orDash(errtext.OneLine(h.Note)))
	}
}

// deployHostRange names a batch's hosts compactly: "app-0", "app-1 app-2", "app-3..app-49".
func deployHostRange(hs []deploy.HostReport) string {
	switch len(hs) {
	case 0:
		return "-"
	case 1:
		return hs[0].Host
	case 2:
		return hs[0].Host + " " + hs[1].Host
	}
	return hs[0].Host + ".." + hs[len(hs)-1].Host
}

func deployMS(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).Round(100 * time.Millisecond).String()
}

// deployProgress renders a run's events on stderr: one "host | stage status" line per host
// event, and a line per batch as it completes. On a terminal, upload progress is one status
// line rewritten in place instead of a line per chunk.
type deployProgress struct {
	io      *IOStreams
	start   time.Time
	batches int
	// per batch: hosts that finished and failed, from the events
	done, failed map[int]map[string]bool
	batchOf      map[string]int
	// upload progress per host, for the terminal's status line
	sent, total map[string]int64
	status      bool
}

func deployNewProgress(io *IOStreams, p *deploy.Plan) *deployProgress {
	d := &deployProgress{io: io, start: time.Now(), batches: len(p.Batches),
		done: map[int]map[string]bool{}, failed: map[int]map[string]bool{}, batchOf: map[string]int{},
		sent: map[string]int64{}, total: map[string]int64{}}
	for _, b := range p.Batches {
		for _, h := range b.Hosts {
			d.batchOf[h] = b.Index
		}
	}
	return d
}

// event is called by the library one event at a time.
func (p *deployProgress) event(ev deploy.Event) {
	if ev.Stage == deploy.StageUpload && ev.Status == deploy.StatusProgress {
		p.sent[ev.Host], p.total[ev.Host] = ev.Bytes, ev.Total
		if p.io.ErrTTY {
			p.showUploads()
		}
		return
	}
	if ev.Stage == deploy.StageUpload && ev.Status == deploy.StatusOK {
		p.sent[ev.Host], p.total[ev.Host] = ev.Total, ev.Total
	}
	if b := p.batchOf[ev.Host]; b > 0 {
		switch {
		case ev.Status == deploy.StatusFail:
			deployMark(p.failed, b, ev.Host)
		case ev.Stage == deploy.StageDone && ev.Status != deploy.StatusFail:
			deployMark(p.done, b, ev.Host)
		}
	}
	p.clearStatus()
	p.line(ev)
	if ev.Stage == deploy.StageBatch && ev.Status != deploy.StatusStart {
		p.batchLine(ev)
	}
}

func deployMark(m map[int]map[string]bool, batch int, host string) {
	if m[batch] == nil {
		m[batch] = map[string]bool{}
	}
	m[batch][host] = true
}

func (p *deployProgress) elapsed() string {
	return fmt.Sprintf("[%6.1fs]", time.Since(p.start).Seconds())
}

// line writes one event as "[  1.2s] app-0 | upload ok: 21.0 MB".
func (p *deployProgress) line(ev deploy.Event) {
	who := ev.Host
	if who == "" {
		who = "run"
		if ev.Batch > 0 {
			who = fmt.Sprintf("batch %d/%d", ev.Batch, p.batches)
		}
	}
	msg := ev.Message
	if ev.Stage == deploy.StageUpload && ev.Status == deploy.StatusOK && ev.Total > 0 {
		msg = humanBytes(ev.Total)
	}
	if msg != "" {
		msg = ": " + msg
	}
	what := string(ev.Stage) + " " + string(ev.Status)
	if ev.Stage == deploy.StageBatch {
		what = string(ev.Status)
	}
	fmt.Fprintf(p.io.ErrOut, "%s %s | %s%s\n", p.elapsed(), who, what, msg)
}

// batchLine is the summary that grows by one line per batch.
func (p *deployProgress) batchLine(ev deploy.Event) {
	fmt.Fprintf(p.io.ErrOut, "%s == batch %d/%d %s: %d hosts done, %d failed\n", p.elapsed(), ev.Batch, p.batches,
		ev.Status, len(p.done[ev.Batch]), len(p.failed[ev.Batch]))
}

func (p *deployProgress) showUploads() {
	var sent, total int64
	busy := 0
	for h, t := range p.total {
		sent += p.sent[h]
		total += t
		if p.sent[h] < t {
			busy++
		}
	}
	fmt.Fprintf(p.io.ErrOut, "\r\033[Kstaging: %d hosts uploading, %s of %s", busy, humanBytes(sent), humanBytes(total))
	p.status = true
}

func (p *deployProgress) clearStatus() {
	if p.status {
		fmt.Fprint(p.io.ErrOut, "\r\033[K")
		p.status = false
	}
}

func (p *deployProgress) finish() { p.clearStatus() }
