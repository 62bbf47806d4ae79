package deploy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/instactl/instactl/internal/testenv"
)

// TestFetchCommand runs the host's fetch script with this machine's sh and curl against a
// local HTTP server: a good download is verified, renamed into place and sealed exactly as
// SealCommand seals; a corrupt one (exit 3) and an unreachable URL (exit 4) leave nothing.
func TestFetchCommand(t *testing.T) {
	testenv.Require(t, "curl", "curl")
	content := bytes.Repeat([]byte("instagram-app "), 50000)
	sum := sha256.Sum256(content)
	sha := hex.EncodeToString(sum[:])
	id := ReleaseID(sha)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/corrupt" {
			w.Write(bytes.ToUpper(content))
			return
		}
		w.Write(content)
	}))
	defer srv.Close()

	for _, tc := range []struct {
		name, url string
		code      int
		want      string
	}{
		{"good", srv.URL + "/a?X-Amz-Signature=x&b=c", 0, ""},
		{"corrupt", srv.URL + "/corrupt", 3, "expected 700000 bytes with sha256 " + sha},
		{"unreachable", "http://127.0.0.1:1/a", 4, "curl could not fetch the artifact from S3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			out, code := runLocal(t, FetchCommand(root, id, "instagram-app", sha, int64(len(content))), tc.url+"\n")
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d %q; want %d and %q", code, out, tc.code, tc.want)
			}
			ents, _ := os.ReadDir(ReleaseDir(root, id))
			if tc.code != 0 {
				if len(ents) != 0 {
					t.Errorf("a failed fetch left %v", ents)
				}
				return
			}
			got, _ := os.ReadFile(BinaryPath(root, id, "instagram-app"))
			st, _ := os.Stat(BinaryPath(root, id, "instagram-app"))
			seal, _ := os.ReadFile(filepath.Join(ReleaseDir(root, id), shaFile))
			if !bytes.Equal(got, content) || st.Mode().Perm() != 0o755 || string(seal) != sha+"\n" || len(ents) != 2 {
				t.Errorf("after the fetch: %d bytes, mode %v, seal %q, files %v", len(got), st.Mode(), seal, ents)
			}
			// The probe trusts it like a release uploaded over SSH.
			if out, _ := runLocal(t, ProbeCommand(root, id, "instagram-app", sha), ""); !strings.Contains(out, "present") {
				t.Errorf("probe after the fetch: %q", out)
			}
		})
	}
}

func TestStagingConfig(t *testing.T) {
	a := Artifact{Path: "/tmp/app", SHA256: strings.Repeat("ab", 32), Size: 1 << 20, ID: "abababababab"}
	cfg := testConfig(t.TempDir())
	p, err := NewPlan(KindDeploy, cfg, testHosts(3), a, "", "R1")
	if err != nil || p.Config.Staging != StagingSSH {
		t.Fatalf("no bucket: %v, staging %q; want ssh", err, p.Config.Staging)
	}
	cfg.Bucket = "ig-photos"
	if p, err = NewPlan(KindDeploy, cfg, testHosts(3), a, "", "R1"); err != nil || p.Config.Staging != StagingS3 {
		t.Fatalf("with a bucket: %v, staging %q; want s3 by default", err, p.Config.Staging)
	}
	var b bytes.Buffer
	p.Render(&b)
	for _, want := range []string{"staging: S3, s3://ig-photos/instactl/releases/" + a.SHA256, "3 hosts: app-0 app-1 app-2", "s3 put on instactl, once", "fetch on hosts without the release"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, b.String())
		}
	}
	cfg.Staging = StagingSSH
	if p, err = NewPlan(KindDeploy, cfg, testHosts(3), a, "", "R1"); err != nil || p.Config.Staging != StagingSSH {
		t.Fatalf("forced ssh: %v, staging %q", err, p.Config.Staging)
	}
	cfg.Bucket, cfg.Staging = "", StagingS3
	if _, err = NewPlan(KindDeploy, cfg, testHosts(3), a, "", "R1"); err == nil || !strings.Contains(err.Error(), "needs a bucket") {
		t.Errorf("s3 without a bucket: %v", err)
	}
	cfg.Staging = "ftp"
	if _, err = NewPlan(KindDeploy, cfg, testHosts(3), a, "", "R1"); err == nil || !strings.Contains(err.Error(), `"s3" or "ssh"`) {
		t.Errorf("staging ftp: %v", err)
	}
}
