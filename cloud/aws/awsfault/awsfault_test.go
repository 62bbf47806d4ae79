package awsfault

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/instactl/instactl/internal/testenv"
)

// clients returns an EC2 client through an injector with profile p in front of a fresh moto,
// and one straight to moto (the oracle).
func clients(t *testing.T, p Profile, seed int64) (*ec2.Client, *ec2.Client, *Injector) {
	t.Helper()
	endpoint := moto(t)
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	inj := New(nil, p, seed)
	faulty := cfg.Copy()
	// Set after loading: LoadDefaultConfig refuses a custom client when AWS_CA_BUNDLE is set.
	faulty.HTTPClient = &http.Client{Transport: inj}
	faulty.Retryer = func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) { o.MaxBackoff = 1 })
	}
	return ec2.NewFromConfig(faulty), ec2.NewFromConfig(cfg), inj
}

// moto resets the package's one moto_server for t (each start costs seconds).
func moto(t *testing.T) string {
	t.Helper()
	resp, err := http.Post(sharedMoto+"/moto-api/reset", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return sharedMoto
}

var sharedMoto string

// TestInjector runs the injector's tests against one moto_server, reset before each.
func TestInjector(t *testing.T) {
	sharedMoto = testenv.Moto(t)
	t.Run("ClientTokens", testClientTokens)
	t.Run("SlowAndDead", testSlowAndDead)
	t.Run("SlowFor", testSlowFor)
	t.Run("FaultReplies", testFaultReplies)
	t.Run("ProxyLostReply", testProxyLostReply)
}

func runInput(token, typ string) *ec2.RunInstancesInput {
	return &ec2.RunInstancesInput{ImageId: aws.String("ami-785db401"), InstanceType: ec2types.InstanceType(typ),
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1), ClientToken: aws.String(token),
		Placement: &ec2types.Placement{AvailabilityZone: aws.String("us-east-1a")}}
}

func liveInstances(t *testing.T, c *ec2.Client) int {
	t.Helper()
	out, err := c.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: aws.String("instance-state-name"), Values: []string{"pending", "running"}}}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range out.Reservations {
		n += len(r.Instances)
	}
	return n
}

