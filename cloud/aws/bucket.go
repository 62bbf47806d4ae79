package aws

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/instactl/instactl/cloud"
)

// describeBucket returns the bucket named name with its settings, or nil when it does not
// exist. A bucket of that name without the stack tag is returned too (its Tags say so): the
// plan refuses it rather than adopting or deleting what another owner made.
func (p *Provider) describeBucket(ctx context.Context, name string) (*cloud.Bucket, error) {
	c := p.edge.s3
	b := &cloud.Bucket{Name: name, Tags: map[string]string{}}
	tags, err := c.GetBucketTagging(ctx, &s3.GetBucketTaggingInput{Bucket: aws.String(name)})
	switch code := apiCode(err); {
	case code == "NoSuchBucket":
		return nil, nil
	case code == "NoSuchTagSet":
	case err != nil:
		return nil, wrap(err, "read the tags of bucket %s", name)
	default:
		for _, t := range tags.TagSet {
			b.Tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
		}
	}
	err = inParallel(func() error {
		enc, err := c.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: aws.String(name)})
		if err != nil && apiCode(err) != "ServerSideEncryptionConfigurationNotFoundError" {
			return wrap(err, "read the encryption of bucket %s", name)
		}
		if err == nil && enc.ServerSideEncryptionConfiguration != nil {
			for _, r := range enc.ServerSideEncryptionConfiguration.Rules {
				if d := r.ApplyServerSideEncryptionByDefault; d != nil {
					b.Encryption = string(d.SSEAlgorithm)
				}
			}
		}
		return nil
	}, func() error {
		ver, err := c.GetBucketVersioning(ctx, &s3.GetBucketVersioningInput{Bucket: aws.String(name)})
		if err != nil {
			return wrap(err, "read the versioning of bucket %s", name)
		}
		b.Versioning = string(ver.Status)
		return nil
	}, func() error {
		pab, err := c.GetPublicAccessBlock(ctx, &s3.GetPublicAccessBlockInput{Bucket: aws.String(name)})
		if err != nil && apiCode(err) != "NoSuchPublicAccessBlockConfiguration" {
			return wrap(err, "read the public access block of bucket %s", name)
		}
		if err == nil && pab.PublicAccessBlockConfiguration != nil {
			cfg := pab.PublicAccessBlockConfiguration
			b.PublicAccessBlocked = aws.ToBool(cfg.BlockPublicAcls) && aws.ToBool(cfg.IgnorePublicAcls) &&
				aws.ToBool(cfg.BlockPublicPolicy) && aws.ToBool(cfg.RestrictPublicBuckets)
		}
		return nil
	}, func() error {
		pol, err := c.GetBucketPolicy(ctx, &s3.GetBucketPolicyInput{Bucket: aws.String(name)})
		if err != nil && apiCode(err) != "NoSuchBucketPolicy" {
			return wrap(err, "read the policy of bucket %s", name)
		}
		if err == nil && aws.ToString(pol.Policy) != "" {
			if b.Policy, err = normPolicy(aws.ToString(pol.Policy)); err != nil {
				return fmt.Errorf("bucket %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

func s3Tags(m map[string]string) []s3types.Tag {
	var out []s3types.Tag
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, s3types.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return out
}

// EnsureBucket implements cloud.EdgeProvider. S3 has no tags in CreateBucket for general
// purpose buckets, so a crash right after create leaves an untagged bucket of the stack's
// name: a bucket this account owns (BucketAlreadyOwnedByYou) without any tag is therefore
// adopted; one tagged with another stack is refused.
func (p *Provider) EnsureBucket(ctx context.Context, stack string, spec cloud.BucketSpec) error {
	c := p.edge.s3
	name := aws.String(spec.Name)
	in := &s3.CreateBucketInput{Bucket: name, ObjectOwnership: s3types.ObjectOwnershipBucketOwnerEnforced}
	if p.edge.region != "" && p.edge.region != "us-east-1" {
		in.CreateBucketConfiguration = &s3types.CreateBucketConfiguration{
			LocationConstraint: s3types.BucketLocationConstraint(p.edge.region)}
	}
	_, err := c.CreateBucket(ctx, in)
	switch apiCode(err) {
	case "":
	case "BucketAlreadyOwnedByYou":
		have, derr := p.describeBucket(ctx, spec.Name)
		if derr != nil {
			return derr
		}
		if have != nil && have.Tags[cloud.TagStack] != "" && have.Tags[cloud.TagStack] != stack {
			return refuse("bucket %s belongs to stack %q, not %q", spec.Name, have.Tags[cloud.TagStack], stack)
		}
	case "BucketAlreadyExists":
		return refuse("bucket name %s is taken by another AWS account (bucket names are global); rename the stack", spec.Name)
	default:
		return wrap(err, "create bucket %s", spec.Name)
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"tag", func() error {
			_, err := c.PutBucketTagging(ctx, &s3.PutBucketTaggingInput{Bucket: name, Tagging: &s3types.Tagging{TagSet: s3Tags(spec.Tags)}})
			return err
		}},
		{"block public access to", func() error {
			_, err := c.PutPublicAccessBlock(ctx, &s3.PutPublicAccessBlockInput{Bucket: name,
				PublicAccessBlockConfiguration: &s3types.PublicAccessBlockConfiguration{BlockPublicAcls: aws.Bool(true),
					IgnorePublicAcls: aws.Bool(true), BlockPublicPolicy: aws.Bool(true), RestrictPublicBuckets: aws.Bool(true)}})
			return err
		}},
		{"encrypt", func() error {
			_, err := c.PutBucketEncryption(ctx, &s3.PutBucketEncryptionInput{Bucket: name,
				ServerSideEncryptionConfiguration: &s3types.ServerSideEncryptionConfiguration{Rules: []s3types.ServerSideEncryptionRule{{
					ApplyServerSideEncryptionByDefault: &s3types.ServerSideEncryptionByDefault{SSEAlgorithm: s3types.ServerSideEncryptionAes256},
					BucketKeyEnabled:                   aws.Bool(true)}}}})
			return err
		}},
		{"enable versioning of", func() error {
			_, err := c.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{Bucket: name,
				VersioningConfiguration: &s3types.VersioningConfiguration{Status: s3types.BucketVersioningStatusEnabled}})
			return err
		}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return wrap(err, "%s bucket %s", s.what, spec.Name)
		}
	}
	return nil
}

// BucketContents implements cloud.EdgeProvider; it pages through every version.
func (p *Provider) BucketContents(ctx context.Context, name string) (cloud.BucketContents, error) {
	var n cloud.BucketContents
	pages := s3.NewListObjectVersionsPaginator(p.edge.s3, &s3.ListObjectVersionsInput{Bucket: aws.String(name)})
	for pages.HasMorePages() {
		out, err := pages.NextPage(ctx)
		if err != nil {
			return n, wrap(err, "list the versions in bucket %s", name)
		}
		n.Versions += len(out.Versions)
		n.DeleteMarkers += len(out.DeleteMarkers)
		for _, v := range out.Versions {
			if aws.ToBool(v.IsLatest) {
				n.Objects++
			}
		}
	}
	return n, nil
}

// DeleteBucket implements cloud.EdgeProvider. It refuses a bucket not tagged with stack.
func (p *Provider) DeleteBucket(ctx context.Context, stack, name string, deleteData bool) error {
	have, err := p.describeBucket(ctx, name)
	if err != nil || have == nil {
		return err
	}
	if have.Tags[cloud.TagStack] != stack {
		return refuse("bucket %s is not tagged %s=%s: instactl does not own it", name, cloud.TagStack, stack)
	}
	n, err := p.BucketContents(ctx, name)
	if err != nil {
		return err
	}
	if !n.Empty() && !deleteData {
		return refuse("bucket %s holds %d objects (%d versions, %d delete markers); delete it with --force-delete-data",
			name, n.Objects, n.Versions, n.DeleteMarkers)
	}
	if !n.Empty() {
		if err := p.deleteAllVersions(ctx, name); err != nil {
			return err
		}
	}
	if _, err := p.edge.s3.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(name)}); err != nil && apiCode(err) != "NoSuchBucket" {
		return wrap(err, "delete bucket %s", name)
	}
	return nil
}

