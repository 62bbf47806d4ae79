package provision

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/instactl/instactl/cloud"
)

// Destroy plans the deletion of everything tagged with stackName, and nothing else: out of the
// LB, the LB, instances, volumes, security groups, the key pair, and the edge (DNS records,
// CDN, role, photo bucket). A bucket holding objects is refused unless ForceDeleteData.
// Apply executes it.
func Destroy(ctx context.Context, p cloud.Provider, stackName string, opts ...DestroyOption) (Plan, error) {
	var cfg destroyConfig
	for _, o := range opts {
		o(&cfg)
	}
	actual, err := p.Describe(ctx, stackName)
	if err != nil {
		return Plan{}, fmt.Errorf("destroy %s: %w", stackName, err)
	}
	plan := Compute(DesiredState{Stack: stackName}, actual)
	if err := checkBuckets(ctx, p, &plan, cfg.forceDeleteData); err != nil {
		return Plan{}, fmt.Errorf("destroy %s: %w", stackName, err)
	}
	return plan, nil
}

// Host is one live host of a stack, as deploys, backups and shard moves need it.
type Host struct {
	Role           string       `json:"role"`
	Index          int          `json:"index"`
	Name           string       `json:"name"`
	ID             string       `json:"id"`
	Type           string       `json:"type"`
	Zone           string       `json:"zone"`
	PrivateAddress string       `json:"private_address"`
	PublicAddress  string       `json:"public_address"`
	SSHPort        int          `json:"ssh_port"`
	State          string       `json:"state"`
	Volumes        []HostVolume `json:"volumes,omitempty"`
	// LoadBalancers the host is registered with.
	LoadBalancers []string `json:"load_balancers,omitempty"`
}

// HostVolume is a data volume attached to a host.
type HostVolume struct {
	ID      string `json:"id"`
	Device  string `json:"device"`
	SizeGiB int    `json:"size_gib"`
}

// Inventory lists the live hosts of stackName by role and index, with their attached volumes
// (by device) and LB membership.
func Inventory(ctx context.Context, p cloud.Provider, stackName string) ([]Host, error) {
	r, err := p.Describe(ctx, stackName)
	if err != nil {
		return nil, fmt.Errorf("inventory of %s: %w", stackName, err)
	}
	var hosts []Host
	for _, in := range r.Instances {
		if in.Role == "" {
			continue
		}
		h := Host{Role: in.Role, Index: in.Index, Name: in.Name, ID: in.ID, Type: in.Type, Zone: in.Zone,
			PrivateAddress: in.PrivateAddress, PublicAddress: in.PublicAddress, SSHPort: in.SSHPort, State: in.State}
		for _, v := range r.Volumes {
			if v.InstanceID == in.ID {
				h.Volumes = append(h.Volumes, HostVolume{ID: v.ID, Device: v.Device, SizeGiB: v.SizeGiB})
			}
		}
		slices.SortFunc(h.Volumes, func(a, b HostVolume) int { return strings.Compare(a.Device, b.Device) })
		for _, lb := range r.LoadBalancers {
			if slices.Contains(lb.Instances, in.ID) {
				h.LoadBalancers = append(h.LoadBalancers, lb.Name)
			}
		}
		hosts = append(hosts, h)
	}
	slices.SortFunc(hosts, func(a, b Host) int {
		if a.Role != b.Role {
			return strings.Compare(a.Role, b.Role)
		}
		if a.Index != b.Index {
			return a.Index - b.Index
		}
		return strings.Compare(a.ID, b.ID)
	})
	return hosts, nil
}
