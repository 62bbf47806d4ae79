package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/templates"
)

// WALInstallOptions asks for the WAL archive's prerequisites: its bucket, and the archiver
// binary on every Postgres host.
type WALInstallOptions struct {
	Env
	// Binary is the local instactl binary to install as templates.ArchiverPath.
	Binary string
}

// WALInstallResult is what WALInstall did.
type WALInstallResult struct {
	Bucket string `json:"bucket"`
	// BucketCreated is false when the bucket existed (owned by this stack) already.
	BucketCreated bool `json:"bucket_created"`
	// Path is where the archiver was installed on each host.
	Path string `json:"path"`
	// SHA256 is the installed binary's checksum, as every host reported it.
	SHA256 string `json:"sha256"`
	// Hosts are the Postgres hosts the archiver was installed on, sorted.
	Hosts []WALInstalledHost `json:"hosts"`
}

// WALInstalledHost is the archiver on one host.
type WALInstalledHost struct {
	Host string `json:"host"`
	// Version is the first line of `instactl version` run there.
	Version string `json:"version"`
}

// WALInstall creates the stack's WAL bucket unless it exists (tagged cloud.TagStack=stack
// name, like the photo bucket; a bucket of that name owned by another stack is refused) and
// uploads Binary to templates.ArchiverPath on every running Postgres host, atomically (a
// temporary file renamed into place after its checksum matches), then runs it there: an
// archiver that cannot run would make Postgres retry archive_command forever while pg_wal
// fills. Running it again is harmless.
func WALInstall(ctx context.Context, o WALInstallOptions) (*WALInstallResult, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	if o.Binary == "" {
		return nil, errors.New("wal install: no binary to install")
	}
	bin, err := os.Open(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("wal install: %w", err)
	}
	bin.Close()
	st := o.Stack
	role := st.Shards.Role
	res, err := o.Provider.Describe(ctx, st.Name)
	if err != nil {
		return nil, fmt.Errorf("wal install: describe stack %s: %w", st.Name, err)
	}
	var hosts []cloud.Instance
	for _, in := range res.Instances {
		if in.Role == role && in.State == "running" {
			hosts = append(hosts, in)
		}
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("wal install: stack %s has no running %s host (instactl apply first)", st.Name, role)
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })

	out := &WALInstallResult{Bucket: templates.WALBucket(st), Path: templates.ArchiverPath}
	if out.BucketCreated, err = o.ensureWALBucket(ctx); err != nil {
		return out, err
	}
	o.emit("", "", "wal-bucket", "bucket %s ready (created: %v)", out.Bucket, out.BucketCreated)
	for _, in := range hosts {
		v, sum, err := o.installArchiver(ctx, in)
		if err != nil {
			return out, err
		}
		out.SHA256 = sum
		out.Hosts = append(out.Hosts, WALInstalledHost{Host: in.Name, Version: v})
		o.emit("", in.Name, "wal-install", "%s installed (%s)", templates.ArchiverPath, v)
	}
	return out, nil
}

// ensureWALBucket creates the WAL bucket, or checks that the existing one is this stack's.
func (o *WALInstallOptions) ensureWALBucket(ctx context.Context) (bool, error) {
	st := o.Stack
	bucket := templates.WALBucket(st)
	cl, err := templates.WALArchiveFor(st, "").Config().S3Client(ctx)
	if err != nil {
		return false, fmt.Errorf("wal install: %w", err)
	}
	created := false
	if _, err := cl.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(bucket)}); err != nil {
		in := &s3.CreateBucketInput{Bucket: aws.String(bucket), ObjectOwnership: s3types.ObjectOwnershipBucketOwnerEnforced}
		if st.Region != "" && st.Region != "us-east-1" {
			in.CreateBucketConfiguration = &s3types.CreateBucketConfiguration{LocationConstraint: s3types.BucketLocationConstraint(st.Region)}
		}
		_, err := cl.CreateBucket(ctx, in)
		var ae smithy.APIError
		switch {
		case errors.As(err, &ae) && ae.ErrorCode() == "BucketAlreadyExists":
			return false, fmt.Errorf("wal install: bucket %s belongs to another account; bucket names are global: rename stack %s", bucket, st.Name)
		case errors.As(err, &ae) && ae.ErrorCode() == "BucketAlreadyOwnedByYou":
		case err != nil:
			return false, fmt.Errorf("wal install: create bucket %s: %w", bucket, err)
		default:
			created = true
		}
	}
	// Tags come after CreateBucket: an untagged bucket of this name is the one a crashed
	// install made, and is tagged now.
	owner := ""
	tags, err := cl.GetBucketTagging(ctx, &s3.GetBucketTaggingInput{Bucket: aws.String(bucket)})
	var ae smithy.APIError
	switch {
	case err == nil:
		for _, t := range tags.TagSet {
			if aws.ToString(t.Key) == cloud.TagStack {
				owner = aws.ToString(t.Value)
			}
		}
	case errors.As(err, &ae) && ae.ErrorCode() == "NoSuchTagSet":
	default:
		return created, fmt.Errorf("wal install: read the tags of bucket %s: %w", bucket, err)
	}
	switch owner {
	case st.Name:
		return created, nil
	case "":
		set := []s3types.Tag{{Key: aws.String(cloud.TagStack), Value: aws.String(st.Name)}}
		if tags != nil {
			set = append(set, tags.TagSet...)
		}
		if _, err := cl.PutBucketTagging(ctx, &s3.PutBucketTaggingInput{Bucket: aws.String(bucket), Tagging: &s3types.Tagging{TagSet: set}}); err != nil {
			return created, fmt.Errorf("wal install: tag bucket %s %s=%s: %w", bucket, cloud.TagStack, st.Name, err)
		}
		return created, nil
	}
	return created, fmt.Errorf("wal install: bucket %s belongs to stack %q (tag %s); bucket names are global: rename stack %s", bucket, owner, cloud.TagStack, st.Name)
}

// installArchiver uploads the binary to one host and runs it there.
func (o *WALInstallOptions) installArchiver(ctx context.Context, in cloud.Instance) (version, sum string, err error) {
	c, err := o.dial(ctx, in)
	if err != nil {
		return "", "", fmt.Errorf("wal install: %w", err)
	}
	defer c.Close()
	f, err := os.Open(o.Binary)
	if err != nil {
		return "", "", fmt.Errorf("wal install: %w", err)
	}
	defer f.Close()
	if sum, err = c.Upload(ctx, f, templates.ArchiverPath, 0o755); err != nil {
		return "", "", fmt.Errorf("wal install on %s: %w", in.Name, err)
	}
	r, err := runCmd(ctx, c, remote.Cmd(templates.ArchiverPath, "version"))
	if err != nil {
		return "", sum, fmt.Errorf("wal install on %s: %s was installed but does not run (built for another OS or CPU?): %w", in.Name, templates.ArchiverPath, err)
	}
	version, _, _ = strings.Cut(trimOut(r), "\n")
	return version, sum, nil
}
