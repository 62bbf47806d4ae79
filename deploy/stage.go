package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/instactl/instactl/remote"
)

// stage puts the artifact on every host not yet staged, in parallel, and stops the run if
// more hosts failed than max-fail allows (nothing has been flipped then).
func (r *run) stage(ctx context.Context) error {
	var names []string
	for _, h := range r.plan.Hosts {
		if r.state(h.Name) == OutcomePending {
			names = append(names, h.Name)
		}
	}
	r.fanOut(ctx, names, r.stageHost)
	r.save() // every host's staging result, before activation changes anything
	if err := ctx.Err(); err != nil {
		return err
	}
	if failed := r.failedCount(); failed > r.plan.MaxFailAllowed {
		return &MaxFailError{Failed: failed, Allowed: r.plan.MaxFailAllowed, Hosts: r.rep.Failed()}
	}
	return nil
}

// stageHost probes one host and uploads the artifact unless it already holds it.
func (r *run) stageHost(ctx context.Context, c *remote.Client, h Host) error {
	a, cfg := r.plan.Artifact, r.cfg
	start := time.Now()
	fail := func(stage Stage, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.hostFailed(h.Name, stage, fmt.Errorf("%s on %s: %w", stage, h.Name, err))
		return errRecorded
	}
	probe := map[string]string{"absent": ""}
	if !r.absentBefore(h.Name) {
		r.ev.emit(Event{Host: h.Name, Stage: StageProbe, Status: StatusStart})
		out, err := runOK(ctx, c, ProbeCommand(cfg.Path, a.ID, cfg.Binary, a.SHA256))
		if err != nil {
			return fail(StageProbe, err)
		}
		probe = parseLines(out)
	}
	if _, ok := probe["present"]; ok {
		r.updateSoon(h.Name, func(hr *HostReport) {
			hr.State, hr.StageMS, hr.WasCurrent = OutcomeStaged, time.Since(start).Milliseconds(), probe["current"] == a.ID
		})
		r.ev.emit(Event{Host: h.Name, Stage: StageUpload, Status: StatusSkip, Message: "release " + a.ID + " already staged"})
		return nil
	}
	via := StagingSSH
	if cfg.stagingMethod() == StagingS3 {
		var err error
		if via, err = r.stageViaS3(ctx, c, h); err != nil {
			return fail(StageUpload, err)
		}
	} else if err := r.uploadAndSeal(ctx, c, h); err != nil {
		return fail(StageUpload, err)
	}
	r.updateSoon(h.Name, func(hr *HostReport) {
		hr.State, hr.Uploaded, hr.Via, hr.Bytes, hr.StageMS = OutcomeStaged, true, via, a.Size, time.Since(start).Milliseconds()
	})
	if via == StagingSSH {
		r.ev.emit(Event{Host: h.Name, Stage: StageUpload, Status: StatusOK, Bytes: a.Size, Total: a.Size})
	}
	return nil
}

// uploadAndSeal streams the artifact to the host over SSH and seals the release, in one
// session: the host checks the content against the planned sha256 (sent, not recomputed
// here: a file that changed since it was hashed is refused by the host), puts it in place
// and writes the seal.
func (r *run) uploadAndSeal(ctx context.Context, c *remote.Client, h Host) error {
	a := r.plan.Artifact
	st, err := os.Stat(a.Path)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	if st.Size() != a.Size {
		return fmt.Errorf("artifact %s changed since it was hashed (%d bytes, planned %d)", a.Path, st.Size(), a.Size)
	}
	r.ev.emit(Event{Host: h.Name, Stage: StageUpload, Status: StatusStart, Total: a.Size})
	progress := func(n int64) {
		r.ev.emit(Event{Host: h.Name, Stage: StageUpload, Status: StatusProgress, Bytes: n, Total: a.Size})
	}
	// The content, the command line and the sha256 line that follows the content.
	countSent(ctx, a.Size+cmdBytes(uploadSealCommand(r.cfg, a))+int64(len(a.SHA256))+1)
	if _, err := c.UploadFileSum(ctx, a.Path, a.Size, BinaryPath(r.cfg.Path, a.ID, r.cfg.Binary), 0o755, a.SHA256, sealLines(r.cfg.Path, a.ID, a.SHA256), progress); err != nil {
		var ee *remote.ExitError
		if errors.As(err, &ee) && ee.ExitCode == 3 {
			return fmt.Errorf("%w (the artifact %s changed during the deploy?)", err, a.Path)
		}
		return err
	}
	return nil
}

// uploadSealCommand is the command uploadAndSeal runs: remote's upload script followed by
// the release's seal.
func uploadSealCommand(c Config, a Artifact) remote.Command {
	return remote.UploadThenCommand(BinaryPath(c.Path, a.ID, c.Binary), a.Size, 0o755, sealLines(c.Path, a.ID, a.SHA256))
}

// parseLines maps the first word of every output line to the rest of the line.
func parseLines(out []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if k != "" {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func countPrefix(out []byte, prefix string) int {
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
