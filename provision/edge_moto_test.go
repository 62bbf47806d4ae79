package provision_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/cloudfront"
	cftypes "github.com/aws/aws-sdk-go-v2/service/cloudfront/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/instactl/instactl/cloud"
	awscloud "github.com/instactl/instactl/cloud/aws"
	"github.com/instactl/instactl/provision"
	"github.com/instactl/instactl/stack"
)

// edgeClients are plain SDK clients on moto, used as the oracle: they read what apply made
// without going through the provider under test.
type edgeClients struct {
	s3  *s3.Client
	iam *iam.Client
	ec2 *ec2.Client
	cdn *cloudfront.Client
	dns *route53.Client
}

func newEdgeClients(t *testing.T) edgeClients {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return edgeClients{s3: s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }), iam: iam.NewFromConfig(cfg),
		ec2: ec2.NewFromConfig(cfg), cdn: cloudfront.NewFromConfig(cfg), dns: route53.NewFromConfig(cfg)}
}

// edgeStack is smallStack with one app host and a dns section naming www (the ELB) and photos
// (the CDN) in example.com.
func edgeStack(name, key string) *stack.Stack {
	st := smallStack(name, key, 1)
	st.DNS = stack.DNS{Zone: "example.com.", LB: "www", CDN: "photos",
		CDNCertificate: "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"}
	return st
}

