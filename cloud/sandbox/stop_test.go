package sandbox

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/instactl/instactl/cloud"
)

// guardScript runs in a host until it is killed; on SIGTERM it records a clean shutdown on the
// volume first, as postgres writes its shutdown checkpoint. Its command line carries the word
// stop-guard, so the test can tell it from a process that reused its PID.
const guardScript = `rm -f /tmp/guard.pid
setsid sh -c 'echo $$ > /tmp/guard.tmp && mv /tmp/guard.tmp /tmp/guard.pid; trap "echo clean > /var/lib/postgresql/shutdown.txt; sync; exit 0" TERM; while :; do sleep 0.2; done # stop-guard' </dev/null >/dev/null 2>&1 &
for i in $(seq 1 100); do [ -s /tmp/guard.pid ] && break; sleep 0.05; done
cat /tmp/guard.pid`

// startGuard starts guardScript in host id and returns its PID (the host shares the machine's
// PID namespace).
func startGuard(t *testing.T, c *ssh.Client, id string) int {
	t.Helper()
	pid, err := strconv.Atoi(strings.TrimSpace(mustSh(t, c, guardScript)))
	if err != nil {
		t.Fatalf("guard pid: %v", err)
	}
	if !strings.Contains(cmdline(pid), "stop-guard") || !nsIsHost(pid, id) {
		t.Fatalf("guard %d is not running in host %s: %q", pid, id, cmdline(pid))
	}
	return pid
}

