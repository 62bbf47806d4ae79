package sandbox

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/instactl/instactl/cloud"
)

// Holder is a sandbox host that holds a loopback address on this machine: what another stack
// needs to know to say who is in its way, and how to free the address.
type Holder struct {
	Address netip.Addr `json:"address"`
	Port    int        `json:"port"`
	// Dir is the holder's sandbox directory ("" when it could not be found).
	Dir string `json:"dir,omitempty"`
	// Stack is the holder's stack name ("" when its state could not be read).
	Stack string `json:"stack,omitempty"`
	// Host is the holder's host name, such as "app-0".
	Host string `json:"host,omitempty"`
}

// LiveHosts finds every running sandbox host on this machine, whatever its directory: each is
// an sshd started with the sandbox's config path inside its own mount namespace, whose host
// directory (and so its sandbox directory and stack) is read through /proc.
func LiveHosts() []Holder {
	var out []Holder
	self := mountTable("self")
	for _, pid := range pids() {
		if c := cmdline(pid); !strings.Contains(c, "sshd") || !strings.Contains(c, hostMarker+"/sshd_config") {
			continue
		}
		root := "/proc/" + strconv.Itoa(pid) + "/root" + hostMarker
		cfg, err := os.ReadFile(root + "/sshd_config")
		if err != nil {
			continue
		}
		h, ok := listenOf(cfg)
		if !ok {
			continue
		}
		if name, err := os.ReadFile(root + "/meta/name"); err == nil {
			h.Host = strings.TrimSpace(string(name))
		}
		if hostDir := hostDirOf(pid, self); hostDir != "" {
			h.Dir = filepath.Dir(filepath.Dir(hostDir))
			h.Stack = stackOfAddress(h.Dir, h.Address.String())
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	return out
}

// RecordedHosts lists the hosts recorded (not terminated, running or not) in the sandbox
// directories directly under parent, such as /var/lib/instactl/sandbox: a sandbox whose
// processes are gone after a reboot still owns its addresses, and `sandbox up` takes them back.
func RecordedHosts(parent string) []Holder {
	var out []Holder
	ents, _ := os.ReadDir(parent)
	for _, e := range ents {
		dir := filepath.Join(parent, e.Name())
		s, err := (&Provider{cfg: Config{Dir: dir}}).load()
		if err != nil {
			continue
		}
		for _, in := range s.Instances {
			a, err := netip.ParseAddr(in.PrivateAddress)
			if in.State == "terminated" || err != nil {
				continue
			}
			out = append(out, Holder{Address: a, Port: in.SSHPort, Dir: dir, Stack: in.Tags[cloud.TagStack], Host: in.Name})
		}
	}
	return out
}

// Holders returns who holds each of addrs, other than stack's own hosts in this sandbox: another
// stack's host recorded in this directory, or a live sandbox host of any other directory or
// stack. An address whose SSH port something else listens on is returned with no Dir or Stack.
func (p *Provider) Holders(stack string, addrs []netip.Addr) ([]Holder, error) {
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		want[a] = true
	}
	found := map[netip.Addr]Holder{}
	err := p.view(func(s *state) error {
		for _, in := range s.Instances {
			a, err := netip.ParseAddr(in.PrivateAddress)
			if err != nil || in.State == "terminated" || !want[a] || in.Tags[cloud.TagStack] == stack {
				continue
			}
			found[a] = Holder{Address: a, Port: in.SSHPort, Dir: p.cfg.Dir, Stack: in.Tags[cloud.TagStack], Host: in.Name}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errDown) {
		return nil, err
	}
	for _, h := range LiveHosts() {
		if _, ok := found[h.Address]; !ok && want[h.Address] && !(h.Dir == p.cfg.Dir && h.Stack == stack) {
			found[h.Address] = h
		}
	}
	for a := range want {
		if _, ok := found[a]; ok || p.ownsAddress(stack, a) {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(a.String(), strconv.Itoa(p.cfg.SSHPort)))
		if err != nil {
			found[a] = Holder{Address: a, Port: p.cfg.SSHPort}
			continue
		}
		l.Close()
	}
	out := make([]Holder, 0, len(found))
	for _, h := range found {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	return out, nil
}

// ownsAddress reports whether stack's own live host in this sandbox has address a.
func (p *Provider) ownsAddress(stack string, a netip.Addr) bool {
	owns := false
	_ = p.view(func(s *state) error {
		for _, in := range s.Instances {
			if in.State != "terminated" && in.PrivateAddress == a.String() && in.Tags[cloud.TagStack] == stack {
				owns = true
			}
		}
		return nil
	})
	return owns
}

// listenOf reads the ListenAddress of a host's sshd_config.
func listenOf(cfg []byte) (Holder, bool) {
	sc := bufio.NewScanner(bytes.NewReader(cfg))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || f[0] != "ListenAddress" {
			continue
		}
		host, port, err := net.SplitHostPort(f[1])
		if err != nil {
			return Holder{}, false
		}
		a, err1 := netip.ParseAddr(host)
		n, err2 := strconv.Atoi(port)
		if err1 != nil || err2 != nil {
			return Holder{}, false
		}
		return Holder{Address: a, Port: n}, true
	}
	return Holder{}, false
}

// mountEntry is one line of a mountinfo table: the device, the root of the mount within the
// device's file system, and where it is mounted.
type mountEntry struct{ dev, root, point string }

func mountTable(pid string) []mountEntry {
	b, err := os.ReadFile("/proc/" + pid + "/mountinfo")
	if err != nil {
		return nil
	}
	var out []mountEntry
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			out = append(out, mountEntry{dev: f[2], root: unescapeMount(f[3]), point: unescapeMount(f[4])})
		}
	}
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// hostDirOf is the path, in this process's mount namespace, of the host directory that pid's
// namespace mounts at hostMarker: the marker mount names its device and the directory within
// that device's file system, and this namespace's mounts of the same device say where that is.
func hostDirOf(pid int, self []mountEntry) string {
	var marker *mountEntry
	for _, m := range mountTable(strconv.Itoa(pid)) {
		if m.point == hostMarker {
			m := m
			marker = &m
		}
	}
	if marker == nil {
		return ""
	}
	root := strings.TrimSuffix(marker.root, "//deleted")
	for _, m := range self {
		if m.dev != marker.dev || !(m.root == "/" || root == m.root || strings.HasPrefix(root, m.root+"/")) {
			continue
		}
		cand := filepath.Join(m.point, strings.TrimPrefix(root, strings.TrimSuffix(m.root, "/")))
		if _, err := os.Stat(filepath.Join(cand, "sshd_config")); err == nil {
			return cand
		}
	}
	return ""
}

// stackOfAddress reads dir's recorded state for the stack of the live host at address.
func stackOfAddress(dir, address string) string {
	s, err := (&Provider{cfg: Config{Dir: dir}}).load()
	if err != nil {
		return ""
	}
	for _, in := range s.Instances {
		if in.State != "terminated" && in.PrivateAddress == address {
			return in.Tags[cloud.TagStack]
		}
	}
	return ""
}
