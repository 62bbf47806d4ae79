package deploy

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/instactl/instactl/errtext"
	"github.com/instactl/instactl/remote"
)

// Staging methods (Config.Staging).
const (
	// StagingS3 uploads the artifact once to the stack's bucket; every host fetches it with a
	// presigned URL, and falls back to StagingSSH when its fetch fails.
	StagingS3 = "s3"
	// StagingSSH streams the artifact to every host over its SSH connection.
	StagingSSH = "ssh"
)

// DefaultStagePrefix is the key prefix of staged artifacts in the bucket.
const DefaultStagePrefix = "instactl/releases"

// S3Staging is what S3 staging did, for the report.
type S3Staging struct {
	Bucket string `json:"bucket"`
	Key    string `json:"key"`
	// Uploaded says this run put the object; false means the bucket already held that
	// content (sha256 and size), or the upload failed (Error).
	Uploaded bool  `json:"uploaded"`
	Bytes    int64 `json:"bytes,omitempty"`
	// Error is why S3 could not be used; every host that needed the artifact then got it over
	// SSH.
	Error string `json:"error,omitempty"`
}

// sentCounter counts the bytes a run sends from this machine: command lines, stdin and the S3
// upload's body (not SSH or TLS framing, nor the key exchanges).
type sentCounter struct{ n atomic.Int64 }

type sentKey struct{}

func withSent(ctx context.Context, c *sentCounter) context.Context {
	return context.WithValue(ctx, sentKey{}, c)
}

// countSent adds n bytes to the run's counter in ctx, if any.
func countSent(ctx context.Context, n int64) {
	if c, ok := ctx.Value(sentKey{}).(*sentCounter); ok {
		c.n.Add(n)
	}
}

// cmdBytes is what a command costs on the wire: its command line.
func cmdBytes(cmd remote.Command) int64 { return int64(len(cmd.String())) }

// storeObject is the artifact in the bucket, put at most once per run by the first host that
// needs it; the others wait for that.
type storeObject struct {
	once sync.Once
	err  error
}

// ensureObject makes sure the bucket holds the artifact: a HEAD, and a PUT only when the
// object is missing or holds other content. An error means S3 staging cannot be used.
func (r *run) ensureObject(ctx context.Context) error {
	r.obj.once.Do(func() {
		r.obj.err = r.putObject(ctx)
		r.mu.Lock()
		if r.obj.err != nil {
			r.rep.S3.Error = ErrorLine(r.obj.err)
		}
		r.mu.Unlock()
		if r.obj.err != nil {
			r.ev.emit(Event{Stage: StageStore, Status: StatusFail,
				Err: fmt.Errorf("S3 staging unavailable, hosts get the artifact over SSH: %w", r.obj.err)})
		}
	})
	return r.obj.err
}

func (r *run) putObject(ctx context.Context) error {
	a, cfg := r.plan.Artifact, r.cfg
	if r.d.Store == nil {
		return fmt.Errorf("no S3 client configured for bucket %s", cfg.Bucket)
	}
	key := StageKey(cfg.StagePrefix, a.SHA256)
	where := "s3://" + cfg.Bucket + "/" + key
	info, found, err := r.d.Store.Head(ctx, cfg.Bucket, key)
	if err != nil {
		return err
	}
	if found && info.SHA256 == a.SHA256 && info.Size == a.Size {
		r.ev.emit(Event{Stage: StageStore, Status: StatusSkip, Message: where + " already holds this artifact"})
		return nil
	}
	f, err := os.Open(a.Path)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() != a.Size {
		return fmt.Errorf("artifact %s changed since it was hashed (planned %d bytes)", a.Path, a.Size)
	}
	r.ev.emit(Event{Stage: StageStore, Status: StatusStart, Total: a.Size, Message: where})
	start := time.Now()
	if err := r.d.Store.Put(ctx, cfg.Bucket, key, f, a.Size, a.SHA256); err != nil {
		return err
	}
	countSent(ctx, a.Size)
	r.mu.Lock()
	r.rep.S3.Uploaded, r.rep.S3.Bytes = true, a.Size
	r.mu.Unlock()
	r.ev.emit(Event{Stage: StageStore, Status: StatusOK, Bytes: a.Size, Total: a.Size,
		Message: fmt.Sprintf("%s: %s in %s", where, humanBytes(a.Size), time.Since(start).Round(time.Millisecond))})
	return nil
}

// fetchTTL is how long a host's presigned URL is valid: it is signed just before that host's
// fetch starts, so it only has to outlast one download.
func (c Config) fetchTTL() time.Duration {
	if c.PresignTTL > 0 {
		return c.PresignTTL
	}
	return 10 * time.Minute
}

// fetch has the host download the artifact from the bucket with a presigned URL, verify and
// seal it: one SSH exec. The error is the host's own reason (its stderr) when it could not.
func (r *run) fetch(ctx context.Context, c *remote.Client, h Host) error {
	a, cfg := r.plan.Artifact, r.cfg
	if err := r.ensureObject(ctx); err != nil {
		return fmt.Errorf("S3 staging unavailable: %w", err)
	}
	url, err := r.d.Store.PresignGet(ctx, cfg.Bucket, StageKey(cfg.StagePrefix, a.SHA256), cfg.fetchTTL())
	if err != nil {
		return err
	}
	if r.d.fetchURL != nil {
		url = r.d.fetchURL(h, url)
	}
	cmd := FetchCommand(cfg.Path, a.ID, cfg.Binary, a.SHA256, a.Size)
	stdin := url + "\n"
	countSent(ctx, cmdBytes(cmd)+int64(len(stdin)))
	r.ev.emit(Event{Host: h.Name, Stage: StageFetch, Status: StatusStart, Total: a.Size})
	res, err := c.Run(ctx, cmd, bytesReader([]byte(stdin)))
	if err != nil {
		return err
	}
	return res.Err()
}

