package walarchive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// metaSHA256 is the object metadata key holding the file's SHA-256 (x-amz-meta-sha256).
const metaSHA256 = "sha256"

// ErrNotArchived says the file asked for is not in the archive: restore_command then exits 1,
// which Postgres reads as "end of the archive", not as a failure.
var ErrNotArchived = errors.New("not in the archive")

// ConflictError says a file is archived under the same name with other content: two clusters
// write to one directory, or a file in pg_wal was corrupted. Postgres keeps the file and retries;
// an operator must look.
type ConflictError struct {
	Key               string
	Archived, Pushing string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s is already archived with other content (archived sha256 %s, pushing %s): two clusters archive into one place or the file is corrupt; the file stays in pg_wal until this is resolved",
		e.Key, e.Archived, e.Pushing)
}

// Archive is one cluster's WAL archive: bucket, wal/<group>/<system id>/.
type Archive struct {
	s3     *s3.Client
	bucket string
	prefix string
}

var groupRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// New returns the archive of group's cluster systemID in bucket.
func New(c *s3.Client, bucket, group, systemID string) (*Archive, error) {
	if !groupRe.MatchString(group) {
		return nil, fmt.Errorf("wal archive: group %q: want a host-style name such as pg-0", group)
	}
	if _, err := strconv.ParseUint(systemID, 10, 64); err != nil {
		return nil, fmt.Errorf("wal archive: system id %q: want the decimal system identifier of pg_control_system()", systemID)
	}
	return &Archive{s3: c, bucket: bucket, prefix: "wal/" + group + "/" + systemID + "/"}, nil
}

// Location is s3://bucket/prefix, for messages.
func (a *Archive) Location() string { return "s3://" + a.bucket + "/" + a.prefix }

func (a *Archive) key(name string) string { return a.prefix + name }

// SystemID reads the system identifier of the cluster in dataDir from global/pg_control (its
// first 8 bytes, little-endian on the hosts' amd64 and arm64).
func SystemID(dataDir string) (string, error) {
	f, err := os.Open(filepath.Join(dataDir, "global", "pg_control"))
	if err != nil {
		return "", fmt.Errorf("read system id: %w", err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return "", fmt.Errorf("read system id from %s: %w", f.Name(), err)
	}
	return strconv.FormatUint(binary.LittleEndian.Uint64(b[:]), 10), nil
}

// PushResult says what Push did.
type PushResult struct {
	Key string `json:"key"`
	// Already is true when the same content was archived before (a retry): nothing uploaded.
	Already bool  `json:"already"`
	Bytes   int64 `json:"bytes"`
}

// Push archives the file at path under its base name. The same name with the same SHA-256
// already archived is success; with another SHA-256 it is *ConflictError.
func (a *Archive) Push(ctx context.Context, path string) (PushResult, error) {
	name := filepath.Base(path)
	if _, err := ParseName(name); err != nil {
		return PushResult{}, fmt.Errorf("wal push: %w", err)
	}
	body, err := os.ReadFile(path)
	if err != nil {
		return PushResult{}, fmt.Errorf("wal push: %w", err)
	}
	sum := sha256.Sum256(body)
	sha := hex.EncodeToString(sum[:])
	res := PushResult{Key: a.key(name), Bytes: int64(len(body))}
	have, err := a.archivedSHA(ctx, name)
	switch {
	case errors.Is(err, ErrNotArchived):
	case err != nil:
		return res, fmt.Errorf("wal push %s: %w", name, err)
	case have == sha:
		res.Already = true
		return res, nil
	default:
		return res, &ConflictError{Key: a.Location() + name, Archived: have, Pushing: sha}
	}
	_, err = a.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(res.Key),
		Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))), Metadata: map[string]string{metaSHA256: sha}})
	if err != nil {
		return res, fmt.Errorf("wal push %s to %s: %w", name, a.Location(), err)
	}
	return res, nil
}

