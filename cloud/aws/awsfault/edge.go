package awsfault

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

// The edge services (IAM, S3, CloudFront, Route 53) get throttling and lost replies when the
// profile says Edge: their creates are made idempotent by instactl itself (names, caller
// references, ownership markers), which is what a lost reply tests.

// iamVersion is the API version of IAM's query protocol.
const iamVersion = "2010-05-08"

// credentialService finds the signing service in a SigV4 Authorization header
// ("Credential=KEY/DATE/REGION/SERVICE/aws4_request").
var credentialService = regexp.MustCompile(`Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request`)

// edgeCall names an edge call ("s3:PUT /bucket", "iam:CreateRole", ...) and says whether it
// changes something; "" for any other call.
func edgeCall(req *http.Request, form url.Values) (string, bool) {
	m := credentialService.FindStringSubmatch(req.Header.Get("Authorization"))
	if m == nil {
		return "", false
	}
	switch svc := m[1]; svc {
	case "iam":
		if a := form.Get("Action"); a != "" && form.Get("Version") == iamVersion {
			return "iam:" + a, mutating(a)
		}
	case "s3", "cloudfront", "route53":
		// The path's first two segments name the call well enough for seeding (bucket or API
		// version, then the resource kind); the method says whether it changes something.
		parts := strings.SplitN(strings.Trim(req.URL.Path, "/"), "/", 3)
		name := svc + ":" + req.Method + " /" + strings.Join(parts[:min(2, len(parts))], "/")
		if q := req.URL.RawQuery; q != "" && svc == "s3" {
			name += "?" + strings.SplitN(q, "=", 2)[0]
		}
		return name, req.Method != http.MethodGet && req.Method != http.MethodHead
	}
	return "", false
}

// edgeThrottle is the throttling reply of svc (the prefix of an edgeCall name).
func edgeThrottle(req *http.Request, svc string) *http.Response {
	switch svc {
	case "s3":
		return reply(req, 503, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
			`<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>awsfault</RequestId></Error>`)
	case "iam":
		return reply(req, 400, `<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">`+
			`<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>awsfault</RequestId></ErrorResponse>`)
	}
	return reply(req, 400, fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded (%s)</Message></Error><RequestId>awsfault</RequestId></ErrorResponse>`, svc))
}

// edgeRoundTrip sends an edge call through the profile's throttling and lost replies.
func (in *Injector) edgeRoundTrip(req *http.Request, body []byte, name string, mut bool) (*http.Response, error) {
	in.mu.Lock()
	n := in.calls[name]
	in.calls[name]++
	off := in.off
	in.mu.Unlock()
	p := in.profile
	if off {
		p = Profile{}
	}
	if p.Throttle > 0 && in.chance("throttle", name, n) < p.Throttle {
		in.count("throttle")
		return edgeThrottle(req, strings.SplitN(name, ":", 2)[0]), nil
	}
	resp, err := in.forward(req, body)
	if err != nil || !mut || resp.StatusCode/100 != 2 {
		return resp, err
	}
	in.mu.Lock()
	in.mutations++
	m := in.mutations
	hook := in.AfterMutation
	in.mu.Unlock()
	if hook != nil {
		hook(name, m)
	}
	if p.LoseReply > 0 && in.chance("lose", name, n) < p.LoseReply {
		resp.Body.Close()
		in.count("lost-reply")
		return nil, errLost
	}
	return resp, nil
}
