package sandbox

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// genKey writes an ed25519 key pair as OpenSSH files path (0600) and path.pub, and returns the
// public key.
func genKey(path, comment string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	line := bytes.TrimSpace(ssh.MarshalAuthorizedKey(sp))
	if err := os.WriteFile(path+".pub", append(line, []byte(" "+comment+"\n")...), 0o644); err != nil {
		return nil, fmt.Errorf("write public key: %w", err)
	}
	if err := writeFileAtomic(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	return sp, nil
}

// ensureClientKey generates the sandbox's client key once.
func (p *Provider) ensureClientKey() error {
	if _, err := os.Stat(p.KeyPath()); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("client key: %w", err)
	}
	if _, err := genKey(p.KeyPath(), "instactl-sandbox"); err != nil {
		return fmt.Errorf("client key: %w", err)
	}
	return nil
}

func (p *Provider) clientPublicKey() (string, error) {
	b, err := os.ReadFile(p.KeyPath() + ".pub")
	if err != nil {
		return "", fmt.Errorf("read client public key: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Signer returns the client key as an ssh.Signer, for callers dialing hosts with x/crypto/ssh.
func (p *Provider) Signer() (ssh.Signer, error) {
	b, err := os.ReadFile(p.KeyPath())
	if err != nil {
		return nil, fmt.Errorf("read client key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("parse client key %s: %w", p.KeyPath(), err)
	}
	return s, nil
}

// writeSSHConfig writes the OpenSSH client config for humans and shell tools.
func (p *Provider) writeSSHConfig() error {
	conf := fmt.Sprintf(`# instactl sandbox: ssh -F %s ADDRESS
Host *
    User root
    Port %d
    IdentityFile %s
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile %s
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    CheckHostIP no
    BatchMode yes
    Compression no
    LogLevel ERROR
`, p.SSHConfigPath(), p.cfg.SSHPort, p.KeyPath(), p.KnownHostsPath())
	return writeFileAtomic(p.SSHConfigPath(), []byte(conf), 0o644)
}

// knownHostsName is the known_hosts name of a host: "[127.0.10.1]:2222" (non-22 ports).
func (p *Provider) knownHostsName(addr string) string {
	return knownhosts.Normalize(net.JoinHostPort(addr, strconv.Itoa(p.cfg.SSHPort)))
}

// setKnownHost replaces any line for addr with one for key (key nil: just remove). Called under
// the state lock.
func (p *Provider) setKnownHost(addr string, key ssh.PublicKey) error {
	name := p.knownHostsName(addr)
	old, err := os.ReadFile(p.KnownHostsPath())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read known_hosts: %w", err)
	}
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(old), "\n") {
		if line == "" || strings.HasPrefix(line, name+" ") {
			continue
		}
		out.WriteString(line)
	}
	if key != nil {
		out.WriteString(knownhosts.Line([]string{name}, key) + "\n")
	}
	return writeFileAtomic(p.KnownHostsPath(), out.Bytes(), 0o644)
}
