package cli

import (
	"context"
	"os"
	"sync"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/remote"
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
	// Provider builds the stack's cloud (AWS or the sandbox) once.
	Provider func(ctx context.Context) (cloud.Provider, error)
	// SSH returns a connection pool to the stack's hosts with strict host key checking;
	// acceptNew records unknown (never changed) host keys. Callers close the pool.
	SSH func(acceptNew bool) (*remote.Pool, error)
	// StateDir is where local records live (deploy journals, audit log, backup manifests).
	StateDir func() (string, error)
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
	var pOnce sync.Once
	var prov cloud.Provider
	var pErr error
	f.Provider = func(ctx context.Context) (cloud.Provider, error) {
		pOnce.Do(func() {
			s, err := f.Stack()
			if err != nil {
				pErr = err
				return
			}
			prov, pErr = newProvider(ctx, s)
		})
		return prov, pErr
	}
	f.SSH = func(acceptNew bool) (*remote.Pool, error) {
		s, err := f.Stack()
		if err != nil {
			return nil, err
		}
		d, err := remote.NewDialer(sshConfig(s, acceptNew))
		if err != nil {
			return nil, err
		}
		return remote.NewPool(d), nil
	}
	f.StateDir = func() (string, error) {
		s, err := f.Stack()
		if err != nil {
			return "", err
		}
		dir := stateDir(s)
		return dir, os.MkdirAll(dir, 0o700)
	}
	return f
}
