package templates

import (
	"strings"
	"testing"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/stack"
)

// TestPhotoBaseURL: the app servers get their photo URL prefix from AppEnv on every provider:
// the bucket in moto on the sandbox, the CDN's own name with dns.cdn, and otherwise the
// placeholder apply replaces with the distribution's domain.
func TestPhotoBaseURL(t *testing.T) {
	sandbox, err := stack.Parse("s.yaml", stack.Example())
	if err != nil {
		t.Fatal(err)
	}
	awsData := strings.Replace(string(stack.Example()), "provider: sandbox", "provider: aws", 1)
	aws, err := stack.Parse("aws.yaml", []byte(awsData))
	if err != nil {
		t.Fatal(err)
	}
	withCDN, err := stack.Parse("cdn.yaml", []byte(awsData+"\ndns:\n  zone: example.com.\n  cdn: photos\n  cdn_certificate: arn:aws:acm:us-east-1:1:certificate/x\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		st   *stack.Stack
		want string
	}{
		{sandbox, "http://127.0.0.1:15000/instagram-photos"},
		{aws, "https://" + cloud.CDNDomainPlaceholder},
		{withCDN, "https://photos.example.com"},
	} {
		env, err := AppEnv(c.st)
		if err != nil {
			t.Fatal(err)
		}
		if got := env["INSTAGRAM_PHOTO_BASE_URL"]; got != c.want {
			t.Errorf("%s: INSTAGRAM_PHOTO_BASE_URL = %q, want %q", c.st.Path, got, c.want)
		}
		ud, err := ForHost(c.st, stack.HostRef{Role: "app", Index: 0}, env)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(ud, "INSTAGRAM_PHOTO_BASE_URL='"+c.want+"'") {
			t.Errorf("%s: app-0 user data lacks the photo base URL %s", c.st.Path, c.want)
		}
	}
}
