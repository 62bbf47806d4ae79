package remote

import (
	"context"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Config.Ciphers is the list the client offers: a server that only speaks chacha20 accepts a
// client offering it and refuses one that does not.
func TestDialCiphers(t *testing.T) {
	e := newUnitEnv(t)
	e.srv.config.Ciphers = []string{ssh.CipherChaCha20Poly1305}
	ctx := context.Background()
	_, err := e.dialer(t, func(c *Config) { c.Ciphers = []string{ssh.CipherAES128GCM} }).Dial(ctx, e.srv.target())
	if err == nil || !strings.Contains(err.Error(), "no common algorithm") {
		t.Errorf("aes128-gcm only against a chacha20-only server: %v; want no common algorithm", err)
	}
	c, err := e.dialer(t, func(c *Config) { c.Ciphers = []string{ssh.CipherAES128GCM, ssh.CipherChaCha20Poly1305} }).Dial(ctx, e.srv.target())
	if err != nil {
		t.Fatalf("offering chacha20 second: %v", err)
	}
	c.Close()
	_, err = NewDialer(Config{User: "tester", KnownHostsFile: e.knownHosts, Ciphers: []string{"rot13"}})
	if err == nil || !strings.Contains(err.Error(), `cipher "rot13" is not supported`) {
		t.Errorf("unknown cipher: %v", err)
	}
}
