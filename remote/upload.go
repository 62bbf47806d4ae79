package remote

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
)

// uploadBufSize is the copy buffer: large writes keep the SSH channel's
// window full.
const uploadBufSize = 256 << 10

// Upload streams r to remotePath on the host over one session and returns
// the content's sha256 (hex). The host writes a temporary file next to
// remotePath (creating the parent directory), checks its size and sha256sum
// against what was sent, applies mode, and renames it into place, so
// remotePath is either the old file or the complete new one, never a partial
// one. There is no SFTP and no compression: plain stdin is the fastest path.
//
// The size must be known before streaming so the host can tell the content
// from the checksum that follows it: os.File, bytes.Reader, strings.Reader
// and bytes.Buffer report it; any other reader is spooled to a local
// temporary file first. (Any reader with a Len() int method reporting its
// unread length works too.)
func (c *Client) Upload(ctx context.Context, r io.Reader, remotePath string, mode os.FileMode) (string, error) {
	if remotePath == "" || strings.HasSuffix(remotePath, "/") {
		return "", fmt.Errorf("upload to %s: bad remote path %q", c.target, remotePath)
	}
	size, r, cleanup, err := sizedReader(r)
	if err != nil {
		return "", fmt.Errorf("upload %s to %s: %w", remotePath, c.target, err)
	}
	defer cleanup()
	if mode == 0 {
		mode = 0o644
	}
	h := sha256.New()
	body := io.TeeReader(io.LimitReader(r, size), h)
	stdin := &uploadStream{body: body, size: size, sum: func() string { return hex.EncodeToString(h.Sum(nil)) }}
	res, err := c.Run(ctx, UploadCommand(remotePath, size, mode), stdin)
	if err != nil {
		return "", fmt.Errorf("upload %s to %s: %w", remotePath, c.target, err)
	}
	if err := stdin.readErr(); err != nil {
		return "", fmt.Errorf("upload %s to %s: reading local content: %w", remotePath, c.target, err)
	}
	if res.ExitCode != 0 {
		return "", fmt.Errorf("upload %s to %s: %w", remotePath, c.target, res.Err())
	}
	want := stdin.sum()
	if got := strings.TrimSpace(string(res.Stdout)); got != want {
		return "", fmt.Errorf("upload %s to %s: host reports sha256 %q, sent %s", remotePath, c.target, got, want)
	}
	return want, nil
}

// UploadSum is Upload for content whose sha256 the caller already knows (sum, lower-case
// hex): the content is streamed without being hashed here and sum is sent in the hash's
// place. The host hashes what it received and refuses it when the two differ, so content
// that changed since the caller hashed it is caught there, as with Upload; what it saves is
// the client's hashing of every copy it sends (0.6 CPU-s for 25 MB to 50 hosts). then, when
// not empty, is a shell script the host runs in the same session once the file is in place
// (a release's seal, say), which saves a round trip and a shell; its output follows the
// sha256 line and is returned.
func (c *Client) UploadSum(ctx context.Context, r io.Reader, remotePath string, mode os.FileMode, sum, then string) ([]byte, error) {
	if err := c.checkUploadSum(remotePath, sum); err != nil {
		return nil, err
	}
	size, r, cleanup, err := sizedReader(r)
	if err != nil {
		return nil, fmt.Errorf("upload %s to %s: %w", remotePath, c.target, err)
	}
	defer cleanup()
	if mode == 0 {
		mode = 0o644
	}
	stdin := &uploadStream{body: io.LimitReader(r, size), size: size, sum: func() string { return sum }}
	res, err := c.Run(ctx, UploadThenCommand(remotePath, size, mode, then), stdin)
	return c.uploadSumResult(remotePath, sum, res, err, stdin.readErr())
}

