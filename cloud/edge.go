package cloud

import (
	"context"
	"encoding/json"
)

// The edge of a stack is what sits around its hosts on AWS: the photo bucket, the IAM role
// the app hosts use to reach it, the CDN in front of it and the DNS records naming the load
// balancer and the CDN. The sandbox has none of these (its S3 is moto, its front door nginx).

// PhotoBucket is the S3 bucket of a stack's photos (templates.PhotoBucket says the same to the
// app servers).
func PhotoBucket(stack string) string { return stack + "-photos" }

// AppRole is the name of the IAM role and of the instance profile of a stack's app hosts.
func AppRole(stack string) string { return stack + "-app" }

// PhotoCDN names the CDN of a stack: its origin access control, and the caller reference
// that makes its creation idempotent.
func PhotoCDN(stack string) string { return stack + "-photos" }

// TagDNSZone on a stack's photo bucket names the hosted zone holding the stack's DNS records
// (absent: none). Route 53 records carry no tags and the zone is the operator's: when the stack
// file no longer names a zone, this tag is how the next plan finds the records to delete.
const TagDNSZone = "instactl:dns-zone"

// Bucket is an S3 bucket as instactl checks it.
type Bucket struct {
	Name string `json:"name"`
	// Encryption is the default server-side encryption algorithm ("AES256", "aws:kms"), "" if none.
	Encryption string `json:"encryption"`
	// Versioning is "Enabled", "Suspended" or "" (never enabled).
	Versioning string `json:"versioning"`
	// PublicAccessBlocked is true when all four public access blocks are on.
	PublicAccessBlocked bool `json:"public_access_blocked"`
	// Policy is the bucket policy as compact JSON with sorted keys, "" if none.
	Policy string            `json:"policy,omitempty"`
	Tags   map[string]string `json:"tags"`
}

// BucketContents counts what a bucket holds: current objects, every version (current ones
// included) and delete markers.
type BucketContents struct {
	Objects       int `json:"objects"`
	Versions      int `json:"versions"`
	DeleteMarkers int `json:"delete_markers"`
}

// Empty reports whether the bucket holds nothing at all, old versions included.
func (c BucketContents) Empty() bool { return c.Objects+c.Versions+c.DeleteMarkers == 0 }

// HostRole is an IAM role with its instance profile, as instactl checks it.
type HostRole struct {
	Name string `json:"name"`
	ARN  string `json:"arn"`
	// TrustPolicy is the assume-role policy as compact JSON with sorted keys.
	TrustPolicy string `json:"trust_policy"`
	// Policies are the inline policies by name, as compact JSON with sorted keys.
	Policies map[string]string `json:"policies"`
	// AttachedPolicies are the ARNs of managed policies attached to the role.
	AttachedPolicies []string `json:"attached_policies,omitempty"`
	// Profile is the instance profile of the same name ("" when it does not exist) and
	// ProfileRoles the roles in it.
	Profile      string            `json:"profile,omitempty"`
	ProfileRoles []string          `json:"profile_roles,omitempty"`
	Tags         map[string]string `json:"tags"`
}

// Distribution is a CDN distribution in front of the photo bucket.
type Distribution struct {
	ID         string `json:"id"`
	ARN        string `json:"arn"`
	DomainName string `json:"domain_name"`
	// Origin is the domain name of its (one) origin.
	Origin  string   `json:"origin"`
	Enabled bool     `json:"enabled"`
	Status  string   `json:"status"` // InProgress, Deployed
	Aliases []string `json:"aliases,omitempty"`
	// Certificate is the ACM certificate ARN it answers the aliases with, "" for CloudFront's own.
	Certificate string `json:"certificate,omitempty"`
	// AccessControl is the id of the origin access control found by the stack's CDN name,
	// "" if there is none.
	AccessControl string            `json:"access_control,omitempty"`
	Tags          map[string]string `json:"tags"`
}

// Record is one DNS record (instactl writes CNAMEs).
type Record struct {
	Name  string `json:"name"` // fully qualified, with the trailing dot
	Type  string `json:"type"`
	Value string `json:"value"`
	TTL   int64  `json:"ttl"`
	// Owner is the stack that wrote the record: DNS records carry no tags, so a provider keeps
	// an ownership marker beside each record it writes (on Route 53 a TXT record). "": none.
	Owner string `json:"owner,omitempty"`
}

// Zone is a DNS hosted zone: the records at the names the stack file asks for, and every
// record the stack owns (Record.Owner).
type Zone struct {
	Name string `json:"name"`
	// ID is "" when the zone does not exist in the account.
	ID      string   `json:"id"`
	Records []Record `json:"records"`
}

// Edge is what a provider holds of a stack's edge. A nil *Edge in Resources means the
// provider has no edge (the sandbox): plans then leave it out entirely.
type Edge struct {
	Buckets       []Bucket       `json:"buckets"`
	Roles         []HostRole     `json:"roles"`
	Distributions []Distribution `json:"distributions"`
	// AccessControls are the ids of the CDN origin access controls named after the stack (they
	// take no tags): with no distribution, what a create stopped halfway left.
	AccessControls []string `json:"access_controls,omitempty"`
	// Zone is the hosted zone the stack file names, or else the one the photo bucket's
	// TagDNSZone names (records left from a dns section since removed); nil when neither.
	Zone *Zone `json:"zone,omitempty"`
}

