package walarchive

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Keys of the archive's environment file (/etc/instagram/wal.env on pg hosts, rendered by
// templates). The AWS_* keys are the SDK's own; on AWS only the first two are set and the
// instance profile gives the credentials.
const (
	EnvBucket    = "INSTACTL_WAL_BUCKET"
	EnvGroup     = "INSTACTL_WAL_GROUP"
	EnvEndpoint  = "AWS_ENDPOINT_URL"
	EnvRegion    = "AWS_REGION"
	EnvAccessKey = "AWS_ACCESS_KEY_ID"
	EnvSecretKey = "AWS_SECRET_ACCESS_KEY"
)

// Config locates one group's archive.
type Config struct {
	Bucket string
	// Group is the replication group (pg-0): the directory under wal/.
	Group string
	// Endpoint is a custom S3 endpoint (moto's http://127.0.0.1:PORT); it implies path-style
	// addressing. Empty is AWS.
	Endpoint string
	Region   string
	// AccessKey and SecretKey are static credentials (the sandbox); empty uses the SDK's chain.
	AccessKey, SecretKey string
}

// LoadEnvFile reads a KEY=VALUE file (blank lines and # comments allowed, values optionally in
// single or double quotes) into a Config.
func LoadEnvFile(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("wal archive config: %w", err)
	}
	defer f.Close()
	kv := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return Config{}, fmt.Errorf("%s:%d: want KEY=VALUE, got %q", path, n, l)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '\'' || v[0] == '"') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		kv[strings.TrimSpace(k)] = v
	}
	if err := sc.Err(); err != nil {
		return Config{}, fmt.Errorf("read %s: %w", path, err)
	}
	c := Config{Bucket: kv[EnvBucket], Group: kv[EnvGroup], Endpoint: kv[EnvEndpoint], Region: kv[EnvRegion],
		AccessKey: kv[EnvAccessKey], SecretKey: kv[EnvSecretKey]}
	if c.Bucket == "" {
		return c, fmt.Errorf("%s: %s is not set", path, EnvBucket)
	}
	return c, nil
}

// S3Client builds the S3 client c describes.
func (c Config) S3Client(ctx context.Context) (*s3.Client, error) {
	var opts []func(*awsconfig.LoadOptions) error
	if c.Region != "" {
		opts = append(opts, awsconfig.WithRegion(c.Region))
	}
	if c.AccessKey != "" {
		opts = append(opts, awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(c.AccessKey, c.SecretKey, "")))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("wal archive: aws config: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("wal archive: no AWS region: set AWS_REGION")
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		// Push records its own SHA-256 and fetch checks it; the SDK's response checksums are
		// not needed, and their absence (moto) must not log on every fetch.
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
			o.UsePathStyle = true
		}
	}), nil
}

// Open returns the archive of c's group for the cluster with systemID.
func (c Config) Open(ctx context.Context, systemID string) (*Archive, error) {
	if c.Group == "" {
		return nil, fmt.Errorf("wal archive: no group (set %s)", EnvGroup)
	}
	cl, err := c.S3Client(ctx)
	if err != nil {
		return nil, err
	}
	return New(cl, c.Bucket, c.Group, systemID)
}
