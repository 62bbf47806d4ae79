package sandbox

import (
	"net/netip"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/cloudtest"
	"github.com/instactl/instactl/internal/testenv"
)

// TestConformance runs the provider suite every cloud passes. All subtests share one sandbox
// directory through separate Providers, as several instactl processes would.
func TestConformance(t *testing.T) {
	requireSandbox(t)
	cfg := Config{Dir: t.TempDir(), AddressBase: netip.MustParseAddr("127.0.23.0"),
		LBPort: testenv.FreePort(t, "127.0.0.1")}
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { down(t, first) })
	suite := cloudtest.Config{Zones: [2]string{"sandbox-1a", "sandbox-1b"}, Image: "debian-12",
		InstanceType: "sandbox", Timeout: 2 * time.Minute}
	cloudtest.RunWith(t, suite, func(t *testing.T) cloud.Provider {
		p, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return p
	})
}
