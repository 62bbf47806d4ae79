package app

import "strings"

// PhotoURL is where a client fetches a photo's bytes: the base URL (the CDN in front of the
// photo bucket on AWS, the bucket in moto on the sandbox) and the object's key. It is "" when
// either is unknown, and clients then use GET /photos/{id}/image.
func PhotoURL(base, key string) string {
	if base == "" || key == "" {
		return ""
	}
	return strings.TrimRight(base, "/") + "/" + strings.TrimLeft(key, "/")
}
