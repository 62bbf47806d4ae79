package aws

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"

	"github.com/instactl/instactl/cloud"
)

var ec2TrustPolicy = cloud.EC2TrustPolicy()

func iamTags(m map[string]string) []iamtypes.Tag {
	var out []iamtypes.Tag
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, iamtypes.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return out
}

func fromIAMTags(ts []iamtypes.Tag) map[string]string {
	m := map[string]string{}
	for _, t := range ts {
		m[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return m
}

// describeRole returns the role name with its policies and instance profile, nil if the role
// does not exist (an instance profile left without its role is then adopted by EnsureRole).
func (p *Provider) describeRole(ctx context.Context, name string) (*cloud.HostRole, error) {
	c := p.edge.iam
	out, err := c.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(name)})
	if apiCode(err) == "NoSuchEntity" {
		return nil, nil
	}
	if err != nil {
		return nil, wrap(err, "read role %s", name)
	}
	r := &cloud.HostRole{Name: name, ARN: aws.ToString(out.Role.Arn), Tags: fromIAMTags(out.Role.Tags), Policies: map[string]string{}}
	if r.TrustPolicy, err = normPolicy(aws.ToString(out.Role.AssumeRolePolicyDocument)); err != nil {
		return nil, fmt.Errorf("role %s trust policy: %w", name, err)
	}
	err = inParallel(func() error {
		pols, err := c.ListRolePolicies(ctx, &iam.ListRolePoliciesInput{RoleName: aws.String(name)})
		if err != nil {
			return wrap(err, "list the policies of role %s", name)
		}
		for _, pn := range pols.PolicyNames {
			doc, err := c.GetRolePolicy(ctx, &iam.GetRolePolicyInput{RoleName: aws.String(name), PolicyName: aws.String(pn)})
			if err != nil {
				return wrap(err, "read policy %s of role %s", pn, name)
			}
			if r.Policies[pn], err = normPolicy(aws.ToString(doc.PolicyDocument)); err != nil {
				return fmt.Errorf("role %s policy %s: %w", name, pn, err)
			}
		}
		return nil
	}, func() error {
		att, err := c.ListAttachedRolePolicies(ctx, &iam.ListAttachedRolePoliciesInput{RoleName: aws.String(name)})
		if err != nil {
			return wrap(err, "list the managed policies of role %s", name)
		}
		for _, a := range att.AttachedPolicies {
			r.AttachedPolicies = append(r.AttachedPolicies, aws.ToString(a.PolicyArn))
		}
		slices.Sort(r.AttachedPolicies)
		return nil
	}, func() error {
		prof, err := c.GetInstanceProfile(ctx, &iam.GetInstanceProfileInput{InstanceProfileName: aws.String(name)})
		if err != nil && apiCode(err) != "NoSuchEntity" {
			return wrap(err, "read instance profile %s", name)
		}
		if err == nil {
			r.Profile = name
			for _, pr := range prof.InstanceProfile.Roles {
				r.ProfileRoles = append(r.ProfileRoles, aws.ToString(pr.RoleName))
			}
			slices.Sort(r.ProfileRoles)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// EnsureRole implements cloud.EdgeProvider: the role (tags in CreateRole), exactly one inline
// policy, no managed policies, and the instance profile holding exactly this role.
func (p *Provider) EnsureRole(ctx context.Context, stack string, spec cloud.RoleSpec) error {
	c := p.edge.iam
	name := aws.String(spec.Name)
	_, err := c.CreateRole(ctx, &iam.CreateRoleInput{RoleName: name, AssumeRolePolicyDocument: aws.String(ec2TrustPolicy),
		Description: aws.String("instactl " + stack + " app hosts"), Tags: iamTags(spec.Tags)})
	if err != nil && apiCode(err) != "EntityAlreadyExists" {
		return wrap(err, "create role %s", spec.Name)
	}
	have, err := p.describeRole(ctx, spec.Name)
	if err != nil {
		return err
	}
	if have == nil {
		return fmt.Errorf("role %s: created, but IAM does not return it yet; run apply again", spec.Name)
	}
	if have.Tags[cloud.TagStack] != stack {
		return refuse("role %s exists and is not tagged %s=%s: instactl does not own it; delete or rename it", spec.Name, cloud.TagStack, stack)
	}
	if have.TrustPolicy != ec2TrustPolicy {
		if _, err := c.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: name, PolicyDocument: aws.String(ec2TrustPolicy)}); err != nil {
			return wrap(err, "set the trust policy of role %s", spec.Name)
		}
	}
	want, err := normPolicy(spec.Policy)
	if err != nil {
		return fmt.Errorf("role %s: %w", spec.Name, err)
	}
	if have.Policies[spec.PolicyName] != want {
		if _, err := c.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: name, PolicyName: aws.String(spec.PolicyName),
			PolicyDocument: aws.String(want)}); err != nil {
			return wrap(err, "put policy %s on role %s", spec.PolicyName, spec.Name)
		}
	}
	for pn := range have.Policies {
		if pn != spec.PolicyName {
			if _, err := c.DeleteRolePolicy(ctx, &iam.DeleteRolePolicyInput{RoleName: name, PolicyName: aws.String(pn)}); err != nil && apiCode(err) != "NoSuchEntity" {
				return wrap(err, "delete policy %s of role %s", pn, spec.Name)
			}
		}
	}
	for _, arn := range have.AttachedPolicies {
		if _, err := c.DetachRolePolicy(ctx, &iam.DetachRolePolicyInput{RoleName: name, PolicyArn: aws.String(arn)}); err != nil && apiCode(err) != "NoSuchEntity" {
			return wrap(err, "detach policy %s from role %s", arn, spec.Name)
		}
	}
	if have.Profile == "" {
		_, err := c.CreateInstanceProfile(ctx, &iam.CreateInstanceProfileInput{InstanceProfileName: name, Tags: iamTags(spec.Tags)})
		if err != nil && apiCode(err) != "EntityAlreadyExists" {
			return wrap(err, "create instance profile %s", spec.Name)
		}
	}
	for _, r := range have.ProfileRoles {
		if r != spec.Name {
			if _, err := c.RemoveRoleFromInstanceProfile(ctx, &iam.RemoveRoleFromInstanceProfileInput{InstanceProfileName: name, RoleName: aws.String(r)}); err != nil {
				return wrap(err, "remove role %s from instance profile %s", r, spec.Name)
			}
		}
	}
	if !slices.Contains(have.ProfileRoles, spec.Name) {
		_, err := c.AddRoleToInstanceProfile(ctx, &iam.AddRoleToInstanceProfileInput{InstanceProfileName: name, RoleName: name})
		if err != nil && apiCode(err) != "LimitExceeded" { // LimitExceeded: it holds a role already (ours, from a lost reply)
			return wrap(err, "add role %s to instance profile %s", spec.Name, spec.Name)
		}
	}
	return nil
}

