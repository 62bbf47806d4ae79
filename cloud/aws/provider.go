package aws

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancing"
	"github.com/aws/smithy-go"

	"github.com/instactl/instactl/cloud"
)

// Options tune the provider; the zero value is fine.
type Options struct {
	// WaitTimeout bounds each wait for a state (instance running, volume in-use...). Default 10m.
	WaitTimeout time.Duration
	// PollMin and PollMax bound the delay between polls of a waiter. Defaults 1s and 20s: a
	// wait's first poll is due at once, then PollMin, doubling every three polls, and
	// one kind of resource (instances, volumes) is polled at most once per PollMin however many
	// waits there are (poll.go). Tests scale them down to milliseconds.
	PollMin, PollMax time.Duration
	// MaxAttempts per API call (throttling, 5xx, lost replies). Default 10: under throttling,
	// backoff capped at MaxBackoff keeps one call within about two minutes.
	MaxAttempts int
	// MaxBackoff caps the delay between two attempts of one call. Default 20s (the SDK's).
	MaxBackoff time.Duration
	// ConsistencyWindow is how long *.NotFound about an id the provider just created means "not
	// visible yet" rather than "gone". Default 2m.
	ConsistencyWindow time.Duration
	// DNSZone is the Route 53 hosted zone ("example.com.") holding the stack's records named
	// DNSNames; "": no DNS. Describe looks for exactly these records (edge.go).
	DNSZone  string
	DNSNames []string
}

// Provider is the AWS cloud.Provider.
type Provider struct {
	ec2  *ec2.Client
	desc *describeClient // describes by id, coalesced
	// instWait and volWait wait for instance and volume states, many waiters per call (poll.go).
	instWait *poller[ec2types.Instance]
	volWait  *poller[ec2types.Volume]
	elb      *elb.Client
	opts     Options
	// retries observes retried attempts of every client.
	retries *retryLog
	edge    edgeClients

	mu sync.Mutex
	// seen is each stack's instances by client token, from the last Describe: CreateInstance
	// looks a token up there instead of asking EC2 again for every instance.
	seen map[string]tokenSnapshot
}

// tokenSnapshot is the live instances of a stack by client token, as Describe saw them at.
type tokenSnapshot struct {
	at     time.Time
	tokens map[string]cloud.Instance
}

// snapshotTTL is how long a Describe stands in for CreateInstance's own token lookup. Within it,
// an instance created elsewhere with the same token is still found by RunInstances itself on
// AWS (the client token); moto ignores client tokens, and there only a concurrent apply of the
// same stack could slip through.
const snapshotTTL = 2 * time.Minute

// tagToken records the client token on an instance: moto ignores ClientToken, and AWS returns a
// terminated instance for a reused token, so the provider looks instances up by this tag first.
const tagToken = "instactl:client-token"

// New returns a provider using cfg (from config.LoadDefaultConfig: profiles, AWS_REGION,
// AWS_ENDPOINT_URL all apply). Each client gets its own retryer (newRetryer: the standard mode,
// MaxAttempts, no client-side retry quota, capacity errors not retried); cfg's own retryer
// settings are replaced.
func New(cfg aws.Config, opts Options) *Provider {
	if opts.WaitTimeout <= 0 {
		opts.WaitTimeout = 10 * time.Minute
	}
	if opts.PollMin <= 0 {
		opts.PollMin = time.Second
	}
	if opts.PollMax < opts.PollMin {
		opts.PollMax = max(20*time.Second, opts.PollMin)
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 10
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 20 * time.Second
	}
	if opts.ConsistencyWindow <= 0 {
		opts.ConsistencyWindow = 2 * time.Minute
	}
	cfg = cfg.Copy()
	cfg.Retryer = func() aws.Retryer { return newRetryer(opts) }
	rl := &retryLog{classify: newRetryer(opts)}
	cfg.APIOptions = append(cfg.APIOptions, rl.addRetryLog)
	c := ec2.NewFromConfig(cfg)
	desc := newDescribeClient(c)
	return &Provider{ec2: c, desc: desc, elb: elb.NewFromConfig(cfg), opts: opts, retries: rl,
		instWait: newPoller(desc.instances.run, opts.PollMin, opts.PollMax),
		volWait:  newPoller(desc.volumes.run, opts.PollMin, opts.PollMax),
		seen:     map[string]tokenSnapshot{}, edge: newEdgeClients(cfg)}
}

