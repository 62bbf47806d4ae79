package templates

import (
	"strconv"
	"strings"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/stack"
)

// PhotoBaseURL is the prefix of every photo URL the app servers build (INSTAGRAM_PHOTO_BASE_URL;
// a photo's URL is it plus the S3 key), one code path everywhere:
//   - sandbox: the bucket in the sandbox's moto_server, path-style;
//   - AWS with dns.cdn: https:// and the CDN's own name (the distribution serves it with the
//     stack's certificate);
//   - AWS otherwise: https:// and the distribution's domain, which exists only once the
//     distribution does: user data carries cloud.CDNDomainPlaceholder, and apply puts the
//     domain in before it launches the host.
func PhotoBaseURL(st *stack.Stack) string {
	switch {
	case st.Provider == "sandbox":
		return "http://127.0.0.1:" + strconv.Itoa(st.Sandbox.MotoPort) + "/" + PhotoBucket(st)
	case st.DNS.CDN != "":
		return "https://" + strings.TrimSuffix(st.DNS.Name(st.DNS.CDN), ".")
	}
	return "https://" + cloud.CDNDomainPlaceholder
}
