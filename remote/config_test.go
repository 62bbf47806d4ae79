package remote

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestResolveSSHConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config")
	os.WriteFile(file, []byte(`
Host web-*
  HostName 127.0.0.21
  User deploy
  Port 2222
  IdentityFile ~/.ssh/web_key
  ProxyJump ops@bastion1:2200,bastion2

Host bastion2
  HostName 127.0.0.3
  Port 2201

Host direct
  HostName 127.0.0.22
  ProxyJump none
`), 0o600)
	sc, err := loadSSHConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{User: "root", Port: 22}
	home, _ := os.UserHomeDir()

	e, err := sc.resolve(Target{Name: "web-1"}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := endpoint{host: "127.0.0.21", port: 2222, user: "deploy", identityFiles: []string{filepath.Join(home, ".ssh/web_key")},
		jumps: []endpoint{{host: "bastion1", port: 2200, user: "ops"}, {host: "127.0.0.3", port: 2201, user: "root"}}}
	if !reflect.DeepEqual(e, want) {
		t.Errorf("web-1:\n got %+v\nwant %+v", e, want)
	}
	// Target fields win over the ssh config.
	e, _ = sc.resolve(Target{Name: "x", Address: "web-2", Port: 2300, User: "me"}, cfg)
	if e.port != 2300 || e.user != "me" || e.host != "127.0.0.21" {
		t.Errorf("override: %+v", e)
	}
	e, _ = sc.resolve(Target{Name: "direct"}, cfg)
	if e.jumps != nil || e.host != "127.0.0.22" || e.port != 22 {
		t.Errorf("direct: %+v", e)
	}
	e, _ = (&sshConfig{}).resolve(Target{Address: "127.0.0.9"}, cfg)
	if e.hostPort() != "127.0.0.9:22" || e.user != "root" {
		t.Errorf("no config: %+v", e)
	}
}

func TestParseJumpHop(t *testing.T) {
	tests := []struct {
		in         string
		user, host string
		port       int
	}{
		{"bastion", "", "bastion", 0},
		{"ops@bastion:2200", "ops", "bastion", 2200},
		{"[::1]:22", "", "::1", 22},
		{"127.0.0.5:2222", "", "127.0.0.5", 2222},
	}
	for _, tt := range tests {
		u, h, p, err := parseJumpHop(tt.in)
		if err != nil || u != tt.user || h != tt.host || p != tt.port {
			t.Errorf("parseJumpHop(%q) = %q %q %d %v", tt.in, u, h, p, err)
		}
	}
	if _, _, _, err := parseJumpHop("h:99999"); err == nil {
		t.Error("bad port accepted")
	}
}

func TestConfigRequiresKnownHosts(t *testing.T) {
	if _, err := NewDialer(Config{}); err == nil {
		t.Fatal("a dialer without known_hosts was created")
	}
}
