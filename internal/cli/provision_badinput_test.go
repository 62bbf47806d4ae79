package cli

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/instactl/instactl/internal/testenv"
)

// provisionAWSVariant writes a stack file like provisionAWSStack's with each old -> new replaced.
func provisionAWSVariant(t *testing.T, dir, name string, replace ...string) string {
	t.Helper()
	path := provisionAWSStack(t, dir, name, provisionAWSRoles)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i < len(replace); i += 2 {
		if !strings.Contains(s, replace[i]) {
			t.Fatalf("%s: no %q to replace", path, replace[i])
		}
		s = strings.ReplaceAll(s, replace[i], replace[i+1])
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// provisionFailLines are the "  ADDRESS: ..." lines of apply's closing error that carry code.
func provisionFailLines(stderr, code string) []string {
	return regexp.MustCompile(`(?m)^  \S+: .*`+regexp.QuoteMeta(code)+`.*$`).FindAllString(stderr, -1)
}

// TestProvisionAWSBadInput: what AWS refuses (moto with its validations on) ends apply with one
// line per failing resource carrying the AWS error code, the list of what was made before, exit
// 5 (1 when nothing was made), and a re-run after the fix converges without duplicates.
func TestProvisionAWSBadInput(t *testing.T) {
	if testing.Short() {
		t.Skip("moto integration test; -short")
	}
	for _, k := range []string{"MOTO_ENABLE_AMI_VALIDATION", "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION"} {
		t.Setenv(k, "true")
	}
	endpoint := testenv.Moto(t)
	testenv.Require(t, "aws", "awscli")
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	dir := t.TempDir()

	// An unknown image: every instance fails with InvalidAMIID.NotFound, one line each.
	badAMI := provisionAWSVariant(t, dir, "igami", "ami-785db401", "ami-0000000000bad0000")
	stdout, stderr, code := run(t, "--stack", badAMI, "apply", "--yes")
	lines := provisionFailLines(stderr, "InvalidAMIID.NotFound")
	if code != ExitError || len(lines) != 5 || !strings.Contains(stderr, "5 change(s) failed") ||
		!strings.Contains(stderr, "made before the failure and kept") || !strings.Contains(stderr, "sg.app sg-") ||
		!regexp.MustCompile(`volume\.pg\[0\]\.sdf +- +skipped: a dependency failed`).MatchString(stdout+stderr) || !strings.Contains(stderr, "run instactl apply again") {
		t.Fatalf("apply with an unknown image: exit %d, %d InvalidAMIID.NotFound lines; want 5 and 5 lines\n%s%s", code, len(lines), stdout, stderr)
	}
	t.Logf("unknown image:\n%s", stderr)
	// The fix re-uses what was made: only the instances and what needs them (volumes are made
	// in their host's zone, so after it) are added.
	fixed := provisionAWSVariant(t, dir, "igami")
	stdout, stderr, code = run(t, "--stack", fixed, "apply", "--yes")
	if code != 0 || !strings.Contains(stdout, "Apply complete: 11 added, 0 changed, 0 destroyed.") {
		t.Fatalf("apply after fixing the image: exit %d\n%s%s", code, stdout, stderr)
	}
	if seen := provisionSee(t, endpoint, "igami"); len(seen.hosts) != 5 || seen.volumes != 2 || seen.groups != 4 || seen.keys != 1 || len(seen.lb) != 2 {
		t.Errorf("aws CLI after the re-run: %d hosts %v, %d volumes, %d groups, %d keys, lb %v; want 5, 2, 4, 1, 2",
			len(seen.hosts), seen.hosts, seen.volumes, seen.groups, seen.keys, seen.lb)
	}

	// An unknown instance type fails only that role's host.
	badType := provisionAWSVariant(t, dir, "igtype", "memcached: {count: 1}", "memcached: {count: 1, instance_type: c9.huge}")
	stdout, stderr, code = run(t, "--stack", badType, "apply", "--yes")
	if lines := provisionFailLines(stderr, "InvalidInstanceType.NotFound"); code != ExitError || len(lines) != 1 ||
		!strings.HasPrefix(lines[0], "  instance.memcached[0]: ") || !strings.Contains(lines[0], "c9.huge") {
		t.Fatalf("apply with an unknown instance type: exit %d, lines %q\n%s%s", code, lines, stdout, stderr)
	}

}

// TestProvisionAWSCredentials: wrong credentials end plan on one line with AWS's error code,
// exit 1; missing ones too, before any request.
func TestProvisionAWSCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("moto integration test; -short")
	}
	t.Setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0") // moto checks signatures against its IAM
	endpoint := testenv.Moto(t)
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAINSTACTLWRONGKEY")
	path := provisionAWSStack(t, t.TempDir(), "igcreds", provisionAWSRoles)
	_, stderr, code := run(t, "--stack", path, "plan")
	if code != ExitError || strings.Count(strings.TrimSpace(stderr), "\n") != 0 ||
		!regexp.MustCompile(`AuthFailure|InvalidClientTokenId`).MatchString(stderr) || strings.Contains(stderr, "RequestID") {
		t.Fatalf("plan with wrong credentials: exit %d, want 1 and one line with the AWS error code:\n%s", code, stderr)
	}
	t.Logf("wrong credentials: %s", stderr)

	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	t.Setenv("AWS_ENDPOINT_URL", srv.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_PROFILE", "")
	_, stderr, code = run(t, "--stack", path, "plan")
	if code != ExitError || hits.Load() != 0 || !strings.Contains(stderr, "credentials") {
		t.Fatalf("plan without credentials: exit %d, %d requests; want 1, none:\n%s", code, hits.Load(), stderr)
	}
	t.Logf("missing credentials: %s", stderr)

	// An invalid stack file exits 2 before any request.
	bad := provisionAWSVariant(t, t.TempDir(), "igbad", "app: {count: 2}", "app: {count: 0}")
	t.Setenv("AWS_ACCESS_KEY_ID", "testing")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
	for _, args := range [][]string{{"plan"}, {"apply", "--yes"}, {"destroy", "--yes"}, {"inventory"}} {
		_, stderr, code = run(t, append([]string{"--stack", bad}, args...)...)
		if code != ExitUsage || hits.Load() != 0 || !strings.Contains(stderr, "roles.app.count") {
			t.Errorf("%v with an invalid stack: exit %d, %d requests; want 2, none:\n%s", args, code, hits.Load(), stderr)
		}
	}
}
