package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/instactl/instactl/homedir"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// Dialer opens a connection to a host. The CLI's Factory hands one to every
// command; tests can substitute their own.
type Dialer interface {
	Dial(ctx context.Context, t Target) (*Client, error)
}

// SSHDialer is the Dialer over golang.org/x/crypto/ssh. It is safe for
// concurrent use; its concurrency limit is shared by all dials.
type SSHDialer struct {
	cfg      Config
	sshCfg   *sshConfig
	hostKeys *hostKeys
	signers  []ssh.Signer
	agent    agent.ExtendedAgent
	agentCon net.Conn
	limiter  *aimdLimiter

	keyMu sync.Mutex
	keys  map[string]ssh.Signer // ssh config IdentityFiles, loaded once
}

var _ Dialer = (*SSHDialer)(nil)

// NewDialer checks cfg, loads its keys, and connects to the agent if asked.
func NewDialer(cfg Config) (*SSHDialer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	d := &SSHDialer{cfg: cfg, limiter: newAIMDLimiter(cfg.MaxConcurrentDials), keys: map[string]ssh.Signer{}}
	if d.sshCfg, err = loadSSHConfig(cfg.SSHConfigFile); err != nil {
		return nil, err
	}
	if d.hostKeys, err = newHostKeys(cfg.KnownHostsFile, cfg.AcceptNewHostKeys); err != nil {
		return nil, err
	}
	for _, f := range cfg.IdentityFiles {
		s, err := loadKey(homedir.Expand(f))
		if err != nil {
			return nil, err
		}
		d.signers = append(d.signers, s)
	}
	if cfg.UseAgent {
		sock := os.Getenv("SSH_AUTH_SOCK")
		if sock == "" && len(d.signers) == 0 {
			return nil, errors.New("ssh agent: SSH_AUTH_SOCK is not set and no identity file is given")
		}
		if sock != "" {
			if d.agentCon, err = net.Dial("unix", sock); err != nil {
				return nil, fmt.Errorf("ssh agent at %s: %w", sock, err)
			}
			d.agent = agent.NewClient(d.agentCon)
		}
	}
	if len(d.signers) == 0 && d.agent == nil && cfg.SSHConfigFile == "" {
		return nil, errors.New("remote config: no SSH key: give an identity file or use the agent")
	}
	return d, nil
}

// Close releases the agent connection. Clients already dialled stay open.
func (d *SSHDialer) Close() error {
	if d.agentCon != nil {
		return d.agentCon.Close()
	}
	return nil
}

// Stats reports the dialer's attempts, retries and current concurrency limit.
func (d *SSHDialer) Stats() DialStats { return d.limiter.snapshot() }

// Dial connects to t, through its ProxyJump hops if any, verifies every host
// key, and authenticates. Refused connections are retried with jittered
// exponential backoff while the concurrency limit shrinks; other failures,
// and every host key refusal, are returned at once.
func (d *SSHDialer) Dial(ctx context.Context, t Target) (*Client, error) {
	e, err := d.sshCfg.resolve(t, d.cfg)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", t, err)
	}
	for attempt := 1; ; attempt++ {
		if err := d.limiter.acquire(ctx); err != nil {
			return nil, fmt.Errorf("dial %s: waiting for a dial slot: %w", t, err)
		}
		c, err := d.dialOnce(ctx, t, e)
		outcome := classifyDialError(err)
		d.limiter.release(outcome)
		if err == nil {
			return c, nil
		}
		if outcome != dialRefused || attempt >= d.cfg.DialAttempts || ctx.Err() != nil {
			if attempt > 1 {
				return nil, fmt.Errorf("dial %s (%s) after %d attempts: %w", t, e.hostPort(), attempt, err)
			}
			return nil, fmt.Errorf("dial %s (%s): %w", t, e.hostPort(), err)
		}
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return nil, fmt.Errorf("dial %s (%s): %w", t, e.hostPort(), err)
		}
	}
}