// Name implements cloud.Provider.
func (p *Provider) Name() string { return "aws" }

var _ cloud.Provider = (*Provider)(nil)

// errRefused marks calls instactl refuses before asking AWS.
var errRefused = errors.New("refused")

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errRefused, fmt.Sprintf(format, args...))
}

// apiCode returns the AWS error code of err, or "".
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// notFound reports whether err says the resource does not exist.
func notFound(err error) bool {
	switch apiCode(err) {
	case "InvalidInstanceID.NotFound", "InvalidVolume.NotFound", "InvalidGroup.NotFound",
		"InvalidKeyPair.NotFound", "InvalidSnapshot.NotFound", "LoadBalancerNotFound",
		"AccessPointNotFound", "InvalidInstanceID.Malformed", "InvalidVolumeID.Malformed":
		return true
	}
	return false
}

// apiError is an AWS error cut to what an operator acts on: the code and message AWS sent and
// the operation, without the SDK's transport detail (status, request id, retries). The SDK's
// error stays in the chain for errors.As.
type apiError struct{ err error }

func (e apiError) Error() string {
	var ae smithy.APIError
	if !errors.As(e.err, &ae) {
		return e.err.Error()
	}
	s := ae.ErrorCode()
	if m := ae.ErrorMessage(); m != "" {
		s += ": " + m
	}
	var oe *smithy.OperationError
	if errors.As(e.err, &oe) {
		s += " (" + oe.Service() + " " + oe.Operation() + ")"
	}
	return s
}

func (e apiError) Unwrap() error { return e.err }

// wrap adds context, shortens AWS errors to their code and message, and maps AWS not-found codes
// to cloud.ErrNotFound.
func wrap(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if apiCode(err) != "" {
		err = apiError{err}
	}
	if notFound(err) {
		return fmt.Errorf("%s: %w: %w", msg, cloud.ErrNotFound, err)
	}
	if kind, ok := capacityCodes[apiCode(err)]; ok {
		return fmt.Errorf("%s: %w: %w", msg, kind, err)
	}
	return fmt.Errorf("%s: %w", msg, err)
}

