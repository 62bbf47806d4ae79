package aws

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/instactl/instactl/cloud"
)

// liveStates are the instance states Describe reports (terminated and shutting-down are gone).
var liveStates = []string{"pending", "running", "stopping", "stopped"}

func toInstance(in ec2types.Instance) cloud.Instance {
	tags := fromEC2Tags(in.Tags)
	out := cloud.Instance{
		ID: aws.ToString(in.InstanceId), Name: tags[cloud.TagName], Role: tags[cloud.TagRole],
		Index: atoi(tags[cloud.TagIndex]), Type: string(in.InstanceType), Image: aws.ToString(in.ImageId),
		PrivateAddress: aws.ToString(in.PrivateIpAddress), PublicAddress: aws.ToString(in.PublicIpAddress),
		SSHPort: 22, Tags: tags,
	}
	if in.Placement != nil {
		out.Zone = aws.ToString(in.Placement.AvailabilityZone)
	}
	if in.State != nil {
		out.State = string(in.State.Name)
	}
	if out.PublicAddress == "" {
		out.PublicAddress = out.PrivateAddress
	}
	for _, g := range in.SecurityGroups {
		out.SecurityGroups = append(out.SecurityGroups, aws.ToString(g.GroupId))
	}
	slices.Sort(out.SecurityGroups)
	if in.IamInstanceProfile != nil {
		out.InstanceProfile = profileName(aws.ToString(in.IamInstanceProfile.Arn))
	}
	return out
}

func (p *Provider) describeInstances(ctx context.Context, filters ...ec2types.Filter) ([]cloud.Instance, error) {
	in := &ec2.DescribeInstancesInput{Filters: append(filters, filter("instance-state-name", liveStates...))}
	var out []cloud.Instance
	pg := ec2.NewDescribeInstancesPaginator(p.ec2, in)
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "describe instances")
		}
		for _, r := range page.Reservations {
			for _, i := range r.Instances {
				out = append(out, toInstance(i))
			}
		}
	}
	slices.SortFunc(out, func(a, b cloud.Instance) int { return cmpStr(a.ID, b.ID) })
	return out, nil
}