// UploadFileSum is UploadSum of size bytes of the local file at path, calling progress
// (when not nil) with the bytes read so far every 4 MiB before the last. Through a keeper, the keeper
// reads the file itself, so the content does not cross the local socket: a fan-out of a
// large artifact costs what it costs on a direct connection.
func (c *Client) UploadFileSum(ctx context.Context, path string, size int64, remotePath string, mode os.FileMode, sum, then string, progress func(int64)) ([]byte, error) {
	if c.keeper == nil {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("upload %s to %s: %w", remotePath, c.target, err)
		}
		defer f.Close()
		return c.UploadSum(ctx, newProgressReader(f, size, progress), remotePath, mode, sum, then)
	}
	if err := c.checkUploadSum(remotePath, sum); err != nil {
		return nil, err
	}
	if mode == 0 {
		mode = 0o644
	}
	file := &keptFile{Path: path, Size: size, Sum: sum}
	res, err := c.runKept(ctx, UploadThenCommand(remotePath, size, mode, then), nil, file, progress, nil, nil)
	var readErr error
	if file.readErr != "" {
		readErr = errors.New(file.readErr)
	}
	return c.uploadSumResult(remotePath, sum, res, err, readErr)
}

// checkUploadSum checks UploadSum's arguments.
func (c *Client) checkUploadSum(remotePath, sum string) error {
	if remotePath == "" || strings.HasSuffix(remotePath, "/") {
		return fmt.Errorf("upload to %s: bad remote path %q", c.target, remotePath)
	}
	if len(sum) != sha256.Size*2 || strings.Trim(sum, "0123456789abcdef") != "" {
		return fmt.Errorf("upload %s to %s: %q is not a sha256 in lower-case hex", remotePath, c.target, sum)
	}
	return nil
}

// uploadSumResult turns an upload session's outcome into UploadSum's result: the output
// of the script that followed the file, or why the upload failed.
func (c *Client) uploadSumResult(remotePath, sum string, res Result, err, readErr error) ([]byte, error) {
	if err != nil {
		return nil, fmt.Errorf("upload %s to %s: %w", remotePath, c.target, err)
	}
	if readErr != nil {
		return nil, fmt.Errorf("upload %s to %s: reading local content: %w", remotePath, c.target, readErr)
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("upload %s to %s: %w", remotePath, c.target, res.Err())
	}
	got, rest, _ := strings.Cut(string(res.Stdout), "\n")
	if got != sum {
		return nil, fmt.Errorf("upload %s to %s: host reports sha256 %q, sent %s", remotePath, c.target, got, sum)
	}
	return []byte(rest), nil
}

// progressReader reads size bytes of r, calling fn with the bytes read so far every
// 4 MiB until the last (the caller reports the end). Its Len lets sizedReader know the
// size without spooling.
type progressReader struct {
	r         io.Reader
	remaining int64
	read      int64
	next      int64
	fn        func(int64)
}

const progressEvery = 4 << 20

func newProgressReader(r io.Reader, size int64, fn func(int64)) *progressReader {
	return &progressReader{r: io.LimitReader(r, size), remaining: size, next: progressEvery, fn: fn}
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.read += int64(n)
	p.remaining -= int64(n)
	if p.fn != nil && p.read >= p.next && p.remaining > 0 {
		p.fn(p.read)
		p.next = p.read + progressEvery
	}
	return n, err
}

// Len is the number of bytes left to read.
func (p *progressReader) Len() int { return int(p.remaining) }

// UploadCommand is the script Upload runs on the host: receive exactly size
// bytes into a temporary file beside dst, then read the expected sha256 line,
// verify it, chmod, and rename into place. It prints the sha256 on success;
// exit 3 means a checksum mismatch (a short or long file cannot match: its size
// is computed only for the message).
//
// The host's CPU is what limits a fan-out to many hosts, so the script takes
// the cheapest tools it finds and spawns as few processes as it can (each is
// about 2 ms of a host's CPU): GNU dd with 256 KiB blocks (head -c copies 8 KiB
// at a time: 3× the CPU for a 25 MB binary), tried directly: a dd that does not
// know these operands (busybox) refuses them before it reads a byte, and head -c
// does the copy; and openssl's sha256, which uses the CPU's SHA extensions
// (coreutils' sha256sum does not: 5× the CPU), else sha256sum.
func UploadCommand(dst string, size int64, mode os.FileMode) Command {
	return UploadThenCommand(dst, size, mode, "")
}

