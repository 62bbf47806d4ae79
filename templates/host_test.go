package templates

import (
	"strings"
	"testing"

	"github.com/instactl/instactl/stack"
)

func TestForHostNamesPrimaryByFixedAddress(t *testing.T) {
	st, err := stack.Parse("s.yaml", stack.Example())
	if err != nil {
		t.Fatal(err)
	}
	ud, err := ForHost(st, stack.HostRef{Role: "pg", Index: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// pg-3 is 127.0.10.6 and follows pg-2 at 127.0.10.5 (app-0, app-1, pg-0 .. come first).
	for _, want := range []string{"127.0.10.6", "127.0.10.5"} {
		if !strings.Contains(ud, want) {
			t.Errorf("pg-3 user-data lacks %s", want)
		}
	}
	if _, err := ForHost(st, stack.HostRef{Role: "pg", Index: 9}, nil); err == nil {
		t.Error("rendered a host that does not exist")
	}
	ud, err = ForHost(st, stack.HostRef{Role: "app", Index: 0}, map[string]string{"INSTAGRAM_REDIS": "127.0.10.7:6379"})
	if err != nil || !strings.Contains(ud, "INSTAGRAM_REDIS") {
		t.Fatalf("app env not rendered: %v", err)
	}
}
