package cli

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/instactl/instactl/internal/sandboxctl"
	"github.com/instactl/instactl/stack"
	"github.com/spf13/cobra"
)

// InitOptions are the inputs of `instactl init`.
type InitOptions struct {
	IO    *IOStreams
	Path  string
	Force bool
	// AddressFrom is the first address base tried for the sandbox (zero: the example's).
	AddressFrom netip.Addr
}

// NewCmdInit writes the documented example stack file. runF replaces the run in tests.
func NewCmdInit(f *Factory, runF func(*InitOptions) error) *cobra.Command {
	opts := &InitOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write a commented example stack file",
		Long: `Write instagram.yaml (or --stack PATH): a stack file that documents every key with its
default. As written it runs on the local sandbox; set provider: aws and image to use AWS.
When a sandbox on this machine already uses the example's name, addresses or ports (make demo
leaves one up), init picks the next free ones and says so.`,
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
	data, choice := initExample(opts)
	if _, err := file.Write(data); err != nil {
		file.Close()
		return fmt.Errorf("write stack file: %w", err)
	}
	if err := file.Close(); err != nil {
		return fmt.Errorf("write stack file: %w", err)
	}
	if choice.Taken != "" {
		last := choice.AddressBase
		for i := 1; i < choice.hosts; i++ {
			last = last.Next()
		}
		opts.IO.Statusf("A sandbox on this machine uses %s; this stack gets name %s, addresses %s-%s, lb_port %d, moto_port %d.",
			choice.Taken, choice.Name, choice.AddressBase, last, choice.LBPort, choice.MotoPort)
	}
	opts.IO.Statusf("Wrote %s. Next: instactl validate, then instactl sandbox up (or plan on AWS).", opts.Path)
	return nil
}

// initChoice is what init wrote instead of the example's defaults.
type initChoice struct {
	sandboxctl.Choice
	hosts int
}

// initExample is the example stack file with a name, sandbox directory, address range and
// ports that no sandbox on this machine uses.
func initExample(opts *InitOptions) ([]byte, initChoice) {
	data := stack.Example()
	st, err := stack.Parse("example.yaml", data)
	if err != nil {
		return data, initChoice{} // the example is tested to be valid; write it as it is
	}
	from := opts.AddressFrom
	if !from.IsValid() {
		from = st.Network.AddressBase
	}
	c := initChoice{Choice: sandboxctl.Choose(st.Name, from, len(st.Hosts()), st.Sandbox.LBPort, st.Sandbox.MotoPort), hosts: len(st.Hosts())}
	if c.Taken == "" || !c.AddressBase.IsValid() {
		c.Taken = ""
		return data, c
	}
	s := string(data)
	for _, r := range [][2]string{
		{"\nname: " + st.Name + "\n", "\nname: " + c.Name + "\n"},
		{"dir: " + st.Sandbox.Dir + " ", "dir: " + c.Dir + " "},
		{"address_base: " + st.Network.AddressBase.String() + "\n", "address_base: " + c.AddressBase.String() + "\n"},
		{fmt.Sprintf("lb_port: %d ", st.Sandbox.LBPort), fmt.Sprintf("lb_port: %d ", c.LBPort)},
		{fmt.Sprintf("moto_port: %d ", st.Sandbox.MotoPort), fmt.Sprintf("moto_port: %d ", c.MotoPort)},
	} {
		s = strings.Replace(s, r[0], r[1], 1)
	}
	return []byte(s), c
}
