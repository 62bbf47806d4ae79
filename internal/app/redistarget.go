package app

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
)

// RedisTarget is the address the app's Redis client dials: the primary of the Redis group now.
// It is the client's Dialer, so one *redis.Client serves the whole process and follows a
// switchover without being replaced: Switch closes every connection to the old master, the
// client's pool drops them (its health check sees them closed), and the next command dials the
// new master. Safe for concurrent use.
type RedisTarget struct {
	mu    sync.Mutex
	addr  string
	conns map[*targetConn]struct{}
}

// NewRedisTarget returns a target dialing addr until the first Switch.
func NewRedisTarget(addr string) *RedisTarget {
	return &RedisTarget{addr: addr, conns: map[*targetConn]struct{}{}}
}

// Addr returns the address new connections dial.
func (t *RedisTarget) Addr() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.addr
}

// Switch points new connections at addr and closes those made to the old address; commands in
// flight on them fail (they were talking to a master that is no longer one). It reports
// whether the address changed.
func (t *RedisTarget) Switch(addr string) bool {
	t.mu.Lock()
	if addr == t.addr {
		t.mu.Unlock()
		return false
	}
	t.addr = addr
	old := t.conns
	t.conns = map[*targetConn]struct{}{}
	t.mu.Unlock()
	for c := range old {
		c.Conn.Close()
	}
	return true
}

// Dial is the redis.Options.Dialer: it connects to the current address and remembers the
// connection so a Switch can close it.
func (t *RedisTarget) Dial(ctx context.Context, network, _ string) (net.Conn, error) {
	addr := t.Addr()
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := &targetConn{Conn: nc, t: t}
	t.mu.Lock()
	if t.addr != addr {
		// A Switch ran while we dialed: this connection already points at the old master.
		t.mu.Unlock()
		nc.Close()
		return nil, errors.New("redis master changed while connecting to " + addr)
	}
	t.conns[c] = struct{}{}
	t.mu.Unlock()
	return c, nil
}

// targetConn is a connection the target tracks until it is closed.
type targetConn struct {
	net.Conn
	t *RedisTarget
}

// Close forgets the connection and closes it.
func (c *targetConn) Close() error {
	c.t.mu.Lock()
	delete(c.t.conns, c)
	c.t.mu.Unlock()
	return c.Conn.Close()
}

// SyscallConn exposes the socket so go-redis' pool health check can see that a connection
// closed by Switch is dead and drop it instead of handing it out.
func (c *targetConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("redis connection has no socket")
	}
	return sc.SyscallConn()
}
