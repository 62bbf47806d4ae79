package aws

import (
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/config"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/cloudtest"
	"github.com/instactl/instactl/internal/testenv"
)

// motoProvider starts moto and returns a constructor of providers configured the standard way
// (AWS_ENDPOINT_URL, AWS_REGION, static credentials from the environment).
func motoProvider(t *testing.T) (string, func(*testing.T) cloud.Provider) {
	t.Helper()
	endpoint := testenv.Moto(t)
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatalf("load aws config: %v", err)
	}
	return endpoint, func(*testing.T) cloud.Provider { return New(cfg, Options{}) }
}

func TestConformanceMoto(t *testing.T) {
	_, newProvider := motoProvider(t)
	cloudtest.Run(t, newProvider)
}
