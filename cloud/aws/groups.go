package aws

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/instactl/instactl/cloud"
)

// groupName is the EC2 name of a stack's group: names are unique per VPC, not per stack.
func groupName(stack, name string) string { return stack + "-" + name }

func (p *Provider) rawGroups(ctx context.Context, filters ...ec2types.Filter) ([]ec2types.SecurityGroup, error) {
	var out []ec2types.SecurityGroup
	pg := ec2.NewDescribeSecurityGroupsPaginator(p.ec2, &ec2.DescribeSecurityGroupsInput{Filters: filters})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "describe security groups")
		}
		out = append(out, page.SecurityGroups...)
	}
	return out, nil
}

func (p *Provider) describeGroups(ctx context.Context, stack string) ([]cloud.SecurityGroup, error) {
	raw, err := p.rawGroups(ctx, stackFilter(stack))
	if err != nil {
		return nil, err
	}
	names := groupNames(stack, raw)
	out := make([]cloud.SecurityGroup, 0, len(raw))
	for _, g := range raw {
		out = append(out, cloud.SecurityGroup{
			ID: aws.ToString(g.GroupId), Name: names[aws.ToString(g.GroupId)],
			Description: aws.ToString(g.Description), Ingress: toRules(g.IpPermissions, names),
			Tags: fromEC2Tags(g.Tags),
		})
	}
	slices.SortFunc(out, func(a, b cloud.SecurityGroup) int { return cmpStr(a.Name, b.Name) })
	return out, nil
}

// groupNames maps the ids of a stack's groups to their names within the stack.
func groupNames(stack string, raw []ec2types.SecurityGroup) map[string]string {
	m := map[string]string{}
	for _, g := range raw {
		m[aws.ToString(g.GroupId)] = strings.TrimPrefix(aws.ToString(g.GroupName), stack+"-")
	}
	return m
}

// toRules flattens EC2 permissions into one rule per source; groups outside the stack keep their id.
func toRules(perms []ec2types.IpPermission, names map[string]string) []cloud.Rule {
	var out []cloud.Rule
	for _, perm := range perms {
		if aws.ToString(perm.IpProtocol) != "tcp" {
			continue
		}
		from, to := int(aws.ToInt32(perm.FromPort)), int(aws.ToInt32(perm.ToPort))
		for _, r := range perm.IpRanges {
			out = append(out, cloud.Rule{FromPort: from, ToPort: to, CIDR: aws.ToString(r.CidrIp)})
		}
		for _, pair := range perm.UserIdGroupPairs {
			id := aws.ToString(pair.GroupId)
			name, ok := names[id]
			if !ok {
				name = id
			}
			out = append(out, cloud.Rule{FromPort: from, ToPort: to, FromGroup: name})
		}
	}
	slices.SortFunc(out, func(a, b cloud.Rule) int { return cmpStr(ruleKey(a), ruleKey(b)) })
	return out
}

func ruleKey(r cloud.Rule) string {
	return fmt.Sprintf("%05d-%05d %s %s", r.FromPort, r.ToPort, r.CIDR, r.FromGroup)
}

// toPermissions resolves group names (within the stack) to ids.
func toPermissions(rules []cloud.Rule, ids map[string]string) ([]ec2types.IpPermission, error) {
	var out []ec2types.IpPermission
	for _, r := range rules {
		perm := ec2types.IpPermission{IpProtocol: aws.String("tcp"),
			FromPort: aws.Int32(int32(r.FromPort)), ToPort: aws.Int32(int32(r.ToPort))}
		switch {
		case r.FromGroup != "":
			id, ok := ids[r.FromGroup]
			if !ok {
				return nil, fmt.Errorf("rule refers to group %q, which the stack does not have: %w", r.FromGroup, cloud.ErrNotFound)
			}
			perm.UserIdGroupPairs = []ec2types.UserIdGroupPair{{GroupId: aws.String(id)}}
		case r.CIDR != "":
			perm.IpRanges = []ec2types.IpRange{{CidrIp: aws.String(r.CIDR)}}
		default:
			return nil, fmt.Errorf("rule %d-%d has neither a CIDR nor a group", r.FromPort, r.ToPort)
		}
		out = append(out, perm)
	}
	return out, nil
}

// stackGroupIDs maps the names of the stack's groups to their ids.
func (p *Provider) stackGroupIDs(ctx context.Context, stack string) (map[string]string, []ec2types.SecurityGroup, error) {
	raw, err := p.rawGroups(ctx, stackFilter(stack))
	if err != nil {
		return nil, nil, err
	}
	ids := map[string]string{}
	for id, name := range groupNames(stack, raw) {
		ids[name] = id
	}
	return ids, raw, nil
}

