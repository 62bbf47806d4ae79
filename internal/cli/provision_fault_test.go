package cli

import (
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudaws "github.com/instactl/instactl/cloud/aws"
	"github.com/instactl/instactl/cloud/aws/awsfault"
	"github.com/instactl/instactl/cloud/cloudtest"
	"github.com/instactl/instactl/internal/testenv"
)

// provisionFaultProxy puts the awsfault injector with the named profile in front of moto and
// points the AWS SDK at it (AWS_ENDPOINT_URL), as bench/provision/faultproxy does for the binary.
func provisionFaultProxy(t *testing.T, moto, profile string, seed int64) *awsfault.Injector {
	t.Helper()
	target, err := url.Parse(moto)
	if err != nil {
		t.Fatal(err)
	}
	inj := awsfault.New(nil, awsfault.Profiles[profile], seed)
	srv := httptest.NewServer(awsfault.NewProxy(target, inj))
	t.Cleanup(srv.Close)
	t.Setenv("AWS_ENDPOINT_URL", srv.URL)
	return inj
}

// TestNewcomerAWSThrottledSlow is issue 18's newcomer: `init`, then plan, apply and destroy of
// the example stack on AWS (moto) behind the throttling and slow-state profile (30 % of calls
// throttled; instances pending, volumes creating, attachments attaching, terminations
// shutting-down and ELB health OutOfService for 3 polls each), with no flag at all: apply and
// destroy are confirmed at the prompt. moto, asked directly through the aws CLI, is the
// oracle. Then `plan -v` shows the retries. The provider's polls and backoff are scaled down
// to milliseconds (the profile counts polls, not seconds); bench/provision/faults.sh runs the
// same with the real binary and its default waits.
func TestNewcomerAWSThrottledSlow(t *testing.T) {
	if testing.Short() {
		t.Skip("moto integration test; -short")
	}
	saved := awsOptions
	awsOptions = cloudaws.Options{PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	t.Cleanup(func() { awsOptions = saved })
	moto := testenv.Moto(t)
	testenv.Require(t, "aws", "awscli")
	inj := provisionFaultProxy(t, moto, "throttle-slow", 1)
	home := t.TempDir()
	t.Setenv("HOME", home)
	key := filepath.Join(home, ".ssh", "id_ed25519")
	if err := os.MkdirAll(filepath.Dir(key), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key+".pub", []byte(cloudtest.PublicKey(t)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := newcomerAWSStack(t, t.TempDir(), true)
	hosts := []string{"app[0]", "app[1]", "memcached[0]", "pg[0]", "pg[1]", "pg[2]", "pg[3]", "redis[0]", "redis[1]"}

	stdout, stderr, code := run(t, "--stack", path, "plan")
	if code != 0 || !strings.Contains(stdout, "Plan: ") {
		t.Fatalf("plan: exit %d\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code = provisionRunTTY(t, "yes\n", "--stack", path, "apply")
	if code != 0 {
		t.Fatalf("apply: exit %d\n%s%s", code, stdout, stderr)
	}
	if strings.Contains(stderr, "retrying") {
		t.Errorf("apply without -v reports retries:\n%s", stderr)
	}
	seen := provisionSee(t, moto, "instagram")
	if strings.Join(seen.hosts, " ") != strings.Join(hosts, " ") || seen.volumes != 6 || len(seen.lb) != 2 {
		t.Errorf("moto after apply: hosts %v, %d volumes, %d behind the ELB; want %v, 6, 2", seen.hosts, seen.volumes, len(seen.lb), hosts)
	}
	if stdout, stderr, code := run(t, "--stack", path, "plan", "--detailed-exitcode"); code != 0 {
		t.Errorf("plan --detailed-exitcode after apply: exit %d, want 0\n%s%s", code, stdout, stderr)
	}
	st := inj.Stats()
	if st.Injected["throttle"] == 0 || st.Injected["slow"] == 0 {
		t.Errorf("the profile injected %v, want throttles and slow states", st.Injected)
	}
	for tok, n := range st.Creates {
		if n > 1 {
			t.Errorf("client token %s made %d resources", tok, n)
		}
	}

	// -v: every retried call, with the operation and why. Describes of the plan are throttled
	// for this seed (the decision is seeded per action and call number).
	stdout, stderr, code = run(t, "--stack", path, "plan", "-v")
	if code != 0 {
		t.Errorf("plan -v: exit %d\n%s%s", code, stdout, stderr)
	}
	before := st.Injected["throttle"]
	if after := inj.Stats().Injected["throttle"]; after > before && !strings.Contains(stderr, "RequestLimitExceeded, retrying") {
		t.Errorf("plan -v met %d throttles and reports none:\n%s", after-before, stderr)
	} else if after == before {
		t.Errorf("plan -v met no throttle with this seed; pick a seed whose plan is throttled")
	}

	stdout, stderr, code = provisionRunTTY(t, "instagram\n", "--stack", path, "destroy")
	if code != 0 {
		t.Fatalf("destroy: exit %d\n%s%s", code, stdout, stderr)
	}
	seen = provisionSee(t, moto, "instagram")
	if len(seen.hosts)+seen.volumes+seen.groups+seen.keys+len(seen.lb) != 0 || seen.lb != nil {
		t.Errorf("moto after destroy still holds: %+v", seen)
	}
}
