package awsfault

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Profile is a set of faults, each decided per call from the seed, the action and the call's
// number among that action's calls (so a run is reproducible up to the order concurrent calls
// of one action arrive in).
type Profile struct {
	// Name is how the profile is chosen (-profile NAME, Lookup).
	Name string
	// Doc says in one line what the profile does.
	Doc string
	// Throttle is the probability that a call is refused as throttled before it reaches the
	// service: EC2 RequestLimitExceeded (HTTP 503), ELB Throttling (HTTP 400).
	Throttle float64
	// LoseReply is the probability that a mutating call reaches the service, takes effect, and
	// its reply is lost (the client sees a connection reset).
	LoseReply float64
	// NotFoundCalls is how many calls naming a new instance, volume or group by id answer
	// *.NotFound after its create (eventual consistency).
	NotFoundCalls int
	// HideCalls is how many filtered describes leave a new instance, volume or group out.
	HideCalls int
	// SlowPolls is how many describes by id show a new instance pending, a new volume creating,
	// a new attachment attaching, a terminating instance shutting-down, and how many
	// DescribeInstanceHealth calls show a registered instance OutOfService.
	SlowPolls int
	// SlowFor is how long each of those slow states lasts at least, from the call that began
	// it, however many polls it took (0: polls only). With polls only, a client that polls
	// faster gets through a slow state sooner; with SlowFor it cannot, which keeps a comparison
	// of tools under the profile fair (faultproxy -slow-for).
	SlowFor time.Duration
	// DeadInstance is the probability that a new instance goes pending → terminated with
	// Server.InsufficientInstanceCapacity (after SlowPolls polls).
	DeadInstance float64
	// NoCapacity refuses RunInstances (InsufficientInstanceCapacity) and CreateVolume
	// (InsufficientVolumeCapacity) for these zones and instance types.
	NoCapacity []Capacity
	// Limit refuses every RunInstances with this code (VcpuLimitExceeded, InstanceLimitExceeded).
	Limit string
	// Edge puts Throttle and LoseReply on the edge services too (IAM, S3, CloudFront, Route 53;
	// edge.go), and counts their mutating calls for AfterMutation. Without it they pass
	// untouched.
	Edge bool
}

// Capacity names a pool without capacity: a zone ("" any), an instance type ("" any).
type Capacity struct{ Zone, Type string }

// Profiles are the named profiles, by name. Every profile also emulates client tokens, as EC2
// does and moto does not.
var Profiles = map[string]Profile{}

func init() {
	for _, p := range []Profile{
		{Name: "none", Doc: "no faults; client tokens emulated"},
		{Name: "throttle", Doc: "30% of calls throttled", Throttle: 0.3},
		{Name: "lost-reply", Doc: "30% of mutating calls take effect and lose their reply", LoseReply: 0.3},
		{Name: "eventual", Doc: "new ids NotFound for 2 calls and missing from 2 filtered describes", NotFoundCalls: 2, HideCalls: 2},
		{Name: "slow", Doc: "pending, creating, attaching, shutting-down and OutOfService for 3 polls", SlowPolls: 3},
		{Name: "dead-instance", Doc: "20% of new instances go pending -> terminated (Server.InsufficientInstanceCapacity)", SlowPolls: 1, DeadInstance: 0.2},
		{Name: "no-capacity-zone", Doc: "no capacity at all in us-east-1a", NoCapacity: []Capacity{{Zone: "us-east-1a"}}},
		{Name: "no-capacity-type", Doc: "no c1.xlarge capacity anywhere", NoCapacity: []Capacity{{Type: "c1.xlarge"}}},
		{Name: "vcpu-limit", Doc: "every RunInstances refused with VcpuLimitExceeded", Limit: "VcpuLimitExceeded"},
		{Name: "throttle-slow", Doc: "throttle and slow together (the newcomer's profile)", Throttle: 0.3, SlowPolls: 3},
		{Name: "edge", Doc: "throttle 30% and lost replies 30% on EC2, ELB, IAM, S3, CloudFront and Route 53", Throttle: 0.3, LoseReply: 0.3, Edge: true},
		{Name: "chaos", Doc: "throttle 20%, lost replies 20%, eventual 2, slow 2",
			Throttle: 0.2, LoseReply: 0.2, NotFoundCalls: 2, HideCalls: 2, SlowPolls: 2},
	} {
		Profiles[p.Name] = p
	}
}

// Lookup returns the named profile, or an error listing the names.
func Lookup(name string) (Profile, error) {
	if p, ok := Profiles[name]; ok {
		return p, nil
	}
	return Profile{}, fmt.Errorf("unknown fault profile %q; profiles: %s", name, strings.Join(Names(), ", "))
}

// Names lists the profile names, sorted.
func Names() []string {
	var out []string
	for n := range Profiles {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// noCapacity reports whether p refuses the pool (zone, typ).
func (p Profile) noCapacity(zone, typ string) bool {
	return slices.ContainsFunc(p.NoCapacity, func(c Capacity) bool {
		return (c.Zone == "" || c.Zone == zone) && (c.Type == "" || c.Type == typ)
	})
}