// instancesByID describes ids, terminated ones included; unknown ids are ErrNotFound.
func (p *Provider) instancesByID(ctx context.Context, ids []string) (map[string]ec2types.Instance, error) {
	out, err := p.desc.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: ids})
	if err != nil {
		return nil, wrap(err, "describe instances %v", ids)
	}
	m := map[string]ec2types.Instance{}
	for _, r := range out.Reservations {
		for _, i := range r.Instances {
			m[aws.ToString(i.InstanceId)] = i
		}
	}
	for _, id := range ids {
		if _, ok := m[id]; !ok {
			return nil, fmt.Errorf("instance %s: %w", id, cloud.ErrNotFound)
		}
	}
	return m, nil
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// CreateInstance implements cloud.Provider. Idempotency: an instance already carrying the client
// token (tag) is returned as is; otherwise RunInstances is called with a token derived from it
// and the request (requestToken), and if AWS answers with a terminated instance of an earlier
// life, with the token's next generation.
func (p *Provider) CreateInstance(ctx context.Context, spec cloud.InstanceSpec) (cloud.Instance, error) {
	stack := spec.Tags[cloud.TagStack]
	if stack == "" {
		return cloud.Instance{}, refuse("instance %s has no %s tag", spec.Name, cloud.TagStack)
	}
	tags := maps.Clone(spec.Tags)
	tags[cloud.TagRole] = spec.Role
	tags[cloud.TagIndex] = strconv.Itoa(spec.Index)
	tags[cloud.TagName] = spec.Name
	if spec.ClientToken != "" {
		tags[tagToken] = spec.ClientToken
		found, err := p.byToken(ctx, stack, spec.ClientToken)
		if err != nil {
			return cloud.Instance{}, fmt.Errorf("create instance %s: %w", spec.Name, err)
		}
		if found != "" {
			return p.existing(ctx, found)
		}
	}
	in := &ec2.RunInstancesInput{
		ImageId: aws.String(spec.Image), InstanceType: ec2types.InstanceType(spec.Type),
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		Placement:          &ec2types.Placement{AvailabilityZone: aws.String(spec.Zone)},
		SecurityGroupIds:   spec.SecurityGroupIDs,
		TagSpecifications:  tagSpec(ec2types.ResourceTypeInstance, tags),
		IamInstanceProfile: instanceProfileSpec(spec.InstanceProfile),
	}
	if spec.KeyName != "" {
		in.KeyName = aws.String(spec.KeyName)
	}
	if spec.Address != "" {
		in.PrivateIpAddress = aws.String(spec.Address)
	}
	if spec.UserData != "" {
		in.UserData = aws.String(base64.StdEncoding.EncodeToString([]byte(spec.UserData)))
	}
	sent := requestToken(spec.ClientToken, in)
	died := 0
	for gen := 0; gen < 5; gen++ {
		if sent != "" {
			in.ClientToken = aws.String(sent)
			if gen > 0 {
				in.ClientToken = aws.String(fmt.Sprintf("%s.%d", sent, gen))
			}
		}
		var out *ec2.RunInstancesOutput
		// Groups made moments ago may not be visible to RunInstances yet, nor a fresh instance
		// profile to EC2.
		err := p.retryFreshProfile(ctx, func() error {
			return p.untilFound(ctx, func() (err error) {
				out, err = p.ec2.RunInstances(ctx, in)
				return err
			}, "InvalidGroup.NotFound")
		})
		if err != nil {
			return cloud.Instance{}, wrap(err, "run instance %s (%s in %s)", spec.Name, spec.Type, spec.Zone)
		}
		if len(out.Instances) == 0 {
			return cloud.Instance{}, fmt.Errorf("run instance %s: empty answer", spec.Name)
		}
		i := out.Instances[0]
		if st := i.State; st != nil && (st.Name == ec2types.InstanceStateNameTerminated || st.Name == ec2types.InstanceStateNameShuttingDown) {
			continue
		}
		id := aws.ToString(i.InstanceId)
		p.remember(stack, spec.ClientToken, id)
		cloud.Created(ctx, cloud.Instance{ID: id, Zone: placementZone(i), Type: string(i.InstanceType), State: string(instanceState(i))})
		got, err := p.waitRunning(ctx, id)
		if errors.Is(err, errDied) && died == 0 {
			// EC2 accepted the instance and then ended it (no capacity after all): once more
			// with a fresh token; a second death goes to the caller, which may try elsewhere.
			died++
			p.forget([]string{id})
			continue
		}
		return got, err
	}
	return cloud.Instance{}, fmt.Errorf("run instance %s: client token %s used by 5 terminated instances", spec.Name, spec.ClientToken)
}

// requestToken is the ClientToken sent for a RunInstances of the caller's token: the caller's
// token (stable across crashes, derived from stack, role and index) joined with the request's
// parameters. EC2 remembers a token for at least 24 h after its instance terminates and refuses
// it with other parameters (IdempotentParameterMismatch): without the parameters, a stack
// destroyed and made again (new security group ids) or a host replaced with another type or
// image would be refused. A retry after a crash sends the same parameters, so the same token.
func requestToken(token string, in *ec2.RunInstancesInput) string {
	if token == "" {
		return ""
	}
	groups := slices.Clone(in.SecurityGroupIds)
	slices.Sort(groups)
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%s\n%s\n%s\n", token, aws.ToString(in.ImageId), in.InstanceType,
		aws.ToString(in.Placement.AvailabilityZone), strings.Join(groups, ","), aws.ToString(in.KeyName), aws.ToString(in.PrivateIpAddress))
	fmt.Fprintf(h, "%s", aws.ToString(in.UserData))
	return "instactl-r-" + hex.EncodeToString(h.Sum(nil)[:16])
}

// byToken returns the live instance of stack tagged with token, or "": from the last Describe of
// the stack when it is fresh, else from EC2.
func (p *Provider) byToken(ctx context.Context, stack, token string) (string, error) {
	p.mu.Lock()
	snap, ok := p.seen[stack]
	p.mu.Unlock()
	if ok && time.Since(snap.at) < snapshotTTL {
		return snap.tokens[token].ID, nil
	}
	found, err := p.describeInstances(ctx, stackFilter(stack), filter("tag:"+tagToken, token))
	if err != nil || len(found) == 0 {
		return "", err
	}
	return found[0].ID, nil
}

