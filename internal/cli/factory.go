package cli

import (
	"os"
	"sync"

	"github.com/instactl/instactl/stack"
)

// Factory builds a command's dependencies lazily, so `instactl version` never reads a stack
// file and `instactl validate` never dials a cloud. Tests replace the functions.
type Factory struct {
	IO *IOStreams
	// StackPath is resolved from --stack, then INSTACTL_STACK, then stack.DefaultFile.
	StackPath func() string
	// Stack loads and validates the stack file once.
	Stack func() (*stack.Stack, error)
}

// NewFactory returns the production Factory. stackFlag points at the --stack flag's value.
func NewFactory(io *IOStreams, stackFlag *string) *Factory {
	f := &Factory{IO: io}
	f.StackPath = func() string {
		if *stackFlag != "" {
			return *stackFlag
		}
		if p := os.Getenv("INSTACTL_STACK"); p != "" {
			return p
		}
		return stack.DefaultFile
	}
	var once sync.Once
	var st *stack.Stack
	var err error
	f.Stack = func() (*stack.Stack, error) {
		once.Do(func() { st, err = stack.Load(f.StackPath()) })
		return st, err
	}
	return f
}
