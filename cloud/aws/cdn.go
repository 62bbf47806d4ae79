package aws

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudfront"
	cftypes "github.com/aws/aws-sdk-go-v2/service/cloudfront/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/instactl/instactl/cloud"
)

// cachingOptimized is the id of CloudFront's managed cache policy "CachingOptimized".
const cachingOptimized = "658327ea-f89d-4fab-a63d-7e88639e58f6"

// cdnWait bounds waiting for a disabled distribution to deploy before it can be deleted;
// CloudFront takes minutes to reach every edge location.
const cdnWait = 30 * time.Minute

const cdnOrigin = "photos"

func cdnComment(stack string) string { return "instactl " + stack + " photos" }

// bucketOrigin is the regional domain name of a bucket, CloudFront's origin for it.
func (p *Provider) bucketOrigin(bucket string) string {
	region := p.edge.region
	if region == "" {
		region = "us-east-1"
	}
	return bucket + ".s3." + region + ".amazonaws.com"
}

// describeDistributions returns the distributions tagged with stack. The listing carries no
// tags, so each candidate's tags are read: on AWS only those whose comment is the stack's (or
// is missing from the listing, as moto sends it).
func (p *Provider) describeDistributions(ctx context.Context, stack string) ([]cloud.Distribution, error) {
	c := p.edge.cdn
	oac, err := p.findAccessControl(ctx, cloud.PhotoCDN(stack))
	if err != nil {
		return nil, err
	}
	out := []cloud.Distribution{}
	pages := cloudfront.NewListDistributionsPaginator(c, &cloudfront.ListDistributionsInput{})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "list CloudFront distributions")
		}
		if page.DistributionList == nil {
			break
		}
		for _, s := range page.DistributionList.Items {
			if cm := aws.ToString(s.Comment); cm != "" && cm != cdnComment(stack) {
				continue
			}
			tags, err := c.ListTagsForResource(ctx, &cloudfront.ListTagsForResourceInput{Resource: s.ARN})
			if err != nil {
				return nil, wrap(err, "read the tags of distribution %s", aws.ToString(s.Id))
			}
			m := map[string]string{}
			if tags.Tags != nil {
				for _, t := range tags.Tags.Items {
					m[aws.ToString(t.Key)] = aws.ToString(t.Value)
				}
			}
			if m[cloud.TagStack] != stack {
				continue
			}
			got, err := c.GetDistribution(ctx, &cloudfront.GetDistributionInput{Id: s.Id})
			if err != nil {
				return nil, wrap(err, "read distribution %s", aws.ToString(s.Id))
			}
			d := got.Distribution
			cd := cloud.Distribution{ID: aws.ToString(d.Id), ARN: aws.ToString(d.ARN), DomainName: aws.ToString(d.DomainName),
				Status: aws.ToString(d.Status), Tags: m, AccessControl: oac}
			if cfg := d.DistributionConfig; cfg != nil {
				cd.Enabled = aws.ToBool(cfg.Enabled)
				if cfg.Origins != nil && len(cfg.Origins.Items) > 0 {
					cd.Origin = aws.ToString(cfg.Origins.Items[0].DomainName)
				}
				if cfg.Aliases != nil {
					cd.Aliases = slices.Sorted(slices.Values(cfg.Aliases.Items))
				}
				if cfg.ViewerCertificate != nil {
					cd.Certificate = aws.ToString(cfg.ViewerCertificate.ACMCertificateArn)
				}
			}
			out = append(out, cd)
		}
	}
	slices.SortFunc(out, func(a, b cloud.Distribution) int { return cmpString(a.ID, b.ID) })
	return out, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// findAccessControl returns the id of the origin access control named name, "" if none.
// Origin access controls cannot be tagged: instactl owns the ones named after the stack.
func (p *Provider) findAccessControl(ctx context.Context, name string) (string, error) {
	ids, err := p.accessControls(ctx, name)
	if err != nil || len(ids) == 0 {
		return "", err
	}
	return ids[0], nil
}

