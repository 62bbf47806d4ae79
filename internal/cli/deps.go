package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/instactl/instactl/cloud"
	cloudaws "github.com/instactl/instactl/cloud/aws"
	"github.com/instactl/instactl/cloud/sandbox"
	"github.com/instactl/instactl/homedir"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
)

// awsOptions are the AWS provider's options: the defaults (waits and retries sized for AWS);
// tests scale the waits and backoff down to milliseconds.
var awsOptions cloudaws.Options

// newProvider builds the cloud the stack names: AWS through the SDK's standard configuration
// (profiles, AWS_REGION, AWS_ENDPOINT_URL), or the sandbox on this machine.
func newProvider(ctx context.Context, st *stack.Stack) (cloud.Provider, error) {
	switch st.Provider {
	case "sandbox":
		return newSandbox(st)
	case "aws":
		cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(st.Region))
		if err != nil {
			return nil, fmt.Errorf("load AWS configuration: %w", err)
		}
		// The stack file's DNS names are the ownership of its records (Route 53 has no tags).
		opts := awsOptions
		opts.DNSZone, opts.DNSNames = st.DNS.Zone, provision.DNSNames(st)
		return cloudaws.New(cfg, opts), nil
	}
	return nil, fmt.Errorf("%s: unknown provider %q", st.Path, st.Provider)
}

func newSandbox(st *stack.Stack) (*sandbox.Provider, error) {
	if os.Geteuid() != 0 {
		return nil, usageErrorf("the sandbox needs root (loop devices, mount namespaces); run as root")
	}
	mounts := map[string][]string{}
	for _, r := range st.Roles {
		if r.Volumes.Count > 0 {
			mounts[r.Name] = []string{r.Volumes.Mount}
		}
	}
	return sandbox.New(sandbox.Config{
		Dir:           st.Sandbox.Dir,
		Region:        st.Region,
		Zone:          st.Zone,
		AddressBase:   st.Network.AddressBase,
		SSHPort:       st.SSH.Port,
		VolumeSizeMiB: st.Sandbox.VolumeSizeMiB,
		LBPort:        st.Sandbox.LBPort,
		RoleMounts:    mounts,
	})
}

// sshConfig is how instactl reaches the stack's hosts. Host keys are always checked; on the
// sandbox the known_hosts file is the one the sandbox writes as it creates hosts.
func sshConfig(st *stack.Stack, acceptNew bool) remote.Config {
	return remote.Config{
		User:               st.SSH.User,
		Port:               st.SSH.Port,
		IdentityFiles:      []string{st.SSH.Key},
		UseAgent:           st.Provider == "aws",
		KnownHostsFile:     st.SSH.KnownHosts,
		AcceptNewHostKeys:  acceptNew,
		MaxConcurrentDials: 32,
	}
}

// stateDir is where instactl keeps local records (deploy journals and audit log, backup
// manifests): inside the sandbox directory, or under $XDG_STATE_HOME for AWS stacks.
func stateDir(st *stack.Stack) string {
	if st.Provider == "sandbox" {
		return filepath.Join(st.Sandbox.Dir, "state")
	}
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" {
		base = filepath.Join(homedir.Expand("~"), ".local", "state")
	}
	return filepath.Join(base, "instactl", st.Name)
}
