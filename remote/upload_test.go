package remote

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The upload script works with GNU dd and openssl, without them (head -c, sha256sum), and with
// a dd that refuses its operands without reading (busybox), and refuses content whose checksum
// does not match, on every path. Only stdout is the protocol: a dd that is missing or refuses
// leaves its complaint on stderr, which is shown only when the upload fails.
func TestUploadCommandTools(t *testing.T) {
	content := bytes.Repeat([]byte("instactl\x00"), 100_000) // 900 kB: several dd blocks
	sum := sha256.Sum256(content)
	minimal := t.TempDir() // a PATH without dd and openssl
	for _, tool := range []string{"sh", "mkdir", "mktemp", "head", "sha256sum", "wc", "chmod", "mv", "rm"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Skipf("%s not installed", tool)
		}
		if err := os.Symlink(p, filepath.Join(minimal, tool)); err != nil {
			t.Fatal(err)
		}
	}
	// A dd that knows none of GNU dd's operands: it refuses before it reads a byte.
	refusing := fakeTool(t, "dd", `echo "dd: invalid iflag 'count_bytes,fullblock'" >&2; exit 1`)
	for _, tc := range []struct{ name, path string }{
		{"dd and openssl", os.Getenv("PATH")},
		{"head and sha256sum", minimal},
		{"a dd that refuses", refusing + ":" + os.Getenv("PATH")},
	} {
		for _, good := range []bool{true, false} {
			want := hex.EncodeToString(sum[:])
			if !good {
				want = hex.EncodeToString(make([]byte, 32))
			}
			dst := filepath.Join(t.TempDir(), "d", "app")
			var stdout, stderr bytes.Buffer
			cmd := exec.Command("/bin/sh", "-c", UploadCommand(dst, int64(len(content)), 0o755)[2])
			cmd.Env = []string{"PATH=" + tc.path}
			cmd.Stdin = bytes.NewReader(append(append(content, want...), '\n'))
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			got, _ := os.ReadFile(dst)
			switch {
			case good && (err != nil || !bytes.Equal(got, content) || stdout.String() != want+"\n"):
				t.Errorf("%s: %v %q %q, %d bytes written", tc.name, err, stdout.String(), stderr.String(), len(got))
			case !good && (err == nil || got != nil || !strings.Contains(stderr.String(), "received 900000 bytes with sha256 "+hex.EncodeToString(sum[:])+", expected 900000 bytes")):
				t.Errorf("%s, wrong checksum: %v %q, %d bytes written", tc.name, err, stderr.String(), len(got))
			}
		}
	}
}

// A dd that fails after writing part of the file (a full disk) fails the upload with dd's own
// words, installs nothing and does not retry with head -c (the stream is already consumed).
func TestUploadCommandWriteFails(t *testing.T) {
	full := fakeTool(t, "dd", `for a; do case $a in of=*) printf 'part' > "${a#of=}";; esac; done
echo "dd: error writing 'app': No space left on device" >&2; exit 1`)
	dst := filepath.Join(t.TempDir(), "d", "app")
	var stderr bytes.Buffer
	cmd := exec.Command("/bin/sh", "-c", UploadCommand(dst, 900, 0o755)[2])
	cmd.Env = []string{"PATH=" + full + ":" + os.Getenv("PATH")}
	cmd.Stdin = bytes.NewReader(make([]byte, 1000))
	cmd.Stderr = &stderr
	err := cmd.Run()
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), "*"))
	hidden, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), ".*"))
	if err == nil || stderr.String() != "dd: error writing 'app': No space left on device\n" || len(left)+len(hidden) != 0 {
		t.Errorf("got %v %q, files left %v %v", err, stderr.String(), left, hidden)
	}
}

// fakeTool writes an executable shell script name with body into a new directory and returns
// the directory, to put first on a PATH.
func fakeTool(t *testing.T, name, body string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