// CreateSecurityGroup implements cloud.Provider: the group is tagged in the create call, then its
// rules are authorized (a rule may name the group itself).
func (p *Provider) CreateSecurityGroup(ctx context.Context, stack string, g cloud.SecurityGroup) (cloud.SecurityGroup, error) {
	tags := map[string]string{}
	for k, v := range g.Tags {
		tags[k] = v
	}
	tags[cloud.TagStack] = stack
	tags[cloud.TagName] = groupName(stack, g.Name)
	desc := g.Description
	if desc == "" {
		desc = "instactl " + stack + " " + g.Name
	}
	out, err := p.ec2.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
		GroupName: aws.String(groupName(stack, g.Name)), Description: aws.String(desc),
		TagSpecifications: tagSpec(ec2types.ResourceTypeSecurityGroup, tags),
	})
	switch {
	case apiCode(err) == "InvalidGroup.Duplicate":
		// A lost reply retried by the SDK, or a crash after the create: the group is ours if it
		// carries our stack's tag (set in the create call), and we carry on with it.
		id, aerr := p.adoptGroup(ctx, stack, g.Name)
		if aerr != nil {
			return cloud.SecurityGroup{}, aerr
		}
		g.ID = id
	case err != nil:
		return cloud.SecurityGroup{}, wrap(err, "create security group %s", groupName(stack, g.Name))
	default:
		g.ID = aws.ToString(out.GroupId)
	}
	g.Description, g.Tags = desc, tags
	if len(g.Ingress) == 0 {
		return g, nil
	}
	ids, err := p.groupIDsFor(ctx, stack, g.Name, g.ID, g.Ingress)
	if err != nil {
		return cloud.SecurityGroup{}, fmt.Errorf("create security group %s: %w", g.Name, err)
	}
	if err := p.authorize(ctx, g.ID, g.Ingress, ids); err != nil {
		return cloud.SecurityGroup{}, fmt.Errorf("create security group %s: %w", g.Name, err)
	}
	return g, nil
}

func (p *Provider) authorize(ctx context.Context, groupID string, rules []cloud.Rule, ids map[string]string) error {
	if len(rules) == 0 {
		return nil
	}
	perms, err := toPermissions(rules, ids)
	if err != nil {
		return err
	}
	// A group made moments ago may not be visible to AuthorizeSecurityGroupIngress yet.
	err = p.untilFound(ctx, func() error {
		_, err := p.ec2.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{
			GroupId: aws.String(groupID), IpPermissions: perms})
		return err
	}, "InvalidGroup.NotFound")
	if err != nil && apiCode(err) != "InvalidPermission.Duplicate" {
		return wrap(err, "authorize ingress on %s", groupID)
	}
	return nil
}

// UpdateSecurityGroupRules implements cloud.Provider: it revokes what is not wanted and
// authorizes what is missing, leaving unchanged rules alone.
func (p *Provider) UpdateSecurityGroupRules(ctx context.Context, stack, groupID string, rules []cloud.Rule) error {
	ids, raw, err := p.stackGroupIDs(ctx, stack)
	if err != nil {
		return fmt.Errorf("update rules of %s: %w", groupID, err)
	}
	names := groupNames(stack, raw)
	i := slices.IndexFunc(raw, func(g ec2types.SecurityGroup) bool { return aws.ToString(g.GroupId) == groupID })
	if i < 0 {
		return refuse("security group %s is not in stack %s", groupID, stack)
	}
	have := toRules(raw[i].IpPermissions, names)
	var revoke, add []cloud.Rule
	for _, r := range have {
		if !slices.Contains(rules, r) {
			revoke = append(revoke, r)
		}
	}
	for _, r := range rules {
		if !slices.Contains(have, r) && !slices.Contains(add, r) {
			add = append(add, r)
		}
	}
	if len(revoke) > 0 {
		perms, err := toPermissions(revoke, ids)
		if err != nil {
			return fmt.Errorf("update rules of %s: %w", groupID, err)
		}
		if _, err := p.ec2.RevokeSecurityGroupIngress(ctx, &ec2.RevokeSecurityGroupIngressInput{
			GroupId: aws.String(groupID), IpPermissions: perms}); err != nil {
			return wrap(err, "revoke ingress on %s", groupID)
		}
	}
	if err := p.authorize(ctx, groupID, add, ids); err != nil {
		return fmt.Errorf("update rules of %s: %w", groupID, err)
	}
	return nil
}

