package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Main runs instactl with the process's arguments and streams and returns the exit code.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, SystemIO(), os.Args[1:])
}

// Run executes one instactl command line and returns its exit code. Errors are printed once,
// here, to stderr.
func Run(ctx context.Context, io *IOStreams, args []string) int {
	root := NewCmdRoot(io)
	root.SetArgs(args)
	root.SetIn(io.In)
	root.SetOut(io.Out)
	root.SetErr(io.ErrOut)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var se silentExit
	if !errors.As(err, &se) {
		fmt.Fprintf(io.ErrOut, "error: %v\n", err)
	}
	return exitCode(err)
}

// rootOptions are the flags every command shares.
type rootOptions struct {
	stackPath string
	output    string
}

// NewCmdRoot builds the whole command tree. Nothing is global: each call makes a new tree.
func NewCmdRoot(io *IOStreams) *cobra.Command {
	ro := &rootOptions{}
	f := NewFactory(io, &ro.stackPath)
	cmd := &cobra.Command{
		Use:   "instactl",
		Short: "Run an Instagram-2011-style stack: provision, deploy, back up, shard",
		Long: `instactl is the control plane for a boring, proven stack: stateless app servers behind a
load balancer, sharded PostgreSQL with streaming replicas, Redis, memcached, photos in S3.

One stack file (instagram.yaml) declares it all. AWS tags are the only state.
Run it on AWS (provider: aws) or on this Linux machine (provider: sandbox).`,
		Example: `  # Write a documented stack file, check it, and bring up the local sandbox
  instactl init
  instactl validate
  instactl sandbox up

  # Every command that reports something can print JSON
  instactl sandbox status --output json`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			switch Output(ro.output) {
			case OutputText, OutputJSON:
				return nil
			}
			return usageErrorf("--output must be text or json (got %q)", ro.output)
		},
	}
	cmd.PersistentFlags().StringVar(&ro.stackPath, "stack", "", "stack file (default $INSTACTL_STACK or ./instagram.yaml)")
	cmd.PersistentFlags().StringVarP(&ro.output, "output", "o", "text", "output format: text or json")
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return withCode(ExitUsage, fmt.Errorf("%w\nsee `%s --help`", err, c.CommandPath()))
	})
	out := func() Output { return Output(ro.output) }

	cmd.AddCommand(
		NewCmdVersion(f, out),
		NewCmdInit(f, nil),
		NewCmdValidate(f, out),
		NewCmdRender(f, nil),
		NewCmdDemo(f, out),
		NewCmdStatus(f, out),
		newHelpTopic("exit-codes", "What instactl's exit codes mean", exitCodesHelp),
	)
	addSandboxCommands(cmd, f, out)
	addProvisionCommands(cmd, f, out)
	addDeployCommands(cmd, f, out)
	addBackupCommands(cmd, f, out)
	addShardCommands(cmd, f, out)
	addLoadgenCommands(cmd, f, out)
	addHostCommands(cmd, f, out)
	addFailoverCommands(cmd, f, out)
	addSwitchCommands(cmd, f, out)
	addMonitorCommands(cmd, f, out)
	addWALCommands(cmd, f)
	addWALInstallCommand(cmd, f, out)
	addKeeperCommands(cmd, f, out)
	return cmd
}

// newHelpTopic is a command with no Run: cobra lists it under "Additional help topics" and
// `instactl help NAME` prints it.
func newHelpTopic(name, short, long string) *cobra.Command {
	return &cobra.Command{Use: name, Short: short, Long: long}
}

// unexpectedArgs rejects positional arguments with a usage error (exit 2).
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%s takes no arguments (got %q)", cmd.CommandPath(), args)
	}
	return nil
}
