package monitor

import (
	"strings"
	"testing"

	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// exampleStack is the example stack file with a monitor host added (the example declares none).
func exampleStack(t testing.TB) (*stack.Stack, topology.Topology) {
	t.Helper()
	y := strings.Replace(string(stack.Example()), "\nload_balancer:\n", "\n  monitor:\n    count: 1\n\nload_balancer:\n", 1)
	st, err := stack.Parse("example.yaml", []byte(y))
	if err != nil {
		t.Fatalf("parse the example stack: %v", err)
	}
	topo, err := topology.FromStack(st)
	if err != nil {
		t.Fatal(err)
	}
	return st, topo
}
