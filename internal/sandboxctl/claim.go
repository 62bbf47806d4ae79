package sandboxctl

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/instactl/instactl/cloud/sandbox"
	"github.com/instactl/instactl/stack"
)

// DefaultParent is where sandbox directories live unless a stack file says otherwise.
const DefaultParent = "/var/lib/instactl/sandbox"

// ownerFile, in a sandbox directory, records the stack file that brought the sandbox up, so
// another stack in its way can be told which file frees it.
const ownerFile = "stack-file"

// ErrInUse is wrapped by Up's error when another stack holds this stack's sandbox directory or
// addresses; nothing was changed, and the message names the holder and the command that frees it.
var ErrInUse = errors.New("in use by another stack")

// Owner returns the stack file recorded in sandbox directory dir ("" when none is).
func Owner(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func recordOwner(st *stack.Stack) error {
	abs, err := filepath.Abs(st.Path)
	if err != nil {
		return fmt.Errorf("record the stack file: %w", err)
	}
	if err := os.WriteFile(filepath.Join(st.Sandbox.Dir, ownerFile), []byte(abs+"\n"), 0o600); err != nil {
		return fmt.Errorf("record the stack file: %w", err)
	}
	return nil
}

// checkOwner refuses a stack file other than the one that brought up the sandbox in the same
// directory under the same name: its plan would treat the other file's hosts as its own and
// destroy or refuse to change them. A recorded file that is gone, or that no longer declares
// this directory and name, has given the directory up.
func checkOwner(st *stack.Stack) error {
	owner := Owner(st.Sandbox.Dir)
	abs, err := filepath.Abs(st.Path)
	if owner == "" || err != nil || owner == abs {
		return nil
	}
	other, err := stack.Load(owner)
	if err != nil || other.Name != st.Name || filepath.Clean(other.Sandbox.Dir) != filepath.Clean(st.Sandbox.Dir) {
		return nil
	}
	return fmt.Errorf("%s: sandbox directory %s is %w %q from %s; free it with: instactl --stack %s sandbox down (or give this stack its own name, sandbox.dir and network.address_base: instactl init picks free ones)",
		st.Path, st.Sandbox.Dir, ErrInUse, st.Name, owner, owner)
}

// checkAddresses refuses, in one message per holder, a stack whose addresses other sandbox
// stacks hold: its hosts could not start there.
func checkAddresses(st *stack.Stack, p *sandbox.Provider) error {
	var addrs []netip.Addr
	for _, h := range st.Hosts() {
		a, err := st.Address(h)
		if err != nil {
			return err
		}
		addrs = append(addrs, a)
	}
	holders, err := p.Holders(st.Name, addrs)
	if err != nil || len(holders) == 0 {
		return err
	}
	type key struct{ dir, stack string }
	groups := map[key][]sandbox.Holder{}
	var order []key
	for _, h := range holders {
		k := key{h.Dir, h.Stack}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], h)
	}
	var lines []string
	for _, k := range order {
		hs := groups[k]
		what := fmt.Sprintf("%s of this stack's %d addresses", addrRange(hs), len(addrs))
		switch {
		case k.dir == "" && k.stack == "":
			lines = append(lines, fmt.Sprintf("%s: port %d is taken by a process that is not a sandbox host; stop it, or set network.address_base to a free range", what, hs[0].Port))
		case Owner(k.dir) != "":
			lines = append(lines, fmt.Sprintf("%s are held by sandbox stack %q (directory %s, stack file %s); free them with: instactl --stack %s sandbox down",
				what, k.stack, k.dir, Owner(k.dir), Owner(k.dir)))
		default:
			lines = append(lines, fmt.Sprintf("%s are held by sandbox stack %q (directory %s); free them with `instactl --stack FILE sandbox down`, FILE a stack file with name: %s and sandbox.dir: %s",
				what, k.stack, k.dir, k.stack, k.dir))
		}
	}
	base := FreeBase(st.Network.AddressBase, len(addrs))
	hint := ""
	if base.IsValid() {
		hint = fmt.Sprintf("; or move this stack: network.address_base: %s is free", base)
	}
	return fmt.Errorf("%s: addresses %w:\n  %s\nnothing was changed%s", st.Path, ErrInUse, strings.Join(lines, "\n  "), hint)
}

