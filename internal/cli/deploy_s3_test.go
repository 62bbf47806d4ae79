package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/instactl/instactl/deploy"
)

// TestDeployRenderS3Staging: the summary says how the hosts got the artifact, what left this
// machine, and names the host that fell back from S3 to SSH with why.
func TestDeployRenderS3Staging(t *testing.T) {
	rep := &deploy.Report{RunID: "R1", Kind: deploy.KindDeploy, Role: "app", Release: "abc", Result: deploy.ResultOK, BytesSent: 26 << 20,
		S3: &deploy.S3Staging{Bucket: "b", Key: "instactl/releases/abc", Uploaded: true, Bytes: 25 << 20},
		Hosts: []deploy.HostReport{
			{Host: "app-0", Batch: 1, State: deploy.OutcomeActivated, Uploaded: true, Via: deploy.StagingS3, Bytes: 25 << 20},
			{Host: "app-1", Batch: 2, State: deploy.OutcomeActivated, Uploaded: true, Via: deploy.StagingSSH, Bytes: 25 << 20,
				Note: "fetch from S3 failed (exit 4: curl could not fetch the artifact from S3 (exit 7)): staged over SSH instead"},
			{Host: "app-2", Batch: 2, State: deploy.OutcomeActivated},
		}}
	var b bytes.Buffer
	if err := deployRenderReport(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"uploaded once to s3://b/instactl/releases/abc (25.0 MiB); 1 hosts fetched it from S3, 1 over SSH, 1 already had it",
		"sent from here 26.0 MiB", "  app-1: fetch from S3 failed (exit 4: curl could not fetch the artifact from S3 (exit 7)): staged over SSH instead\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

func TestDeployStagingFlag(t *testing.T) {
	var got *DeployOptions
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}, new(string))
	cmd := NewCmdDeploy(f, func() Output { return OutputText }, func(o *DeployOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"--staging", "ssh"})
	if err := cmd.Execute(); err != nil || got == nil || got.Staging != deploy.StagingSSH {
		t.Fatalf("--staging ssh: %v, %+v", err, got)
	}
	_, stderr, code := run(t, "deploy", "--staging", "ftp")
	if code != ExitUsage || !strings.Contains(stderr, "--staging \"ftp\": use s3 or ssh") {
		t.Errorf("--staging ftp: exit %d %q; want 2 naming the choices", code, stderr)
	}
}
