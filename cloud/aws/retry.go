package aws

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go/middleware"

	"github.com/instactl/instactl/cloud"
)

// capacityCodes are refusals no retry of the same request cures soon: the SDK would retry
// InsufficientInstanceCapacity (HTTP 500) for minutes. The provider returns them at once as
// cloud.ErrNoCapacity or cloud.ErrLimit, and provision tries another zone or type or names the fix.
var capacityCodes = map[string]error{
	"InsufficientInstanceCapacity": cloud.ErrNoCapacity,
	"InsufficientVolumeCapacity":   cloud.ErrNoCapacity,
	"InsufficientHostCapacity":     cloud.ErrNoCapacity,
	"InstanceLimitExceeded":        cloud.ErrLimit,
	"VcpuLimitExceeded":            cloud.ErrLimit,
	"VolumeLimitExceeded":          cloud.ErrLimit,
	"Unsupported":                  cloud.ErrNoCapacity,
}

// newRetryer is the retry policy of every client, one instance per client (the SDK calls
// cfg.Retryer once per client): the standard mode with MaxAttempts attempts and backoff capped at
// MaxBackoff, no client-side retry quota (ratelimit.None: under sustained throttling the
// default 500-token bucket fails whole runs with "retry quota exceeded", which AWS does not ask
// for; Terraform and eksctl turn it off too), and capacity and limit errors never retried. Not
// the adaptive mode: its client-side limiter, not AWS, made throttled runs slow.
func newRetryer(opts Options) aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = opts.MaxAttempts
		o.MaxBackoff = opts.MaxBackoff
		o.RateLimiter = ratelimit.None
		o.Retryables = append([]retry.IsErrorRetryable{retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
			if _, ok := capacityCodes[apiCode(err)]; ok {
				return aws.FalseTernary
			}
			return aws.UnknownTernary
		})}, o.Retryables...)
	})
}

// retryLog is the provider's observer of retried attempts (for -v), and their count.
type retryLog struct {
	classify aws.Retryer
	sink     atomic.Pointer[func(string)]
	count    atomic.Int64
}

// SetRetryLog makes the provider report each attempt it retries (service, operation and why) to
// f; nil stops it. instactl -v uses it.
func (p *Provider) SetRetryLog(f func(string)) {
	if f == nil {
		p.retries.sink.Store(nil)
		return
	}
	p.retries.sink.Store(&f)
}

// Retries is how many attempts the provider's clients have retried so far.
func (p *Provider) Retries() int64 { return p.retries.count.Load() }

// addRetryLog puts an observer inside the SDK's retry loop (after the Retry step of Finalize):
// it sees every attempt's error, and reports those the retryer retries.
func (l *retryLog) addRetryLog(st *middleware.Stack) error {
	return st.Finalize.Add(middleware.FinalizeMiddlewareFunc("InstactlRetryLog",
		func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
			out, md, err := next.HandleFinalize(ctx, in)
			if err != nil && ctx.Err() == nil && l.classify.IsErrorRetryable(err) {
				l.count.Add(1)
				if f := l.sink.Load(); f != nil {
					why := apiCode(err)
					if why == "" {
						why = err.Error()
					}
					(*f)(fmt.Sprintf("aws: %s %s: %s, retrying", awsmiddleware.GetServiceID(ctx), awsmiddleware.GetOperationName(ctx), why))
				}
			}
			return out, md, err
		}), middleware.After)
}

// consistencyWindow bounds how long the provider takes *.NotFound for "not yet" about an id it
// has just created: EC2 is eventually consistent, and its docs say up to a few minutes.
func (p *Provider) consistencyWindow() time.Duration { return p.opts.ConsistencyWindow }

// untilFound runs f until it returns something other than one of codes (an id the call names
// is not visible yet), for at most the consistency window, polling as the waiters do.
func (p *Provider) untilFound(ctx context.Context, f func() error, codes ...string) error {
	deadline := time.Now().Add(p.consistencyWindow())
	delay := p.opts.PollMin
	for {
		err := f()
		if err == nil || !hasCode(err, codes) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, p.opts.PollMax)
	}
}

func hasCode(err error, codes []string) bool {
	c := apiCode(err)
	for _, want := range codes {
		if c == want {
			return true
		}
	}
	return false
}
