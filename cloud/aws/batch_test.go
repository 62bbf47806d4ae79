package aws

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/internal/testenv"
)

// TestDescribeBatching: concurrent describes by id go out as a few calls, each caller gets its
// own volumes, and an unknown id fails only the caller that asked for it, with AWS's code.
func TestDescribeBatching(t *testing.T) {
	target, err := url.Parse(testenv.Moto(t))
	if err != nil {
		t.Fatal(err)
	}
	var describes atomic.Int32
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if form, _ := url.ParseQuery(string(body)); form.Get("Action") == "DescribeVolumes" {
			describes.Add(1)
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("AWS_ENDPOINT_URL", srv.URL)
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p := New(cfg, Options{})
	ctx := context.Background()
	var ids []string
	for range 3 {
		v, err := p.CreateVolume(ctx, cloud.VolumeSpec{Zone: "us-east-1a", SizeGiB: 1, Tags: map[string]string{cloud.TagStack: "batch"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.ID)
	}
	describes.Store(0)
	const callers = 20
	unknown := "vol-0123456789abcdef0"
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range callers + 1 {
		wg.Go(func() {
			<-start
			id := unknown
			if i < callers {
				id = ids[i%len(ids)]
			}
			out, err := p.desc.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
			switch {
			case id == unknown && apiCode(err) != "InvalidVolume.NotFound":
				t.Errorf("describe %s: %v, want InvalidVolume.NotFound", id, err)
			case id != unknown && (err != nil || len(out.Volumes) != 1 || aws.ToString(out.Volumes[0].VolumeId) != id):
				t.Errorf("describe %s: %v, %+v", id, err, out)
			}
		})
	}
	close(start)
	wg.Wait()
	if n := describes.Load(); n >= callers {
		t.Errorf("%d callers sent %d DescribeVolumes; want them coalesced", callers+1, n)
	} else {
		t.Logf("%d concurrent describes by id: %d DescribeVolumes calls", callers+1, n)
	}
}
