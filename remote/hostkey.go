package remote

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/instactl/instactl/homedir"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostKeyKind says why a host key was refused.
type HostKeyKind string

const (
	// HostKeyUnknown: known_hosts has no key for the host. Safe to accept
	// after checking the fingerprint out of band.
	HostKeyUnknown HostKeyKind = "unknown"
	// HostKeyChanged: known_hosts has a different key for the host. Either
	// the host was rebuilt or someone is in the middle; never accepted
	// automatically.
	HostKeyChanged HostKeyKind = "changed"
)

// HostKeyError is the refusal of a host key. Its message names the exact
// command that fixes the situation.
type HostKeyError struct {
	Kind HostKeyKind
	// Host is the address as known_hosts writes it: "127.0.0.11" for port 22,
	// "[127.0.0.11]:2222" otherwise.
	Host string
	// Key is the key the host presented.
	Key ssh.PublicKey
	// Known are the keys known_hosts holds for the host (changed only).
	Known []knownhosts.KnownKey
	// KnownHostsFile is the file that was checked.
	KnownHostsFile string
}

// Fingerprint is the SHA256 fingerprint of the presented key, as ssh prints it.
func (e *HostKeyError) Fingerprint() string { return ssh.FingerprintSHA256(e.Key) }

// Error describes the refusal and the command that resolves it.
func (e *HostKeyError) Error() string {
	host, port := splitKnownHost(e.Host)
	keyscan := "ssh-keyscan"
	if port != "22" {
		keyscan += " -p " + port
	}
	keyscan += " " + host + " >> " + e.KnownHostsFile
	switch e.Kind {
	case HostKeyChanged:
		var known []string
		for _, k := range e.Known {
			known = append(known, fmt.Sprintf("%s %s at %s:%d", k.Key.Type(), ssh.FingerprintSHA256(k.Key), k.Filename, k.Line))
		}
		return fmt.Sprintf("HOST KEY CHANGED for %s: it presented %s %s but known_hosts has %s; "+
			"this could be a man-in-the-middle attack, so the connection is refused. "+
			"If the host was legitimately rebuilt, verify the new key, then: ssh-keygen -f %s -R %s && %s",
			e.Host, e.Key.Type(), e.Fingerprint(), strings.Join(known, ", "),
			e.KnownHostsFile, Quote(e.Host), keyscan)
	default:
		return fmt.Sprintf("host key for %s is unknown (%s %s, not in %s): "+
			"run with --accept-new-host-keys, or: %s",
			e.Host, e.Key.Type(), e.Fingerprint(), e.KnownHostsFile, keyscan)
	}
}

// splitKnownHost splits a known_hosts address back into host and port.
func splitKnownHost(s string) (host, port string) {
	if h, p, err := net.SplitHostPort(s); err == nil {
		return h, p
	}
	return s, "22"
}

// hostKeys checks host keys against one known_hosts file and, when allowed,
// records unknown ones. The file is re-read after every append and whenever
// a key looks unknown, so keys added by other processes are seen too.
type hostKeys struct {
	file      string
	acceptNew bool

	mu sync.Mutex // serialises reloads and appends
	cb ssh.HostKeyCallback
}

func newHostKeys(file string, acceptNew bool) (*hostKeys, error) {
	file = homedir.Expand(file)
	h := &hostKeys{file: file, acceptNew: acceptNew}
	if err := h.reloadLocked(); err != nil {
		return nil, err
	}
	return h, nil
}

// reloadLocked re-reads the file; a missing file is an empty one.
func (h *hostKeys) reloadLocked() error {
	cb, err := knownhosts.New(h.file)
	if errors.Is(err, fs.ErrNotExist) {
		cb = func(string, net.Addr, ssh.PublicKey) error { return &knownhosts.KeyError{} }
		err = nil
	}
	if err != nil {
		return fmt.Errorf("known_hosts %s: %w", h.file, err)
	}
	h.cb = cb
	return nil
}

func (h *hostKeys) current() ssh.HostKeyCallback {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cb
}

// check is an ssh.HostKeyCallback for hostport (host:port as dialled).
func (h *hostKeys) check(hostport string, remote net.Addr, key ssh.PublicKey) error {
	err := h.current()(hostport, remote, key)
	if err == nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return fmt.Errorf("host key of %s: %w", knownhosts.Normalize(hostport), err)
	}
	if len(ke.Want) > 0 {
		return h.refusal(HostKeyChanged, hostport, key, ke.Want)
	}
	return h.unknown(hostport, remote, key)
}

// unknown handles a key known_hosts does not have: re-read the file (another
// dial or process may have just added it), then record it once if allowed.
func (h *hostKeys) unknown(hostport string, remote net.Addr, key ssh.PublicKey) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.reloadLocked(); err != nil {
		return err
	}
	err := h.cb(hostport, remote, key)
	var ke *knownhosts.KeyError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &ke):
		return fmt.Errorf("host key of %s: %w", knownhosts.Normalize(hostport), err)
	case len(ke.Want) > 0:
		return h.refusal(HostKeyChanged, hostport, key, ke.Want)
	case !h.acceptNew:
		return h.refusal(HostKeyUnknown, hostport, key, nil)
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(hostport)}, key) + "\n"
	if err := appendLocked(h.file, line); err != nil {
		return fmt.Errorf("recording host key of %s: %w", knownhosts.Normalize(hostport), err)
	}
	return h.reloadLocked()
}

func (h *hostKeys) refusal(kind HostKeyKind, hostport string, key ssh.PublicKey, known []knownhosts.KnownKey) error {
	return &HostKeyError{Kind: kind, Host: knownhosts.Normalize(hostport), Key: key, Known: known, KnownHostsFile: h.file}
}

// appendLocked appends one line with a single O_APPEND write under an
// exclusive flock, so concurrent instactl processes never interleave lines.
// A file not ending in a newline gets one first.
func appendLocked(file, line string) error {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing releases it anyway
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			line = "\n" + line
		}
	}
	_, err = f.WriteString(line)
	return err
}

// probeKey is a key no host has; checking it makes knownhosts list the keys
// it knows for a host.
var probeKey = sync.OnceValue(func() ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return k
})

// algorithmsFor returns the host key algorithms to offer for hostport: those
// of the keys known_hosts already has, so a host with a known RSA key is not
// reported as changed because it also offers ed25519. Nil means any.
func (h *hostKeys) algorithmsFor(hostport string) []string {
	err := h.current()(hostport, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, probeKey())
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) || len(ke.Want) == 0 {
		return nil
	}
	var algos []string
	seen := map[string]bool{}
	for _, k := range ke.Want {
		for _, a := range algorithmsForKeyType(k.Key.Type()) {
			if !seen[a] {
				seen[a] = true
				algos = append(algos, a)
			}
		}
	}
	return algos
}

func algorithmsForKeyType(t string) []string {
	if t == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{t}
}