// TestStopStartInstances: a forced stop is a power cut (every process of the host dies at once,
// and none gets to shut down cleanly), a stop keeps the host's record, volume, loop device and
// known_hosts line, StartStopped leaves a stopped host alone, and StartInstances boots it with
// its volume mounted again, the data intact, and rc.local run. A stop without force lets the
// processes shut down cleanly.
func TestStopStartInstances(t *testing.T) {
	t.Parallel()
	p := newTestProvider(t, "127.0.26.0")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const stack = "ss"
	in := createHost(t, p, stack, "pg", 0, volumeUserData)
	other := createHost(t, p, stack, "pg", 1, "")
	vol, err := p.CreateVolume(ctx, cloud.VolumeSpec{SizeGiB: 1, Tags: tags(stack)})
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
	mustSh(t, c, "echo 'echo ran >> /var/lib/instagram/rc.local.ran' > /var/lib/instagram/rc.local && echo before-stop > /var/lib/postgresql/keep.txt && sync")
	guard := startGuard(t, c, in.ID)
	var loop string
	_ = p.view(func(s *state) error {
		v, _ := s.volume(vol.ID)
		loop = v.Loop
		return nil
	})
	sshAddr := net.JoinHostPort(in.PrivateAddress, strconv.Itoa(in.SSHPort))
	lb, err := p.CreateLoadBalancer(ctx, cloud.LoadBalancer{Name: stack, ListenerPort: 80, TargetPort: 8000,
		HealthCheck: "/healthz", Tags: tags(stack)})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RegisterInstances(ctx, lb.Name, []string{in.ID}); err != nil {
		t.Fatal(err)
	}

	if err := p.StopInstances(ctx, []string{in.ID}, true); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if procs := hostProcs(in.ID); len(procs) > 0 {
		t.Errorf("after a forced stop, host processes are alive: %v", procs)
	}
	if strings.Contains(cmdline(guard), "stop-guard") {
		t.Errorf("after a forced stop, the guard process %d is alive", guard)
	}
	if conn, err := net.DialTimeout("tcp", sshAddr, 2*time.Second); err == nil {
		conn.Close()
		t.Errorf("after a forced stop, sshd still answers on %s", sshAddr)
	}
	checkStopped := func(when string) {
		t.Helper()
		res, err := p.Describe(ctx, stack)
		if err != nil {
			t.Fatal(err)
		}
		states := map[string]string{}
		for _, i := range res.Instances {
			states[i.ID] = i.State
		}
		if states[in.ID] != "stopped" || states[other.ID] != "running" {
			t.Errorf("%s: states %v; want %s stopped, %s running", when, states, in.ID, other.ID)
		}
		for _, v := range res.Volumes {
			if v.ID == vol.ID && (v.State != "in-use" || v.InstanceID != in.ID || v.Device != "/dev/sdf") {
				t.Errorf("%s: volume = %+v; want in-use on %s", when, v, in.ID)
			}
		}
		_ = p.view(func(s *state) error {
			r, _ := s.instance(in.ID)
			v, _ := s.volume(vol.ID)
			if r.State != "stopped" || r.PID != 0 {
				t.Errorf("%s: record state %s pid %d; want stopped, 0", when, r.State, r.PID)
			}
			if v.Loop != loop || loopBacking(loop) != p.imagePath(vol.ID) {
				t.Errorf("%s: volume loop %s (backing %q); want %s still mapping %s", when, v.Loop, loopBacking(loop), loop, p.imagePath(vol.ID))
			}
			return nil
		})
		if kh, _ := os.ReadFile(p.KnownHostsPath()); !strings.Contains(string(kh), "["+in.PrivateAddress+"]") {
			t.Errorf("%s: known_hosts lost the stopped host", when)
		}
	}
	checkStopped("after a forced stop")
	// Like an EC2 instance, a stopped host stays registered and fails its health checks.
	health, err := p.InstanceHealth(ctx, lb.Name)
	if err != nil || len(health) != 1 || health[0].InstanceID != in.ID || health[0].State != "OutOfService" ||
		!strings.Contains(health[0].Reason, "not running") {
		t.Errorf("health of the stopped host = %+v, %v; want it registered, OutOfService, not running", health, err)
	}
	if err := p.StopInstances(ctx, []string{in.ID}, true); err != nil {
		t.Errorf("stopping a stopped host: %v", err)
	}
	// A fenced host must not come back by itself: `sandbox up` (StartStopped) leaves it stopped.
	if restarted, err := p.StartStopped(ctx); err != nil || len(restarted) != 0 {
		t.Errorf("StartStopped restarted %v (%v); want nothing", restarted, err)
	}
	checkStopped("after StartStopped")
	if conn, err := net.DialTimeout("tcp", sshAddr, 2*time.Second); err == nil {
		conn.Close()
		t.Errorf("after StartStopped, the stopped host's sshd answers")
	}

	if err := p.StartInstances(ctx, []string{in.ID}); err != nil {
		t.Fatal(err)
	}
	res, err := p.Describe(ctx, stack)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range res.Instances {
		if i.State != "running" {
			t.Errorf("after start, %s is %s", i.ID, i.State)
		}
	}
	c = mustDial(t, p, in) // same host key: known_hosts still valid
	if got := strings.TrimSpace(mustSh(t, c, "cat /var/lib/postgresql/keep.txt")); got != "before-stop" {
		t.Errorf("after start, keep.txt = %q (volume not mounted again?)", got)
	}
	if out, err := sh(c, "cat /var/lib/postgresql/shutdown.txt"); err == nil {
		t.Errorf("the forced stop let the guard shut down cleanly: shutdown.txt = %q", out)
	}
	waitFile(t, c, "/var/lib/instagram/rc.local.ran")
	var pid int
	_ = p.view(func(s *state) error { r, _ := s.instance(in.ID); pid = r.PID; return nil })
	if err := p.StartInstances(ctx, []string{in.ID, other.ID}); err != nil {
		t.Errorf("starting running hosts: %v", err)
	}
	_ = p.view(func(s *state) error {
		if r, _ := s.instance(in.ID); r.PID != pid {
			t.Errorf("starting a running host restarted it: sshd %d became %d", pid, r.PID)
		}
		return nil
	})

	// Without force, the host's processes get SIGTERM and shut down cleanly.
	guard = startGuard(t, c, in.ID)
	if err := p.StopInstances(ctx, []string{in.ID}, false); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if strings.Contains(cmdline(guard), "stop-guard") {
		t.Errorf("after a clean stop, the guard process %d is alive", guard)
	}
	checkStopped("after a clean stop")
	if err := p.StartInstances(ctx, []string{in.ID}); err != nil {
		t.Fatal(err)
	}
	c = mustDial(t, p, in)
	if got := strings.TrimSpace(mustSh(t, c, "cat /var/lib/postgresql/shutdown.txt")); got != "clean" {
		t.Errorf("after a clean stop, shutdown.txt = %q; want the guard's clean shutdown", got)
	}

	// A stopped host is terminated like a running one: its volume and loop device are freed.
	if err := p.StopInstances(ctx, []string{in.ID}, true); err != nil {
		t.Fatal(err)
	}
	if err := p.TerminateInstances(ctx, []string{in.ID}); err != nil {
		t.Fatal(err)
	}
	if loops := loopsFor(p.imagePath(vol.ID)); len(loops) > 0 {
		t.Errorf("after terminating the stopped host, loop devices %v still map its volume", loops)
	}
	if err := p.StartInstances(ctx, []string{in.ID}); err == nil {
		t.Errorf("starting a terminated host was accepted")
	}
}

// waitFile waits until path exists in the host (rc.local runs detached).
func waitFile(t *testing.T, c *ssh.Client, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := sh(c, "test -e "+path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s did not appear within 30s", path)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
