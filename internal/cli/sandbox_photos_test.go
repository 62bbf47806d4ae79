package cli

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/instactl/instactl/internal/sandboxctl"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
)

// TestSandboxPhotoURLs: on the sandbox the app host's app.env carries the photo base URL (the
// bucket in the sandbox's moto), and a photo stored there answers at that URL plus its key
// without credentials, as the CDN does on AWS.
func TestSandboxPhotoURLs(t *testing.T) {
	requireSandbox(t)
	path := sandboxStackFile(t, "127.0.151.1", 18151, 15151, "  app: {count: 1}")
	st := sandboxUp(t, path)

	f := NewFactory(&IOStreams{}, &path)
	pool, err := f.SSH(false)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	base := "http://127.0.0.1:15151/" + templates.PhotoBucket(st)
	env := sandboxRun(t, pool, st, stack.HostRef{Role: "app", Index: 0}, "cat "+templates.AppEnvFile)
	if !strings.Contains(env, "INSTAGRAM_PHOTO_BASE_URL='"+base+"'") {
		t.Fatalf("app-0 %s lacks the photo base URL %s:\n%s", templates.AppEnvFile, base, env)
	}

	moto := sandboxctl.MotoFor(st)
	if _, err := moto.S3(st.Region).PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(templates.PhotoBucket(st)),
		Key: aws.String("1/photo.jpg"), Body: strings.NewReader("jpeg")}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(base + "/1/photo.jpg")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "jpeg" {
		t.Errorf("GET %s/1/photo.jpg: %s %q, want 200 and the photo", base, resp.Status, body)
	}
}
