package sandboxctl

import (
	"net/netip"
	"testing"

	"github.com/instactl/instactl/cloud/sandbox"
)

func TestFreeBaseSkipsHeldRanges(t *testing.T) {
	a := netip.MustParseAddr
	held := map[netip.Addr]bool{a("127.0.142.5"): true, a("127.0.143.1"): true}
	if got := freeBase(a("127.0.142.1"), 9, held); got != a("127.0.144.1") {
		t.Errorf("freeBase = %s, want 127.0.144.1 (142.x and 143.x hold an address each)", got)
	}
	if got := freeBase(a("127.0.142.1"), 4, held); got != a("127.0.142.1") {
		t.Errorf("freeBase for 4 hosts = %s, want 127.0.142.1", got)
	}
	if got := freeBase(a("127.255.255.250"), 9, nil); got.IsValid() {
		t.Errorf("freeBase past the end of 127/8 = %s, want none", got)
	}
}

func TestAddrRange(t *testing.T) {
	hs := func(addrs ...string) []sandbox.Holder {
		var out []sandbox.Holder
		for _, s := range addrs {
			out = append(out, sandbox.Holder{Address: netip.MustParseAddr(s)})
		}
		return out
	}
	for want, in := range map[string][]sandbox.Holder{
		"127.0.10.1":                         hs("127.0.10.1"),
		"127.0.10.1-127.0.10.3":              hs("127.0.10.1", "127.0.10.2", "127.0.10.3"),
		"127.0.10.1, 127.0.10.3":             hs("127.0.10.1", "127.0.10.3"),
		"127.0.10.255-127.0.11.0":            hs("127.0.10.255", "127.0.11.0"),
		"127.0.10.1, 127.0.10.2, 127.0.12.1": hs("127.0.10.1", "127.0.10.2", "127.0.12.1"),
	} {
		if got := addrRange(in); got != want {
			t.Errorf("addrRange = %q, want %q", got, want)
		}
	}
}
