package sandboxctl

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/instactl/instactl/internal/testenv"
)

// TestAllowPhotoReads: after EnsureBucket and AllowPhotoReads (what `sandbox up` does) a photo
// URL, the bucket in moto plus the key, answers without credentials, and the policy allows
// nothing but reading objects.
func TestAllowPhotoReads(t *testing.T) {
	endpoint := testenv.Moto(t)
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	m := Moto{Dir: t.TempDir(), Port: port}
	ctx := context.Background()
	const bucket = "sb-photos"
	if err := m.EnsureBucket(ctx, "us-east-1", bucket); err != nil {
		t.Fatal(err)
	}
	if _, err := m.S3("us-east-1").PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("1/a.jpg"),
		Body: strings.NewReader("jpeg bytes")}); err != nil {
		t.Fatal(err)
	}
	photoURL := m.Endpoint() + "/" + bucket + "/1/a.jpg" // templates.PhotoBaseURL + key
	get := func() (int, string) {
		resp, err := http.Get(photoURL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(); code != http.StatusForbidden {
		t.Fatalf("GET %s before AllowPhotoReads: %d, want 403 (the bucket is private)", photoURL, code)
	}
	for range 2 { // idempotent, as sandbox up runs it every time
		if err := m.AllowPhotoReads(ctx, "us-east-1", bucket); err != nil {
			t.Fatal(err)
		}
	}
	if code, body := get(); code != http.StatusOK || body != "jpeg bytes" {
		t.Fatalf("GET %s: %d %q, want 200 and the photo", photoURL, code, body)
	}
	// (moto accepts anonymous writes with or without a policy, so what the policy forbids is
	// checked by reading it back, not by trying.)
	pol, err := m.S3("us-east-1").GetBucketPolicy(ctx, &s3.GetBucketPolicyInput{Bucket: aws.String(bucket)})
	if err != nil || !strings.Contains(aws.ToString(pol.Policy), `"Action":"s3:GetObject"`) ||
		!strings.Contains(aws.ToString(pol.Policy), `"Resource":"arn:aws:s3:::sb-photos/*"`) {
		t.Errorf("bucket policy: %v %s", err, aws.ToString(pol.Policy))
	}
}
