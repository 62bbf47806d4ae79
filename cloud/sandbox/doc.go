// Package sandbox is the local cloud: a cloud.Provider on one Linux machine (as root), so every
// integration test and `instactl sandbox up` run the same provisioning, deploy and backup code
// as AWS.
//
//   - An instance is a host: an OpenSSH sshd on its own loopback address (Config.AddressBase+n,
//     port Config.SSHPort) in a mount namespace of its own. Inside it /opt/instagram,
//     /etc/instagram, /var/lib/instagram, /var/log/instagram, /root, /tmp and the data
//     directories (Config.DataMounts, RoleMounts, TagMounts) are private directories from
//     Dir/hosts/ID/fs, and /run is a private tmpfs. A host's files are reachable from the machine
//     at /proc/PID/root/PATH (HostPath). The host key is in Dir/known_hosts; the client key every
//     host accepts for root is Dir/keys/id_ed25519 (KeyPath, Signer, SSHConfigPath).
//   - User-data runs once, like cloud-init, as root inside the host; it reports through
//     /var/lib/instagram/bootstrap.done or bootstrap.failed (BootstrapStatus, WaitBootstrap).
//     The host's address and id are in the environment (INSTACTL_LOCAL_IPV4, ...) and in
//     /run/instactl/host/meta.
//   - A volume is a sparse image attached as a loop device and linked inside the host as
//     /run/instactl/dev/sdf for device /dev/sdf; XFS and xfs_freeze work on it. A snapshot is a
//     sparse copy of the image, taken while the caller keeps the file system frozen.
//   - The load balancer is nginx on Config.LBAddress:LBPort; registration rewrites its config
//     and reloads it (old workers drain). Health is the sandbox's own HTTP check.
//   - Security groups and key pairs are recorded, not enforced (all hosts share loopback), except
//     that a key pair's public key is authorized on hosts created with it.
//
// All state is in Config.Dir (state.json under a flock), so processes come and go: hosts and
// nginx run detached. After a reboot, Describe reports hosts "stopped" and StartStopped brings
// them back. StopInstances stops a host as EC2 does (with force, like a power cut): it stays
// recorded "stopped", keeps its volumes, address and registrations, and only StartInstances
// boots it again, never StartStopped. Down removes everything. The sandbox kills only processes it can prove are its own
// (by PID it recorded, or by a host namespace's mount table), never by name.
package sandbox
