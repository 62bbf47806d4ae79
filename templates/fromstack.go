package templates

import (
	"fmt"

	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
)

// Sandbox conventions shared with cloud/sandbox.
const (
	// SandboxDeviceDir is where the sandbox places one symlink per attached volume, named like
	// the requested device (sdf -> /dev/loop7).
	SandboxDeviceDir = "/run/instactl/dev"
	// SandboxTrustCIDR is trusted by postgres on sandbox hosts (everything stays on loopback).
	SandboxTrustCIDR = "127.0.0.0/8"
	// SandboxFstabPath lists the data volume's mount; the sandbox mounts it when a stopped host
	// starts (cloud/sandbox.FstabPath).
	SandboxFstabPath = "/etc/instagram/fstab"
	// SandboxRCLocalPath starts a host's services when a stopped host starts
	// (cloud/sandbox.RCLocalPath).
	SandboxRCLocalPath = "/var/lib/instagram/rc.local"
)

// FromStack builds the Data of host index of role from a parsed stack: the flavour follows
// st.Provider, and volumes, port, replication topology and app path follow the role and deploy
// sections. address is the host's private address, primaryAddress its primary's (ignored on a
// primary). Passwords and AppEnv are left to the caller; the result is validated.
func FromStack(st *stack.Stack, role string, index int, address, primaryAddress string) (Data, error) {
	r := st.Role(role)
	if r == nil {
		return Data{}, fmt.Errorf("templates: stack %s has no role %s", st.Name, role)
	}
	d := Data{
		Stack: st.Name, Role: role, Index: index, HostName: stack.HostName(role, index),
		Address: address, Port: r.Port, IsPrimary: r.IsPrimary(index),
		Devices: DeviceNames(r.Volumes.Count), Filesystem: r.Volumes.Filesystem, Mount: r.Volumes.Mount,
		AppPath: st.Deploy.Path,
	}
	if !d.IsPrimary {
		d.PrimaryAddress, d.PrimaryPort = primaryAddress, r.Port
	}
	if size := r.Volumes.Count * r.Volumes.SizeGiB * 1024; size > 0 {
		d.MaxWALMB = min(1024, max(128, size/4))
	}
	if st.Provider == "sandbox" {
		d.ServiceManager = ServiceManagerSandbox
		d.DeviceDir = SandboxDeviceDir
		d.ClientCIDR, d.TrustCIDR = SandboxTrustCIDR, SandboxTrustCIDR
		// Sandbox volumes are small loop images.
		d.WALKeepMB = 64
	} else {
		d.ServiceManager = ServiceManagerSystemd
		d.DeviceDir = "/dev"
		d.InstallPackages = true
	}
	if role == RoleApp {
		// The app's shard schemas live in the shards database on every group's primary.
		d.PgBouncer, d.Database = true, st.Shards.Database
		dbs, err := poolerDatabases(st)
		if err != nil {
			return Data{}, err
		}
		d.PoolerDatabases = dbs
	}
	if role == RolePostgres {
		peers, err := groupPeers(st, d.HostName)
		if err != nil {
			return Data{}, err
		}
		d.Peers = peers
		if d.WALArchive, err = walArchiveFromStack(st, d.HostName); err != nil {
			return Data{}, err
		}
	}
	d.Exporters = st.Role(RoleMonitor) != nil
	if role == RoleRedis && r.Replicas > 0 {
		d.RedisMinReplicas = 1
	}
	d = d.withDefaults()
	return d, d.Validate()
}

// poolerDatabases is one PgBouncer entry per Postgres group of the stack's topology, pointing
// at the group's primary as the stack file seeds it.
func poolerDatabases(st *stack.Stack) ([]PoolerDatabase, error) {
	topo, err := topology.FromStack(st)
	if err != nil {
		return nil, fmt.Errorf("templates: PgBouncer databases of stack %s: %w", st.Name, err)
	}
	var out []PoolerDatabase
	for _, g := range topo.OfKind(topology.KindPostgres) {
		m, err := g.PrimaryMember()
		if err != nil {
			return nil, fmt.Errorf("templates: PgBouncer databases of stack %s: %w", st.Name, err)
		}
		out = append(out, PoolerDatabase{Name: g.Name, Host: m.Addr.Addr().String(), Port: int(m.Addr.Port())})
	}
	return out, nil
}

// groupPeers lists the other members of host's replication group as "ADDRESS PORT".
func groupPeers(st *stack.Stack, host string) ([]string, error) {
	topo, err := topology.FromStack(st)
	if err != nil {
		return nil, fmt.Errorf("templates: peers of %s: %w", host, err)
	}
	g, ok := topo.GroupOf(host)
	if !ok {
		return nil, nil
	}
	var out []string
	for _, m := range g.Members {
		if m.Host != host {
			out = append(out, fmt.Sprintf("%s %d", m.Addr.Addr(), m.Addr.Port()))
		}
	}
	return out, nil
}
