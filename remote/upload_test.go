package remote

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The upload script works with GNU dd and openssl and without them (head -c, sha256sum), and
// refuses content whose checksum does not match, on either path.
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
	for _, tc := range []struct{ name, path string }{{"dd and openssl", os.Getenv("PATH")}, {"head and sha256sum", minimal}} {
		for _, good := range []bool{true, false} {
			want := hex.EncodeToString(sum[:])
			if !good {
				want = hex.EncodeToString(make([]byte, 32))
			}
			dst := filepath.Join(t.TempDir(), "d", "app")
			cmd := exec.Command("/bin/sh", "-c", UploadCommand(dst, int64(len(content)), 0o755)[2])
			cmd.Env = []string{"PATH=" + tc.path}
			cmd.Stdin = bytes.NewReader(append(append(content, want...), '\n'))
			out, err := cmd.CombinedOutput()
			got, _ := os.ReadFile(dst)
			switch {
			case good && (err != nil || !bytes.Equal(got, content) || string(out) != want+"\n"):
				t.Errorf("%s: %v %q, %d bytes written", tc.name, err, out, len(got))
			case !good && (err == nil || got != nil || !bytes.Contains(out, []byte("expected 900000 bytes"))):
				t.Errorf("%s, wrong checksum: %v %q, %d bytes written", tc.name, err, out, len(got))
			}
		}
	}
}
