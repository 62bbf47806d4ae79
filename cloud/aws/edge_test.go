package aws

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/cloudfront"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/internal/testenv"
)

// loseFirstReply passes every request on to moto, but for the first request of each action in
// lose it throws moto's answer away and replies 500, as a reply lost after the call took
// effect: the SDK retries and meets the resource the first attempt made.
type loseFirstReply struct {
	lose map[string]bool // action -> still to lose
	mu   sync.Mutex
	lost []string
}

// action names the call: the Action of a query-protocol (IAM) form, else method and path
// without the API version (S3, CloudFront).
func action(r *http.Request, body []byte) string {
	if v, err := url.ParseQuery(string(body)); err == nil && v.Get("Action") != "" {
		return v.Get("Action")
	}
	path := r.URL.Path
	if i := strings.Index(path, "/2020-05-31/"); i >= 0 {
		path = path[i+len("/2020-05-31"):]
	}
	if r.URL.Query().Has("WithTags") {
		path += "?WithTags"
	}
	return r.Method + " " + path
}

func (l *loseFirstReply) RoundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil {
		return resp, err
	}
	a := action(r, body)
	l.mu.Lock()
	lose := l.lose[a]
	if lose {
		l.lose[a] = false
		l.lost = append(l.lost, a)
	}
	l.mu.Unlock()
	if !lose || resp.StatusCode >= 300 {
		return resp, nil
	}
	resp.Body.Close()
	return &http.Response{StatusCode: http.StatusInternalServerError, Status: "500 Internal Server Error", Proto: "HTTP/1.1",
		ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{"Content-Type": {"text/xml"}}, Request: r,
		Body: io.NopCloser(strings.NewReader(`<ErrorResponse><Error><Code>InternalFailure</Code><Message>lost reply</Message></Error></ErrorResponse>`))}, nil
}

// TestEdgeLostRepliesMoto: every create of the edge whose reply is lost (bucket, role,
// instance profile, origin access control, distribution) is adopted on the SDK's retry, so one
// apply makes exactly one of each, and a second Ensure changes nothing.
func TestEdgeLostRepliesMoto(t *testing.T) {
	endpoint := testenv.Moto(t)
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	t.Setenv("AWS_CA_BUNDLE", "") // with a custom HTTP client the SDK cannot add a CA bundle
	faults := &loseFirstReply{lose: map[string]bool{"PUT /lost-photos": true, "CreateRole": true, "CreateInstanceProfile": true,
		"AddRoleToInstanceProfile": true, "POST /origin-access-control": true, "POST /distribution?WithTags": true}}
	cfg, err := config.LoadDefaultConfig(context.Background(), config.WithHTTPClient(&http.Client{Transport: faults}))
	if err != nil {
		t.Fatal(err)
	}
	p := New(cfg, Options{PollMin: 20 * time.Millisecond, PollMax: 100 * time.Millisecond})
	ctx := context.Background()
	tags := map[string]string{cloud.TagStack: "lost"}
	ensure := func() {
		t.Helper()
		if err := p.EnsureBucket(ctx, "lost", cloud.BucketSpec{Name: "lost-photos", Tags: tags}); err != nil {
			t.Fatalf("bucket: %v", err)
		}
		if err := p.EnsureRole(ctx, "lost", cloud.RoleSpec{Name: "lost-app", PolicyName: "photos",
			Policy: cloud.PhotoAccessPolicy("lost-photos"), Tags: tags}); err != nil {
			t.Fatalf("role: %v", err)
		}
		if _, err := p.EnsureDistribution(ctx, "lost", cloud.DistributionSpec{Name: "lost-photos", Bucket: "lost-photos", Tags: tags}); err != nil {
			t.Fatalf("distribution: %v", err)
		}
	}
	ensure()
	if len(faults.lost) != len(faults.lose) {
		t.Errorf("lost replies of %v, want all of %v", faults.lost, faults.lose)
	}
	e, err := p.DescribeEdge(ctx, "lost", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Buckets) != 1 || len(e.Roles) != 1 || len(e.Distributions) != 1 {
		t.Fatalf("after lost replies: %d buckets, %d roles, %d distributions, want one each", len(e.Buckets), len(e.Roles), len(e.Distributions))
	}
	b, r, d := e.Buckets[0], e.Roles[0], e.Distributions[0]
	if b.Tags[cloud.TagStack] != "lost" || b.Versioning != "Enabled" || !b.PublicAccessBlocked || b.Encryption != "AES256" ||
		b.Policy != cloud.CDNBucketPolicy("lost-photos", d.ARN) {
		t.Errorf("bucket %+v", b)
	}
	if r.Profile != "lost-app" || len(r.ProfileRoles) != 1 || r.Policies["photos"] != cloud.PhotoAccessPolicy("lost-photos") {
		t.Errorf("role %+v", r)
	}
	if d.AccessControl == "" || !strings.HasPrefix(d.Origin, "lost-photos.s3.") {
		t.Errorf("distribution %+v", d)
	}
	oacs, err := p.edge.cdn.ListOriginAccessControls(ctx, &cloudfront.ListOriginAccessControlsInput{})
	if err != nil || len(oacs.OriginAccessControlList.Items) != 1 {
		t.Errorf("origin access controls: %v, %+v, want one", err, oacs.OriginAccessControlList)
	}
	ensure()
	if again, err := p.DescribeEdge(ctx, "lost", "", nil); err != nil || len(again.Distributions) != 1 || again.Distributions[0].ID != d.ID {
		t.Errorf("a second ensure: %v, %+v", err, again)
	}
}