func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// testClientTokens: moto ignores client tokens; through the injector a repeat with the same
// token and parameters gets the first instance, with other parameters a mismatch.
func testClientTokens(t *testing.T) {
	c, oracle, _ := clients(t, Profiles["none"], 1)
	ctx := context.Background()
	a, err := c.RunInstances(ctx, runInput("tok-1", "t2.micro"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.RunInstances(ctx, runInput("tok-1", "t2.micro"))
	if err != nil {
		t.Fatal(err)
	}
	if id1, id2 := aws.ToString(a.Instances[0].InstanceId), aws.ToString(b.Instances[0].InstanceId); id1 != id2 {
		t.Errorf("same token made %s and %s", id1, id2)
	}
	if _, err := c.RunInstances(ctx, runInput("tok-1", "t2.small")); code(err) != "IdempotentParameterMismatch" {
		t.Errorf("changed parameters: err = %v, want IdempotentParameterMismatch", err)
	}
	if n := liveInstances(t, oracle); n != 1 {
		t.Errorf("moto holds %d instances, want 1", n)
	}
}

// testSlowAndDead: new instances show pending for SlowPolls describes by id; a dead one then
// shows terminated with Server.InsufficientInstanceCapacity, and moto agrees it is gone.
func testSlowAndDead(t *testing.T) {
	p := Profile{Name: "t", SlowPolls: 2, DeadInstance: 1}
	c, oracle, _ := clients(t, p, 7)
	ctx := context.Background()
	out, err := c.RunInstances(ctx, runInput("tok-dead", "t2.micro"))
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	var states []string
	var reason string
	for range 3 {
		d, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		in := d.Reservations[0].Instances[0]
		states = append(states, string(in.State.Name))
		if in.StateReason != nil {
			reason = aws.ToString(in.StateReason.Code)
		}
	}
	if states[0] != "pending" || states[1] != "pending" || states[2] != "terminated" || reason != "Server.InsufficientInstanceCapacity" {
		t.Errorf("states %v, reason %q; want pending, pending, terminated with Server.InsufficientInstanceCapacity", states, reason)
	}
	if n := liveInstances(t, oracle); n != 0 {
		t.Errorf("moto holds %d live instances, want 0", n)
	}
}

// testSlowFor: with SlowFor, a new instance stays pending until that long after its create,
// however many polls that takes, and then runs.
func testSlowFor(t *testing.T) {
	const slowFor = 400 * time.Millisecond
	c, _, _ := clients(t, Profile{Name: "t", SlowPolls: 1, SlowFor: slowFor}, 1)
	ctx := context.Background()
	start := time.Now()
	out, err := c.RunInstances(ctx, runInput("tok-slowfor", "t2.micro"))
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	var states []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		d, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		st := string(d.Reservations[0].Instances[0].State.Name)
		states = append(states, st)
		if st == "running" {
			if since := time.Since(start); since < slowFor {
				t.Errorf("running %s after the create, before SlowFor %s", since, slowFor)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %s after 30s (polls: %v)", st, states)
		}
	}
	if states[0] != "pending" {
		t.Errorf("polls saw %v, want pending first", states)
	}
}

// testFaultReplies: throttling is RequestLimitExceeded (503) and the SDK retries it; capacity is
// InsufficientInstanceCapacity; eventual consistency is NotFound right after create.
func testFaultReplies(t *testing.T) {
	c, _, inj := clients(t, Profile{Name: "t", Throttle: 1}, 1)
	_, err := c.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{})
	if code(err) != "RequestLimitExceeded" || inj.Stats().Injected["throttle"] != 3 {
		t.Errorf("err = %v after %d throttles; want RequestLimitExceeded after 3 attempts", err, inj.Stats().Injected["throttle"])
	}
	c, _, _ = clients(t, Profiles["no-capacity-zone"], 1)
	if _, err := c.RunInstances(context.Background(), runInput("tok-c", "t2.micro")); code(err) != "InsufficientInstanceCapacity" {
		t.Errorf("err = %v, want InsufficientInstanceCapacity", err)
	}
	c, _, _ = clients(t, Profile{Name: "t", NotFoundCalls: 1, HideCalls: 1}, 1)
	ctx := context.Background()
	out, err := c.RunInstances(ctx, runInput("tok-e", "t2.micro"))
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	if _, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}}); code(err) != "InvalidInstanceID.NotFound" {
		t.Errorf("first describe: err = %v, want InvalidInstanceID.NotFound", err)
	}
	if n := liveInstances(t, c); n != 0 {
		t.Errorf("first filtered describe shows %d instances, want the new one hidden", n)
	}
	if n := liveInstances(t, c); n != 1 {
		t.Errorf("second filtered describe shows %d instances, want 1", n)
	}
}

// testProxyLostReply: through the reverse proxy a lost reply resets the connection after the
// call took effect; the SDK retries with the same token and gets the first instance.
func testProxyLostReply(t *testing.T) {
	endpoint := moto(t)
	target, _ := url.Parse(endpoint)
	inj := New(nil, Profile{Name: "t", LoseReply: 1}, 1)
	var lost int
	inj.AfterMutation = func(action string, n int) { lost = n }
	srv := httptest.NewServer(NewProxy(target, inj))
	t.Cleanup(srv.Close)
	t.Setenv("AWS_ENDPOINT_URL", srv.URL)
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := ec2.NewFromConfig(cfg, func(o *ec2.Options) {
		o.Retryer = retry.NewStandard(func(o *retry.StandardOptions) { o.MaxBackoff = 1 })
	})
	_, err = c.RunInstances(context.Background(), runInput("tok-lost", "t2.micro"))
	if err == nil {
		t.Fatal("every reply is lost, yet RunInstances succeeded")
	}
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	ocfg, _ := config.LoadDefaultConfig(context.Background())
	if n := liveInstances(t, ec2.NewFromConfig(ocfg)); n != 1 || lost != 3 || inj.Stats().Creates["tok-lost"] != 1 {
		t.Errorf("moto holds %d instances after %d lost replies (creates %v); want 1 after 3",
			n, lost, inj.Stats().Creates)
	}
}
