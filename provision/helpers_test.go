package provision

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/stack"
)

// testStack is the small stack of the tests: app×apps behind an ELB, pg×2 with two volumes,
// redis×2 with one, memcached×1.
func testStack(apps int) *stack.Stack {
	return &stack.Stack{
		Name: "demo", Provider: "aws", Region: "us-east-1", Zone: "us-east-1a", Image: "ami-785db401",
		SSH: stack.SSH{User: "ubuntu", Port: 22, AdminCIDR: "203.0.113.0/24"},
		Roles: []stack.Role{
			{Name: "app", InstanceType: "c1.xlarge", Count: apps, Port: 8000},
			{Name: "pg", InstanceType: "m2.4xlarge", Count: 2, Port: 5432, Replicas: 1,
				Volumes: stack.VolumeSet{Count: 2, SizeGiB: 10, Type: "standard"}},
			{Name: "redis", InstanceType: "m2.4xlarge", Count: 2, Port: 6379, Replicas: 1,
				Volumes: stack.VolumeSet{Count: 1, SizeGiB: 10, Type: "standard"}},
			{Name: "memcached", InstanceType: "m1.xlarge", Count: 1, Port: 11211},
		},
		LoadBalancer: stack.LoadBalancer{ListenerPort: 80, TargetRole: "app", TargetPort: 8000,
			HealthCheck: "/healthz", DrainTimeout: 30 * time.Second},
	}
}

func mustDesired(t *testing.T, st *stack.Stack) DesiredState {
	t.Helper()
	d, err := Desired(st, func(h stack.HostRef) (string, error) { return "#cloud-config\nhostname: " + h.Name() + "\n", nil })
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// actualFrom is the cloud exactly as d asks for it, with readable ids.
func actualFrom(d DesiredState) *cloud.Resources {
	r := &cloud.Resources{}
	tags := func(kv ...string) map[string]string {
		m := map[string]string{cloud.TagStack: d.Stack}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	if d.KeyPair != nil {
		r.KeyPairs = []string{d.KeyPair.Name}
	}
	for _, g := range d.Groups {
		r.SecurityGroups = append(r.SecurityGroups, cloud.SecurityGroup{ID: "sg-" + g.Name, Name: g.Name,
			Description: g.Description, Ingress: g.Rules, Tags: tags()})
	}
	for _, in := range d.Instances {
		var sgs []string
		for _, g := range in.Groups {
			sgs = append(sgs, "sg-"+g)
		}
		r.Instances = append(r.Instances, cloud.Instance{ID: fmt.Sprintf("i-%s%d", in.Role, in.Index), Name: in.Name,
			Role: in.Role, Index: in.Index, Type: in.Type, Image: in.Image, Zone: in.Zone, State: "running",
			PrivateAddress: "127.0.0.1", SSHPort: 22, SecurityGroups: sgs,
			Tags: tags(cloud.TagRole, in.Role, cloud.TagIndex, fmt.Sprint(in.Index))})
	}
	for _, v := range d.Volumes {
		dev := strings.TrimPrefix(v.Device, "/dev/")
		r.Volumes = append(r.Volumes, cloud.Volume{ID: fmt.Sprintf("vol-%s%d-%s", v.Role, v.Index, dev), Zone: v.Zone,
			SizeGiB: v.SizeGiB, Type: v.Type, State: "in-use", InstanceID: fmt.Sprintf("i-%s%d", v.Role, v.Index),
			Device: v.Device, Tags: tags(cloud.TagRole, v.Role, cloud.TagIndex, fmt.Sprint(v.Index), cloud.TagDevice, v.Device)})
	}
	if lb := d.LoadBalancer; lb != nil {
		var sgs, ins []string
		for _, g := range lb.Groups {
			sgs = append(sgs, "sg-"+g)
		}
		for _, in := range d.Instances {
			if in.Role == lb.TargetRole {
				ins = append(ins, fmt.Sprintf("i-%s%d", in.Role, in.Index))
			}
		}
		r.LoadBalancers = append(r.LoadBalancers, cloud.LoadBalancer{Name: lb.Name, DNSName: lb.Name + ".elb",
			ListenerPort: lb.ListenerPort, TargetPort: lb.TargetPort, HealthCheck: lb.HealthCheck,
			DrainTimeout: lb.DrainTimeout, Zones: lb.Zones, SecurityGroupIDs: sgs, Instances: ins, Tags: tags()})
	}
	return r
}

// golden compares got with testdata/plans/name.golden; UPDATE_GOLDEN=1 rewrites the file.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "plans", name+".golden")
	if os.Getenv("UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create it)", err)
	}
	if string(want) != got {
		t.Errorf("plan text differs from %s (UPDATE_GOLDEN=1 to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var errTest = fmt.Errorf("injected failure")