// BucketSpec asks for a private photo bucket: default encryption, versioning, every public
// access block, objects owned by the bucket owner (no ACLs).
type BucketSpec struct {
	Name string
	Tags map[string]string
}

// RoleSpec asks for a role EC2 instances assume, with exactly the inline policy Policy (named
// PolicyName; other inline policies and attached managed policies are removed), and an
// instance profile of the same name holding it.
type RoleSpec struct {
	Name       string
	PolicyName string
	Policy     string
	Tags       map[string]string
}

// DistributionSpec asks for a CDN distribution serving Bucket through an origin access
// control named Name, and a bucket policy allowing that distribution (and nothing else) to
// read the bucket's objects. Aliases need CertificateARN (ACM, us-east-1).
type DistributionSpec struct {
	Name           string
	Bucket         string
	Aliases        []string
	CertificateARN string
	Tags           map[string]string
}

// EdgeProvider is implemented by providers with an edge (AWS). Every call is idempotent and
// converges: an existing resource is adopted when tagged with the stack, and refused otherwise.
type EdgeProvider interface {
	// DescribeEdge returns the stack's edge; zone is the hosted zone to look in for records
	// named names ("" and nil: no DNS).
	DescribeEdge(ctx context.Context, stack, zone string, names []string) (*Edge, error)

	EnsureBucket(ctx context.Context, stack string, b BucketSpec) error
	// BucketContents counts the objects, versions and delete markers of a bucket.
	BucketContents(ctx context.Context, name string) (BucketContents, error)
	// DeleteBucket deletes a bucket of stack. A bucket holding anything is refused unless
	// deleteData, which deletes every version and delete marker first.
	DeleteBucket(ctx context.Context, stack, name string, deleteData bool) error

	EnsureRole(ctx context.Context, stack string, r RoleSpec) error
	// DeleteRole deletes the instance profile, the role's policies and the role.
	DeleteRole(ctx context.Context, stack, name string) error

	// EnsureDistribution creates or corrects the distribution, its origin access control and
	// the bucket policy allowing it, and returns it.
	EnsureDistribution(ctx context.Context, stack string, d DistributionSpec) (Distribution, error)
	// DeleteDistribution disables the distribution, waits until that is deployed, deletes it
	// and the stack's origin access controls; id "": only the origin access controls.
	DeleteDistribution(ctx context.Context, stack, id string) error

	// SetInstanceProfile makes a running instance run with the instance profile named profile,
	// replacing the one it has.
	SetInstanceProfile(ctx context.Context, instanceID, profile string) error

	// UpsertRecord makes the record in zone (by name) exactly r, marked as r.Owner's.
	UpsertRecord(ctx context.Context, zone string, r Record) error
	// DeleteRecord deletes r, as described (with its value), and its ownership marker.
	DeleteRecord(ctx context.Context, zone string, r Record) error
}

// PhotoAccessPolicy is the app hosts' IAM policy: list the photo bucket, and get, put and
// delete its objects; nothing else. It is compact JSON with sorted keys, the form providers
// return policies in.
func PhotoAccessPolicy(bucket string) string {
	return policyJSON(map[string]any{"Version": "2012-10-17", "Statement": []any{
		map[string]any{"Sid": "ListPhotos", "Effect": "Allow", "Action": []any{"s3:ListBucket"},
			"Resource": "arn:aws:s3:::" + bucket},
		map[string]any{"Sid": "ReadWritePhotos", "Effect": "Allow",
			"Action":   []any{"s3:DeleteObject", "s3:GetObject", "s3:PutObject"},
			"Resource": "arn:aws:s3:::" + bucket + "/*"},
	}})
}

// EC2TrustPolicy lets EC2 instances assume a role (through its instance profile).
func EC2TrustPolicy() string {
	return policyJSON(map[string]any{"Version": "2012-10-17", "Statement": []any{map[string]any{
		"Effect": "Allow", "Principal": map[string]any{"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}}})
}

// CDNDomainPlaceholder stands, in an app host's user data, for the CDN's domain name, which
// exists only once the distribution does: apply replaces it before launching the host.
const CDNDomainPlaceholder = "@INSTACTL_CDN_DOMAIN@"

// CDNBucketPolicy is the photo bucket's policy: the distribution distARN, and nothing else,
// may read the bucket's objects (its origin access control signs requests as the CloudFront
// service). Compact JSON with sorted keys.
func CDNBucketPolicy(bucket, distARN string) string {
	return policyJSON(map[string]any{"Version": "2012-10-17", "Statement": []any{map[string]any{
		"Sid": "CloudFrontReadsPhotos", "Effect": "Allow", "Principal": map[string]any{"Service": "cloudfront.amazonaws.com"},
		"Action": "s3:GetObject", "Resource": "arn:aws:s3:::" + bucket + "/*",
		"Condition": map[string]any{"StringEquals": map[string]any{"AWS:SourceArn": distARN}}}}})
}

// policyJSON marshals a policy built of maps, slices and strings, which cannot fail.
func policyJSON(v map[string]any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