// UploadThenCommand is UploadCommand followed, once the file is in place and its sha256
// printed, by the shell script then (UploadSum's).
func UploadThenCommand(dst string, size int64, mode os.FileMode, then string) Command {
	dir, base := path.Dir(dst), path.Base(dst)
	script := fmt.Sprintf(`set -e
dir=%s dst=%s base=%s
[ -d "$dir" ] || mkdir -p -- "$dir"
tmp=$(mktemp -- "$dir/.$base.instactl.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
if ! dd of="$tmp" bs=256K count=%d iflag=count_bytes,fullblock status=none; then
  [ ! -s "$tmp" ] || exit 1
  head -c %d > "$tmp"
fi
IFS= read -r want
if command -v openssl >/dev/null 2>&1; then
  got=$(openssl dgst -sha256 -r < "$tmp")
else
  got=$(sha256sum < "$tmp")
fi
got=${got%%%% *}
if [ "$got" != "$want" ]; then
  size=$(wc -c < "$tmp")
  echo "upload of $dst: received $size bytes with sha256 $got, expected %d bytes with sha256 $want" >&2
  exit 3
fi
chmod %04o "$tmp"
mv -f -- "$tmp" "$dst"
trap - EXIT
echo "$got"`, Quote(dir), Quote(dst), Quote(base), size, size, size, mode.Perm())
	if then != "" {
		script += "\n" + then
	}
	return Script(script)
}

// uploadStream is Upload's stdin: the content, then one line with its sha256
// (known only once the content has been read).
type uploadStream struct {
	body    io.Reader
	size    int64
	n       int64
	sum     func() string
	trailer *bytes.Reader

	mu  sync.Mutex
	err error // reading the local content failed
}

func (s *uploadStream) readErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *uploadStream) Read(p []byte) (int, error) {
	if s.trailer == nil {
		n, err := s.body.Read(p)
		s.n += int64(n)
		if err == nil || n > 0 {
			return n, nil
		}
		if err != io.EOF || s.n != s.size {
			if err == io.EOF {
				err = fmt.Errorf("content ended after %d of %d bytes", s.n, s.size)
			}
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return 0, err
		}
		s.trailer = bytes.NewReader([]byte(s.sum() + "\n"))
	}
	return s.trailer.Read(p)
}

// WriteTo lets io.Copy move the content in large chunks.
func (s *uploadStream) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, uploadBufSize)
	var total int64
	for {
		n, err := s.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// sizedReader returns r's remaining size, spooling r to a temporary file when
// it cannot tell.
func sizedReader(r io.Reader) (int64, io.Reader, func(), error) {
	nop := func() {}
	switch v := r.(type) {
	case *os.File:
		st, err := v.Stat()
		if err != nil {
			return 0, nil, nop, err
		}
		if st.Mode().IsRegular() {
			pos, err := v.Seek(0, io.SeekCurrent)
			if err != nil {
				return 0, nil, nop, err
			}
			return st.Size() - pos, v, nop, nil
		}
	case interface{ Len() int }: // bytes.Reader, strings.Reader, bytes.Buffer
		return int64(v.Len()), r, nop, nil
	}
	f, err := os.CreateTemp("", "instactl-upload-*")
	if err != nil {
		return 0, nil, nop, fmt.Errorf("spooling content: %w", err)
	}
	cleanup := func() { f.Close(); os.Remove(f.Name()) }
	n, err := io.Copy(f, r)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		cleanup()
		return 0, nil, nop, fmt.Errorf("spooling content: %w", err)
	}
	return n, f, cleanup, nil
}