func ec2Tags(m map[string]string) []ec2types.Tag {
	keys := slices.Sorted(maps.Keys(m))
	out := make([]ec2types.Tag, 0, len(keys))
	for _, k := range keys {
		out = append(out, ec2types.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return out
}

func tagSpec(rt ec2types.ResourceType, m map[string]string) []ec2types.TagSpecification {
	return []ec2types.TagSpecification{{ResourceType: rt, Tags: ec2Tags(m)}}
}

func fromEC2Tags(ts []ec2types.Tag) map[string]string {
	m := make(map[string]string, len(ts))
	for _, t := range ts {
		m[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return m
}

func filter(name string, values ...string) ec2types.Filter {
	return ec2types.Filter{Name: aws.String(name), Values: values}
}

func stackFilter(stack string) ec2types.Filter { return filter("tag:"+cloud.TagStack, stack) }

// Describe implements cloud.Provider. The five listings run concurrently.
func (p *Provider) Describe(ctx context.Context, stack string) (*cloud.Resources, error) {
	r := &cloud.Resources{}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	run := func(f func() error) {
		wg.Go(func() {
			if err := f(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	run(func() (err error) { r.Instances, err = p.describeInstances(ctx, stackFilter(stack)); return })
	run(func() (err error) { r.Volumes, err = p.describeVolumes(ctx, stackFilter(stack)); return })
	run(func() (err error) { r.SecurityGroups, err = p.describeGroups(ctx, stack); return })
	run(func() (err error) { r.KeyPairs, err = p.describeKeyPairs(ctx, stack); return })
	run(func() (err error) { r.LoadBalancers, err = p.describeLoadBalancers(ctx, stack); return })
	run(func() (err error) { r.Edge, err = p.DescribeEdge(ctx, stack, p.opts.DNSZone, p.opts.DNSNames); return })
	wg.Wait()
	if len(errs) > 0 {
		return nil, fmt.Errorf("describe stack %s: %w", stack, firstAPIError(errs))
	}
	snap := tokenSnapshot{at: time.Now(), tokens: map[string]cloud.Instance{}}
	for _, in := range r.Instances {
		if t := in.Tags[tagToken]; t != "" {
			snap.tokens[t] = in
		}
	}
	p.mu.Lock()
	p.seen[stack] = snap
	p.mu.Unlock()
	return r, nil
}

// firstAPIError picks, of the failed listings of one Describe (usually failing for one cause,
// such as credentials), the first that carries an AWS error code, and says how many more failed.
func firstAPIError(errs []error) error {
	first := errs[0]
	for _, e := range errs {
		if apiCode(e) != "" {
			first = e
			break
		}
	}
	if len(errs) == 1 {
		return first
	}
	return fmt.Errorf("%w (and %d more listings failed)", first, len(errs)-1)
}

// EnsureKeyPair implements cloud.Provider.
func (p *Provider) EnsureKeyPair(ctx context.Context, stack, name, publicKey string) error {
	out, err := p.ec2.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{KeyNames: []string{name}})
	if err == nil && len(out.KeyPairs) > 0 {
		if s := fromEC2Tags(out.KeyPairs[0].Tags)[cloud.TagStack]; s != stack {
			return refuse("key pair %s exists and belongs to stack %q, not %q", name, s, stack)
		}
		return nil
	}
	if err != nil && !notFound(err) {
		return wrap(err, "describe key pair %s", name)
	}
	_, err = p.ec2.ImportKeyPair(ctx, &ec2.ImportKeyPairInput{
		KeyName: aws.String(name), PublicKeyMaterial: []byte(publicKey),
		TagSpecifications: tagSpec(ec2types.ResourceTypeKeyPair, map[string]string{cloud.TagStack: stack, cloud.TagName: name}),
	})
	if err != nil && apiCode(err) != "InvalidKeyPair.Duplicate" {
		return wrap(err, "import key pair %s", name)
	}
	return nil
}

// DeleteKeyPair implements cloud.Provider; it refuses a key pair no stack owns.
func (p *Provider) DeleteKeyPair(ctx context.Context, name string) error {
	out, err := p.ec2.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{KeyNames: []string{name}})
	if notFound(err) || (err == nil && len(out.KeyPairs) == 0) {
		return nil
	}
	if err != nil {
		return wrap(err, "describe key pair %s", name)
	}
	if fromEC2Tags(out.KeyPairs[0].Tags)[cloud.TagStack] == "" {
		return refuse("key pair %s is not tagged %s: instactl does not own it", name, cloud.TagStack)
	}
	if _, err := p.ec2.DeleteKeyPair(ctx, &ec2.DeleteKeyPairInput{KeyName: aws.String(name)}); err != nil && !notFound(err) {
		return wrap(err, "delete key pair %s", name)
	}
	return nil
}

func (p *Provider) describeKeyPairs(ctx context.Context, stack string) ([]string, error) {
	out, err := p.ec2.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{Filters: []ec2types.Filter{stackFilter(stack)}})
	if err != nil {
		return nil, wrap(err, "describe key pairs")
	}
	var names []string
	for _, k := range out.KeyPairs {
		names = append(names, aws.ToString(k.KeyName))
	}
	slices.Sort(names)
	return names, nil
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