// DeleteRole implements cloud.EdgeProvider. It refuses a role not tagged with stack.
func (p *Provider) DeleteRole(ctx context.Context, stack, name string) error {
	c := p.edge.iam
	have, err := p.describeRole(ctx, name)
	if err != nil || have == nil {
		return err
	}
	if have.Tags[cloud.TagStack] != stack {
		return refuse("role %s is not tagged %s=%s: instactl does not own it", name, cloud.TagStack, stack)
	}
	n := aws.String(name)
	if have.Profile != "" {
		for _, r := range have.ProfileRoles {
			if _, err := c.RemoveRoleFromInstanceProfile(ctx, &iam.RemoveRoleFromInstanceProfileInput{InstanceProfileName: n, RoleName: aws.String(r)}); err != nil && apiCode(err) != "NoSuchEntity" {
				return wrap(err, "remove role %s from instance profile %s", r, name)
			}
		}
		if _, err := c.DeleteInstanceProfile(ctx, &iam.DeleteInstanceProfileInput{InstanceProfileName: n}); err != nil && apiCode(err) != "NoSuchEntity" {
			return wrap(err, "delete instance profile %s", name)
		}
	}
	for pn := range have.Policies {
		if _, err := c.DeleteRolePolicy(ctx, &iam.DeleteRolePolicyInput{RoleName: n, PolicyName: aws.String(pn)}); err != nil && apiCode(err) != "NoSuchEntity" {
			return wrap(err, "delete policy %s of role %s", pn, name)
		}
	}
	for _, arn := range have.AttachedPolicies {
		if _, err := c.DetachRolePolicy(ctx, &iam.DetachRolePolicyInput{RoleName: n, PolicyArn: aws.String(arn)}); err != nil && apiCode(err) != "NoSuchEntity" {
			return wrap(err, "detach policy %s from role %s", arn, name)
		}
	}
	if _, err := c.DeleteRole(ctx, &iam.DeleteRoleInput{RoleName: n}); err != nil && apiCode(err) != "NoSuchEntity" {
		return wrap(err, "delete role %s", name)
	}
	return nil
}

