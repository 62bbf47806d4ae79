package awsfault

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestEdgeCall: edge calls are told apart by the signing service, named by action (IAM) or
// method and path (S3, CloudFront, Route 53), mutating unless they read; EC2 and unsigned
// calls are not edge calls.
func TestEdgeCall(t *testing.T) {
	auth := func(svc string) string {
		return "AWS4-HMAC-SHA256 Credential=x/20261207/us-east-1/" + svc + "/aws4_request, SignedHeaders=host, Signature=0"
	}
	for _, c := range []struct {
		svc, method, target, body string
		name                      string
		mut                       bool
	}{
		{"iam", "POST", "/", "Action=CreateRole&Version=2010-05-08", "iam:CreateRole", true},
		{"iam", "POST", "/", "Action=GetRole&Version=2010-05-08", "iam:GetRole", false},
		{"s3", "PUT", "/ig-photos?tagging=", "", "s3:PUT /ig-photos?tagging", true},
		{"s3", "GET", "/ig-photos?versioning=", "", "s3:GET /ig-photos?versioning", false},
		{"cloudfront", "DELETE", "/2020-05-31/origin-access-control/ABC", "", "cloudfront:DELETE /2020-05-31/origin-access-control", true},
		{"route53", "POST", "/2013-04-01/hostedzone/Z1/rrset", "", "route53:POST /2013-04-01/hostedzone", true},
		{"ec2", "POST", "/", "Action=RunInstances&Version=2016-11-15", "", false},
		{"", "GET", "/ig-photos", "", "", false},
	} {
		req, err := http.NewRequest(c.method, "http://127.0.0.1"+c.target, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		if c.svc != "" {
			req.Header.Set("Authorization", auth(c.svc))
		}
		form, _ := url.ParseQuery(c.body)
		name, mut := edgeCall(req, form)
		if name != c.name || mut != c.mut {
			t.Errorf("%s %s %s: edgeCall = %q, %v; want %q, %v", c.svc, c.method, c.target, name, mut, c.name, c.mut)
		}
	}
}
