package aws

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudfront"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/instactl/instactl/cloud"
)

// edgeClients are the clients of the stack's edge: S3, IAM, CloudFront and Route 53.
type edgeClients struct {
	s3     *s3.Client
	iam    *iam.Client
	cdn    *cloudfront.Client
	dns    *route53.Client
	region string
}

func newEdgeClients(cfg aws.Config) edgeClients {
	return edgeClients{
		s3: s3.NewFromConfig(cfg, func(o *s3.Options) {
			// An endpoint override (moto, another S3) does not resolve bucket.host names.
			o.UsePathStyle = cfg.BaseEndpoint != nil
			o.DisableLogOutputChecksumValidationSkipped = true // moto sends no checksums
		}),
		iam: iam.NewFromConfig(cfg), cdn: cloudfront.NewFromConfig(cfg), dns: route53.NewFromConfig(cfg),
		region: cfg.Region,
	}
}

var _ cloud.EdgeProvider = (*Provider)(nil)

// DescribeEdge implements cloud.EdgeProvider. S3, IAM and CloudFront list without tags, so the
// bucket, the role and the distribution are found by the names the stack derives (cloud.PhotoBucket,
// cloud.AppRole, cloud.PhotoCDN) and then judged by their tags. Records are found by name in zone.
func (p *Provider) DescribeEdge(ctx context.Context, stack, zone string, names []string) (*cloud.Edge, error) {
	e := &cloud.Edge{Buckets: []cloud.Bucket{}, Roles: []cloud.HostRole{}, Distributions: []cloud.Distribution{}}
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
	run(func() error {
		b, err := p.describeBucket(ctx, cloud.PhotoBucket(stack))
		if b != nil {
			e.Buckets = append(e.Buckets, *b)
		}
		if err != nil || zone != "" || b == nil || b.Tags[cloud.TagStack] != stack || b.Tags[cloud.TagDNSZone] == "" {
			return err
		}
		// The stack file names no zone, but the stack wrote records in one: describe them, so
		// that the plan deletes them.
		z, err := p.describeZone(ctx, stack, b.Tags[cloud.TagDNSZone], nil)
		mu.Lock()
		e.Zone = z
		mu.Unlock()
		return err
	})
	run(func() error {
		r, err := p.describeRole(ctx, cloud.AppRole(stack))
		if r != nil {
			e.Roles = append(e.Roles, *r)
		}
		return err
	})
	run(func() (err error) { e.Distributions, err = p.describeDistributions(ctx, stack); return })
	run(func() (err error) { e.AccessControls, err = p.accessControls(ctx, cloud.PhotoCDN(stack)); return })
	if zone != "" {
		run(func() (err error) { e.Zone, err = p.describeZone(ctx, stack, zone, slices.Clone(names)); return })
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, fmt.Errorf("describe the edge of stack %s: %w", stack, firstAPIError(errs))
	}
	return e, nil
}

// normPolicy returns a policy document as compact JSON with sorted keys, so documents compare
// by content. IAM returns documents URL-encoded; S3 returns them as written.
func normPolicy(doc string) (string, error) {
	if strings.HasPrefix(doc, "%") {
		d, err := url.QueryUnescape(doc)
		if err != nil {
			return "", fmt.Errorf("decode policy document: %w", err)
		}
		doc = d
	}
	var v any
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		return "", fmt.Errorf("policy document is not JSON: %w", err)
	}
	b, err := json.Marshal(v)
	return string(b), err
}
