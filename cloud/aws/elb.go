package aws

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	elb "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancing"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancing/types"

	"github.com/instactl/instactl/cloud"
)

// rawLoadBalancers describes the named classic LBs, or all of them when names is nil.
func (p *Provider) rawLoadBalancers(ctx context.Context, names []string) ([]elbtypes.LoadBalancerDescription, error) {
	var out []elbtypes.LoadBalancerDescription
	pg := elb.NewDescribeLoadBalancersPaginator(p.elb, &elb.DescribeLoadBalancersInput{LoadBalancerNames: names})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "describe load balancers")
		}
		out = append(out, page.LoadBalancerDescriptions...)
	}
	return out, nil
}

// lbTags returns the tags of the named LBs (DescribeTags takes at most 20 names).
func (p *Provider) lbTags(ctx context.Context, names []string) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	for chunk := range slices.Chunk(names, 20) {
		res, err := p.elb.DescribeTags(ctx, &elb.DescribeTagsInput{LoadBalancerNames: chunk})
		if err != nil {
			return nil, wrap(err, "describe load balancer tags")
		}
		for _, d := range res.TagDescriptions {
			m := map[string]string{}
			for _, t := range d.Tags {
				m[aws.ToString(t.Key)] = aws.ToString(t.Value)
			}
			out[aws.ToString(d.LoadBalancerName)] = m
		}
	}
	return out, nil
}

// describeLoadBalancers lists the stack's load balancers. Classic ELBs cannot be filtered by
// tag: every load balancer of the account is listed, then their tags are asked for, and one
// deleted in between (another stack's destroy) fails the whole DescribeTags call. Listing again
// then finds it gone.
func (p *Provider) describeLoadBalancers(ctx context.Context, stack string) ([]cloud.LoadBalancer, error) {
	for attempt := 1; ; attempt++ {
		out, err := p.describeLoadBalancersOnce(ctx, stack)
		if err == nil || !notFound(err) || attempt == 5 {
			return out, err
		}
	}
}

func (p *Provider) describeLoadBalancersOnce(ctx context.Context, stack string) ([]cloud.LoadBalancer, error) {
	raw, err := p.rawLoadBalancers(ctx, nil)
	if err != nil || len(raw) == 0 {
		return nil, err
	}
	var names []string
	for _, d := range raw {
		names = append(names, aws.ToString(d.LoadBalancerName))
	}
	tags, err := p.lbTags(ctx, names)
	if err != nil {
		return nil, err
	}
	var out []cloud.LoadBalancer
	for _, d := range raw {
		name := aws.ToString(d.LoadBalancerName)
		if tags[name][cloud.TagStack] != stack {
			continue
		}
		lb := toLoadBalancer(d, tags[name])
		attrs, err := p.elb.DescribeLoadBalancerAttributes(ctx, &elb.DescribeLoadBalancerAttributesInput{LoadBalancerName: aws.String(name)})
		if err != nil {
			return nil, wrap(err, "describe attributes of load balancer %s", name)
		}
		if cd := attrs.LoadBalancerAttributes.ConnectionDraining; cd != nil && cd.Enabled {
			lb.DrainTimeout = time.Duration(aws.ToInt32(cd.Timeout)) * time.Second
		}
		out = append(out, lb)
	}
	slices.SortFunc(out, func(a, b cloud.LoadBalancer) int { return cmpStr(a.Name, b.Name) })
	return out, nil
}

func toLoadBalancer(d elbtypes.LoadBalancerDescription, tags map[string]string) cloud.LoadBalancer {
	lb := cloud.LoadBalancer{Name: aws.ToString(d.LoadBalancerName), DNSName: aws.ToString(d.DNSName),
		Zones: slices.Sorted(slices.Values(d.AvailabilityZones)), SecurityGroupIDs: slices.Sorted(slices.Values(d.SecurityGroups)),
		Tags: tags}
	if len(d.ListenerDescriptions) > 0 && d.ListenerDescriptions[0].Listener != nil {
		l := d.ListenerDescriptions[0].Listener
		lb.ListenerPort, lb.TargetPort = int(l.LoadBalancerPort), int(aws.ToInt32(l.InstancePort))
	}
	if hc := d.HealthCheck; hc != nil {
		// Target is "HTTP:8000/healthz"; keep the path.
		t := aws.ToString(hc.Target)
		if i := strings.Index(t, "/"); i >= 0 {
			lb.HealthCheck = t[i:]
		}
	}
	for _, in := range d.Instances {
		lb.Instances = append(lb.Instances, aws.ToString(in.InstanceId))
	}
	slices.Sort(lb.Instances)
	return lb
}

