package aws

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/internal/testenv"
)

// awsCLI runs the aws command line against endpoint and decodes its JSON answer into out.
func awsCLI(t *testing.T, endpoint string, out any, args ...string) {
	t.Helper()
	bin := testenv.Require(t, "aws", "awscli")
	cmd := exec.Command(bin, append([]string{"--endpoint-url", endpoint, "--output", "json"}, args...)...)
	// awscli v1 reads AWS_DEFAULT_REGION, not AWS_REGION.
	cmd.Env = append(os.Environ(), "AWS_DEFAULT_REGION="+os.Getenv("AWS_REGION"))
	b, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("aws %s: decode: %v\n%s", strings.Join(args, " "), err, b)
		}
	}
}

type cliTag struct{ Key, Value string }

func cliTags(ts []cliTag) map[string]string {
	m := map[string]string{}
	for _, t := range ts {
		m[t.Key] = t.Value
	}
	return m
}

// TestCrossCheckWithCLI checks, with an independent client, that what the provider made is
// exactly what exists, tags included, and that it leaves alone what it does not own.
func TestCrossCheckWithCLI(t *testing.T) {
	endpoint, newProvider := motoProvider(t)
	p := newProvider(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const stack = "xcheck"
	tags := map[string]string{cloud.TagStack: stack}

	web, err := p.CreateSecurityGroup(ctx, stack, cloud.SecurityGroup{Name: "web",
		Ingress: []cloud.Rule{{FromPort: 80, ToPort: 80, CIDR: "0.0.0.0/0"}}})
	if err != nil {
		t.Fatal(err)
	}
	app, err := p.CreateSecurityGroup(ctx, stack, cloud.SecurityGroup{Name: "app",
		Ingress: []cloud.Rule{{FromPort: 8000, ToPort: 8000, FromGroup: "web"}}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 2 {
		in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: "xcheck-app-" + string(rune('0'+i)), Role: "app", Index: i,
			Type: "t2.micro", Image: "ami-785db401", Zone: "us-east-1a", SecurityGroupIDs: []string{app.ID},
			ClientToken: "xcheck-app-" + string(rune('0'+i)), Tags: tags})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, in.ID)
	}
	vol, err := p.CreateVolume(ctx, cloud.VolumeSpec{Zone: "us-east-1a", SizeGiB: 5, Type: "gp2",
		Tags: map[string]string{cloud.TagStack: stack, cloud.TagDevice: "/dev/sdf"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AttachVolume(ctx, vol.ID, ids[0], "/dev/sdf"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateLoadBalancer(ctx, cloud.LoadBalancer{Name: stack, ListenerPort: 80, TargetPort: 8000,
		HealthCheck: "/healthz", Zones: []string{"us-east-1a"}, SecurityGroupIDs: []string{web.ID}, Tags: tags}); err != nil {
		t.Fatal(err)
	}
	if err := p.RegisterInstances(ctx, stack, ids); err != nil {
		t.Fatal(err)
	}

	// An instance nobody tagged: never listed, never terminated.
	var foreign struct{ Instances []struct{ InstanceId string } }
	awsCLI(t, endpoint, &foreign, "ec2", "run-instances", "--image-id", "ami-785db401", "--instance-type", "t2.micro", "--count", "1")

	var di struct {
		Reservations []struct {
			Instances []struct {
				InstanceId, InstanceType, ClientToken string
				Placement                             struct{ AvailabilityZone string }
				State                                 struct{ Name string }
				Tags                                  []cliTag
				SecurityGroups                        []struct{ GroupId string }
				BlockDeviceMappings                   []struct {
					DeviceName string
					Ebs        struct{ VolumeId string }
				}
			}
		}
	}
	awsCLI(t, endpoint, &di, "ec2", "describe-instances", "--filters", "Name=tag:"+cloud.TagStack+",Values="+stack)
	var got []string
	for _, r := range di.Reservations {
		for _, in := range r.Instances {
			got = append(got, in.InstanceId)
			tg := cliTags(in.Tags)
			if tg[cloud.TagRole] != "app" || tg[cloud.TagName] == "" || tg[cloud.TagIndex] == "" || in.InstanceType != "t2.micro" ||
				in.Placement.AvailabilityZone != "us-east-1a" || in.State.Name != "running" ||
				len(in.SecurityGroups) != 1 || in.SecurityGroups[0].GroupId != app.ID {
				t.Errorf("instance as the CLI sees it: %+v", in)
			}
		}
	}
	first := ids[0]
	slices.Sort(got)
	slices.Sort(ids)
	if !slices.Equal(got, ids) {
		t.Errorf("CLI lists instances %v, provider made %v", got, ids)
	}

	var dv struct {
		Volumes []struct {
			VolumeId    string
			Size        int
			Tags        []cliTag
			Attachments []struct{ InstanceId, Device, State string }
		}
	}
	awsCLI(t, endpoint, &dv, "ec2", "describe-volumes", "--filters", "Name=tag:"+cloud.TagStack+",Values="+stack)
	if len(dv.Volumes) != 1 || dv.Volumes[0].VolumeId != vol.ID || dv.Volumes[0].Size != 5 ||
		len(dv.Volumes[0].Attachments) != 1 || dv.Volumes[0].Attachments[0].InstanceId != first ||
		dv.Volumes[0].Attachments[0].Device != "/dev/sdf" || cliTags(dv.Volumes[0].Tags)[cloud.TagDevice] != "/dev/sdf" {
		t.Errorf("CLI volumes: %+v", dv.Volumes)
	}

	var dg struct {
		SecurityGroups []struct {
			GroupId, GroupName string
			IpPermissions      []struct {
				FromPort         int
				UserIdGroupPairs []struct{ GroupId string }
				IpRanges         []struct{ CidrIp string }
			}
		}
	}
	awsCLI(t, endpoint, &dg, "ec2", "describe-security-groups", "--filters", "Name=tag:"+cloud.TagStack+",Values="+stack)
	if len(dg.SecurityGroups) != 2 {
		t.Fatalf("CLI lists %d groups, want 2: %+v", len(dg.SecurityGroups), dg.SecurityGroups)
	}
	for _, g := range dg.SecurityGroups {
		if g.GroupId == app.ID && (g.GroupName != "xcheck-app" || len(g.IpPermissions) != 1 ||
			g.IpPermissions[0].FromPort != 8000 || len(g.IpPermissions[0].UserIdGroupPairs) != 1 ||
			g.IpPermissions[0].UserIdGroupPairs[0].GroupId != web.ID) {
			t.Errorf("CLI app group: %+v", g)
		}
	}

	var dl struct {
		LoadBalancerDescriptions []struct {
			LoadBalancerName     string
			Instances            []struct{ InstanceId string }
			SecurityGroups       []string
			HealthCheck          struct{ Target string }
			ListenerDescriptions []struct {
				Listener struct{ LoadBalancerPort, InstancePort int }
			}
		}
	}
	awsCLI(t, endpoint, &dl, "elb", "describe-load-balancers", "--load-balancer-names", stack)
	lb := dl.LoadBalancerDescriptions[0]
	var reg []string
	for _, in := range lb.Instances {
		reg = append(reg, in.InstanceId)
	}
	slices.Sort(reg)
	if !slices.Equal(reg, ids) || lb.HealthCheck.Target != "HTTP:8000/healthz" || !slices.Equal(lb.SecurityGroups, []string{web.ID}) ||
		lb.ListenerDescriptions[0].Listener.LoadBalancerPort != 80 || lb.ListenerDescriptions[0].Listener.InstancePort != 8000 {
		t.Errorf("CLI load balancer: %+v", lb)
	}

	if err := p.TerminateInstances(ctx, []string{foreign.Instances[0].InstanceId}); err == nil {
		t.Errorf("terminating an instance instactl does not own was accepted")
	}
	if err := p.DeleteSecurityGroup(ctx, web.ID); err == nil {
		t.Errorf("deleting a group the load balancer and another group use was accepted")
	}
	var st struct {
		InstanceStatuses []struct{ InstanceState struct{ Name string } }
	}
	awsCLI(t, endpoint, &st, "ec2", "describe-instance-status", "--instance-ids", foreign.Instances[0].InstanceId)
	if len(st.InstanceStatuses) != 1 || st.InstanceStatuses[0].InstanceState.Name != "running" {
		t.Errorf("the foreign instance was touched: %+v", st)
	}
}