// accessControls lists the ids of every origin access control named name. CloudFront keeps
// names unique, but a store that does not (moto) can hold several after a lost reply.
func (p *Provider) accessControls(ctx context.Context, name string) ([]string, error) {
	var ids []string
	in := &cloudfront.ListOriginAccessControlsInput{}
	for {
		out, err := p.edge.cdn.ListOriginAccessControls(ctx, in)
		if err != nil {
			return nil, wrap(err, "list CloudFront origin access controls")
		}
		if out.OriginAccessControlList == nil {
			return ids, nil
		}
		for _, o := range out.OriginAccessControlList.Items {
			if aws.ToString(o.Name) == name {
				ids = append(ids, aws.ToString(o.Id))
			}
		}
		if next := aws.ToString(out.OriginAccessControlList.NextMarker); next != "" {
			in.Marker = aws.String(next)
			continue
		}
		return ids, nil
	}
}

// deleteAccessControls deletes the origin access controls named name except keep ("": all).
// One still used by a distribution is left (CloudFront refuses), for a later run.
func (p *Provider) deleteAccessControls(ctx context.Context, name, keep string) error {
	ids, err := p.accessControls(ctx, name)
	if err != nil {
		return err
	}
	c := p.edge.cdn
	for _, id := range ids {
		if id == keep {
			continue
		}
		got, err := c.GetOriginAccessControl(ctx, &cloudfront.GetOriginAccessControlInput{Id: aws.String(id)})
		if apiCode(err) == "NoSuchOriginAccessControl" {
			continue
		}
		if err != nil {
			return wrap(err, "read origin access control %s", id)
		}
		_, err = c.DeleteOriginAccessControl(ctx, &cloudfront.DeleteOriginAccessControlInput{Id: aws.String(id), IfMatch: got.ETag})
		if err != nil && apiCode(err) != "NoSuchOriginAccessControl" && apiCode(err) != "OriginAccessControlInUse" {
			return wrap(err, "delete origin access control %s", id)
		}
	}
	return nil
}