// addrRange writes the holders' addresses compactly: "127.0.10.1-127.0.10.9" when they run on.
func addrRange(hs []sandbox.Holder) string {
	first, last := hs[0].Address, hs[len(hs)-1].Address
	contiguous := true
	for i := 1; i < len(hs); i++ {
		if hs[i].Address != hs[i-1].Address.Next() {
			contiguous = false
		}
	}
	switch {
	case len(hs) == 1:
		return first.String()
	case contiguous:
		return first.String() + "-" + last.String()
	}
	var s []string
	for _, h := range hs {
		s = append(s, h.Address.String())
	}
	return strings.Join(s, ", ")
}

// taken is every address some sandbox on this machine holds: live hosts of any directory, and
// hosts recorded under DefaultParent whose processes are gone (they come back on `sandbox up`).
func taken() (map[netip.Addr]bool, map[string]bool) {
	addrs, names := map[netip.Addr]bool{}, map[string]bool{}
	for _, h := range append(sandbox.LiveHosts(), sandbox.RecordedHosts(DefaultParent)...) {
		addrs[h.Address] = true
		if h.Stack != "" {
			names[h.Stack] = true
		}
	}
	ents, _ := os.ReadDir(DefaultParent)
	for _, e := range ents {
		names[e.Name()] = true
	}
	return addrs, names
}

// FreeBase returns the first base at or after from, in steps of 256 (127.0.10.1, 127.0.11.1,
// ...), whose n addresses no sandbox holds and whose SSH port 2222 is free; the zero Addr when
// none is.
func FreeBase(from netip.Addr, n int) netip.Addr {
	addrs, _ := taken()
	return freeBase(from, n, addrs)
}

func freeBase(from netip.Addr, n int, addrs map[netip.Addr]bool) netip.Addr {
	for base := from; base.IsValid() && base.Is4() && base.As4()[0] == 127; {
		if rangeFree(base, n, addrs) {
			return base
		}
		b := base.As4()
		if b[2] == 255 {
			break
		}
		b[2]++
		base = netip.AddrFrom4(b)
	}
	return netip.Addr{}
}

func rangeFree(base netip.Addr, n int, addrs map[netip.Addr]bool) bool {
	a := base
	for i := 0; i < n; i++ {
		if !a.IsValid() || a.As4()[0] != 127 || addrs[a] || !portFree(a, sandbox.DefaultSSHPort) {
			return false
		}
		a = a.Next()
	}
	return true
}

func portFree(a netip.Addr, port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(a.String(), strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// Choice is what a new stack file should use so that it collides with no sandbox on this
// machine: the name (its directory is DefaultParent/Name), the address base, and the ports of
// its load balancer and moto_server.
type Choice struct {
	Name        string     `json:"name"`
	Dir         string     `json:"dir"`
	AddressBase netip.Addr `json:"address_base"`
	LBPort      int        `json:"lb_port"`
	MotoPort    int        `json:"moto_port"`
	// Taken says which defaults were in use, for the message ("" when none was).
	Taken string `json:"taken,omitempty"`
}

// Choose picks a Choice for a stack of n hosts, starting from the wanted name, base and ports
// and moving past what sandboxes on this machine hold.
func Choose(name string, base netip.Addr, n, lbPort, motoPort int) Choice {
	addrs, names := taken()
	c := Choice{Name: name, AddressBase: freeBase(base, n, addrs), LBPort: freePort(lbPort), MotoPort: freePort(motoPort)}
	for i := 2; names[c.Name]; i++ {
		c.Name = fmt.Sprintf("%s-%d", name, i)
	}
	c.Dir = filepath.Join(DefaultParent, c.Name)
	var why []string
	if c.Name != name {
		why = append(why, "name "+name)
	}
	if c.AddressBase != base {
		why = append(why, "addresses from "+base.String())
	}
	if c.LBPort != lbPort {
		why = append(why, "port "+strconv.Itoa(lbPort))
	}
	if c.MotoPort != motoPort {
		why = append(why, "port "+strconv.Itoa(motoPort))
	}
	c.Taken = strings.Join(why, ", ")
	return c
}

// freePort is the first port at or after port that nothing listens on at 127.0.0.1.
func freePort(port int) int {
	for p := port; p < port+1000 && p <= 65535; p++ {
		if portFree(netip.MustParseAddr("127.0.0.1"), p) {
			return p
		}
	}
	return port
}
