package stack

import (
	"errors"
	"strings"
	"testing"
)

const dnsBase = "name: x\nprovider: aws\nimage: ami-1\nroles:\n  app: {count: 1}\nload_balancer:\n  target_role: app\n"

func TestDNS(t *testing.T) {
	st, err := Parse("s.yaml", []byte(dnsBase+"dns:\n  zone: example.com.\n  lb: www\n  cdn: photos\n  cdn_certificate: arn:aws:acm:us-east-1:1:certificate/x\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.DNS.Name(st.DNS.LB) != "www.example.com." || st.DNS.Name(st.DNS.CDN) != "photos.example.com." {
		t.Errorf("names: %q %q", st.DNS.Name(st.DNS.LB), st.DNS.Name(st.DNS.CDN))
	}
	if st, err := Parse("s.yaml", []byte(dnsBase+"dns:\n  zone: example.com\n  lb: www.eu\n")); err != nil || st.DNS.Name("www.eu") != "www.eu.example.com." {
		t.Errorf("zone without trailing dot: %v", err)
	}
}

func TestDNSErrors(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"sandbox", "name: x\nroles:\n  app: {count: 1}\ndns:\n  zone: example.com.\n",
			"s.yaml:5:3: dns: is for provider aws (Route 53)"},
		{"no zone", dnsBase + "dns:\n  lb: www\n", "s.yaml:9:3: dns.zone: is required"},
		{"bad zone", dnsBase + "dns:\n  zone: Example.com.\n", `s.yaml:9:9: dns.zone: must be a lowercase domain name such as example.com. (got "Example.com.")`},
		{"fqdn label", dnsBase + "dns:\n  zone: example.com.\n  lb: www.example.com.\n", "s.yaml:10:7: dns.lb: must be a lowercase name below the zone"},
		{"same name", dnsBase + "dns:\n  zone: example.com.\n  lb: www\n  cdn: www\n  cdn_certificate: arn:aws:acm:us-east-1:1:certificate/x\n",
			`s.yaml:11:8: dns.cdn: names the same host as dns.lb ("www")`},
		{"cdn without certificate", dnsBase + "dns:\n  zone: example.com.\n  cdn: photos\n",
			"s.yaml:10:8: dns.cdn: needs dns.cdn_certificate: CloudFront answers for photos.example.com. only with an ACM certificate in us-east-1"},
		{"certificate elsewhere", dnsBase + "dns:\n  zone: example.com.\n  cdn: photos\n  cdn_certificate: arn:aws:acm:eu-west-1:1:certificate/x\n",
			"s.yaml:11:20: dns.cdn_certificate: must be an ACM certificate ARN in us-east-1"},
		{"unknown key", dnsBase + "dns:\n  zone: example.com.\n  cnd: photos\n", `s.yaml:10:3: dns.cnd: unknown key "cnd"; did you mean "cdn"?`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("s.yaml", []byte(c.in))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("want Errors, got %v", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error missing %q; got:\n%s", c.want, err)
			}
		})
	}
}