// DeleteSecurityGroup implements cloud.Provider. EC2 refuses to delete a group that another
// group's rule, a live instance or a load balancer uses; moto does not, so instactl checks.
func (p *Provider) DeleteSecurityGroup(ctx context.Context, groupID string) error {
	self, err := p.rawGroups(ctx, filter("group-id", groupID))
	if notFound(err) || (err == nil && len(self) == 0) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete security group: %w", err)
	}
	if fromEC2Tags(self[0].Tags)[cloud.TagStack] == "" {
		return refuse("security group %s is not tagged %s: instactl does not own it", groupID, cloud.TagStack)
	}
	users, err := p.groupUsers(ctx, groupID)
	if err != nil {
		return fmt.Errorf("delete security group %s: %w", groupID, err)
	}
	if len(users) > 0 {
		return refuse("security group %s (%s) is still used by %s", groupID, aws.ToString(self[0].GroupName), strings.Join(users, ", "))
	}
	if _, err := p.ec2.DeleteSecurityGroup(ctx, &ec2.DeleteSecurityGroupInput{GroupId: aws.String(groupID)}); err != nil && !notFound(err) {
		return wrap(err, "delete security group %s", groupID)
	}
	return nil
}

// groupUsers lists what refers to groupID: other groups' rules, live instances, load balancers.
func (p *Provider) groupUsers(ctx context.Context, groupID string) ([]string, error) {
	var users []string
	groups, err := p.rawGroups(ctx, filter("ip-permission.group-id", groupID))
	if err != nil {
		return nil, err
	}
	for _, g := range groups {
		if aws.ToString(g.GroupId) == groupID {
			continue
		}
		for _, perm := range g.IpPermissions {
			if slices.ContainsFunc(perm.UserIdGroupPairs, func(u ec2types.UserIdGroupPair) bool { return aws.ToString(u.GroupId) == groupID }) {
				users = append(users, "group "+aws.ToString(g.GroupName))
				break
			}
		}
	}
	insts, err := p.describeInstances(ctx, filter("instance.group-id", groupID))
	if err != nil {
		return nil, err
	}
	for _, in := range insts {
		if slices.Contains(in.SecurityGroups, groupID) {
			users = append(users, "instance "+in.ID)
		}
	}
	lbs, err := p.rawLoadBalancers(ctx, nil)
	if err != nil {
		return nil, err
	}
	for _, lb := range lbs {
		if slices.Contains(lb.SecurityGroups, groupID) {
			users = append(users, "load balancer "+aws.ToString(lb.LoadBalancerName))
		}
	}
	return users, nil
}

// adoptGroup finds the group a create answered InvalidGroup.Duplicate for: by name, carrying
// stack's tag. A new group may be missing from listings for a while, so it looks again within
// the consistency window; a group of that name without our tag is refused.
func (p *Provider) adoptGroup(ctx context.Context, stack, name string) (string, error) {
	full := groupName(stack, name)
	deadline := time.Now().Add(p.consistencyWindow())
	delay := p.opts.PollMin
	for {
		raw, err := p.rawGroups(ctx, filter("group-name", full))
		if err != nil {
			return "", fmt.Errorf("create security group %s: it exists; look it up: %w", full, err)
		}
		if len(raw) > 0 {
			if owner := fromEC2Tags(raw[0].Tags)[cloud.TagStack]; owner != stack {
				return "", refuse("security group %s exists and belongs to stack %q, not %q: rename or delete it", full, owner, stack)
			}
			return aws.ToString(raw[0].GroupId), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("create security group %s: EC2 says it exists, but for %s no listing showed it", full, p.consistencyWindow())
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("create security group %s: look up the existing group: %w", full, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, p.opts.PollMax)
	}
}

// groupIDsFor maps the stack's group names to ids for rules, with self (name, id) included;
// groups the rules name but listings do not show yet (made moments ago) are looked for again
// within the consistency window.
func (p *Provider) groupIDsFor(ctx context.Context, stack, self, selfID string, rules []cloud.Rule) (map[string]string, error) {
	deadline := time.Now().Add(p.consistencyWindow())
	delay := p.opts.PollMin
	for {
		ids, _, err := p.stackGroupIDs(ctx, stack)
		if err != nil {
			return nil, err
		}
		ids[self] = selfID
		missing := ""
		for _, r := range rules {
			if _, ok := ids[r.FromGroup]; r.FromGroup != "" && !ok {
				missing = r.FromGroup
			}
		}
		if missing == "" || time.Now().After(deadline) {
			return ids, nil
		}
		select {
		case <-ctx.Done():
			return ids, nil
		case <-time.After(delay):
		}
		delay = min(2*delay, p.opts.PollMax)
	}
}
