package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/instactl/instactl/cloud/cloudtest"
	"github.com/instactl/instactl/internal/testenv"
)

// newcomerAWSStack runs `instactl init` in dir and turns the example into an AWS stack the way
// the README says (provider: aws), optionally writing ssh.key: ~/.ssh/id_ed25519 out.
func newcomerAWSStack(t *testing.T, dir string, writeKey bool) string {
	t.Helper()
	path := filepath.Join(dir, "instagram.yaml")
	if _, stderr, code := run(t, "init", "--stack", path); code != 0 {
		t.Fatalf("init: exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "provider: sandbox", "provider: aws", 1)
	if writeKey {
		s = strings.Replace(s, "  # key: ~/.ssh/id_ed25519", "  key: ~/.ssh/id_ed25519", 1)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// lineOf is the 1-based line of the first line of path that contains s.
func lineOf(t *testing.T, path, s string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			return i + 1
		}
	}
	t.Fatalf("%s has no line with %q", path, s)
	return 0
}

// TestNewcomerAWSKeyInHome is issue 14's first break: a stack made by `init` and switched to
// provider: aws names its key as ~/.ssh/id_ed25519; with a HOME that holds only that key, plan
// reaches the cloud (moto) and imports the key; with a HOME that lacks it, validate and plan say
// which file is missing, where the stack names it, and how to create it.
func TestNewcomerAWSKeyInHome(t *testing.T) {
	if testing.Short() {
		t.Skip("moto integration test; -short")
	}
	endpoint := testenv.Moto(t)
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	for _, writeKey := range []bool{true, false} {
		t.Run(fmt.Sprintf("key written %v", writeKey), func(t *testing.T) {
			home := t.TempDir()
			t.Setenv("HOME", home)
			path := newcomerAWSStack(t, t.TempDir(), writeKey)
			key := filepath.Join(home, ".ssh", "id_ed25519")
			where := fmt.Sprintf("%s:%d:3: ssh.key: ", path, lineOf(t, path, "user: root")) // the ssh section
			if writeKey {
				where = fmt.Sprintf("%s:%d:8: ssh.key: ", path, lineOf(t, path, "key: ~/.ssh/id_ed25519"))
			}
			want := where + key + ".pub does not exist; create it with: ssh-keygen -t ed25519 -f " + key

			stdout, stderr, code := run(t, "--stack", path, "validate")
			if code != ExitUsage || !strings.Contains(stdout, want) {
				t.Errorf("validate without the key: exit %d, want 2 and %q\n%s%s", code, want, stdout, stderr)
			}
			stdout, stderr, code = run(t, "--stack", path, "plan")
			if code != ExitUsage || !strings.Contains(stderr, want) {
				t.Errorf("plan without the key: exit %d, want 2 and %q\n%s%s", code, want, stdout, stderr)
			}

			// A HOME that holds only the key: plan works against the cloud.
			if err := os.MkdirAll(filepath.Dir(key), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(key+".pub", []byte(cloudtest.PublicKey(t)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if stdout, stderr, code := run(t, "--stack", path, "validate"); code != 0 {
				t.Errorf("validate with the key: exit %d\n%s%s", code, stdout, stderr)
			}
			stdout, stderr, code = run(t, "--stack", path, "plan", "--detailed-exitcode")
			if code != ExitChanges || !strings.Contains(stdout, "key.instagram") || !strings.Contains(stdout, "instance.pg[3]") {
				t.Errorf("plan with the key in HOME: exit %d, want 2 (changes) with the key pair and every host\n%s%s", code, stdout, stderr)
			}
		})
	}
}
