package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/instactl/instactl/stack"
	"github.com/spf13/cobra"
)

// InitOptions are the inputs of `instactl init`.
type InitOptions struct {
	IO    *IOStreams
	Path  string
	Force bool
}

// NewCmdInit writes the documented example stack file. runF replaces the run in tests.
func NewCmdInit(f *Factory, runF func(*InitOptions) error) *cobra.Command {
	opts := &InitOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write a commented example stack file",
		Long: `Write instagram.yaml (or --stack PATH): a stack file that documents every key with its
default. As written it runs on the local sandbox; set provider: aws and image to use AWS.`,
		Example: `  instactl init
  instactl init --stack prod.yaml
  instactl init --force            # overwrite an existing file`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Path = f.StackPath()
			if runF != nil {
				return runF(opts)
			}
			return initRun(opts)
		},
	}
	cmd.Flags().BoolVar(&opts.Force, "force", false, "overwrite an existing file")
	return cmd
}

func initRun(opts *InitOptions) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if opts.Force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	file, err := os.OpenFile(opts.Path, flags, 0o644)
	if errors.Is(err, os.ErrExist) {
		return usageErrorf("%s already exists; keep it, or overwrite it with --force", opts.Path)
	}
	if err != nil {
		return fmt.Errorf("write stack file: %w", err)
	}
	if _, err := file.Write(stack.Example()); err != nil {
		file.Close()
		return fmt.Errorf("write stack file: %w", err)
	}
	if err := file.Close(); err != nil {
		return fmt.Errorf("write stack file: %w", err)
	}
	opts.IO.Statusf("Wrote %s. Next: instactl validate, then instactl sandbox up (or plan on AWS).", opts.Path)
	return nil
}
