package aws

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/instactl/instactl/cloud"
)

// Route 53 records carry no tags (only hosted zones and health checks do), and the zone is the
// operator's, not the stack's. So beside every CNAME it writes instactl writes, in the same
// change batch, a TXT marker "_instactl.<name>" saying which stack owns it (as external-dns
// does). A record without a marker is the operator's and is never changed or deleted.

// markerPrefix starts the name of an ownership marker.
const markerPrefix = "_instactl."

// markerValue is the TXT value of the marker of stack's records (quoted, as Route 53 wants).
func markerValue(stack string) string { return `"instactl stack=` + stack + `"` }

// markerOwner returns the stack a marker value names, "" if it is not a marker.
func markerOwner(value string) string {
	owner, ok := strings.CutPrefix(strings.Trim(value, `"`), "instactl stack=")
	if !ok {
		return ""
	}
	return owner
}

// fqdn lowercases a DNS name and gives it its trailing dot, the form Route 53 returns.
func fqdn(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// describeZone finds the hosted zone by name (ID "" when the account has none) and returns the
// records at names and every record stack owns. It reads the whole zone: the records a stack
// owns are found by their markers even after the stack file stopped naming them.
func (p *Provider) describeZone(ctx context.Context, stack, zone string, names []string) (*cloud.Zone, error) {
	z := &cloud.Zone{Name: fqdn(zone), Records: []cloud.Record{}}
	id, err := p.zoneID(ctx, zone)
	if err != nil || id == "" {
		return z, err
	}
	z.ID = id
	var all []cloud.Record
	owners := map[string]string{} // record name -> owning stack
	in := &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(id)}
	for {
		out, err := p.edge.dns.ListResourceRecordSets(ctx, in)
		if err != nil {
			return nil, wrap(err, "list the records of zone %s", zone)
		}
		for _, rs := range out.ResourceRecordSets {
			r := cloud.Record{Name: fqdn(aws.ToString(rs.Name)), Type: string(rs.Type), TTL: aws.ToInt64(rs.TTL)}
			var vs []string
			for _, v := range rs.ResourceRecords {
				vs = append(vs, aws.ToString(v.Value))
			}
			r.Value = strings.Join(vs, " ")
			if rs.AliasTarget != nil {
				r.Value = "alias " + aws.ToString(rs.AliasTarget.DNSName)
			}
			if name, ok := strings.CutPrefix(r.Name, markerPrefix); ok && rs.Type == r53types.RRTypeTxt {
				owners[name] = markerOwner(r.Value)
				continue
			}
			all = append(all, r)
		}
		if !out.IsTruncated {
			break
		}
		in.StartRecordName, in.StartRecordType, in.StartRecordIdentifier = out.NextRecordName, out.NextRecordType, out.NextRecordIdentifier
	}
	for i := range names {
		names[i] = fqdn(names[i])
	}
	for _, r := range all {
		r.Owner = owners[r.Name]
		if r.Owner == stack || slices.Contains(names, r.Name) {
			z.Records = append(z.Records, r)
		}
	}
	return z, nil
}

// zoneID is the id of the public or private hosted zone named zone, "" if there is none.
func (p *Provider) zoneID(ctx context.Context, zone string) (string, error) {
	out, err := p.edge.dns.ListHostedZonesByName(ctx, &route53.ListHostedZonesByNameInput{DNSName: aws.String(fqdn(zone)), MaxItems: aws.Int32(1)})
	if err != nil {
		return "", wrap(err, "find hosted zone %s", zone)
	}
	for _, hz := range out.HostedZones {
		if fqdn(aws.ToString(hz.Name)) == fqdn(zone) {
			return strings.TrimPrefix(aws.ToString(hz.Id), "/hostedzone/"), nil
		}
	}
	return "", nil
}

// changeRecord applies action to r and to its ownership marker in one batch, so a record is
// never left without its marker or the other way round.
func (p *Provider) changeRecord(ctx context.Context, zone string, action r53types.ChangeAction, r cloud.Record) error {
	id, err := p.zoneID(ctx, zone)
	if err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("hosted zone %s: %w: create it in Route 53 or change dns.zone in the stack file", zone, cloud.ErrNotFound)
	}
	set := func(name string, typ r53types.RRType, value string) r53types.Change {
		return r53types.Change{Action: action, ResourceRecordSet: &r53types.ResourceRecordSet{Name: aws.String(name), Type: typ,
			TTL: aws.Int64(r.TTL), ResourceRecords: []r53types.ResourceRecord{{Value: aws.String(value)}}}}
	}
	changes := []r53types.Change{set(fqdn(r.Name), r53types.RRType(r.Type), r.Value)}
	if r.Owner != "" {
		changes = append(changes, set(markerPrefix+fqdn(r.Name), r53types.RRTypeTxt, markerValue(r.Owner)))
	}
	_, err = p.edge.dns.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{HostedZoneId: aws.String(id),
		ChangeBatch: &r53types.ChangeBatch{Comment: aws.String("instactl"), Changes: changes}})
	return err
}

// UpsertRecord implements cloud.EdgeProvider.
func (p *Provider) UpsertRecord(ctx context.Context, zone string, r cloud.Record) error {
	if err := p.changeRecord(ctx, zone, r53types.ChangeActionUpsert, r); err != nil {
		return wrap(err, "write record %s %s in zone %s", r.Type, r.Name, zone)
	}
	return nil
}

// DeleteRecord implements cloud.EdgeProvider. Route 53 deletes a record set only when given
// its exact current value, which the plan read; a record already gone is fine.
func (p *Provider) DeleteRecord(ctx context.Context, zone string, r cloud.Record) error {
	err := p.changeRecord(ctx, zone, r53types.ChangeActionDelete, r)
	if err == nil || apiCode(err) == "InvalidChangeBatch" && strings.Contains(err.Error(), "not found") {
		return nil
	}
	return wrap(err, "delete record %s %s in zone %s", r.Type, r.Name, zone)
}