// remember adds a created instance to the stack's token snapshot, so that a second
// CreateInstance with the same token finds it.
func (p *Provider) remember(stack, token, id string) {
	if token == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if snap, ok := p.seen[stack]; ok {
		snap.tokens[token] = cloud.Instance{ID: id}
	}
}

// forget drops instances from the token snapshots: a replacement created with the same token
// must not find the instance it replaces.
func (p *Provider) forget(ids []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, snap := range p.seen {
		for token, in := range snap.tokens {
			if slices.Contains(ids, in.ID) {
				delete(snap.tokens, token)
			}
		}
	}
}

// existing returns the instance a client token already made: as it is when stopped (a fenced
// host stays stopped; waiting for it to run would last until the wait times out), else once it
// runs.
func (p *Provider) existing(ctx context.Context, id string) (cloud.Instance, error) {
	m, err := p.instancesByID(ctx, []string{id})
	if err != nil {
		return cloud.Instance{}, err
	}
	if st := instanceState(m[id]); st == ec2types.InstanceStateNameStopped || st == ec2types.InstanceStateNameStopping {
		return toInstance(m[id]), nil
	}
	cloud.Created(ctx, toInstance(m[id]))
	return p.waitRunning(ctx, id)
}

func (p *Provider) waitRunning(ctx context.Context, id string) (cloud.Instance, error) {
	got, err := p.waitInstanceState(ctx, []string{id}, ec2types.InstanceStateNameRunning)
	if err != nil {
		if derr := p.diedPending(ctx, id); derr != nil {
			return cloud.Instance{}, derr
		}
		return cloud.Instance{}, err
	}
	return toInstance(got[id]), nil
}

// TerminateInstances implements cloud.Provider. It refuses instances no stack owns, skips the
// already terminated, and waits until all are terminated.
func (p *Provider) TerminateInstances(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	m, err := p.instancesByID(ctx, ids)
	if err != nil {
		return fmt.Errorf("terminate: %w", err)
	}
	var todo []string
	for _, id := range ids {
		i := m[id]
		if fromEC2Tags(i.Tags)[cloud.TagStack] == "" {
			return refuse("instance %s is not tagged %s: instactl does not own it", id, cloud.TagStack)
		}
		if i.State == nil || i.State.Name != ec2types.InstanceStateNameTerminated {
			todo = append(todo, id)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	p.forget(todo)
	if _, err := p.ec2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: todo}); err != nil {
		return wrap(err, "terminate %v", todo)
	}
	_, err = p.waitInstanceState(ctx, todo, ec2types.InstanceStateNameTerminated)
	return err
}