// lbStack returns the stack tag of a load balancer, ErrNotFound if it does not exist.
func (p *Provider) lbStack(ctx context.Context, name string) (elbtypes.LoadBalancerDescription, string, error) {
	raw, err := p.rawLoadBalancers(ctx, []string{name})
	if err != nil {
		return elbtypes.LoadBalancerDescription{}, "", err
	}
	if len(raw) == 0 {
		return elbtypes.LoadBalancerDescription{}, "", fmt.Errorf("load balancer %s: %w", name, cloud.ErrNotFound)
	}
	tags, err := p.lbTags(ctx, []string{name})
	if err != nil {
		return elbtypes.LoadBalancerDescription{}, "", err
	}
	return raw[0], tags[name][cloud.TagStack], nil
}

// CreateLoadBalancer implements cloud.Provider: a classic ELB with one HTTP listener, tagged in
// the create call, then its health check and connection draining. One that exists already and
// carries the stack's tag (a lost reply, a killed run, a changed health check or drain timeout)
// is configured the same way: this is also how those two change in place.
func (p *Provider) CreateLoadBalancer(ctx context.Context, lb cloud.LoadBalancer) (cloud.LoadBalancer, error) {
	stack := lb.Tags[cloud.TagStack]
	if stack == "" {
		return cloud.LoadBalancer{}, refuse("load balancer %s has no %s tag", lb.Name, cloud.TagStack)
	}
	if _, owner, err := p.lbStack(ctx, lb.Name); err == nil && owner != stack {
		return cloud.LoadBalancer{}, refuse("load balancer %s exists and belongs to stack %q", lb.Name, owner)
	}
	var tags []elbtypes.Tag
	for _, k := range slices.Sorted(maps.Keys(lb.Tags)) {
		tags = append(tags, elbtypes.Tag{Key: aws.String(k), Value: aws.String(lb.Tags[k])})
	}
	_, err := p.elb.CreateLoadBalancer(ctx, &elb.CreateLoadBalancerInput{
		LoadBalancerName: aws.String(lb.Name),
		Listeners: []elbtypes.Listener{{Protocol: aws.String("HTTP"), LoadBalancerPort: int32(lb.ListenerPort),
			InstanceProtocol: aws.String("HTTP"), InstancePort: aws.Int32(int32(lb.TargetPort))}},
		AvailabilityZones: lb.Zones, SecurityGroups: lb.SecurityGroupIDs, Tags: tags,
	})
	existed := false
	if apiCode(err) == "DuplicateLoadBalancerName" {
		// A lost reply retried by the SDK, or a crash after the create: ours if it carries our
		// stack's tag (set in the create call), and then configured below like a new one.
		_, owner, lerr := p.lbStack(ctx, lb.Name)
		switch {
		case lerr != nil:
			return cloud.LoadBalancer{}, fmt.Errorf("create load balancer %s: it exists; look it up: %w", lb.Name, lerr)
		case owner != stack:
			return cloud.LoadBalancer{}, refuse("load balancer %s exists and belongs to stack %q, not %q", lb.Name, owner, stack)
		}
		err, existed = nil, true
	}
	if err != nil {
		return cloud.LoadBalancer{}, wrap(err, "create load balancer %s", lb.Name)
	}
	path := lb.HealthCheck
	if path == "" {
		path = "/"
	}
	if _, err := p.elb.ConfigureHealthCheck(ctx, &elb.ConfigureHealthCheckInput{
		LoadBalancerName: aws.String(lb.Name),
		HealthCheck: &elbtypes.HealthCheck{Target: aws.String("HTTP:" + strconv.Itoa(lb.TargetPort) + path),
			Interval: aws.Int32(10), Timeout: aws.Int32(5), HealthyThreshold: aws.Int32(2), UnhealthyThreshold: aws.Int32(3)},
	}); err != nil {
		return cloud.LoadBalancer{}, wrap(err, "configure health check of %s", lb.Name)
	}
	if lb.DrainTimeout > 0 || existed { // an existing one may drain when it should not
		cd := &elbtypes.ConnectionDraining{Enabled: lb.DrainTimeout > 0}
		if cd.Enabled {
			cd.Timeout = aws.Int32(int32(lb.DrainTimeout / time.Second))
		}
		if _, err := p.elb.ModifyLoadBalancerAttributes(ctx, &elb.ModifyLoadBalancerAttributesInput{
			LoadBalancerName:       aws.String(lb.Name),
			LoadBalancerAttributes: &elbtypes.LoadBalancerAttributes{ConnectionDraining: cd},
		}); err != nil {
			return cloud.LoadBalancer{}, wrap(err, "set connection draining of %s", lb.Name)
		}
	}
	d, _, err := p.lbStack(ctx, lb.Name)
	if err != nil {
		return cloud.LoadBalancer{}, fmt.Errorf("create load balancer %s: %w", lb.Name, err)
	}
	out := toLoadBalancer(d, lb.Tags)
	out.DrainTimeout = lb.DrainTimeout
	return out, nil
}