// deleteAllVersions deletes every version and delete marker, a page (≤1000 keys) per call.
func (p *Provider) deleteAllVersions(ctx context.Context, name string) error {
	pages := s3.NewListObjectVersionsPaginator(p.edge.s3, &s3.ListObjectVersionsInput{Bucket: aws.String(name)})
	for pages.HasMorePages() {
		out, err := pages.NextPage(ctx)
		if err != nil {
			return wrap(err, "list the versions in bucket %s", name)
		}
		var ids []s3types.ObjectIdentifier
		for _, v := range out.Versions {
			ids = append(ids, s3types.ObjectIdentifier{Key: v.Key, VersionId: v.VersionId})
		}
		for _, m := range out.DeleteMarkers {
			ids = append(ids, s3types.ObjectIdentifier{Key: m.Key, VersionId: m.VersionId})
		}
		if len(ids) == 0 {
			continue
		}
		res, err := p.edge.s3.DeleteObjects(ctx, &s3.DeleteObjectsInput{Bucket: aws.String(name),
			Delete: &s3types.Delete{Objects: ids, Quiet: aws.Bool(true)}})
		if err != nil {
			return wrap(err, "delete versions in bucket %s", name)
		}
		if len(res.Errors) > 0 {
			e := res.Errors[0]
			return fmt.Errorf("delete versions in bucket %s: %d failed, first %s (version %s): %s: %w", name, len(res.Errors),
				aws.ToString(e.Key), aws.ToString(e.VersionId), aws.ToString(e.Message), errors.New(aws.ToString(e.Code)))
		}
	}
	return nil
}