// StopInstances implements cloud.Provider. It refuses instances no stack owns and terminated
// ones before changing anything, waits for pending ones to run (EC2 refuses to stop a pending
// instance), stops the rest (Force: no clean shutdown, as after a power cut; a stopping instance
// is stopped again, which with Force ends a stop that hangs) and waits until all are stopped.
func (p *Provider) StopInstances(ctx context.Context, ids []string, force bool) error {
	if len(ids) == 0 {
		return nil
	}
	m, err := p.ownedInstances(ctx, "stop", ids)
	if err != nil {
		return err
	}
	var pending, todo []string
	for _, id := range ids {
		switch instanceState(m[id]) {
		case ec2types.InstanceStateNameStopped:
		case ec2types.InstanceStateNamePending:
			pending = append(pending, id)
			todo = append(todo, id)
		default:
			todo = append(todo, id)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if len(pending) > 0 {
		if err := p.waitInstances(ctx, pending, ec2types.InstanceStateNameRunning); err != nil {
			return fmt.Errorf("stop: %w", err)
		}
	}
	in := &ec2.StopInstancesInput{InstanceIds: todo, Force: aws.Bool(force)}
	if _, err := p.ec2.StopInstances(ctx, in); err != nil {
		return wrap(err, "stop %v", todo)
	}
	return p.waitInstances(ctx, todo, ec2types.InstanceStateNameStopped)
}

// StartInstances implements cloud.Provider. It refuses instances no stack owns and terminated
// ones before changing anything, lets stopping ones finish stopping (EC2 refuses to start them),
// starts the stopped ones and waits until every instance runs. On AWS, running is what it
// waits for: sshd answers shortly after, and callers that SSH retry until it does.
func (p *Provider) StartInstances(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	m, err := p.ownedInstances(ctx, "start", ids)
	if err != nil {
		return err
	}
	var stopping, todo, wait []string
	for _, id := range ids {
		switch instanceState(m[id]) {
		case ec2types.InstanceStateNameRunning:
		case ec2types.InstanceStateNamePending:
			wait = append(wait, id)
		case ec2types.InstanceStateNameStopping:
			stopping = append(stopping, id)
			todo = append(todo, id)
		default:
			todo = append(todo, id)
		}
	}
	if len(stopping) > 0 {
		if err := p.waitInstances(ctx, stopping, ec2types.InstanceStateNameStopped); err != nil {
			return fmt.Errorf("start: %w", err)
		}
	}
	if len(todo) > 0 {
		if _, err := p.ec2.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: todo}); err != nil {
			return wrap(err, "start %v", todo)
		}
	}
	if wait = append(wait, todo...); len(wait) == 0 {
		return nil
	}
	return p.waitInstances(ctx, wait, ec2types.InstanceStateNameRunning)
}

// ownedInstances describes ids for op, refusing a missing instance (cloud.ErrNotFound), one no
// stack owns, and a terminated (or terminating) one.
func (p *Provider) ownedInstances(ctx context.Context, op string, ids []string) (map[string]ec2types.Instance, error) {
	m, err := p.instancesByID(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	for _, id := range ids {
		i := m[id]
		if fromEC2Tags(i.Tags)[cloud.TagStack] == "" {
			return nil, refuse("%s: instance %s is not tagged %s: instactl does not own it", op, id, cloud.TagStack)
		}
		if st := instanceState(i); st == ec2types.InstanceStateNameTerminated || st == ec2types.InstanceStateNameShuttingDown {
			return nil, fmt.Errorf("%s: instance %s is %s", op, id, st)
		}
	}
	return m, nil
}

func instanceState(i ec2types.Instance) ec2types.InstanceStateName {
	if i.State == nil {
		return ""
	}
	return i.State.Name
}

// waitInstances waits, within WaitTimeout and ctx, until every instance is in state (running or
// stopped).
func (p *Provider) waitInstances(ctx context.Context, ids []string, state ec2types.InstanceStateName) error {
	_, err := p.waitInstanceState(ctx, ids, state)
	return err
}

// errDied marks an instance EC2 accepted and then terminated before it ran.
var errDied = errors.New("terminated before it ran")

// diedPending explains a failed wait for running: nil if the instance did not end, else the
// reason EC2 gives (StateReason), as cloud.ErrNoCapacity when it is capacity.
func (p *Provider) diedPending(ctx context.Context, id string) error {
	m, err := p.instancesByID(ctx, []string{id})
	if err != nil {
		return nil
	}
	i := m[id]
	st := instanceState(i)
	if st != ec2types.InstanceStateNameTerminated && st != ec2types.InstanceStateNameShuttingDown {
		return nil
	}
	code, msg := "", ""
	if i.StateReason != nil {
		code, msg = aws.ToString(i.StateReason.Code), aws.ToString(i.StateReason.Message)
	}
	err = fmt.Errorf("instance %s (%s in %s) %w: %s (%s)", id, i.InstanceType, placementZone(i), errDied, code, msg)
	if strings.Contains(code, "InsufficientInstanceCapacity") {
		return fmt.Errorf("%w: %w", cloud.ErrNoCapacity, err)
	}
	return err
}

func placementZone(i ec2types.Instance) string {
	if i.Placement == nil {
		return ""
	}
	return aws.ToString(i.Placement.AvailabilityZone)
}