// archivedSHA returns the SHA-256 recorded with an archived file, ErrNotArchived when absent.
func (a *Archive) archivedSHA(ctx context.Context, name string) (string, error) {
	out, err := a.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(a.key(name))})
	if isNotFound(err) {
		return "", ErrNotArchived
	}
	if err != nil {
		return "", fmt.Errorf("head %s: %w", a.key(name), err)
	}
	for k, v := range out.Metadata {
		if strings.EqualFold(k, metaSHA256) {
			return v, nil
		}
	}
	return "", fmt.Errorf("%s%s has no sha256 metadata: it was not written by instactl wal push", a.Location(), name)
}

func isNotFound(err error) bool {
	var nk *types.NoSuchKey
	var nf *types.NotFound
	var ae smithy.APIError
	return errors.As(err, &nk) || errors.As(err, &nf) || (errors.As(err, &ae) && (ae.ErrorCode() == "NotFound" || ae.ErrorCode() == "NoSuchKey"))
}

// get downloads name to dest (through dest.tmp and a rename, so a reader never sees half a
// file), checking the SHA-256 recorded at push.
func (a *Archive) get(ctx context.Context, name, dest string) error {
	out, err := a.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(a.key(name))})
	if isNotFound(err) {
		return ErrNotArchived
	}
	if err != nil {
		return fmt.Errorf("get %s%s: %w", a.Location(), name, err)
	}
	defer out.Body.Close()
	tmp := dest + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("get %s: %w", name, err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), out.Body); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("get %s%s: %w", a.Location(), name, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("get %s: %w", name, err)
	}
	var want string
	for k, v := range out.Metadata {
		if strings.EqualFold(k, metaSHA256) {
			want = v
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); want != "" && got != want {
		os.Remove(tmp)
		return fmt.Errorf("get %s%s: content sha256 %s differs from the %s recorded at push", a.Location(), name, got, want)
	}
	if err := os.Rename(tmp, dest); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("get %s: %w", name, err)
	}
	return nil
}

// List returns every archived file, sorted by timeline, then segment, history files first.
func (a *Archive) List(ctx context.Context) ([]File, error) {
	var out []File
	p := s3.NewListObjectsV2Paginator(a.s3, &s3.ListObjectsV2Input{Bucket: aws.String(a.bucket), Prefix: aws.String(a.prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", a.Location(), err)
		}
		for _, o := range page.Contents {
			name := strings.TrimPrefix(aws.ToString(o.Key), a.prefix)
			f, err := ParseName(name)
			if err != nil {
				continue // not ours (a stray upload); verify reports gaps, not strangers
			}
			f.Size = aws.ToInt64(o.Size)
			out = append(out, f)
		}
	}
	SortFiles(out)
	return out, nil
}

// SortFiles orders files by timeline, history first, then segment number and name.
func SortFiles(fs []File) {
	sort.Slice(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if a.Timeline != b.Timeline {
			return a.Timeline < b.Timeline
		}
		if (a.Kind == KindHistory) != (b.Kind == KindHistory) {
			return a.Kind == KindHistory
		}
		if a.SegNo != b.SegNo {
			return a.SegNo < b.SegNo
		}
		return a.Name < b.Name
	})
}

// Delete removes the named files from the archive.
func (a *Archive) Delete(ctx context.Context, names []string) error {
	for len(names) > 0 {
		n := min(len(names), 1000)
		var ids []types.ObjectIdentifier
		for _, name := range names[:n] {
			ids = append(ids, types.ObjectIdentifier{Key: aws.String(a.key(name))})
		}
		out, err := a.s3.DeleteObjects(ctx, &s3.DeleteObjectsInput{Bucket: aws.String(a.bucket), Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)}})
		if err != nil {
			return fmt.Errorf("delete from %s: %w", a.Location(), err)
		}
		if len(out.Errors) > 0 {
			e := out.Errors[0]
			return fmt.Errorf("delete %s: %s %s (and %d more)", aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message), len(out.Errors)-1)
		}
		names = names[n:]
	}
	return nil
}

// Read returns an archived file's content (history files, for timeline checks).
func (a *Archive) Read(ctx context.Context, name string) ([]byte, error) {
	out, err := a.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(a.key(name))})
	if isNotFound(err) {
		return nil, fmt.Errorf("%s%s: %w", a.Location(), name, ErrNotArchived)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s%s: %w", a.Location(), name, err)
	}
	defer out.Body.Close()
	return io.ReadAll(out.Body)
}
