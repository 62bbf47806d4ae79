package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/cloud/sandbox"
	"github.com/instactl/instactl/stack"
)

// ScratchRole is the role tag of a temporary host made for a drill.
const ScratchRole = "scratch"

// NoScratchError says the provider cannot make a temporary scratch host: the caller must name
// an existing host of the stack to restore onto.
type NoScratchError struct {
	Provider string
	Target   string
	// Mount is the target role's mount point the host must have free.
	Mount string
}

func (e *NoScratchError) Error() string {
	return fmt.Sprintf("provider %s: pass --scratch HOST (a host of the stack with the %s binaries and a free %s mount point); temporary scratch hosts are created on the sandbox only",
		e.Provider, e.Target, e.Mount)
}

// CreateScratch starts a temporary host for a drill of a target's set, tagged with the stack and
// role ScratchRole, on the next free address after the stack's hosts, with the target role's
// mount point as a private directory. Only the sandbox can (*NoScratchError elsewhere): its hosts
// share this machine's database binaries, so a bare instance can run a restore.
func CreateScratch(ctx context.Context, env Env, target string) (cloud.Instance, error) {
	st := env.Stack
	if env.Provider.Name() != "sandbox" {
		return cloud.Instance{}, &NoScratchError{Provider: env.Provider.Name(), Target: target, Mount: roleMount(st, target)}
	}
	role := st.Role(target)
	if role == nil || role.Volumes.Mount == "" {
		return cloud.Instance{}, fmt.Errorf("verify: the stack has no role %s with a volume mount to restore into", target)
	}
	res, err := env.Provider.Describe(ctx, st.Name)
	if err != nil {
		return cloud.Instance{}, fmt.Errorf("describe stack %s: %w", st.Name, err)
	}
	used := map[string]bool{}
	for _, in := range res.Instances {
		used[in.PrivateAddress] = true
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	spec := cloud.InstanceSpec{Name: st.Name + "-scratch-" + suffix, Role: ScratchRole, Zone: st.Zone,
		ClientToken: "instactl-scratch-" + suffix,
		Tags:        map[string]string{cloud.TagStack: st.Name, sandbox.TagMounts: role.Volumes.Mount}}
	// The next free addresses after the stack's hosts: never an address the stack will claim,
	// never one outside the stack's range.
	addr := st.Network.AddressBase
	for range st.Hosts() {
		addr = addr.Next()
	}
	var lastErr error
	for i := 0; i < 8; i, addr = i+1, addr.Next() {
		if !addr.IsValid() || !addr.IsLoopback() {
			break
		}
		if used[addr.String()] {
			continue
		}
		spec.Address = addr.String()
		in, err := env.Provider.CreateInstance(ctx, spec)
		if err == nil {
			return in, nil
		}
		lastErr = err
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("no free loopback address after %s", lastHostAddr(st))
	}
	return cloud.Instance{}, fmt.Errorf("verify: create scratch host: %w", lastErr)
}

// TerminateScratch terminates a scratch host, even when ctx was cancelled (Ctrl-C).
func TerminateScratch(ctx context.Context, env Env, in cloud.Instance) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := env.Provider.TerminateInstances(cctx, []string{in.ID}); err != nil {
		return fmt.Errorf("terminate scratch host %s (%s): %w; remove it with instactl apply or sandbox down", in.Name, in.ID, err)
	}
	return nil
}

func lastHostAddr(st *stack.Stack) netip.Addr {
	a := st.Network.AddressBase
	for i := 1; i < len(st.Hosts()); i++ {
		a = a.Next()
	}
	return a
}

func roleMount(st *stack.Stack, target string) string {
	if r := st.Role(target); r != nil && r.Volumes.Mount != "" {
		return r.Volumes.Mount
	}
	return "data"
}
