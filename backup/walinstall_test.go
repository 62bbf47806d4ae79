package backup

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
)

// TestMotoWALBucketOwnership: wal install creates and tags the stack's WAL bucket, finds it
// again, takes an untagged one (a crashed install's) and refuses one tagged to another stack.
func TestMotoWALBucketOwnership(t *testing.T) {
	u, err := url.Parse(startMoto(t))
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	ctx := context.Background()
	opts := func(name string) *WALInstallOptions {
		return &WALInstallOptions{Env: Env{Stack: &stack.Stack{Name: name, Provider: "sandbox", Region: "us-east-1", Sandbox: stack.Sandbox{MotoPort: port}}}}
	}
	o := opts("walb")
	cl, err := templates.WALArchiveFor(o.Stack, "").Config().S3Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	owner := func(bucket string) string {
		tags, err := cl.GetBucketTagging(ctx, &s3.GetBucketTaggingInput{Bucket: aws.String(bucket)})
		if err != nil {
			t.Fatalf("tags of %s: %v", bucket, err)
		}
		for _, tg := range tags.TagSet {
			if aws.ToString(tg.Key) == cloud.TagStack {
				return aws.ToString(tg.Value)
			}
		}
		return ""
	}

	if created, err := o.ensureWALBucket(ctx); err != nil || !created {
		t.Fatalf("first install: created %v, %v; want the bucket created", created, err)
	}
	if got := owner("walb-wal"); got != "walb" {
		t.Fatalf("walb-wal tagged %s=%q, want walb", cloud.TagStack, got)
	}
	if created, err := o.ensureWALBucket(ctx); err != nil || created {
		t.Fatalf("second install: created %v, %v; want the bucket found", created, err)
	}

	// An untagged bucket of the name is taken and tagged.
	if _, err := cl.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("crashed-wal")}); err != nil {
		t.Fatal(err)
	}
	if _, err := opts("crashed").ensureWALBucket(ctx); err != nil {
		t.Fatalf("untagged bucket: %v", err)
	}
	if got := owner("crashed-wal"); got != "crashed" {
		t.Fatalf("crashed-wal tagged %s=%q, want crashed", cloud.TagStack, got)
	}

	// One tagged to another stack is refused, naming the owner and the fix, and left alone.
	if _, err := cl.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("taken-wal")}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutBucketTagging(ctx, &s3.PutBucketTaggingInput{Bucket: aws.String("taken-wal"),
		Tagging: &s3types.Tagging{TagSet: []s3types.Tag{{Key: aws.String(cloud.TagStack), Value: aws.String("someone")}}}}); err != nil {
		t.Fatal(err)
	}
	_, err = opts("taken").ensureWALBucket(ctx)
	if err == nil || !strings.Contains(err.Error(), `belongs to stack "someone"`) || !strings.Contains(err.Error(), "rename stack taken") {
		t.Fatalf("bucket of another stack: %v, want a refusal naming the owner", err)
	}
	if got := owner("taken-wal"); got != "someone" {
		t.Fatalf("taken-wal retagged to %q", got)
	}
}