// freshProfileWait bounds how long RunInstances is retried while IAM has not yet propagated a
// new instance profile to EC2; AWS documents "a few seconds", Terraform waits up to 2 minutes.
const freshProfileWait = 2 * time.Minute

// freshProfileError reports whether err is EC2 rejecting an instance profile it does not know
// yet: "InvalidParameterValue: Value (x) for parameter iamInstanceProfile.name is invalid.
// Invalid IAM Instance Profile name" right after the profile was created.
func freshProfileError(err error) bool {
	var ae interface{ ErrorMessage() string }
	return apiCode(err) == "InvalidParameterValue" && errors.As(err, &ae) &&
		strings.Contains(strings.ToLower(ae.ErrorMessage()), "iaminstanceprofile")
}

// retryFreshProfile calls run until it succeeds, fails with another error, or the instance
// profile has had freshProfileWait to propagate. Only this one error is retried: RunInstances
// rejected the call, so nothing was created and a retry with the same client token is safe.
func (p *Provider) retryFreshProfile(ctx context.Context, run func() error) error {
	deadline := time.Now().Add(freshProfileWait)
	delay := p.opts.PollMin
	for {
		err := run()
		if !freshProfileError(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, p.opts.PollMax)
	}
}

// instanceProfileSpec is RunInstances' IamInstanceProfile for name ("": none).
func instanceProfileSpec(name string) *ec2types.IamInstanceProfileSpecification {
	if name == "" {
		return nil
	}
	return &ec2types.IamInstanceProfileSpecification{Name: aws.String(name)}
}

// profileName is the name in an instance profile's ARN
// (arn:aws:iam::123456789012:instance-profile/path/name).
func profileName(arn string) string {
	return arn[strings.LastIndex(arn, "/")+1:]
}

// SetInstanceProfile implements cloud.EdgeProvider: it associates the profile with an instance
// that has none, and replaces the association of one that has another.
func (p *Provider) SetInstanceProfile(ctx context.Context, instanceID, profile string) error {
	out, err := p.ec2.DescribeIamInstanceProfileAssociations(ctx, &ec2.DescribeIamInstanceProfileAssociationsInput{
		Filters: []ec2types.Filter{filter("instance-id", instanceID), filter("state", "associating", "associated")}})
	if err != nil {
		return wrap(err, "read the instance profile of %s", instanceID)
	}
	spec := instanceProfileSpec(profile)
	// An instance has at most one association.
	if as := out.IamInstanceProfileAssociations; len(as) > 0 {
		if as[0].IamInstanceProfile != nil && profileName(aws.ToString(as[0].IamInstanceProfile.Arn)) == profile {
			return nil
		}
		err := p.retryFreshProfile(ctx, func() error {
			_, err := p.ec2.ReplaceIamInstanceProfileAssociation(ctx, &ec2.ReplaceIamInstanceProfileAssociationInput{
				AssociationId: as[0].AssociationId, IamInstanceProfile: spec})
			return err
		})
		if err != nil {
			return wrap(err, "give %s instance profile %s", instanceID, profile)
		}
		return nil
	}
	err = p.retryFreshProfile(ctx, func() error {
		_, err := p.ec2.AssociateIamInstanceProfile(ctx, &ec2.AssociateIamInstanceProfileInput{InstanceId: aws.String(instanceID), IamInstanceProfile: spec})
		return err
	})
	if err != nil {
		return wrap(err, "give %s instance profile %s", instanceID, profile)
	}
	return nil
}
