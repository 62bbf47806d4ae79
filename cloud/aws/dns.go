package aws

import (
	"context"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	r53types "github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/instactl/instactl/cloud"
)

// Route 53 records carry no tags (only hosted zones and health checks do), and the zone is the
// operator's, not the stack's. So instactl owns records by name: exactly the names the stack
// file asks for within the zone it names, nothing else in the zone is read or changed.

// fqdn lowercases a DNS name and gives it its trailing dot, the form Route 53 returns.
func fqdn(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// describeZone finds the hosted zone by name (ID "" when the account has none) and the
// records of it named names.
func (p *Provider) describeZone(ctx context.Context, zone string, names []string) (*cloud.Zone, error) {
	z := &cloud.Zone{Name: fqdn(zone), Records: []cloud.Record{}}
	id, err := p.zoneID(ctx, zone)
	if err != nil || id == "" {
		return z, err
	}
	z.ID = id
	for _, n := range names {
		n = fqdn(n)
		out, err := p.edge.dns.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{HostedZoneId: aws.String(id),
			StartRecordName: aws.String(n), MaxItems: aws.Int32(10)})
		if err != nil {
			return nil, wrap(err, "list records named %s in zone %s", n, zone)
		}
		for _, rs := range out.ResourceRecordSets {
			if fqdn(aws.ToString(rs.Name)) != n {
				break // sorted by name: past it
			}
			r := cloud.Record{Name: n, Type: string(rs.Type), TTL: aws.ToInt64(rs.TTL)}
			switch {
			case rs.AliasTarget != nil:
				r.Value = "alias " + aws.ToString(rs.AliasTarget.DNSName)
			case len(rs.ResourceRecords) > 0:
				var vs []string
				for _, v := range rs.ResourceRecords {
					vs = append(vs, aws.ToString(v.Value))
				}
				r.Value = strings.Join(vs, " ")
			}
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

func (p *Provider) changeRecord(ctx context.Context, zone string, action r53types.ChangeAction, r cloud.Record) error {
	id, err := p.zoneID(ctx, zone)
	if err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("hosted zone %s: %w: create it in Route 53 or change dns.zone in the stack file", zone, cloud.ErrNotFound)
	}
	_, err = p.edge.dns.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{HostedZoneId: aws.String(id),
		ChangeBatch: &r53types.ChangeBatch{Comment: aws.String("instactl"), Changes: []r53types.Change{{Action: action,
			ResourceRecordSet: &r53types.ResourceRecordSet{Name: aws.String(fqdn(r.Name)), Type: r53types.RRType(r.Type),
				TTL: aws.Int64(r.TTL), ResourceRecords: []r53types.ResourceRecord{{Value: aws.String(r.Value)}}}}}}})
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
