package sandbox

import (
	"context"
	"fmt"

	"github.com/instactl/instactl/cloud"
)

// Security groups on the sandbox are records only: every host shares the machine's loopback
// interface and nothing filters traffic between them. They are stored, checked like AWS checks
// them (names unique in a stack, referenced groups exist, no deleting a group in use) and
// returned by Describe, so provisioning converges the same way on both clouds.

// CreateSecurityGroup records a group and its ingress rules. The group is tagged with stack;
// a rule's FromGroup must name the group itself or another group of the stack.
func (p *Provider) CreateSecurityGroup(ctx context.Context, stack string, g cloud.SecurityGroup) (cloud.SecurityGroup, error) {
	if stack == "" || g.Name == "" {
		return cloud.SecurityGroup{}, fmt.Errorf("create security group: stack and name are required")
	}
	if st := g.Tags[cloud.TagStack]; st != "" && st != stack {
		return cloud.SecurityGroup{}, fmt.Errorf("create security group %s: tagged with stack %q, not %q", g.Name, st, stack)
	}
	var out cloud.SecurityGroup
	err := p.update(func(s *state) error {
		for _, e := range s.SecurityGroups {
			if e.Name == g.Name && e.Tags[cloud.TagStack] == stack {
				return fmt.Errorf("create security group: %s already exists in stack %s as %s", g.Name, stack, e.ID)
			}
		}
		if err := checkRules(s, stack, g.Name, g.Ingress); err != nil {
			return fmt.Errorf("create security group %s: %w", g.Name, err)
		}
		ng := g
		ng.ID = newID("sg")
		ng.Tags = copyTags(g.Tags)
		ng.Tags[cloud.TagStack] = stack
		ng.Ingress = append([]cloud.Rule(nil), g.Ingress...)
		s.SecurityGroups = append(s.SecurityGroups, &ng)
		out = ng
		out.Tags = copyTags(ng.Tags)
		return nil
	})
	return out, err
}

func checkRules(s *state, stack, self string, rules []cloud.Rule) error {
	for _, r := range rules {
		if r.FromPort < 0 || r.ToPort > 65535 || r.FromPort > r.ToPort {
			return fmt.Errorf("rule ports %d-%d are not a valid range", r.FromPort, r.ToPort)
		}
		if (r.CIDR == "") == (r.FromGroup == "") {
			return fmt.Errorf("rule %d-%d needs exactly one of cidr and from_group", r.FromPort, r.ToPort)
		}
		if r.FromGroup == "" || r.FromGroup == self {
			continue
		}
		found := false
		for _, g := range s.SecurityGroups {
			found = found || (g.Name == r.FromGroup && g.Tags[cloud.TagStack] == stack)
		}
		if !found {
			return fmt.Errorf("rule refers to group %s, which does not exist in stack %s: %w", r.FromGroup, stack, cloud.ErrNotFound)
		}
	}
	return nil
}

// UpdateSecurityGroupRules makes the group's ingress exactly rules.
func (p *Provider) UpdateSecurityGroupRules(ctx context.Context, stack, groupID string, rules []cloud.Rule) error {
	return p.update(func(s *state) error {
		g, err := s.group(groupID)
		if err != nil {
			return err
		}
		if g.Tags[cloud.TagStack] != stack {
			return fmt.Errorf("update security group %s: it belongs to stack %q, not %q", groupID, g.Tags[cloud.TagStack], stack)
		}
		if err := checkRules(s, stack, g.Name, rules); err != nil {
			return fmt.Errorf("update security group %s: %w", g.Name, err)
		}
		g.Ingress = append([]cloud.Rule(nil), rules...)
		return nil
	})
}

// DeleteSecurityGroup deletes a group. Like AWS (and unlike moto) it refuses a group that a live
// instance or a load balancer uses, or another group's rule refers to. A missing group is not an
// error.
func (p *Provider) DeleteSecurityGroup(ctx context.Context, groupID string) error {
	return p.update(func(s *state) error {
		g, err := s.group(groupID)
		if err != nil {
			return nil // deleted already
		}
		stack, err := stackOf("security group", groupID, g.Tags)
		if err != nil {
			return err
		}
		for _, in := range s.Instances {
			if in.State == "terminated" {
				continue
			}
			for _, id := range in.SecurityGroups {
				if id == groupID {
					return fmt.Errorf("delete security group %s: instance %s still uses it", g.Name, in.ID)
				}
			}
		}
		for _, l := range s.LoadBalancers {
			for _, id := range l.SecurityGroupIDs {
				if id == groupID {
					return fmt.Errorf("delete security group %s: load balancer %s still uses it", g.Name, l.Name)
				}
			}
		}
		for _, o := range s.SecurityGroups {
			if o.ID == groupID || o.Tags[cloud.TagStack] != stack {
				continue
			}
			for _, r := range o.Ingress {
				if r.FromGroup == g.Name {
					return fmt.Errorf("delete security group %s: a rule of group %s refers to it", g.Name, o.Name)
				}
			}
		}
		out := s.SecurityGroups[:0]
		for _, o := range s.SecurityGroups {
			if o.ID != groupID {
				out = append(out, o)
			}
		}
		s.SecurityGroups = out
		return nil
	})
}
