package remote

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/homedir"
	"github.com/kevinburke/ssh_config"
	"golang.org/x/crypto/ssh"
)

// Config holds what every connection of a run shares: who to log in as, how
// to authenticate, where host keys are trusted, and how hard to push the
// fleet while connecting. The zero value of each optional field means its
// documented default.
type Config struct {
	// User is the login user when neither the Target nor the ssh config
	// names one. Default: the local user.
	User string
	// Port is the SSH port when neither the Target nor the ssh config names
	// one. Default 22.
	Port int
	// IdentityFiles are private key files (unencrypted; use the agent for
	// passphrase-protected keys) tried for every host, before the ssh
	// config's IdentityFile entries and the agent's keys.
	IdentityFiles []string
	// UseAgent adds the keys of the agent at $SSH_AUTH_SOCK.
	UseAgent bool
	// KnownHostsFile is the known_hosts file every host key is checked
	// against. Required: there is no way to skip host key checking.
	KnownHostsFile string
	// SSHConfigFile is an optional OpenSSH client config (such as
	// ~/.ssh/config). Host, HostName, User, Port, IdentityFile and ProxyJump
	// (one or more comma-separated hops) are honoured.
	SSHConfigFile string
	// AcceptNewHostKeys records the key of a host that known_hosts does not
	// know yet (like StrictHostKeyChecking=accept-new). A changed key is
	// refused regardless.
	AcceptNewHostKeys bool
	// ConnectTimeout bounds one connection attempt: TCP connect plus SSH
	// handshake and authentication. Default 15s.
	ConnectTimeout time.Duration
	// KeepAliveInterval is how often a keepalive@openssh.com request is sent
	// on an open connection; a connection whose request goes unanswered for
	// another interval is closed. Default 15s; negative disables keepalives.
	KeepAliveInterval time.Duration
	// MaxConcurrentDials is the initial and maximum number of connection
	// attempts in flight at once; the dialer lowers it while hosts refuse
	// connections and raises it back as they succeed. Default 10, below the
	// first MaxStartups threshold of a stock sshd.
	MaxConcurrentDials int
	// DialAttempts is how many times a refused connection (handshake EOF,
	// connection reset) is attempted before giving up. Default 8.
	DialAttempts int
	// MaxOutputBytes bounds the stdout and the stderr that [Client.Run]
	// keeps in a Result, each. Default 4 MiB.
	MaxOutputBytes int
	// Ciphers is the client's cipher preference, most preferred first; the
	// server takes the first one it also supports. Default: x/crypto/ssh's
	// list, which starts with aes128-gcm@openssh.com. With AES-NI at both ends
	// that AEAD costs the least CPU per byte, and bulk uploads to many hosts
	// are CPU-bound on encryption (see bench/deploy/README.md).
	Ciphers []string
	// KeyExchanges is the client's key exchange preference, most preferred
	// first; the server takes the first one it also supports. Default:
	// [DefaultKeyExchanges].
	KeyExchanges []string
}

const (
	defaultPort           = 22
	defaultConnectTimeout = 15 * time.Second
	defaultKeepAlive      = 15 * time.Second
	defaultMaxDials       = 10
	defaultDialAttempts   = 8
	defaultMaxOutput      = 4 << 20
)

// DefaultKeyExchanges is the key exchange preference when Config.KeyExchanges
// is empty: x/crypto/ssh's own list with ecdh-sha2-nistp256 moved before
// curve25519-sha256. The post-quantum hybrid stays first for hosts that speak
// it (OpenSSH 9.9 and later). On older OpenSSH hosts (Debian 12's 9.2) the
// choice is between the two classic ones, and there it is the host's CPU that
// differs: OpenSSH computes curve25519 with its own portable reference code,
// ecdh-sha2-nistp256 with OpenSSL's assembly, about 2 ms less sshd CPU per
// connection (measured with perf at 50 hosts, bench/deploy/README.md). That
// matters when handshakes are most of the work, as in an unchanged redeploy.
var DefaultKeyExchanges = []string{
	ssh.KeyExchangeMLKEM768X25519,
	ssh.KeyExchangeECDHP256,
	ssh.KeyExchangeCurve25519,
	ssh.KeyExchangeECDHP384,
	ssh.KeyExchangeECDHP521,
	ssh.KeyExchangeDH14SHA256,
}

// withDefaults returns c with the zero values replaced by defaults, or an
// error naming the missing required setting.
func (c Config) withDefaults() (Config, error) {
	if c.KnownHostsFile == "" {
		return c, errors.New("remote config: known_hosts file is required (host keys are always checked)")
	}
	if c.Port == 0 {
		c.Port = defaultPort
	}
	if c.User == "" {
		u, err := user.Current()
		if err != nil {
			return c, fmt.Errorf("remote config: no user given and the local user is unknown: %w", err)
		}
		c.User = u.Username
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = defaultConnectTimeout
	}
	if c.KeepAliveInterval == 0 {
		c.KeepAliveInterval = defaultKeepAlive
	}
	if c.MaxConcurrentDials <= 0 {
		c.MaxConcurrentDials = defaultMaxDials
	}
	if c.DialAttempts <= 0 {
		c.DialAttempts = defaultDialAttempts
	}
	if c.MaxOutputBytes <= 0 {
		c.MaxOutputBytes = defaultMaxOutput
	}
	supported := ssh.SupportedAlgorithms().Ciphers
	for _, name := range c.Ciphers {
		if !slices.Contains(supported, name) {
			return c, fmt.Errorf("remote config: cipher %q is not supported (supported: %s)", name, strings.Join(supported, ", "))
		}
	}
	if len(c.KeyExchanges) == 0 {
		c.KeyExchanges = DefaultKeyExchanges
	}
	kexes := ssh.SupportedAlgorithms().KeyExchanges
	for _, name := range c.KeyExchanges {
		if !slices.Contains(kexes, name) {
			return c, fmt.Errorf("remote config: key exchange %q is not supported (supported: %s)", name, strings.Join(kexes, ", "))
		}
	}
	return c, nil
}

