package cli

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/internal/sandboxctl"
	"github.com/instactl/instactl/stack"
)

// deployStore is the object store S3 staging uploads to: the sandbox's moto (the endpoint its
// hosts reach too, 127.0.0.1:sandbox.moto_port) or S3 through the SDK's standard
// configuration. Presigned URLs carry the endpoint, so on AWS the hosts fetch from S3 itself.
func deployStore(ctx context.Context, st *stack.Stack, p *deploy.Plan) (deploy.ObjectStore, error) {
	if p.Kind != deploy.KindDeploy || p.Config.Staging != deploy.StagingS3 {
		return nil, nil
	}
	if st.Provider == "sandbox" {
		return deploy.S3Store{Client: sandboxctl.MotoFor(st).S3(st.Region)}, nil
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(st.Region))
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration for S3 staging (or stage with --staging ssh): %w", err)
	}
	return deploy.S3Store{Client: s3.NewFromConfig(cfg, func(o *s3.Options) {
		// Keep PUT on the one checksum instactl supplies (SHA-256) instead of also computing
		// the SDK's default CRC over 25 MB.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	})}, nil
}
