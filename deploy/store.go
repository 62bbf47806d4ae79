package deploy

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

// ObjectStore is where S3 staging puts the artifact once, for the hosts to fetch. S3Store is
// the implementation; the interface lets a test count calls or break one.
type ObjectStore interface {
	// Head returns what the store holds at bucket/key: the sha256 recorded when it was put
	// and its size. found is false when there is no such object.
	Head(ctx context.Context, bucket, key string) (info ObjectInfo, found bool, err error)
	// Put stores size bytes of body at bucket/key with their sha256 (hex), which the store
	// verifies and records for Head.
	Put(ctx context.Context, bucket, key string, body io.Reader, size int64, sha string) error
	// PresignGet returns a URL that GETs bucket/key without credentials until ttl has passed.
	PresignGet(ctx context.Context, bucket, key string, ttl time.Duration) (string, error)
}

// ObjectInfo is what Head reports.
type ObjectInfo struct {
	SHA256 string
	Size   int64
}

// S3Store is an ObjectStore on S3 (or moto, on the sandbox), through aws-sdk-go-v2.
type S3Store struct {
	Client *s3.Client
}

// shaMeta is the user metadata key (x-amz-meta-sha256) holding the artifact's hex sha256.
const shaMeta = "sha256"

// Head implements ObjectStore with HeadObject.
func (s S3Store) Head(ctx context.Context, bucket, key string) (ObjectInfo, bool, error) {
	out, err := s.Client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		var ae smithy.APIError
		var re interface{ HTTPStatusCode() int }
		if (errors.As(err, &ae) && (ae.ErrorCode() == "NotFound" || ae.ErrorCode() == "NoSuchKey")) ||
			(errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound && !isNoSuchBucket(err)) {
			return ObjectInfo{}, false, nil
		}
		return ObjectInfo{}, false, fmt.Errorf("s3://%s/%s: %w", bucket, key, err)
	}
	return ObjectInfo{SHA256: out.Metadata[shaMeta], Size: aws.ToInt64(out.ContentLength)}, true, nil
}

func isNoSuchBucket(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "NoSuchBucket"
}

// Put implements ObjectStore with one PutObject carrying the SHA-256 checksum, so S3 itself
// refuses content that does not match what was hashed locally.
func (s S3Store) Put(ctx context.Context, bucket, key string, body io.Reader, size int64, sha string) error {
	raw, err := hex.DecodeString(sha)
	if err != nil {
		return fmt.Errorf("put s3://%s/%s: bad sha256 %q: %w", bucket, key, sha, err)
	}
	_, err = s.Client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: body, ContentLength: aws.Int64(size),
		ContentType:    aws.String("application/octet-stream"),
		ChecksumSHA256: aws.String(base64.StdEncoding.EncodeToString(raw)),
		Metadata:       map[string]string{shaMeta: sha},
	})
	if err != nil {
		return fmt.Errorf("put s3://%s/%s: %w", bucket, key, err)
	}
	return nil
}

// PresignGet implements ObjectStore with a SigV4 presigned GetObject.
func (s S3Store) PresignGet(ctx context.Context, bucket, key string, ttl time.Duration) (string, error) {
	req, err := s3.NewPresignClient(s.Client).PresignGetObject(ctx,
		&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}, s3.WithPresignExpires(ttl))
	if err != nil {
		return "", fmt.Errorf("presign s3://%s/%s: %w", bucket, key, err)
	}
	return req.URL, nil
}

// StageKey is the object key of an artifact under prefix: content-addressed, so the same
// artifact is one object however often it is deployed, and a different one never
// overwrites it.
func StageKey(prefix, sha string) string { return path.Join(prefix, sha) }
