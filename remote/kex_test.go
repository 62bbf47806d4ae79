package remote

import (
	"context"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Every default key exchange is one x/crypto/ssh implements (else withDefaults would refuse
// its own default), the post-quantum hybrid comes first and ecdh-sha2-nistp256 before
// curve25519-sha256.
func TestDefaultKeyExchanges(t *testing.T) {
	cfg, err := Config{User: "u", KnownHostsFile: "/dev/null"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.KeyExchanges, DefaultKeyExchanges) {
		t.Errorf("default KeyExchanges = %v, want %v", cfg.KeyExchanges, DefaultKeyExchanges)
	}
	if DefaultKeyExchanges[0] != ssh.KeyExchangeMLKEM768X25519 ||
		slices.Index(DefaultKeyExchanges, ssh.KeyExchangeECDHP256) > slices.Index(DefaultKeyExchanges, ssh.KeyExchangeCurve25519) {
		t.Errorf("DefaultKeyExchanges order: %v", DefaultKeyExchanges)
	}
}

// Config.KeyExchanges is the list the client offers: a server that only speaks curve25519
// refuses a client offering only nistp256 and accepts the default list.
func TestDialKeyExchanges(t *testing.T) {
	e := newUnitEnv(t)
	e.srv.config.KeyExchanges = []string{ssh.KeyExchangeCurve25519}
	ctx := context.Background()
	_, err := e.dialer(t, func(c *Config) { c.KeyExchanges = []string{ssh.KeyExchangeECDHP256} }).Dial(ctx, e.srv.target())
	if err == nil || !strings.Contains(err.Error(), "no common algorithm") {
		t.Errorf("nistp256 only against a curve25519-only server: %v; want no common algorithm", err)
	}
	c, err := e.dialer(t, nil).Dial(ctx, e.srv.target())
	if err != nil {
		t.Fatalf("default key exchanges against a curve25519-only server: %v", err)
	}
	c.Close()
	_, err = NewDialer(Config{User: "tester", KnownHostsFile: e.knownHosts, KeyExchanges: []string{"diffie-hellman-rot13"}})
	if err == nil || !strings.Contains(err.Error(), `key exchange "diffie-hellman-rot13" is not supported`) {
		t.Errorf("unknown key exchange: %v", err)
	}
}
