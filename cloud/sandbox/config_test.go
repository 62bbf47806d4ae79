package sandbox

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/instactl/instactl/cloud"
)

func TestConfigFill(t *testing.T) {
	c := Config{Dir: "/var/tmp/x"}
	if err := c.fill(); err != nil {
		t.Fatal(err)
	}
	if c.AddressBase != DefaultAddressBase || c.SSHPort != 2222 || c.VolumeSizeMiB != DefaultVolumeSizeMiB ||
		c.LBAddress.String() != "127.0.0.1" || c.LBPort != 18080 || c.Zone == "" || c.Region == "" || len(c.DataMounts) == 0 {
		t.Errorf("defaults = %+v", c)
	}
	for name, bad := range map[string]Config{
		"no dir":              {},
		"dir under /run":      {Dir: "/run/instactl"},
		"non-loopback base":   {Dir: "/var/tmp/x", AddressBase: netip.MustParseAddr("10.0.0.0")},
		"non-loopback lb":     {Dir: "/var/tmp/x", LBAddress: netip.MustParseAddr("0.0.0.0")},
		"ipv6 base":           {Dir: "/var/tmp/x", AddressBase: netip.MustParseAddr("::1")},
		"data mount /usr/lib": {Dir: "/var/tmp/x", DataMounts: []string{"/usr/lib/x"}},
		"role mount relative": {Dir: "/var/tmp/x", RoleMounts: map[string][]string{"pg": {"data"}}},
	} {
		if err := bad.fill(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCheckMount(t *testing.T) {
	for m, ok := range map[string]bool{
		"/var/lib/postgresql": true, "/data": true, "/etc/instagram": true, "/srv/app": true,
		"/": false, "/etc": false, "/var/lib": false, "/run/x": false, "/usr/local": false, "/tmp/../etc": false, "data": false,
	} {
		if err := checkMount(m); (err == nil) != ok {
			t.Errorf("checkMount(%q) = %v, want ok=%v", m, err, ok)
		}
	}
}

func TestMountsFor(t *testing.T) {
	p := &Provider{cfg: Config{Dir: "/var/tmp/x", RoleMounts: map[string][]string{"pg": {"/data"}}}}
	if err := p.cfg.fill(); err != nil {
		t.Fatal(err)
	}
	got, err := p.mountsFor("pg", map[string]string{TagMounts: "/srv/extra, /var/lib/instagram"})
	if err != nil {
		t.Fatal(err)
	}
	want := "/data /etc/instagram /opt/instagram /root /srv/extra /tmp /var/lib/instagram /var/lib/postgresql /var/lib/redis /var/log/instagram"
	if strings.Join(got, " ") != want {
		t.Errorf("mounts = %v\nwant %s", got, want)
	}
	if _, err := p.mountsFor("app", map[string]string{TagMounts: "/usr"}); err == nil {
		t.Errorf("a tag mounting over /usr was accepted")
	}
}

func TestSSHDConfig(t *testing.T) {
	p := &Provider{cfg: Config{Dir: "/var/tmp/x"}}
	conf := p.sshdConfig(&instanceRec{Instance: cloud.Instance{ID: "i-1", Name: "app-0", PrivateAddress: "127.0.10.1", SSHPort: 2222}})
	for _, line := range []string{
		"ListenAddress 127.0.10.1:2222", "PermitRootLogin prohibit-password", "AuthorizedKeysFile /run/instactl/host/authorized_keys",
		"UsePAM no", "UseDNS no", "StrictModes no", "MaxStartups 100:30:200", "MaxSessions 100",
		"Subsystem sftp /usr/lib/openssh/sftp-server", "PidFile /run/instactl/host/sshd.pid", "PasswordAuthentication no",
	} {
		if !strings.Contains(conf, "\n"+line+"\n") {
			t.Errorf("sshd_config lacks %q:\n%s", line, conf)
		}
	}
}

func TestRenderNginx(t *testing.T) {
	p := &Provider{cfg: Config{Dir: "/var/tmp/x"}}
	if err := p.cfg.fill(); err != nil {
		t.Fatal(err)
	}
	s := &state{NginxGeneration: 7, Instances: []*instanceRec{
		{Instance: cloud.Instance{ID: "i-a", PrivateAddress: "127.0.10.1", State: "running"}},
		{Instance: cloud.Instance{ID: "i-b", PrivateAddress: "127.0.10.2", State: "running"}},
		{Instance: cloud.Instance{ID: "i-c", PrivateAddress: "127.0.10.3", State: "terminated"}},
	}, LoadBalancers: []*lbRec{
		{LoadBalancer: cloud.LoadBalancer{Name: "web", TargetPort: 8000, Instances: []string{"i-a", "i-b", "i-c"}}, Port: 18080},
		{LoadBalancer: cloud.LoadBalancer{Name: "empty", TargetPort: 8000}, Port: 18081},
	}}
	conf, err := p.renderNginx(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"daemon off;", "pid /var/tmp/x/nginx/nginx.pid;",
		"server 127.0.10.1:8000 ", "server 127.0.10.2:8000 ", "listen 127.0.0.1:18080;", "listen 127.0.0.1:18081;",
		"proxy_next_upstream error timeout;", `return 503 "no instances registered\n";`,
		`location = /.instactl-generation { return 200 "7\n"; }`,
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("nginx.conf lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(conf, "127.0.10.3") {
		t.Errorf("a terminated instance is an upstream:\n%s", conf)
	}
}