// DeleteLoadBalancer implements cloud.Provider; a missing LB is already deleted.
func (p *Provider) DeleteLoadBalancer(ctx context.Context, name string) error {
	_, owner, err := p.lbStack(ctx, name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete load balancer: %w", err)
	}
	if owner == "" {
		return refuse("load balancer %s is not tagged %s: instactl does not own it", name, cloud.TagStack)
	}
	if _, err := p.elb.DeleteLoadBalancer(ctx, &elb.DeleteLoadBalancerInput{LoadBalancerName: aws.String(name)}); err != nil {
		return wrap(err, "delete load balancer %s", name)
	}
	return nil
}

// RegisterInstances implements cloud.Provider. ELB (and moto) accept any instance id; instactl
// only registers live instances of the LB's own stack.
func (p *Provider) RegisterInstances(ctx context.Context, lbName string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	_, owner, err := p.lbStack(ctx, lbName)
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	m, err := p.instancesByID(ctx, ids)
	if err != nil {
		return fmt.Errorf("register with %s: %w", lbName, err)
	}
	for _, id := range ids {
		in := toInstance(m[id])
		if in.Tags[cloud.TagStack] != owner || owner == "" {
			return refuse("instance %s (stack %q) is not in the stack of load balancer %s (%q)", id, in.Tags[cloud.TagStack], lbName, owner)
		}
		if in.State == "terminated" || in.State == "shutting-down" {
			return fmt.Errorf("register with %s: instance %s is %s: %w", lbName, id, in.State, cloud.ErrNotFound)
		}
	}
	if _, err := p.elb.RegisterInstancesWithLoadBalancer(ctx, &elb.RegisterInstancesWithLoadBalancerInput{
		LoadBalancerName: aws.String(lbName), Instances: elbInstances(ids)}); err != nil {
		return wrap(err, "register %v with %s", ids, lbName)
	}
	return nil
}

func elbInstances(ids []string) []elbtypes.Instance {
	out := make([]elbtypes.Instance, len(ids))
	for i, id := range ids {
		out[i] = elbtypes.Instance{InstanceId: aws.String(id)}
	}
	return out
}

// DeregisterInstances implements cloud.Provider; instances not registered are skipped.
func (p *Provider) DeregisterInstances(ctx context.Context, lbName string, ids []string) error {
	d, owner, err := p.lbStack(ctx, lbName)
	if err != nil {
		return fmt.Errorf("deregister: %w", err)
	}
	if owner == "" {
		return refuse("load balancer %s is not tagged %s: instactl does not own it", lbName, cloud.TagStack)
	}
	var todo []string
	for _, in := range d.Instances {
		if slices.Contains(ids, aws.ToString(in.InstanceId)) {
			todo = append(todo, aws.ToString(in.InstanceId))
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if _, err := p.elb.DeregisterInstancesFromLoadBalancer(ctx, &elb.DeregisterInstancesFromLoadBalancerInput{
		LoadBalancerName: aws.String(lbName), Instances: elbInstances(todo)}); err != nil {
		return wrap(err, "deregister %v from %s", todo, lbName)
	}
	return nil
}

// InstanceHealth implements cloud.Provider.
func (p *Provider) InstanceHealth(ctx context.Context, lbName string) ([]cloud.InstanceHealth, error) {
	out, err := p.elb.DescribeInstanceHealth(ctx, &elb.DescribeInstanceHealthInput{LoadBalancerName: aws.String(lbName)})
	if err != nil {
		return nil, wrap(err, "describe instance health of %s", lbName)
	}
	var hs []cloud.InstanceHealth
	for _, s := range out.InstanceStates {
		h := cloud.InstanceHealth{InstanceID: aws.ToString(s.InstanceId), State: aws.ToString(s.State)}
		if aws.ToString(s.ReasonCode) != "N/A" {
			h.Reason = aws.ToString(s.Description)
		}
		hs = append(hs, h)
	}
	return hs, nil
}