// backoff is exponential from 50ms, capped at 3s, with "equal jitter": half
// fixed, half random, so a burst of refused dials spreads out.
func backoff(attempt int) time.Duration {
	d := 50 * time.Millisecond << min(attempt-1, 6)
	d = min(d, 3*time.Second)
	return d/2 + rand.N(d/2+1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// classifyDialError tells a refusal by an overloaded sshd (MaxStartups drops
// the connection: EOF or reset during the handshake) from other failures.
func classifyDialError(err error) dialOutcome {
	var hk *HostKeyError
	switch {
	case err == nil:
		return dialOK
	case errors.As(err, &hk):
		return dialFailed
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return dialRefused
	}
	return dialFailed
}

// dialOnce makes one attempt over the whole hop chain.
func (d *SSHDialer) dialOnce(ctx context.Context, t Target, e endpoint) (*Client, error) {
	hops := append(append([]endpoint(nil), e.jumps...), e)
	var jumps []*ssh.Client
	var prev *ssh.Client
	for i, hop := range hops {
		sc, err := d.dialHop(ctx, prev, hop)
		if err != nil {
			closeAll(jumps)
			if i < len(hops)-1 {
				return nil, fmt.Errorf("jump host %s: %w", hop.hostPort(), err)
			}
			if len(jumps) > 0 {
				return nil, fmt.Errorf("via jump host %s: %w", hops[i-1].hostPort(), err)
			}
			return nil, err
		}
		if i < len(hops)-1 {
			jumps = append(jumps, sc)
			prev = sc
			continue
		}
		return newClient(t, e.hostPort(), sc, jumps, d.cfg), nil
	}
	panic("unreachable")
}

// dialHop opens TCP (directly, or as a direct-tcpip channel of prev) and runs
// the SSH handshake, all within ConnectTimeout and ctx.
func (d *SSHDialer) dialHop(ctx context.Context, prev *ssh.Client, hop endpoint) (*ssh.Client, error) {
	hctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer cancel()
	addr := hop.hostPort()
	var conn net.Conn
	var err error
	if prev == nil {
		var nd net.Dialer
		conn, err = nd.DialContext(hctx, "tcp", addr)
	} else {
		conn, err = prev.DialContext(hctx, "tcp", addr)
	}
	if err != nil {
		return nil, timeoutOr(hctx, ctx, d.cfg.ConnectTimeout, err)
	}
	stop := context.AfterFunc(hctx, func() { conn.Close() })
	defer stop()
	cc := &ssh.ClientConfig{
		User:              hop.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeysCallback(d.signersFor(hop))},
		HostKeyCallback:   d.hostKeys.check,
		HostKeyAlgorithms: d.hostKeys.algorithmsFor(addr),
		ClientVersion:     "SSH-2.0-instactl",
	}
	cc.Ciphers = d.cfg.Ciphers
	cc.KeyExchanges = d.cfg.KeyExchanges
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cc)
	if err != nil {
		conn.Close()
		return nil, timeoutOr(hctx, ctx, d.cfg.ConnectTimeout, err)
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// timeoutOr explains an error caused by the connect timeout or by ctx.
func timeoutOr(hctx, ctx context.Context, timeout time.Duration, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	case hctx.Err() != nil:
		return fmt.Errorf("connect timeout %v exceeded: %w", timeout, err)
	}
	return err
}

// signersFor returns the keys offered to hop: Config's, the ssh config's,
// then the agent's.
func (d *SSHDialer) signersFor(hop endpoint) func() ([]ssh.Signer, error) {
	return func() ([]ssh.Signer, error) {
		all := append([]ssh.Signer(nil), d.signers...)
		for _, f := range hop.identityFiles {
			if s := d.configKey(f); s != nil {
				all = append(all, s)
			}
		}
		if d.agent != nil {
			if as, err := d.agent.Signers(); err == nil {
				all = append(all, as...)
			}
		}
		return all, nil
	}
}

// configKey loads an ssh config IdentityFile once; like ssh, a missing or
// unreadable one is skipped.
func (d *SSHDialer) configKey(path string) ssh.Signer {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if s, ok := d.keys[path]; ok {
		return s
	}
	s, err := loadKey(path)
	if err != nil {
		s = nil
	}
	d.keys[path] = s
	return s
}

func loadKey(path string) (ssh.Signer, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity file: %w", err)
	}
	s, err := ssh.ParsePrivateKey(pem)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, fmt.Errorf("identity file %s is passphrase-protected: add it to ssh-agent (ssh-add %s) and use the agent", path, path)
	}
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	return s, nil
}

func closeAll(cs []*ssh.Client) {
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i].Close()
	}
}