// EnsureDistribution implements cloud.EdgeProvider.
func (p *Provider) EnsureDistribution(ctx context.Context, stack string, spec cloud.DistributionSpec) (cloud.Distribution, error) {
	c := p.edge.cdn
	oac, err := p.findAccessControl(ctx, spec.Name)
	if err != nil {
		return cloud.Distribution{}, err
	}
	if oac == "" {
		out, err := c.CreateOriginAccessControl(ctx, &cloudfront.CreateOriginAccessControlInput{
			OriginAccessControlConfig: &cftypes.OriginAccessControlConfig{Name: aws.String(spec.Name),
				Description:                   aws.String("instactl " + stack + ": CloudFront reads the photo bucket"),
				OriginAccessControlOriginType: cftypes.OriginAccessControlOriginTypesS3,
				SigningBehavior:               cftypes.OriginAccessControlSigningBehaviorsAlways,
				SigningProtocol:               cftypes.OriginAccessControlSigningProtocolsSigv4}})
		switch {
		case apiCode(err) == "OriginAccessControlAlreadyExists":
			// A lost reply: the retry finds the one the first attempt made, by its name.
			if oac, err = p.findAccessControl(ctx, spec.Name); err != nil {
				return cloud.Distribution{}, err
			}
			if oac == "" {
				return cloud.Distribution{}, fmt.Errorf("origin access control %s: CloudFront says it exists but does not list it yet; run apply again", spec.Name)
			}
		case err != nil:
			return cloud.Distribution{}, wrap(err, "create origin access control %s", spec.Name)
		default:
			oac = aws.ToString(out.OriginAccessControl.Id)
		}
	}
	cfg := p.distributionConfig(stack, spec, oac)
	have, err := p.describeDistributions(ctx, stack)
	if err != nil {
		return cloud.Distribution{}, err
	}
	var d cloud.Distribution
	if len(have) == 0 {
		out, err := c.CreateDistributionWithTags(ctx, &cloudfront.CreateDistributionWithTagsInput{
			DistributionConfigWithTags: &cftypes.DistributionConfigWithTags{DistributionConfig: cfg, Tags: cfTags(spec.Tags)}})
		switch {
		case apiCode(err) == "DistributionAlreadyExists":
			// A lost reply: the caller reference made it, with its tags, so it is listed now.
			if have, err = p.describeDistributions(ctx, stack); err != nil {
				return d, err
			}
			if len(have) == 0 {
				return d, refuse("a distribution with caller reference %s exists but is not tagged %s=%s", aws.ToString(cfg.CallerReference), cloud.TagStack, stack)
			}
		case err != nil:
			return d, wrap(err, "create distribution %s", spec.Name)
		default:
			x := out.Distribution
			have = []cloud.Distribution{{ID: aws.ToString(x.Id), ARN: aws.ToString(x.ARN), DomainName: aws.ToString(x.DomainName),
				Origin: p.bucketOrigin(spec.Bucket), Enabled: true, Status: aws.ToString(x.Status), Tags: spec.Tags,
				AccessControl: oac, Aliases: slices.Sorted(slices.Values(spec.Aliases)), Certificate: spec.CertificateARN}}
		}
	}
	d = have[0]
	if d.Origin != p.bucketOrigin(spec.Bucket) || !d.Enabled || !slices.Equal(d.Aliases, slices.Sorted(slices.Values(spec.Aliases))) ||
		d.Certificate != spec.CertificateARN {
		if err := p.updateDistribution(ctx, d.ID, func(cur *cftypes.DistributionConfig) {
			cur.Origins, cur.DefaultCacheBehavior, cur.Aliases, cur.ViewerCertificate, cur.Enabled =
				cfg.Origins, cfg.DefaultCacheBehavior, cfg.Aliases, cfg.ViewerCertificate, cfg.Enabled
		}); err != nil {
			return d, err
		}
	}
	if err := p.putCDNBucketPolicy(ctx, spec.Bucket, d.ARN); err != nil {
		return d, err
	}
	if err := p.deleteAccessControls(ctx, spec.Name, oac); err != nil {
		return d, err
	}
	return d, nil
}

