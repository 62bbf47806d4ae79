package sandboxctl

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// PhotoReadPolicy lets anyone read the objects of bucket, and do nothing else. On the sandbox
// it stands in for the CDN's grant on AWS: the app's photo URLs (templates.PhotoBaseURL) point
// straight at the bucket in moto, which listens on loopback only.
func PhotoReadPolicy(bucket string) string {
	return `{"Version":"2012-10-17","Statement":[{"Sid":"SandboxPhotoURLs","Effect":"Allow","Principal":"*",` +
		`"Action":"s3:GetObject","Resource":"arn:aws:s3:::` + bucket + `/*"}]}`
}

// AllowPhotoReads puts PhotoReadPolicy on bucket, so photo URLs answer without credentials.
func (m Moto) AllowPhotoReads(ctx context.Context, region, bucket string) error {
	_, err := m.S3(region).PutBucketPolicy(ctx, &s3.PutBucketPolicyInput{Bucket: aws.String(bucket), Policy: aws.String(PhotoReadPolicy(bucket))})
	if err != nil {
		return fmt.Errorf("let photo URLs read bucket %s: %w", bucket, err)
	}
	return nil
}