// Target is one host to connect to. Name labels the host in output and
// errors; it is also the ssh config Host alias looked up when Address is
// empty. Port and User, when zero, come from the ssh config, then Config.
type Target struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Port    int    `json:"port,omitempty"`
	User    string `json:"user,omitempty"`
}

// String returns the target's name, or its address when it has no name.
func (t Target) String() string {
	if t.Name != "" {
		return t.Name
	}
	return t.Address
}

// endpoint is a fully resolved SSH hop: where to connect, as whom, with which
// extra keys, through which jump hosts (first hop first).
type endpoint struct {
	host          string
	port          int
	user          string
	identityFiles []string
	jumps         []endpoint
}

// hostPort is the address to dial and the name host keys are checked under.
func (e endpoint) hostPort() string { return net.JoinHostPort(e.host, strconv.Itoa(e.port)) }

// sshConfig is the subset of an OpenSSH client config that remote honours.
type sshConfig struct{ cfg *ssh_config.Config }

func loadSSHConfig(path string) (*sshConfig, error) {
	if path == "" {
		return &sshConfig{}, nil
	}
	f, err := os.Open(homedir.Expand(path))
	if err != nil {
		return nil, fmt.Errorf("ssh config: %w", err)
	}
	defer f.Close()
	cfg, err := ssh_config.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("ssh config %s: %w", path, err)
	}
	return &sshConfig{cfg: cfg}, nil
}

func (s *sshConfig) get(alias, key string) string {
	if s.cfg == nil {
		return ""
	}
	v, _ := s.cfg.Get(alias, key)
	return v
}

func (s *sshConfig) getAll(alias, key string) []string {
	if s.cfg == nil {
		return nil
	}
	v, _ := s.cfg.GetAll(alias, key)
	return v
}

// resolve turns a Target into an endpoint: explicit Target fields win over
// the ssh config, which wins over Config.
func (s *sshConfig) resolve(t Target, c Config) (endpoint, error) {
	alias := t.Address
	if alias == "" {
		alias = t.Name
	}
	if alias == "" {
		return endpoint{}, errors.New("target has neither name nor address")
	}
	e, err := s.resolveHop(alias, t.User, t.Port, c)
	if err != nil {
		return endpoint{}, err
	}
	jump := s.get(alias, "ProxyJump")
	if jump == "" || strings.EqualFold(jump, "none") {
		return e, nil
	}
	for _, hop := range strings.Split(jump, ",") {
		hopUser, hopHost, hopPort, err := parseJumpHop(strings.TrimSpace(hop))
		if err != nil {
			return endpoint{}, fmt.Errorf("ProxyJump of %s: %w", alias, err)
		}
		je, err := s.resolveHop(hopHost, hopUser, hopPort, c)
		if err != nil {
			return endpoint{}, fmt.Errorf("ProxyJump of %s: %w", alias, err)
		}
		e.jumps = append(e.jumps, je)
	}
	return e, nil
}

// resolveHop resolves one host without following its own ProxyJump.
func (s *sshConfig) resolveHop(alias, user string, port int, c Config) (endpoint, error) {
	e := endpoint{host: alias, port: port, user: user}
	if hn := s.get(alias, "HostName"); hn != "" {
		e.host = strings.ReplaceAll(hn, "%h", alias)
	}
	if e.port == 0 {
		if p := s.get(alias, "Port"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n <= 0 || n > 65535 {
				return endpoint{}, fmt.Errorf("ssh config: bad Port %q for %s", p, alias)
			}
			e.port = n
		}
	}
	if e.port == 0 {
		e.port = c.Port
	}
	if e.user == "" {
		e.user = s.get(alias, "User")
	}
	if e.user == "" {
		e.user = c.User
	}
	for _, f := range s.getAll(alias, "IdentityFile") {
		e.identityFiles = append(e.identityFiles, expandTokens(f, e))
	}
	return e, nil
}

// parseJumpHop parses one ProxyJump hop: [user@]host[:port], with IPv6
// literals in brackets.
func parseJumpHop(hop string) (user, host string, port int, err error) {
	if hop == "" {
		return "", "", 0, errors.New("empty hop")
	}
	if i := strings.LastIndex(hop, "@"); i >= 0 {
		user, hop = hop[:i], hop[i+1:]
	}
	host = hop
	if h, p, splitErr := net.SplitHostPort(hop); splitErr == nil {
		host = h
		port, err = strconv.Atoi(p)
		if err != nil || port <= 0 || port > 65535 {
			return "", "", 0, fmt.Errorf("bad port in hop %q", hop)
		}
	}
	host = strings.Trim(host, "[]")
	return user, host, port, nil
}

// expandTokens expands the IdentityFile tokens ssh users rely on: a leading
// ~, %d (home), %h (host), %r (remote user), %u (local user) and %%.
func expandTokens(s string, e endpoint) string {
	s = homedir.Expand(s)
	if !strings.Contains(s, "%") {
		return s
	}
	local := ""
	if u, err := user.Current(); err == nil {
		local = u.Username
	}
	home, _ := os.UserHomeDir()
	r := strings.NewReplacer("%%", "%", "%d", home, "%h", e.host, "%r", e.user, "%u", local)
	return r.Replace(s)
}
