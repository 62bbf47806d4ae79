package sandbox

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/internal/testenv"
)

// Address bases of this package's tests (distinct from the CLI's 127.0.10.x and from each other,
// so tests running at the same time never collide): 127.0.20.x - 127.0.26.x.

// requireSandbox ends the test unless the machine can run the sandbox.
func requireSandbox(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	for bin, pkg := range map[string]string{"sshd": "openssh-server", "nginx": "nginx", "mkfs.xfs": "xfsprogs",
		"xfs_freeze": "xfsprogs", "losetup": "mount", "unshare": "util-linux", "nsenter": "util-linux"} {
		testenv.Require(t, bin, pkg)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		testenv.Missing(t, "no loop devices (/dev/loop-control)")
	}
}

// newTestProvider makes a sandbox in a fresh directory; cleanup runs Down and checks it left
// nothing behind.
func newTestProvider(t *testing.T, base string) *Provider {
	t.Helper()
	requireSandbox(t)
	p, err := New(Config{Dir: t.TempDir(), AddressBase: netip.MustParseAddr(base),
		LBPort: testenv.FreePort(t, "127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { down(t, p) })
	return p
}

// down runs Down and checks that no process, loop device or directory of the sandbox remains.
func down(t *testing.T, p *Provider) {
	t.Helper()
	var sshdPIDs []int
	var ids []string
	var nginx int
	_ = p.view(func(s *state) error {
		for _, in := range s.Instances {
			if in.PID > 0 {
				sshdPIDs = append(sshdPIDs, in.PID)
			}
			ids = append(ids, in.ID)
		}
		nginx = s.NginxPID
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := p.Down(ctx); err != nil {
		t.Errorf("down: %v", err)
		return
	}
	for _, id := range ids {
		if procs := hostProcs(id); len(procs) > 0 {
			t.Errorf("after down, host %s still has processes %v", id, procs)
		}
	}
	for _, pid := range append(sshdPIDs, nginx) {
		if pid > 0 && strings.Contains(cmdline(pid), p.Dir()) {
			t.Errorf("after down, pid %d is alive: %s", pid, cmdline(pid))
		}
	}
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").CombinedOutput()
	if err != nil {
		t.Errorf("losetup --list: %v %s", err, out)
	}
	if strings.Contains(string(out), p.Dir()) {
		t.Errorf("after down, loop devices still map sandbox images:\n%s", out)
	}
	if _, err := os.Stat(p.Dir()); !os.IsNotExist(err) {
		t.Errorf("after down, %s still exists (%v)", p.Dir(), err)
	}
}

func tags(stack string) map[string]string { return map[string]string{cloud.TagStack: stack} }

func createHost(t *testing.T, p *Provider, stack, role string, index int, userData string) cloud.Instance {
	t.Helper()
	in, err := p.CreateInstance(context.Background(), cloud.InstanceSpec{
		Role: role, Index: index, UserData: userData, Tags: tags(stack),
		ClientToken: stack + "/" + role + "/" + strconv.Itoa(index),
	})
	if err != nil {
		t.Fatalf("create %s-%d: %v", role, index, err)
	}
	return in
}

// dial connects to a host as root with the sandbox key and strict known_hosts checking.
func dial(t *testing.T, p *Provider, in cloud.Instance, knownHostsFile string) (*ssh.Client, error) {
	t.Helper()
	signer, err := p.Signer()
	if err != nil {
		t.Fatal(err)
	}
	hk, err := knownhosts.New(knownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	return ssh.Dial("tcp", net.JoinHostPort(in.PublicAddress, strconv.Itoa(in.SSHPort)), &ssh.ClientConfig{
		User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: hk,
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519}, Timeout: 10 * time.Second,
	})
}

func mustDial(t *testing.T, p *Provider, in cloud.Instance) *ssh.Client {
	t.Helper()
	c, err := dial(t, p, in, p.KnownHostsPath())
	if err != nil {
		t.Fatalf("ssh %s (%s): %v", in.Name, in.PublicAddress, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sh runs a command over SSH and returns its stdout; stderr goes into the error.
func sh(c *ssh.Client, cmd string) (string, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr = &out, &errb
	if err := s.Run(cmd); err != nil {
		return out.String(), &cmdError{cmd: cmd, err: err, stderr: errb.String()}
	}
	return out.String(), nil
}

type cmdError struct {
	cmd, stderr string
	err         error
}

func (e *cmdError) Error() string { return e.cmd + ": " + e.err.Error() + ": " + e.stderr }

func mustSh(t *testing.T, c *ssh.Client, cmd string) string {
	t.Helper()
	out, err := sh(c, cmd)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// volumeUserData waits for the attached volume (as cloud-init user-data waits for an EBS
// device), makes XFS on it, mounts it, records it in the host's fstab and writes a file.
const volumeUserData = `set -eu
dev=/run/instactl/dev/sdf
for i in $(seq 1 600); do [ -e "$dev" ] && break; sleep 0.1; done
mkfs.xfs -q "$dev"
mount "$dev" /var/lib/postgresql
echo "$dev /var/lib/postgresql xfs defaults 0 0" >> /etc/instagram/fstab
echo "written by $(cat /run/instactl/host/meta/name) at $INSTACTL_LOCAL_IPV4" > /var/lib/postgresql/data.txt
sync
touch /var/lib/instagram/bootstrap.done
`

func TestHostsVolumesSnapshots(t *testing.T) {
	t.Parallel()
	p := newTestProvider(t, "127.0.20.0")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const stack = "hvs"

	hosts := []cloud.Instance{
		createHost(t, p, stack, "pg", 0, volumeUserData),
		createHost(t, p, stack, "pg", 1, ""),
		createHost(t, p, stack, "app", 0, ""),
	}
	again := createHost(t, p, stack, "pg", 0, volumeUserData)
	if again.ID != hosts[0].ID {
		t.Fatalf("same client token made a second instance: %s, %s", hosts[0].ID, again.ID)
	}
	for i, in := range hosts {
		if want := "127.0.20." + strconv.Itoa(i+1); in.PrivateAddress != want || in.State != "running" {
			t.Errorf("host %d = %s %s, want %s running", i, in.PrivateAddress, in.State, want)
		}
	}

	// Private file systems: each host writes its own /etc/instagram/who; the machine has none.
	clients := make([]*ssh.Client, len(hosts))
	for i, in := range hosts {
		clients[i] = mustDial(t, p, in)
		mustSh(t, clients[i], "echo "+in.Name+" > /etc/instagram/who && touch /tmp/private-tmp && echo hi > /root/.private")
	}
	for i, in := range hosts {
		if got := strings.TrimSpace(mustSh(t, clients[i], "cat /etc/instagram/who")); got != in.Name {
			t.Errorf("%s sees /etc/instagram/who = %q", in.Name, got)
		}
		if got := strings.TrimSpace(mustSh(t, clients[i], "cat /run/instactl/host/meta/local-ipv4")); got != in.PrivateAddress {
			t.Errorf("%s metadata local-ipv4 = %q", in.Name, got)
		}
	}
	for _, f := range []string{"/etc/instagram/who", "/tmp/private-tmp", "/root/.private"} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s exists on the machine (isolation broken): %v", f, err)
		}
	}
	hp, err := p.HostPath(ctx, hosts[1].ID, "/etc/instagram/who")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(hp); strings.TrimSpace(string(b)) != hosts[1].Name {
		t.Errorf("HostPath read %q", b)
	}

	// Strict host key checking: host 1's key does not pass for host 2.
	wrong := filepath.Join(t.TempDir(), "known_hosts")
	kh, _ := os.ReadFile(p.KnownHostsPath())
	swapped := strings.Replace(string(kh), "["+hosts[1].PrivateAddress+"]", "[tmp]", 1)
	swapped = strings.Replace(swapped, "["+hosts[2].PrivateAddress+"]", "["+hosts[1].PrivateAddress+"]", 1)
	if err := os.WriteFile(wrong, []byte(swapped), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err := dial(t, p, hosts[1], wrong); err == nil {
		c.Close()
		t.Errorf("ssh accepted a wrong host key")
	}

	// A volume for pg-0: the user-data waits for it, formats and mounts it.
	vol, err := p.CreateVolume(ctx, cloud.VolumeSpec{SizeGiB: 100, Tags: tags(stack)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := p.CreateVolume(ctx, cloud.VolumeSpec{SizeGiB: 1, Zone: "elsewhere-1b", Tags: tags(stack)})
	if err != nil {
		t.Fatal(err)
	}
	third, err := p.CreateVolume(ctx, cloud.VolumeSpec{SizeGiB: 1, Tags: tags(stack)})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AttachVolume(ctx, vol.ID, hosts[0].ID, "/dev/sdf"); err != nil {
		t.Fatal(err)
	}
	if err := p.AttachVolume(ctx, vol.ID, hosts[0].ID, "/dev/sdf"); err != nil {
		t.Errorf("attaching again as asked must succeed: %v", err)
	}
	if err := p.WaitBootstrap(ctx, hosts[0].ID); err != nil {
		t.Fatal(err)
	}
	if done, failed, err := p.BootstrapStatus(ctx, hosts[1].ID); !done || failed != "" || err != nil {
		t.Errorf("host without user-data: done %v failed %q err %v", done, failed, err)
	}
	for _, bad := range []struct{ what, vol, inst, dev string }{
		{"already attached", vol.ID, hosts[1].ID, "/dev/sdg"},
		{"device in use", third.ID, hosts[0].ID, "/dev/sdf"},
		{"other zone", other.ID, hosts[0].ID, "/dev/sdh"},
		{"bad device name", other.ID, hosts[0].ID, "sdh"},
	} {
		if err := p.AttachVolume(ctx, bad.vol, bad.inst, bad.dev); err == nil {
			t.Errorf("attach (%s) accepted", bad.what)
		} else {
			t.Logf("attach (%s) refused: %v", bad.what, err)
		}
	}
	if err := p.DeleteVolume(ctx, vol.ID); err == nil {
		t.Errorf("deleting an attached volume was accepted")
	}
	if err := p.DetachVolume(ctx, vol.ID, hosts[0].ID, "/dev/sdf"); err == nil || !strings.Contains(err.Error(), "mounted at /var/lib/postgresql") {
		t.Errorf("detaching a mounted volume: %v, want a refusal naming the mount point", err)
	}
	if got := mustSh(t, clients[0], "cat /var/lib/postgresql/data.txt"); !strings.Contains(got, "written by pg-0 at 127.0.20.1") {
		t.Errorf("data.txt = %q", got)
	}
	if _, err := os.Stat("/var/lib/postgresql/data.txt"); !os.IsNotExist(err) {
		t.Errorf("the volume's file shows on the machine: %v", err)
	}

	// Snapshot while frozen, restore on pg-1.
	mustSh(t, clients[0], "echo more >> /var/lib/postgresql/data.txt && xfs_freeze -f /var/lib/postgresql")
	snaps, err := p.CreateSnapshots(ctx, hosts[0].ID, []string{vol.ID}, map[string]string{cloud.TagSet: "s1"})
	mustSh(t, clients[0], "xfs_freeze -u /var/lib/postgresql")
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 1 || snaps[0].State != "completed" || snaps[0].Tags[cloud.TagStack] != stack ||
		snaps[0].Tags[cloud.TagSet] != "s1" || snaps[0].StartTime.IsZero() || snaps[0].SizeGiB != 100 {
		t.Fatalf("snapshots = %+v", snaps)
	}
	if listed, err := p.DescribeSnapshots(ctx, stack); err != nil || len(listed) != 1 {
		t.Errorf("describe snapshots = %v, %v", listed, err)
	}
	if listed, _ := p.DescribeSnapshots(ctx, "other"); len(listed) != 0 {
		t.Errorf("another stack sees snapshots %v", listed)
	}
	restored, err := p.CreateVolume(ctx, cloud.VolumeSpec{SnapshotID: snaps[0].ID, Tags: tags(stack)})
	if err != nil {
		t.Fatal(err)
	}
	if restored.SizeGiB != 100 || restored.SnapshotID != snaps[0].ID {
		t.Errorf("restored volume = %+v", restored)
	}
	if err := p.AttachVolume(ctx, restored.ID, hosts[1].ID, "/dev/sdg"); err != nil {
		t.Fatal(err)
	}
	// nouuid: the original, with the same XFS UUID, is mounted on the same kernel.
	got := mustSh(t, clients[1], "mount -o nouuid /run/instactl/dev/sdg /var/lib/postgresql && cat /var/lib/postgresql/data.txt")
	if !strings.Contains(got, "written by pg-0") || !strings.Contains(got, "more") {
		t.Errorf("restored data.txt = %q", got)
	}
	if err := p.DetachVolume(ctx, restored.ID, hosts[1].ID, "/dev/sdg"); err == nil {
		t.Errorf("detach of a mounted volume accepted")
	}
	mustSh(t, clients[1], "umount /var/lib/postgresql")
	if err := p.DetachVolume(ctx, restored.ID, hosts[1].ID, "/dev/sdg"); err != nil {
		t.Fatal(err)
	}
	if out := mustSh(t, clients[1], "ls /run/instactl/dev"); strings.TrimSpace(out) != "" {
		t.Errorf("device link left after detach: %q", out)
	}

	// Terminating pg-0 with its volume mounted frees the volume and its loop device.
	if err := p.TerminateInstances(ctx, []string{hosts[0].ID}); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("losetup", "-j", p.imagePath(vol.ID)).CombinedOutput(); len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("loop device still attached after terminate: %s", out)
	}
	if procs := hostProcs(hosts[0].ID); len(procs) > 0 {
		t.Errorf("processes left in terminated host: %v", procs)
	}
	res, err := p.Describe(ctx, stack)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Instances) != 2 {
		t.Errorf("describe lists %d instances after terminate, want 2", len(res.Instances))
	}
	for _, v := range res.Volumes {
		if v.ID == vol.ID && (v.State != "available" || v.InstanceID != "") {
			t.Errorf("volume after terminate = %+v", v)
		}
	}
	if kh, _ := os.ReadFile(p.KnownHostsPath()); strings.Contains(string(kh), "["+hosts[0].PrivateAddress+"]") {
		t.Errorf("known_hosts still lists the terminated host")
	}
	// The freed address is handed out again.
	if in := createHost(t, p, stack, "pg", 2, ""); in.PrivateAddress != hosts[0].PrivateAddress {
		t.Errorf("new host got %s, want the freed %s", in.PrivateAddress, hosts[0].PrivateAddress)
	}
}

func TestRestartStopped(t *testing.T) {
	t.Parallel()
	p := newTestProvider(t, "127.0.22.0")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	in := createHost(t, p, "rs", "pg", 0, volumeUserData)
	vol, err := p.CreateVolume(ctx, cloud.VolumeSpec{SizeGiB: 1, Tags: tags("rs")})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AttachVolume(ctx, vol.ID, in.ID, "/dev/sdf"); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitBootstrap(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	c := mustDial(t, p, in)
	mustSh(t, c, "echo 'echo ran > /var/lib/instagram/rc.local.ran' > /var/lib/instagram/rc.local")
	c.Close()

	// A "reboot": every process of the host dies and its loop device goes away.
	var loop string
	_ = p.view(func(s *state) error {
		r, _ := s.instance(in.ID)
		v, _ := s.volume(vol.ID)
		loop = v.Loop
		return killHost(in.ID, r.PID)
	})
	if out, err := exec.Command("losetup", "-d", loop).CombinedOutput(); err != nil {
		t.Fatalf("losetup -d %s: %v %s", loop, err, out)
	}
	res, err := p.Describe(ctx, "rs")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Instances) != 1 || res.Instances[0].State != "stopped" {
		t.Fatalf("after the processes died, describe = %+v; want stopped", res.Instances)
	}
	restarted, err := p.StartStopped(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(restarted) != 1 || restarted[0] != in.ID {
		t.Errorf("restarted %v, want [%s]", restarted, in.ID)
	}
	if res, _ := p.Describe(ctx, "rs"); res.Instances[0].State != "running" {
		t.Errorf("after StartStopped, state %s", res.Instances[0].State)
	}
	c = mustDial(t, p, in) // same host key: known_hosts still valid
	if got := mustSh(t, c, "cat /var/lib/postgresql/data.txt"); !strings.Contains(got, "written by pg-0") {
		t.Errorf("after restart, data.txt = %q (fstab not re-mounted?)", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := sh(c, "test -e /var/lib/instagram/rc.local.ran"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("rc.local did not run after restart")
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if done, failed, err := p.BootstrapStatus(ctx, in.ID); !done || failed != "" || err != nil {
		t.Errorf("bootstrap status after restart: %v %q %v", done, failed, err)
	}
	if again, err := p.StartStopped(ctx); err != nil || len(again) != 0 {
		t.Errorf("second StartStopped restarted %v (%v); want nothing", again, err)
	}
}

func TestBootstrapFailure(t *testing.T) {
	t.Parallel()
	p := newTestProvider(t, "127.0.24.0")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	in := createHost(t, p, "bf", "app", 0, "echo about to fail; exit 3\n")
	err := p.WaitBootstrap(ctx, in.ID)
	if err == nil || !strings.Contains(err.Error(), "status 3") || !strings.Contains(err.Error(), "about to fail") {
		t.Errorf("WaitBootstrap = %v; want the exit status and the log", err)
	}
}

func TestKeyPairAuthorized(t *testing.T) {
	t.Parallel()
	p := newTestProvider(t, "127.0.25.0")
	ctx := context.Background()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := ssh.NewPublicKey(pub)
	if err := p.EnsureKeyPair(ctx, "kp", "operator", string(ssh.MarshalAuthorizedKey(sp))); err != nil {
		t.Fatal(err)
	}
	in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Role: "app", KeyName: "operator", Tags: tags("kp"),
		Address: "127.0.25.9"})
	if err != nil {
		t.Fatal(err)
	}
	if in.PrivateAddress != "127.0.25.9" {
		t.Errorf("asked for 127.0.25.9, got %s", in.PrivateAddress)
	}
	if _, err := p.CreateInstance(ctx, cloud.InstanceSpec{Role: "app", Index: 1, Tags: tags("kp"), Address: "127.0.25.9"}); err == nil {
		t.Errorf("a second host on a taken address was accepted")
	}
	signer, _ := ssh.NewSignerFromKey(priv)
	hk, err := knownhosts.New(p.KnownHostsPath())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", net.JoinHostPort(in.PublicAddress, strconv.Itoa(in.SSHPort)), &ssh.ClientConfig{
		User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: hk, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("ssh with the key pair's key: %v", err)
	}
	defer c.Close()
	if got := strings.TrimSpace(mustSh(t, c, "cat /run/instactl/host/meta/instance-id")); got != in.ID {
		t.Errorf("instance-id = %q", got)
	}
	if _, err := p.CreateInstance(ctx, cloud.InstanceSpec{Role: "app", Index: 2}); err == nil {
		t.Errorf("an instance without the stack tag was accepted")
	}
}
