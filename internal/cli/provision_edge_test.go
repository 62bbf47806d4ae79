package cli

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/instactl/instactl/internal/testenv"
)

// TestProvisionAWSEdge runs plan, apply and destroy of a stack with a dns section through the
// command tree against moto, and checks the bucket, role, CDN and records with the aws CLI:
// after apply `plan --detailed-exitcode` exits 0, and destroy refuses a bucket with photos,
// counting them, until --force-delete-data.
func TestProvisionAWSEdge(t *testing.T) {
	if testing.Short() {
		t.Skip("moto integration test; -short")
	}
	endpoint := testenv.Moto(t)
	testenv.Require(t, "aws", "awscli")
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	dir := t.TempDir()

	var zone struct{ HostedZone struct{ Id string } }
	provisionAWSCLI(t, endpoint, &zone, "route53", "create-hosted-zone", "--name", "example.org.", "--caller-reference", "edge-cli")
	if zone.HostedZone.Id == "" {
		t.Fatal("no hosted zone")
	}
	path := provisionAWSStack(t, dir, "edcli", "  app: {count: 1}\n  memcached: {count: 1}")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// No dns.cdn: the app's photo URLs use the distribution's own domain, which apply fills in.
	if err := os.WriteFile(path, append(b, "dns:\n  zone: example.org.\n  lb: www\n"...), 0o644); err != nil {
		t.Fatal(err)
	}

	stdout, stderr, code := run(t, "--stack", path, "plan", "--detailed-exitcode")
	if code != ExitChanges {
		t.Fatalf("plan --detailed-exitcode: exit %d, want 2\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{"  + bucket.edcli-photos", "  + role.edcli-app", "  + cdn.edcli-photos", "  + record.www.example.org",
		"CNAME: (known after apply)", "public_access: blocked"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("plan lacks %q:\n%s", want, stdout)
		}
	}
	if stdout, stderr, code = run(t, "--stack", path, "apply", "--yes"); code != 0 {
		t.Fatalf("apply: exit %d\n%s%s", code, stdout, stderr)
	}
	if stdout, stderr, code = run(t, "--stack", path, "plan", "--detailed-exitcode"); code != 0 || strings.TrimSpace(stdout) != "No changes." {
		t.Fatalf("plan --detailed-exitcode after apply: exit %d, want 0\n%s%s", code, stdout, stderr)
	}

	var (
		versioning struct{ Status string }
		profile    struct {
			InstanceProfile struct{ Roles []struct{ RoleName string } }
		}
		dists struct {
			DistributionList struct{ Items []struct{ DomainName string } }
		}
		rrs struct {
			ResourceRecordSets []struct {
				Name, Type      string
				ResourceRecords []struct{ Value string }
			}
		}
	)
	edgeParallel( // each aws CLI start costs seconds of Python
		func() {
			provisionAWSCLI(t, endpoint, &versioning, "s3api", "get-bucket-versioning", "--bucket", "edcli-photos")
		},
		func() {
			provisionAWSCLI(t, endpoint, &profile, "iam", "get-instance-profile", "--instance-profile-name", "edcli-app")
		},
		func() { provisionAWSCLI(t, endpoint, &dists, "cloudfront", "list-distributions") },
		func() {
			provisionAWSCLI(t, endpoint, &rrs, "route53", "list-resource-record-sets", "--hosted-zone-id", zone.HostedZone.Id)
		})
	if versioning.Status != "Enabled" || len(profile.InstanceProfile.Roles) != 1 || profile.InstanceProfile.Roles[0].RoleName != "edcli-app" ||
		len(dists.DistributionList.Items) != 1 {
		t.Errorf("aws CLI sees versioning %q, instance profile %+v, distributions %+v", versioning.Status, profile, dists)
	}
	www := ""
	for _, r := range rrs.ResourceRecordSets {
		if r.Name == "www.example.org." && r.Type == "CNAME" {
			www = r.ResourceRecords[0].Value
		}
	}
	if !strings.Contains(www, "edcli") {
		t.Errorf("www.example.org. CNAME = %q, want the load balancer's name", www)
	}

	// Two photos in the bucket: destroy shows the count and refuses; nothing is deleted.
	photo := filepath.Join(dir, "p.jpg")
	if err := os.WriteFile(photo, []byte("jpeg"), 0o644); err != nil {
		t.Fatal(err)
	}
	var putA, putB struct{ ETag string }
	edgeParallel(
		func() {
			provisionAWSCLI(t, endpoint, &putA, "s3api", "put-object", "--bucket", "edcli-photos", "--key", "a.jpg", "--body", photo)
		},
		func() {
			provisionAWSCLI(t, endpoint, &putB, "s3api", "put-object", "--bucket", "edcli-photos", "--key", "b.jpg", "--body", photo)
		})
	stdout, stderr, code = run(t, "--stack", path, "destroy", "--yes")
	if code != ExitUsage || !strings.Contains(stdout+stderr, "holds 2 objects (2 versions, 0 delete markers)") ||
		!strings.Contains(stdout+stderr, "--force-delete-data") {
		t.Fatalf("destroy of a bucket with photos: exit %d, want 2 with the count and --force-delete-data\n%s%s", code, stdout, stderr)
	}
	if stdout, stderr, code = run(t, "--stack", path, "plan", "--detailed-exitcode"); code != 0 {
		t.Fatalf("the refused destroy changed the stack: plan exits %d\n%s%s", code, stdout, stderr)
	}

	stdout, stderr, code = run(t, "--stack", path, "destroy", "--yes", "--force-delete-data")
	if code != 0 || !strings.Contains(stdout, "- bucket.edcli-photos") {
		t.Fatalf("destroy --force-delete-data: exit %d\n%s%s", code, stdout, stderr)
	}
	var (
		buckets   struct{ Buckets []struct{ Name string } }
		roles     struct{ Roles []struct{ RoleName string } }
		distsLeft int // the aws CLI prints nothing for an empty list: count with a query
	)
	rrs.ResourceRecordSets = nil
	edgeParallel(
		func() { provisionAWSCLI(t, endpoint, &buckets, "s3api", "list-buckets") },
		func() { provisionAWSCLI(t, endpoint, &roles, "iam", "list-roles") },
		func() {
			provisionAWSCLI(t, endpoint, &distsLeft, "cloudfront", "list-distributions", "--query", "length(DistributionList.Items || `[]`)")
		},
		func() {
			provisionAWSCLI(t, endpoint, &rrs, "route53", "list-resource-record-sets", "--hosted-zone-id", zone.HostedZone.Id)
		})
	cnames := 0
	for _, r := range rrs.ResourceRecordSets {
		if r.Type == "CNAME" {
			cnames++
		}
	}
	if len(buckets.Buckets)+len(roles.Roles)+distsLeft+cnames != 0 {
		t.Errorf("after destroy the aws CLI still sees buckets %+v, roles %+v, %d distributions, %d CNAMEs",
			buckets.Buckets, roles.Roles, distsLeft, cnames)
	}
	// The hosts went too (TestProvisionAWS checks them with the aws CLI): everything is to add.
	if stdout, _, code = run(t, "--stack", path, "plan", "--detailed-exitcode"); code != ExitChanges ||
		!strings.Contains(stdout, "Plan: 12 to add, 0 to change, 0 to destroy.") {
		t.Errorf("plan after destroy: exit %d, want 2 and everything to add\n%s", code, stdout)
	}
}

// edgeParallel runs fs at once and waits for them all.
func edgeParallel(fs ...func()) {
	var wg sync.WaitGroup
	for _, f := range fs {
		wg.Go(f)
	}
	wg.Wait()
}