func cfTags(m map[string]string) *cftypes.Tags {
	t := &cftypes.Tags{}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		t.Items = append(t.Items, cftypes.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return t
}

// distributionConfig serves the bucket over HTTPS only, GET and HEAD, with the managed
// CachingOptimized policy, through the origin access control oac.
func (p *Provider) distributionConfig(stack string, spec cloud.DistributionSpec, oac string) *cftypes.DistributionConfig {
	cfg := &cftypes.DistributionConfig{
		CallerReference: aws.String("instactl-" + spec.Name), Comment: aws.String(cdnComment(stack)), Enabled: aws.Bool(true),
		Origins: &cftypes.Origins{Quantity: aws.Int32(1), Items: []cftypes.Origin{{Id: aws.String(cdnOrigin),
			DomainName: aws.String(p.bucketOrigin(spec.Bucket)), OriginAccessControlId: aws.String(oac),
			// With an origin access control the (legacy) origin access identity stays empty.
			S3OriginConfig: &cftypes.S3OriginConfig{OriginAccessIdentity: aws.String("")}}}},
		DefaultCacheBehavior: &cftypes.DefaultCacheBehavior{TargetOriginId: aws.String(cdnOrigin),
			ViewerProtocolPolicy: cftypes.ViewerProtocolPolicyRedirectToHttps, CachePolicyId: aws.String(cachingOptimized),
			Compress: aws.Bool(true),
			AllowedMethods: &cftypes.AllowedMethods{Quantity: aws.Int32(2), Items: []cftypes.Method{cftypes.MethodGet, cftypes.MethodHead},
				CachedMethods: &cftypes.CachedMethods{Quantity: aws.Int32(2), Items: []cftypes.Method{cftypes.MethodGet, cftypes.MethodHead}}}},
		Aliases:           &cftypes.Aliases{Quantity: aws.Int32(int32(len(spec.Aliases))), Items: slices.Clone(spec.Aliases)},
		ViewerCertificate: &cftypes.ViewerCertificate{CloudFrontDefaultCertificate: aws.Bool(true)},
	}
	if spec.CertificateARN != "" {
		cfg.ViewerCertificate = &cftypes.ViewerCertificate{ACMCertificateArn: aws.String(spec.CertificateARN),
			SSLSupportMethod: cftypes.SSLSupportMethodSniOnly, MinimumProtocolVersion: cftypes.MinimumProtocolVersionTLSv122021}
	}
	return cfg
}

// updateDistribution reads the distribution's config, lets change edit it, and writes it back
// with the ETag it read (CloudFront's optimistic lock).
func (p *Provider) updateDistribution(ctx context.Context, id string, change func(*cftypes.DistributionConfig)) error {
	cur, err := p.edge.cdn.GetDistributionConfig(ctx, &cloudfront.GetDistributionConfigInput{Id: aws.String(id)})
	if err != nil {
		return wrap(err, "read distribution %s", id)
	}
	change(cur.DistributionConfig)
	_, err = p.edge.cdn.UpdateDistribution(ctx, &cloudfront.UpdateDistributionInput{Id: aws.String(id), IfMatch: cur.ETag,
		DistributionConfig: cur.DistributionConfig})
	if err != nil {
		return wrap(err, "update distribution %s", id)
	}
	return nil
}

func (p *Provider) putCDNBucketPolicy(ctx context.Context, bucket, distARN string) error {
	_, err := p.edge.s3.PutBucketPolicy(ctx, &s3.PutBucketPolicyInput{Bucket: aws.String(bucket), Policy: aws.String(cloud.CDNBucketPolicy(bucket, distARN))})
	if err != nil {
		return wrap(err, "allow distribution %s in the policy of bucket %s", distARN, bucket)
	}
	return nil
}

// DeleteDistribution implements cloud.EdgeProvider. CloudFront deletes only a disabled
// distribution whose disabling has deployed, so this can take minutes on AWS.
func (p *Provider) DeleteDistribution(ctx context.Context, stack, id string) error {
	c := p.edge.cdn
	if id == "" {
		return p.deleteAccessControls(ctx, cloud.PhotoCDN(stack), "")
	}
	have, err := p.describeDistributions(ctx, stack)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(have, func(d cloud.Distribution) bool { return d.ID == id })
	if i < 0 {
		return refuse("distribution %s is not tagged %s=%s (or is gone): instactl does not delete it", id, cloud.TagStack, stack)
	}
	if have[i].Enabled {
		if err := p.updateDistribution(ctx, id, func(cfg *cftypes.DistributionConfig) { cfg.Enabled = aws.Bool(false) }); err != nil {
			return err
		}
	}
	etag, err := p.waitDeployed(ctx, id)
	if err != nil {
		return err
	}
	if _, err := c.DeleteDistribution(ctx, &cloudfront.DeleteDistributionInput{Id: aws.String(id), IfMatch: etag}); err != nil && apiCode(err) != "NoSuchDistribution" {
		return wrap(err, "delete distribution %s", id)
	}
	return p.deleteAccessControls(ctx, cloud.PhotoCDN(stack), "")
}

// waitDeployed polls until the distribution's status is Deployed and returns its ETag.
func (p *Provider) waitDeployed(ctx context.Context, id string) (*string, error) {
	ctx, cancel := context.WithTimeout(ctx, cdnWait)
	defer cancel()
	delay := p.opts.PollMin
	for {
		out, err := p.edge.cdn.GetDistribution(ctx, &cloudfront.GetDistributionInput{Id: aws.String(id)})
		if err != nil {
			return nil, wrap(err, "wait for distribution %s to deploy", id)
		}
		if aws.ToString(out.Distribution.Status) == "Deployed" {
			return out.ETag, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for distribution %s to deploy its disabling (status %s) before deleting it: %w; run destroy again later",
				id, aws.ToString(out.Distribution.Status), ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, p.opts.PollMax)
	}
}
