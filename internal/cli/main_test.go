package cli

import (
	"context"
	"os"
	"testing"
)

// TestMain lets this test binary serve as the ssh keeper: the in-process CLI starts
// os.Executable() (this binary) as `ssh-keeper serve`, with keeperChildEnv set.
func TestMain(m *testing.M) {
	if os.Getenv(keeperChildEnv) == "1" {
		os.Exit(Run(context.Background(), &IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}, os.Args[1:]))
	}
	testBinaryServesKeeper = true
	os.Exit(m.Run())
}