// stageViaS3 fetches the artifact on host h from the bucket; when that fails it streams it
// over SSH instead and says why in the host's report. It returns the method that worked.
func (r *run) stageViaS3(ctx context.Context, c *remote.Client, h Host) (string, error) {
	ferr := r.fetch(ctx, c, h)
	if ferr == nil {
		r.ev.emit(Event{Host: h.Name, Stage: StageFetch, Status: StatusOK, Bytes: r.plan.Artifact.Size, Total: r.plan.Artifact.Size})
		return StagingS3, nil
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	note := "fetch from S3 failed (" + errtext.OneLine(ferr.Error()) + "): staged over SSH instead"
	r.update(h.Name, func(hr *HostReport) { hr.Note = note })
	r.ev.emit(Event{Host: h.Name, Stage: StageFetch, Status: StatusFail, Message: "falling back to SSH",
		Err: fmt.Errorf("fetch on %s: %w", h.Name, ferr)})
	if err := r.uploadAndSeal(ctx, c, h); err != nil {
		return "", fmt.Errorf("%w (after the fetch from S3 failed: %s)", err, errtext.OneLine(ferr.Error()))
	}
	return StagingSSH, nil
}

// FetchCommand is the script a host runs to stage release id from S3: it reads a presigned
// URL on stdin (so it appears in no process list nor the plan), downloads it with curl (or
// wget) into a temporary file beside the binary, checks size and sha256 like
// remote.UploadCommand, renames it into place and seals the release like SealCommand. Exit 3
// is a size or checksum mismatch, 4 a failed download.
func FetchCommand(root, id, binary, sha string, size int64) remote.Command {
	dst := BinaryPath(root, id, binary)
	script := fmt.Sprintf(`set -e
dir=%s dst=%s want=%s size=%d
IFS= read -r url
mkdir -p -- "$dir"
tmp=$(mktemp -- "$dir/.%s.instactl.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
if command -v curl >/dev/null 2>&1; then
  curl -fsS --connect-timeout 10 --retry 2 -o "$tmp" -- "$url" || { echo "curl could not fetch the artifact from S3 (exit $?)" >&2; exit 4; }
elif command -v wget >/dev/null 2>&1; then
  wget -q -T 30 -t 3 -O "$tmp" -- "$url" || { echo "wget could not fetch the artifact from S3 (exit $?)" >&2; exit 4; }
else
  echo "neither curl nor wget is installed" >&2; exit 4
fi
if command -v openssl >/dev/null 2>&1; then
  got=$(openssl dgst -sha256 -r < "$tmp")
else
  got=$(sha256sum < "$tmp")
fi
got=${got%%%% *}
n=$(wc -c < "$tmp")
if [ "$n" -ne "$size" ] || [ "$got" != "$want" ]; then
  echo "fetched $n bytes with sha256 $got, expected $size bytes with sha256 $want" >&2
  exit 3
fi
chmod 0755 "$tmp"
mv -f -- "$tmp" "$dst"
trap - EXIT
%s`, remote.Quote(ReleaseDir(root, id)), remote.Quote(dst), remote.Quote(sha), size, binary, sealLines(root, id, sha))
	return remote.Script(script)
}

// stagingFor says how the plan stages: StagingS3 or StagingSSH (journals from before S3
// staging have no method: SSH).
func (c Config) stagingMethod() string {
	if c.Staging == StagingS3 && c.Bucket != "" {
		return StagingS3
	}
	return StagingSSH
}

// stagingLines is the dry run's account of how each host gets the artifact.
func (p *Plan) stagingLines() []string {
	c := p.Config
	var names []string
	for _, h := range p.Hosts {
		names = append(names, h.Name)
	}
	if c.stagingMethod() == StagingSSH {
		return []string{fmt.Sprintf("staging: over SSH from here, %s per host that lacks the release: %d hosts: %s",
			humanBytes(p.Artifact.Size), len(names), listNames(names, 8))}
	}
	key := StageKey(c.StagePrefix, p.Artifact.SHA256)
	return []string{
		fmt.Sprintf("staging: S3, s3://%s/%s uploaded once from here (skipped when the bucket holds this sha256)", c.Bucket, key),
		fmt.Sprintf("  fetch from S3 with a presigned URL (valid %v): %d hosts: %s", c.fetchTTL(), len(names), listNames(names, 8)),
		"  over SSH: a host whose fetch fails, instead (its report says so)",
	}
}

// s3Steps are the plan's staging steps for S3 staging.
func (p *Plan) s3Steps() []Step {
	c, a := p.Config, p.Artifact
	key := StageKey(c.StagePrefix, a.SHA256)
	return []Step{
		{Name: "s3 put", Where: "instactl, once", Note: fmt.Sprintf("HEAD s3://%s/%s; PUT %d bytes with x-amz-meta-sha256 %s unless it holds them", c.Bucket, key, a.Size, a.SHA256)},
		{Name: "fetch", Where: "hosts without the release", Command: FetchCommand(c.Path, a.ID, c.Binary, a.SHA256, a.Size).String(),
			Note: "the presigned URL on stdin; sha256 verified and the release sealed on the host"},
		{Name: "upload", Where: "hosts whose fetch failed", Command: uploadSealCommand(c, a).String(),
			Note: fmt.Sprintf("fallback: %d bytes on stdin, then the sha256 line; verified and the release sealed on the host", a.Size)},
	}
}