// edgeDesired renders the app hosts' user data with the CDN placeholder, as templates does for
// a stack without dns.cdn, so apply must put the distribution's domain in.
func edgeDesired(t *testing.T, st *stack.Stack) provision.DesiredState {
	t.Helper()
	d, err := provision.Desired(st, func(h stack.HostRef) (string, error) {
		return "#cloud-config\nhostname: " + h.Name() + "\n# INSTAGRAM_PHOTO_BASE_URL=https://" + cloud.CDNDomainPlaceholder + "\n", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mustNoChanges(t *testing.T, p cloud.Provider, d provision.DesiredState, when string) {
	t.Helper()
	if again := plan(t, p, d); again.HasChanges() {
		var b strings.Builder
		_ = again.Render(&b)
		t.Fatalf("plan %s is not empty:\n%s", when, b.String())
	}
}

func changedAddrs(pl provision.Plan) []string {
	var out []string
	for _, c := range pl.Changes {
		if c.Action != provision.NoOp {
			out = append(out, string(c.Action)+" "+c.Address)
		}
	}
	return out
}

// TestEdgeMoto applies a stack with a dns section on moto through the real SDK and checks,
// with separate SDK clients, the photo bucket, the app role and instance profile, the CDN with
// its origin access control and bucket policy, and the two CNAMEs; then drift is corrected, and
// destroy refuses a bucket holding photos until ForceDeleteData, leaving nothing of the stack
// and the zone's other records alone.
func TestEdgeMoto(t *testing.T) {
	startMoto(t)
	ctx := context.Background()
	c := newEdgeClients(t)
	key := keyFile(t)
	st := edgeStack("ed", key)

	zone, err := c.dns.CreateHostedZone(ctx, &route53.CreateHostedZoneInput{Name: aws.String("example.com."),
		CallerReference: aws.String("edge-test")})
	if err != nil {
		t.Fatal(err)
	}
	zoneID := strings.TrimPrefix(aws.ToString(zone.HostedZone.Id), "/hostedzone/")
	// A record of the zone's owner that instactl must never touch.
	if _, err := c.dns.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{HostedZoneId: aws.String(zoneID),
		ChangeBatch: &r53types.ChangeBatch{Changes: []r53types.Change{{Action: r53types.ChangeActionCreate,
			ResourceRecordSet: &r53types.ResourceRecordSet{Name: aws.String("mail.example.com."), Type: r53types.RRTypeCname,
				TTL: aws.Int64(60), ResourceRecords: []r53types.ResourceRecord{{Value: aws.String("mx.example.net")}}}}}}}); err != nil {
		t.Fatal(err)
	}

	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := awscloud.New(cfg, awscloud.Options{PollMin: 50 * time.Millisecond, PollMax: 200 * time.Millisecond,
		DNSZone: st.DNS.Zone, DNSNames: provision.DNSNames(st)})
	d := edgeDesired(t, st)

	first := plan(t, p, d)
	var edge []string
	for _, ch := range first.Changes {
		switch ch.Kind {
		case provision.KindBucket, provision.KindAppRole, provision.KindCDN, provision.KindRecord:
			edge = append(edge, string(ch.Action)+" "+ch.Address)
		}
	}
	if want := []string{"create bucket.ed-photos", "create role.ed-app", "create cdn.ed-photos",
		"create record.www.example.com", "create record.photos.example.com"}; !slices.Equal(edge, want) {
		t.Errorf("first plan's edge = %v, want %v", edge, want)
	}
	apply(t, p, first)
	mustNoChanges(t, p, d, "after apply")

	// The bucket: private, encrypted, versioned, tagged.
	bucket := aws.String("ed-photos")
	enc, err := c.s3.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: bucket})
	if err != nil || len(enc.ServerSideEncryptionConfiguration.Rules) != 1 ||
		enc.ServerSideEncryptionConfiguration.Rules[0].ApplyServerSideEncryptionByDefault.SSEAlgorithm != s3types.ServerSideEncryptionAes256 {
		t.Errorf("bucket encryption: %v %+v", err, enc)
	}
	if v, err := c.s3.GetBucketVersioning(ctx, &s3.GetBucketVersioningInput{Bucket: bucket}); err != nil || v.Status != s3types.BucketVersioningStatusEnabled {
		t.Errorf("bucket versioning: %v %+v", err, v)
	}
	pab, err := c.s3.GetPublicAccessBlock(ctx, &s3.GetPublicAccessBlockInput{Bucket: bucket})
	if err != nil || !aws.ToBool(pab.PublicAccessBlockConfiguration.BlockPublicAcls) || !aws.ToBool(pab.PublicAccessBlockConfiguration.IgnorePublicAcls) ||
		!aws.ToBool(pab.PublicAccessBlockConfiguration.BlockPublicPolicy) || !aws.ToBool(pab.PublicAccessBlockConfiguration.RestrictPublicBuckets) {
		t.Errorf("public access block: %v %+v", err, pab)
	}
	if tags, err := c.s3.GetBucketTagging(ctx, &s3.GetBucketTaggingInput{Bucket: bucket}); err != nil ||
		!slices.ContainsFunc(tags.TagSet, func(tg s3types.Tag) bool {
			return aws.ToString(tg.Key) == cloud.TagStack && aws.ToString(tg.Value) == "ed"
		}) {
		t.Errorf("bucket tags: %v %+v", err, tags)
	}

	// The CDN: one distribution of the stack, origin the bucket through an origin access
	// control, the alias, and a bucket policy letting exactly it read.
	dl, err := c.cdn.ListDistributions(ctx, &cloudfront.ListDistributionsInput{})
	if err != nil || dl.DistributionList == nil || len(dl.DistributionList.Items) != 1 {
		t.Fatalf("distributions: %v %+v", err, dl)
	}
	dist, err := c.cdn.GetDistribution(ctx, &cloudfront.GetDistributionInput{Id: dl.DistributionList.Items[0].Id})
	if err != nil {
		t.Fatal(err)
	}
	dcfg := dist.Distribution.DistributionConfig
	origin := dcfg.Origins.Items[0]
	if aws.ToString(origin.DomainName) != "ed-photos.s3.us-east-1.amazonaws.com" ||
		!slices.Equal(dcfg.Aliases.Items, []string{"photos.example.com"}) || !aws.ToBool(dcfg.Enabled) ||
		aws.ToString(dcfg.ViewerCertificate.ACMCertificateArn) != st.DNS.CDNCertificate {
		t.Errorf("distribution: origin %s, aliases %v, enabled %v, certificate %q", aws.ToString(origin.DomainName),
			dcfg.Aliases.Items, aws.ToBool(dcfg.Enabled), aws.ToString(dcfg.ViewerCertificate.ACMCertificateArn))
	}
	// moto 5.2 drops Origin.OriginAccessControlId from what it stores, so the origin access
	// control is checked by its name (the one instactl owns) rather than through the origin.
	ol, err := c.cdn.ListOriginAccessControls(ctx, &cloudfront.ListOriginAccessControlsInput{})
	if err != nil || ol.OriginAccessControlList == nil || len(ol.OriginAccessControlList.Items) != 1 ||
		aws.ToString(ol.OriginAccessControlList.Items[0].Name) != "ed-photos" ||
		ol.OriginAccessControlList.Items[0].SigningBehavior != "always" {
		t.Errorf("origin access controls: %v %+v", err, ol.OriginAccessControlList)
	}
	pol, err := c.s3.GetBucketPolicy(ctx, &s3.GetBucketPolicyInput{Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	var bp struct {
		Statement []struct {
			Principal map[string]string
			Action    string
			Condition map[string]map[string]string
		}
	}
	if err := json.Unmarshal([]byte(aws.ToString(pol.Policy)), &bp); err != nil || len(bp.Statement) != 1 ||
		bp.Statement[0].Principal["Service"] != "cloudfront.amazonaws.com" || bp.Statement[0].Action != "s3:GetObject" ||
		bp.Statement[0].Condition["StringEquals"]["AWS:SourceArn"] != aws.ToString(dist.Distribution.ARN) {
		t.Errorf("bucket policy does not let exactly the distribution read: %v\n%s", err, aws.ToString(pol.Policy))
	}

	// The role: EC2 may assume it, one inline policy naming exactly the bucket, nothing
	// attached, and an instance profile holding it.
	pols, err := c.iam.ListRolePolicies(ctx, &iam.ListRolePoliciesInput{RoleName: aws.String("ed-app")})
	if err != nil || !slices.Equal(pols.PolicyNames, []string{"photos"}) {
		t.Errorf("role policies: %v %+v", err, pols)
	}
	rp, err := c.iam.GetRolePolicy(ctx, &iam.GetRolePolicyInput{RoleName: aws.String("ed-app"), PolicyName: aws.String("photos")})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := url.QueryUnescape(aws.ToString(rp.PolicyDocument)) // IAM returns documents URL-encoded
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"arn:aws:s3:::ed-photos", "arn:aws:s3:::ed-photos/*", "s3:GetObject", "s3:PutObject"} {
		if !strings.Contains(doc, want) {
			t.Errorf("role policy lacks %q: %s", want, doc)
		}
	}
	if strings.Contains(doc, `"*"`) || strings.Contains(doc, "s3:*") {
		t.Errorf("role policy allows more than the bucket: %s", doc)
	}
	prof, err := c.iam.GetInstanceProfile(ctx, &iam.GetInstanceProfileInput{InstanceProfileName: aws.String("ed-app")})
	if err != nil || len(prof.InstanceProfile.Roles) != 1 || aws.ToString(prof.InstanceProfile.Roles[0].RoleName) != "ed-app" {
		t.Errorf("instance profile: %v %+v", err, prof)
	}

	// The app host runs with the profile and got the CDN's domain in its user data; the
	// other hosts run without a profile.
	di, err := c.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: aws.String("tag:" + cloud.TagStack), Values: []string{"ed"}},
		{Name: aws.String("instance-state-name"), Values: []string{"running"}}}})
	if err != nil {
		t.Fatal(err)
	}
	apps := 0
	for _, r := range di.Reservations {
		for _, in := range r.Instances {
			role := ""
			for _, tg := range in.Tags {
				if aws.ToString(tg.Key) == cloud.TagRole {
					role = aws.ToString(tg.Value)
				}
			}
			hasProfile := in.IamInstanceProfile != nil && strings.HasSuffix(aws.ToString(in.IamInstanceProfile.Arn), "/ed-app")
			if hasProfile != (role == "app") {
				t.Errorf("instance %s (%s): instance profile %+v", aws.ToString(in.InstanceId), role, in.IamInstanceProfile)
			}
			if role != "app" {
				continue
			}
			apps++
			ud, err := c.ec2.DescribeInstanceAttribute(ctx, &ec2.DescribeInstanceAttributeInput{InstanceId: in.InstanceId,
				Attribute: ec2types.InstanceAttributeNameUserData})
			if err != nil {
				t.Fatal(err)
			}
			raw := aws.ToString(ud.UserData.Value)
			if b, err := base64.StdEncoding.DecodeString(raw); err == nil {
				raw = string(b)
			}
			if want := "https://" + aws.ToString(dist.Distribution.DomainName); !strings.Contains(raw, want) || strings.Contains(raw, cloud.CDNDomainPlaceholder) {
				t.Errorf("app host user data lacks %s:\n%s", want, raw)
			}
		}
	}
	if apps != 1 {
		t.Errorf("%d app hosts, want 1", apps)
	}

	// The records: www -> the ELB, photos -> the CDN; mail untouched.
	records := func() map[string]string {
		out := map[string]string{}
		rr, err := c.dns.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(zoneID)})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rr.ResourceRecordSets {
			if r.Type == r53types.RRTypeCname {
				out[aws.ToString(r.Name)] = aws.ToString(r.ResourceRecords[0].Value)
			}
		}
		return out
	}
	actual, err := p.Describe(ctx, "ed")
	if err != nil || len(actual.LoadBalancers) != 1 {
		t.Fatalf("describe: %v", err)
	}
	wantRecords := map[string]string{"www.example.com.": actual.LoadBalancers[0].DNSName,
		"photos.example.com.": aws.ToString(dist.Distribution.DomainName), "mail.example.com.": "mx.example.net"}
	if got := records(); fmt.Sprint(got) != fmt.Sprint(wantRecords) {
		t.Errorf("records = %v, want %v", got, wantRecords)
	}

	// Drift: an extra inline policy, a managed policy, versioning suspended and the www record
	// pointed elsewhere are all planned back and corrected.
	if _, err := c.iam.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String("ed-app"), PolicyName: aws.String("extra"),
		PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`)}); err != nil {
		t.Fatal(err)
	}
	managed, err := c.iam.CreatePolicy(ctx, &iam.CreatePolicyInput{PolicyName: aws.String("all-s3"),
		PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.iam.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{RoleName: aws.String("ed-app"), PolicyArn: managed.Policy.Arn}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.s3.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{Bucket: bucket,
		VersioningConfiguration: &s3types.VersioningConfiguration{Status: s3types.BucketVersioningStatusSuspended}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.dns.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{HostedZoneId: aws.String(zoneID),
		ChangeBatch: &r53types.ChangeBatch{Changes: []r53types.Change{{Action: r53types.ChangeActionUpsert,
			ResourceRecordSet: &r53types.ResourceRecordSet{Name: aws.String("www.example.com."), Type: r53types.RRTypeCname,
				TTL: aws.Int64(60), ResourceRecords: []r53types.ResourceRecord{{Value: aws.String("evil.example.net")}}}}}}}); err != nil {
		t.Fatal(err)
	}
	// ...and an app host that lost its instance profile (or predates the role) gets it back.
	assoc, err := c.ec2.DescribeIamInstanceProfileAssociations(ctx, &ec2.DescribeIamInstanceProfileAssociationsInput{})
	if err != nil || len(assoc.IamInstanceProfileAssociations) != 1 {
		t.Fatalf("instance profile associations: %v %+v", err, assoc)
	}
	appID := aws.ToString(assoc.IamInstanceProfileAssociations[0].InstanceId)
	if _, err := c.ec2.DisassociateIamInstanceProfile(ctx, &ec2.DisassociateIamInstanceProfileInput{
		AssociationId: assoc.IamInstanceProfileAssociations[0].AssociationId}); err != nil {
		t.Fatal(err)
	}
	// ...and a distribution answering with another certificate.
	dc, err := c.cdn.GetDistributionConfig(ctx, &cloudfront.GetDistributionConfigInput{Id: dist.Distribution.Id})
	if err != nil {
		t.Fatal(err)
	}
	dc.DistributionConfig.ViewerCertificate.ACMCertificateArn = aws.String("arn:aws:acm:us-east-1:123456789012:certificate/other")
	if _, err := c.cdn.UpdateDistribution(ctx, &cloudfront.UpdateDistributionInput{Id: dist.Distribution.Id, IfMatch: dc.ETag,
		DistributionConfig: dc.DistributionConfig}); err != nil {
		t.Fatal(err)
	}
	drift := plan(t, p, d)
	if got, want := changedAddrs(drift), []string{"update bucket.ed-photos", "update role.ed-app", "update instance_profile.app[0]",
		"update cdn.ed-photos", "update record.www.example.com"}; !slices.Equal(got, want) {
		var b strings.Builder
		_ = drift.Render(&b)
		t.Errorf("drift plan changes %v, want %v\n%s", got, want, b.String())
	}
	apply(t, p, drift)
	mustNoChanges(t, p, d, "after correcting drift")
	if di, err := c.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{appID}}); err != nil ||
		di.Reservations[0].Instances[0].IamInstanceProfile == nil ||
		!strings.HasSuffix(aws.ToString(di.Reservations[0].Instances[0].IamInstanceProfile.Arn), "/ed-app") {
		t.Errorf("app host %s after drift: %v, instance profile not given back", appID, err)
	}
	if got, err := c.cdn.GetDistribution(ctx, &cloudfront.GetDistributionInput{Id: dist.Distribution.Id}); err != nil ||
		aws.ToString(got.Distribution.DistributionConfig.ViewerCertificate.ACMCertificateArn) != st.DNS.CDNCertificate {
		t.Errorf("distribution certificate after drift: %v", err)
	}
	if att, err := c.iam.ListAttachedRolePolicies(ctx, &iam.ListAttachedRolePoliciesInput{RoleName: aws.String("ed-app")}); err != nil || len(att.AttachedPolicies) != 0 {
		t.Errorf("managed policies left on the role: %v %+v", err, att)
	}
	if got := records(); fmt.Sprint(got) != fmt.Sprint(wantRecords) {
		t.Errorf("records after drift = %v, want %v", got, wantRecords)
	}

	// A name dropped from the stack file: its record is found by its _instactl marker and
	// deleted, marker and all.
	st2 := edgeStack("ed", key)
	st2.DNS.LB = ""
	p2 := awscloud.New(cfg, awscloud.Options{PollMin: 50 * time.Millisecond, PollMax: 200 * time.Millisecond,
		DNSZone: st2.DNS.Zone, DNSNames: provision.DNSNames(st2)})
	d2 := edgeDesired(t, st2)
	dropped := plan(t, p2, d2)
	if got, want := changedAddrs(dropped), []string{"delete record.www.example.com"}; !slices.Equal(got, want) {
		t.Errorf("plan without dns.lb changes %v, want %v", got, want)
	}
	apply(t, p2, dropped)
	mustNoChanges(t, p2, d2, "after dropping dns.lb")
	delete(wantRecords, "www.example.com.")
	if got := records(); fmt.Sprint(got) != fmt.Sprint(wantRecords) {
		t.Errorf("records after dropping dns.lb = %v, want %v", got, wantRecords)
	}
	rr, err := c.dns.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(zoneID)})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rr.ResourceRecordSets {
		if strings.HasPrefix(aws.ToString(r.Name), "_instactl.www.") {
			t.Errorf("the marker of the dropped record is left: %s", aws.ToString(r.Name))
		}
	}

	// The whole dns section removed: the provider is told no zone, and finds the stack's
	// records through the zone the photo bucket's tag names; the plan deletes them, and the
	// bucket's tag after them.
	st3 := edgeStack("ed", key)
	st3.DNS = stack.DNS{}
	p3 := awscloud.New(cfg, awscloud.Options{PollMin: 50 * time.Millisecond, PollMax: 200 * time.Millisecond})
	d3 := edgeDesired(t, st3)
	noDNS := plan(t, p3, d3)
	if got := changedAddrs(noDNS); !slices.Contains(got, "delete record.photos.example.com") || !slices.Contains(got, "update bucket.ed-photos") {
		t.Errorf("plan without a dns section changes %v, want the photos record deleted and the bucket's zone tag dropped", got)
	}
	apply(t, p3, noDNS)
	mustNoChanges(t, p3, d3, "after removing the dns section")
	if got, want := records(), map[string]string{"mail.example.com.": "mx.example.net"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records after removing the dns section = %v, want only the operator's %v", got, want)
	}
	// The dns section back (without www): the record comes back.
	apply(t, p2, plan(t, p2, d2))
	mustNoChanges(t, p2, d2, "after putting the dns section back")
	if got := records(); fmt.Sprint(got) != fmt.Sprint(wantRecords) {
		t.Errorf("records with the dns section back = %v, want %v", got, wantRecords)
	}

	// The operator's own CNAME at a name the stack file asks for is refused, never overwritten.
	if _, err := c.dns.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{HostedZoneId: aws.String(zoneID),
		ChangeBatch: &r53types.ChangeBatch{Changes: []r53types.Change{{Action: r53types.ChangeActionCreate,
			ResourceRecordSet: &r53types.ResourceRecordSet{Name: aws.String("www.example.com."), Type: r53types.RRTypeCname,
				TTL: aws.Int64(60), ResourceRecords: []r53types.ResourceRecord{{Value: aws.String("shop.example.net")}}}}}}}); err != nil {
		t.Fatal(err)
	}
	wantRecords["www.example.com."] = "shop.example.net"
	theirs := plan(t, p, d)
	if i := slices.IndexFunc(theirs.Changes, func(ch provision.Change) bool { return ch.Address == "record.www.example.com" }); i < 0 ||
		!strings.Contains(theirs.Changes[i].Refuse, "already has a CNAME record that instactl did not write") {
		t.Errorf("the operator's www record is not refused: %+v", theirs.Changes)
	}

	// Photos in the bucket: two objects, one of them with two versions.
	for _, k := range []string{"p/1.jpg", "p/2.jpg", "p/2.jpg"} {
		if _, err := c.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: bucket, Key: aws.String(k), Body: strings.NewReader("jpeg " + k)}); err != nil {
			t.Fatal(err)
		}
	}

	// destroy refuses the bucket, saying what it holds; applying the plan changes nothing.
	refused, err := provision.Destroy(ctx, p, "ed")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(refused.Changes, func(ch provision.Change) bool { return ch.Kind == provision.KindBucket })
	if i < 0 || !strings.Contains(refused.Changes[i].Refuse, "holds 2 objects (3 versions, 0 delete markers)") ||
		!strings.Contains(refused.Changes[i].Refuse, "--force-delete-data") {
		t.Fatalf("destroy of a bucket with photos is not refused with the count: %+v", refused.Changes[i])
	}
	if _, err := provision.Apply(ctx, p, refused); err == nil {
		t.Fatal("apply of a destroy plan with a refused bucket succeeded")
	}
	if _, err := c.s3.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: bucket}); err != nil {
		t.Errorf("the refused destroy removed the bucket: %v", err)
	}

	// With ForceDeleteData everything goes, the zone's other record stays.
	forced, err := provision.Destroy(ctx, p, "ed", provision.ForceDeleteData())
	if err != nil {
		t.Fatal(err)
	}
	apply(t, p, forced)
	if _, err := c.s3.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: bucket}); err == nil {
		t.Error("the bucket is still there after destroy --force-delete-data")
	}
	if _, err := c.iam.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("ed-app")}); err == nil {
		t.Error("the role is still there after destroy")
	}
	if _, err := c.iam.GetInstanceProfile(ctx, &iam.GetInstanceProfileInput{InstanceProfileName: aws.String("ed-app")}); err == nil {
		t.Error("the instance profile is still there after destroy")
	}
	if dl, err := c.cdn.ListDistributions(ctx, &cloudfront.ListDistributionsInput{}); err != nil || len(dl.DistributionList.Items) != 0 {
		t.Errorf("distributions after destroy: %v %+v", err, dl.DistributionList)
	}
	if ol, err := c.cdn.ListOriginAccessControls(ctx, &cloudfront.ListOriginAccessControlsInput{}); err != nil ||
		(ol.OriginAccessControlList != nil && len(ol.OriginAccessControlList.Items) != 0) {
		t.Errorf("origin access controls after destroy: %v %+v", err, ol.OriginAccessControlList)
	}
	if got, want := records(), map[string]string{"mail.example.com.": "mx.example.net", "www.example.com.": "shop.example.net"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records after destroy = %v, want only the operator's %v", got, want)
	}
	if rr, err := c.dns.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(zoneID)}); err != nil {
		t.Fatal(err)
	} else if n := len(rr.ResourceRecordSets); n != 4 { // SOA, NS, mail, www
		t.Errorf("%d record sets after destroy, want 4 (SOA, NS and the operator's two): markers left?", n)
	}
	again, err := provision.Destroy(ctx, p, "ed")
	if err != nil || again.HasChanges() {
		t.Errorf("destroy after destroy: %v, %s", err, again.Summary())
	}

	// An apply stopped between the origin access control and the distribution: destroy finds
	// the origin access control by its name (it takes no tags) and deletes it.
	if _, err := c.cdn.CreateOriginAccessControl(ctx, &cloudfront.CreateOriginAccessControlInput{
		OriginAccessControlConfig: &cftypes.OriginAccessControlConfig{Name: aws.String("ed-photos"),
			OriginAccessControlOriginType: cftypes.OriginAccessControlOriginTypesS3,
			SigningBehavior:               cftypes.OriginAccessControlSigningBehaviorsAlways,
			SigningProtocol:               cftypes.OriginAccessControlSigningProtocolsSigv4}}); err != nil {
		t.Fatal(err)
	}
	leftover, err := provision.Destroy(ctx, p, "ed")
	if got, want := changedAddrs(leftover), []string{"delete cdn.ed-photos#access-control"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("destroy with a left origin access control: %v, %v, want %v", err, got, want)
	}
	apply(t, p, leftover)
	if ol, err := c.cdn.ListOriginAccessControls(ctx, &cloudfront.ListOriginAccessControlsInput{}); err != nil ||
		(ol.OriginAccessControlList != nil && len(ol.OriginAccessControlList.Items) != 0) {
		t.Errorf("origin access controls after the second destroy: %v %+v", err, ol.OriginAccessControlList)
	}
}
