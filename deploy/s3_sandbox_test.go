package deploy

import (
	"bytes"
	"context"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/instactl/instactl/internal/loadgen"
	"github.com/instactl/instactl/internal/testenv"
)

// The S3 staging test runs its own sandbox at 127.0.152.x (load balancer on 18152) and its own
// moto_server on 15152 holding the stack's bucket, as `sandbox up` does.
const (
	s3Net      = "127.0.152"
	s3LBPort   = 18152
	s3MotoPort = 15152
	s3Hosts    = 20
	s3Bucket   = testStack + "-photos"
)

// countingStore counts the calls S3 staging makes, over the real S3Store.
type countingStore struct {
	ObjectStore
	heads, puts, presigns atomic.Int64
}

func (c *countingStore) Head(ctx context.Context, bucket, key string) (ObjectInfo, bool, error) {
	c.heads.Add(1)
	return c.ObjectStore.Head(ctx, bucket, key)
}

func (c *countingStore) Put(ctx context.Context, bucket, key string, body io.Reader, size int64, sha string) error {
	c.puts.Add(1)
	return c.ObjectStore.Put(ctx, bucket, key, body, size, sha)
}

func (c *countingStore) PresignGet(ctx context.Context, bucket, key string, ttl time.Duration) (string, error) {
	c.presigns.Add(1)
	return c.ObjectStore.PresignGet(ctx, bucket, key, ttl)
}

// startMoto runs moto_server on s3MotoPort with the stack's bucket and returns an S3 client.
func startMoto(t *testing.T) *s3.Client {
	t.Helper()
	bin := testenv.Require(t, "moto_server", "python3-moto (or: pip install 'moto[server]')")
	p := testenv.Start(t, syscall.SIGTERM, bin, "-H", "127.0.0.1", "-p", strconv.Itoa(s3MotoPort))
	if err := testenv.WaitTCP("127.0.0.1:"+strconv.Itoa(s3MotoPort), 30*time.Second); err != nil {
		t.Fatalf("moto_server: %v\n%s", err, p.Log.String())
	}
	c := s3.NewFromConfig(aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("sandbox", "sandbox", "")},
		func(o *s3.Options) {
			o.BaseEndpoint = aws.String("http://127.0.0.1:" + strconv.Itoa(s3MotoPort))
			o.UsePathStyle = true
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		})
	if _, err := c.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(s3Bucket)}); err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	return c
}

