package provision_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go/middleware"

	awscloud "github.com/instactl/instactl/cloud/aws"
	"github.com/instactl/instactl/internal/testenv"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
)

// requestCounter counts API requests (every attempt, retries included) by service:operation.
type requestCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *requestCounter) middleware(st *middleware.Stack) error {
	return st.Finalize.Add(middleware.FinalizeMiddlewareFunc("instactlCountRequests",
		func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
			op := awsmiddleware.GetServiceID(ctx) + ":" + awsmiddleware.GetOperationName(ctx)
			c.mu.Lock()
			c.n[op]++
			c.mu.Unlock()
			return next.HandleFinalize(ctx, in)
		}), middleware.After)
}

// take returns the total and the per-operation counts since the last take, and resets them.
func (c *requestCounter) take() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	var parts []string
	for op, n := range c.n {
		total += n
		parts = append(parts, fmt.Sprintf("%s=%d", op, n))
	}
	slices.Sort(parts)
	c.n = map[string]int{}
	return total, strings.Join(parts, " ")
}

// benchStack is the stack of the Terraform peer benchmark (shared/peers/terraform/main.tf):
// apps c1.xlarge app servers behind a classic ELB (80 -> 8000, /healthz), Postgres master and
// replica (m2.4xlarge, four 100 GiB standard volumes each), Redis master and replica (one volume
// each), one memcached (m1.xlarge), a key pair.
func benchStack(name, key string, apps int) *stack.Stack {
	st := smallStack(name, key, apps)
	st.Roles[1].Volumes = stack.VolumeSet{Count: 4, SizeGiB: 100, Type: "standard"}
	st.Roles[2].Volumes = stack.VolumeSet{Count: 1, SizeGiB: 100, Type: "standard"}
	return st
}

// BenchmarkApplyMoto times the peer benchmark's phases against a fresh moto_server per
// iteration, with moto's AMI, key pair and instance type validation on, as run.sh does:
// create (25 app servers, 30 hosts), a no-op plan, scale 25 -> 30, destroy. It reports wall
// seconds and API requests per phase. Run it with:
//
//	go test -run '^$' -bench ApplyMoto -benchtime 1x -count 3 ./provision/
//
// (bench/provision/run.sh does that and prints the per-operation request counts.)
func BenchmarkApplyMoto(b *testing.B) {
	for _, k := range []string{"MOTO_ENABLE_AMI_VALIDATION", "MOTO_ENABLE_KEYPAIR_VALIDATION", "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION"} {
		b.Setenv(k, "true")
	}
	// testenv.Moto sets these only for tests; never let the SDK look for an instance role.
	for k, v := range map[string]string{"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
		"AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"} {
		b.Setenv(k, v)
	}
	key := keyFile(b)
	n0, n1 := 25, 30
	phases := []string{"create", "plan", "scale", "destroy"}
	wall := map[string]time.Duration{}
	reqs := map[string]int{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		endpoint := testenv.Moto(b)
		b.Setenv("AWS_ENDPOINT_URL", endpoint)
		cfg, err := config.LoadDefaultConfig(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		counter := &requestCounter{n: map[string]int{}}
		cfg.APIOptions = append(cfg.APIOptions, counter.middleware)
		p := awscloud.New(cfg, awscloud.Options{})
		name := fmt.Sprintf("ig%d", i)
		ctx := context.Background()
		b.StartTimer()

		run := func(phase string, f func() error) {
			start := time.Now()
			if err := f(); err != nil {
				b.Fatalf("%s: %v", phase, err)
			}
			wall[phase] += time.Since(start)
			total, detail := counter.take()
			reqs[phase] += total
			b.Logf("%-7s %6.2fs %4d requests: %s", phase, time.Since(start).Seconds(), total, detail)
		}
		applyStack := func(st *stack.Stack, want func(provision.Summary) bool) func() error {
			return func() error {
				pl := plan(b, p, desired(b, st))
				if !want(pl.Summary()) {
					return fmt.Errorf("unexpected plan: %s", pl.Summary())
				}
				_, err := provision.Apply(ctx, p, pl)
				return err
			}
		}
		run("create", applyStack(benchStack(name, key, n0), func(s provision.Summary) bool { return s.Add == 1+5+30+10+10+1+n0+3 }))
		run("plan", func() error {
			if pl := plan(b, p, desired(b, benchStack(name, key, n0))); pl.HasChanges() {
				return fmt.Errorf("no-op plan has changes: %s", pl.Summary())
			}
			return nil
		})
		run("scale", applyStack(benchStack(name, key, n1), func(s provision.Summary) bool {
			return s.Add == 2*(n1-n0) && s.Change+s.Destroy == 0
		}))
		run("destroy", func() error {
			pl, err := provision.Destroy(ctx, p, name)
			if err != nil {
				return err
			}
			if s := pl.Summary(); s.Destroy != n1+1+(n1+5)+10+5+1+3 { // +3: bucket, role, CDN
				return fmt.Errorf("unexpected destroy plan: %s", s)
			}
			_, err = provision.Apply(ctx, p, pl)
			return err
		})
		b.StopTimer()
		os.Unsetenv("AWS_ENDPOINT_URL")
		b.StartTimer()
	}
	for _, ph := range phases {
		b.ReportMetric(wall[ph].Seconds()/float64(b.N), ph+"-s")
		b.ReportMetric(float64(reqs[ph])/float64(b.N), ph+"-req")
	}
}
