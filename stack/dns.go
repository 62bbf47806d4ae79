package stack

import (
	"regexp"
	"strings"
)

// DNS names the stack's load balancer and photo CDN in a Route 53 hosted zone the operator
// already has (AWS only; every key optional):
//
//	dns:
//	  zone: example.com.          # the hosted zone
//	  lb: www                     # www.example.com. -> the load balancer
//	  cdn: photos                 # photos.example.com. -> the CDN, and the app's photo URLs
//	  cdn_certificate: arn:aws:acm:us-east-1:123456789012:certificate/...
//
// Records are CNAMEs, so lb and cdn name hosts below the zone, never the zone itself. Each has
// a TXT marker _instactl.<name> naming the stack; a name already taken is refused.
type DNS struct {
	Zone string `json:"zone"`
	LB   string `json:"lb"`
	CDN  string `json:"cdn"`
	// CDNCertificate is an ACM certificate in us-east-1 covering the CDN name: CloudFront
	// answers for a name of its own only with one.
	CDNCertificate string `json:"cdn_certificate"`
}

// Name is the fully qualified name of label in the zone ("www" -> "www.example.com."), "" if
// label or the zone is empty.
func (d DNS) Name(label string) string {
	if label == "" || d.Zone == "" {
		return ""
	}
	return label + "." + strings.TrimSuffix(d.Zone, ".") + "."
}

var (
	zoneRe  = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]\.?$`)
	labelRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
)

func (v *validator) dns() {
	d := v.st.DNS
	if d == (DNS{}) {
		return
	}
	if v.st.Provider != "aws" {
		v.errorf("dns", "is for provider aws (Route 53); the %s has no DNS: remove the dns section", v.st.Provider)
		return
	}
	if d.Zone == "" {
		v.errorf("dns.zone", "is required when dns.lb, dns.cdn or dns.cdn_certificate is set: the Route 53 hosted zone such as example.com.")
	} else if !zoneRe.MatchString(d.Zone) {
		v.errorf("dns.zone", "must be a lowercase domain name such as example.com. (got %q)", d.Zone)
	}
	for _, k := range []struct{ key, label string }{{"dns.lb", d.LB}, {"dns.cdn", d.CDN}} {
		if label := k.label; label != "" && !labelRe.MatchString(label) {
			v.errorf(k.key, "must be a lowercase name below the zone such as www or photos, without the zone and without a trailing dot; the zone apex cannot be a CNAME (got %q)", label)
		}
	}
	if d.LB != "" && d.LB == d.CDN {
		v.errorf("dns.cdn", "names the same host as dns.lb (%q); one name cannot point at both", d.CDN)
	}
	switch {
	case d.CDN != "" && d.CDNCertificate == "":
		v.errorf("dns.cdn", "needs dns.cdn_certificate: CloudFront answers for %s only with an ACM certificate in us-east-1 covering it (arn:aws:acm:us-east-1:ACCOUNT:certificate/ID)", d.Name(d.CDN))
	case d.CDNCertificate != "" && d.CDN == "":
		v.errorf("dns.cdn_certificate", "is only used with dns.cdn: name the CDN host (such as photos) or remove the certificate")
	case d.CDNCertificate != "" && !strings.HasPrefix(d.CDNCertificate, "arn:aws:acm:us-east-1:"):
		v.errorf("dns.cdn_certificate", "must be an ACM certificate ARN in us-east-1, the only region CloudFront takes certificates from (got %q)", d.CDNCertificate)
	}
}
