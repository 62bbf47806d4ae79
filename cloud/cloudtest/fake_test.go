package cloudtest

import (
	"testing"

	"github.com/instactl/instactl/cloud"
)

// The fake passes the suite: this keeps both honest without any external component.
func TestFakeConformance(t *testing.T) {
	f := NewFake()
	Run(t, func(*testing.T) cloud.Provider { return f })
}