// TestSandboxS3Staging deploys to 20 sandbox hosts through moto's S3 under the load generator:
// one host's fetch is broken and falls back to SSH, the bytes sent from here are one artifact
// plus kilobytes per host, and an unchanged redeploy uploads nothing anywhere.
func TestSandboxS3Staging(t *testing.T) {
	requireSandbox(t)
	client := startMoto(t)
	e := newEnvAt(t, s3Hosts, s3Net, s3LBPort)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // a bound, not a timing
	defer cancel()
	v1, v2 := e.build("v1", true), e.build("v2", true)
	store := &countingStore{ObjectStore: S3Store{Client: client}}
	cfg := e.config()
	cfg.Bucket, cfg.Batches = s3Bucket, []string{"1", "50%", "100%"}
	const broken = "app-7"

	deploy := func(t *testing.T, a Artifact, hook func(Host, string) string) *Report {
		t.Helper()
		p, err := NewPlan(KindDeploy, cfg, e.hosts, a, "", NewRunID(time.Now()))
		if err != nil {
			t.Fatal(err)
		}
		d := &Deployer{Dialer: e.dialer, LB: e.p, Store: store, fetchURL: hook}
		rep, err := d.Deploy(ctx, p)
		if err != nil || rep.Result != ResultOK {
			t.Fatalf("deploy %s: %v (%s)", a.Version, err, outcomes(rep))
		}
		return rep
	}
	// perHost bounds what a deploy sends per host besides artifacts: command lines (the
	// longest, the fetch script, is about 1.5 KB), the presigned URL and the host's audit line.
	const perHost = 16 << 10

	t.Run("dry run says which path each host takes", func(t *testing.T) {
		p, err := NewPlan(KindDeploy, cfg, e.hosts, v1, "", "R1")
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		p.Render(&b)
		for _, want := range []string{"staging: S3, s3://" + s3Bucket + "/instactl/releases/" + v1.SHA256,
			"fetch from S3 with a presigned URL (valid 10m0s): 20 hosts: app-0", "over SSH: a host whose fetch fails", "curl -fsS"} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("plan lacks %q:\n%s", want, b.String())
			}
		}
	})

	t.Run("first deploy through S3", func(t *testing.T) {
		rep := deploy(t, v1, nil)
		if rep.S3 == nil || !rep.S3.Uploaded || rep.S3.Error != "" || store.puts.Load() != 1 {
			t.Fatalf("s3 staging = %+v, %d puts; want one upload", rep.S3, store.puts.Load())
		}
		for _, h := range rep.Hosts {
			if !h.Uploaded || h.Via != StagingS3 {
				t.Errorf("%s: uploaded %v via %q; want a fetch from S3", h.Host, h.Uploaded, h.Via)
			}
		}
		if rep.BytesSent < v1.Size || rep.BytesSent > v1.Size+s3Hosts*perHost {
			t.Errorf("sent %d bytes from here; want one artifact (%d) plus at most %d per host", rep.BytesSent, v1.Size, perHost)
		}
		t.Logf("v1 (%d bytes) to %d hosts: sent %d bytes from here", v1.Size, s3Hosts, rep.BytesSent)
	})

	t.Run("rolling deploy under load, one host cannot reach S3", func(t *testing.T) {
		hook := func(h Host, u string) string {
			if h.Name != broken {
				return u
			}
			pu, _ := url.Parse(u)
			pu.Host = "127.0.0.1:1" // nothing listens: the fetch is refused
			return pu.String()
		}
		lctx, stopLoad := context.WithCancel(ctx)
		done := make(chan loadgen.Result, 1)
		go func() {
			res, err := loadgen.Run(lctx, loadgen.Config{BaseURL: "http://" + e.lbAddr, Rate: 100, Duration: 3 * time.Minute,
				Mix: loadgen.Mix{SignUp: 1, Feed: 9}, Timeout: 5 * time.Second, MaxInFlight: 32, WaitForSlot: true})
			if err != nil {
				t.Errorf("loadgen: %v", err)
			}
			done <- res
		}()
		time.Sleep(500 * time.Millisecond)
		rep := deploy(t, v2, hook)
		time.Sleep(500 * time.Millisecond)
		stopLoad()
		res := <-done
		if res.Errors > 0 || res.Requests-res.Dropped == 0 {
			t.Errorf("load through the LB: %d requests, %d errors (%v), %d dropped; want zero errors", res.Requests, res.Errors, res.FirstErrors, res.Dropped)
		} else {
			t.Logf("load through the LB: %d requests, 0 errors", res.Requests)
		}
		for _, h := range rep.Hosts {
			want := StagingS3
			if h.Host == broken {
				want = StagingSSH
				if !strings.Contains(h.Note, "fetch from S3 failed") || !strings.Contains(h.Note, "staged over SSH") {
					t.Errorf("%s: note %q; want it to say the S3 fetch failed and SSH took over", h.Host, h.Note)
				}
			}
			if !h.Uploaded || h.Via != want || h.State != OutcomeActivated {
				t.Errorf("%s: %s, uploaded %v via %q; want activated via %s", h.Host, h.State, h.Uploaded, h.Via, want)
			}
		}
		// One artifact to S3, one over SSH to the host that fell back, kilobytes per host.
		if lo, hi := 2*v2.Size, 2*v2.Size+s3Hosts*perHost; rep.BytesSent < lo || rep.BytesSent > hi {
			t.Errorf("sent %d bytes from here; want %d-%d", rep.BytesSent, lo, hi)
		}
		t.Logf("v2 (%d bytes) to %d hosts, one over SSH: sent %d bytes from here", v2.Size, s3Hosts, rep.BytesSent)
		if got := strings.Join(e.versions(), ","); strings.Count(got, "v2") != s3Hosts {
			t.Errorf("versions after v2 = %s", got)
		}
		// The host that fell back holds the same sealed release as the others.
		sum, err := e.p.HostPath(ctx, e.insts[7].ID, "/opt/instagram/releases/"+v2.ID+"/.sha256")
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(sum); strings.TrimSpace(string(b)) != v2.SHA256 {
			t.Errorf("%s seal = %q, want %s", broken, b, v2.SHA256)
		}
	})

	t.Run("unchanged redeploy uploads nothing", func(t *testing.T) {
		puts := store.puts.Load()
		rep := deploy(t, v2, nil)
		if store.puts.Load() != puts {
			t.Errorf("redeploy put the artifact in S3 again")
		}
		for _, h := range rep.Hosts {
			if h.Uploaded || h.State != OutcomeActivated {
				t.Errorf("%s: %s, uploaded %v; want activated, nothing uploaded", h.Host, h.State, h.Uploaded)
			}
		}
		if rep.BytesSent > s3Hosts*perHost {
			t.Errorf("redeploy sent %d bytes; want at most %d per host", rep.BytesSent, perHost)
		}
		t.Logf("unchanged redeploy: sent %d bytes from here", rep.BytesSent)
	})

	t.Run("a bucket holding the artifact is not uploaded to again", func(t *testing.T) {
		// A new release that S3 already holds (another stack, or an interrupted run) is
		// fetched by the hosts without a second upload.
		v3 := e.build("v3", true)
		f, _ := os.Open(v3.Path)
		defer f.Close()
		if err := (S3Store{Client: client}).Put(ctx, s3Bucket, StageKey(DefaultStagePrefix, v3.SHA256), f, v3.Size, v3.SHA256); err != nil {
			t.Fatal(err)
		}
		puts := store.puts.Load()
		rep := deploy(t, v3, nil)
		if store.puts.Load() != puts || rep.S3.Uploaded || rep.BytesSent > s3Hosts*perHost {
			t.Errorf("v3 already in S3: %d more puts, uploaded %v, %d bytes sent; want none", store.puts.Load()-puts, rep.S3.Uploaded, rep.BytesSent)
		}
		for _, h := range rep.Hosts {
			if h.Via != StagingS3 {
				t.Errorf("%s: via %q, want s3", h.Host, h.Via)
			}
		}
	})
}
