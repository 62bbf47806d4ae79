package stack

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// DefaultFile is the stack file read when neither --stack nor INSTACTL_STACK says otherwise.
const DefaultFile = "instagram.yaml"

// Load reads and parses the stack file at path.
func Load(path string) (*Stack, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("stack file %s not found: run `instactl init` to write an example, or pass --stack PATH", path)
		}
		return nil, fmt.Errorf("read stack file: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes a stack file, applies defaults and validates it. On any problem it returns
// Errors holding every problem found, each with file:line:column, key path and the fix.
func Parse(file string, data []byte) (*Stack, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, Errors{yamlSyntaxError(file, err)}
	}
	d := &decoder{file: file, pos: map[string]Pos{}}
	var st Stack
	if len(root.Content) == 0 {
		return nil, Errors{{File: file, Msg: "the file is empty; run `instactl init` for a documented example"}}
	}
	d.decode(root.Content[0], "", reflect.ValueOf(&st).Elem())
	st.Path = file
	// Validate even after decode errors so one run reports everything, but say nothing more
	// about a key whose value could not be read.
	bad := map[string]bool{}
	for _, e := range d.errs {
		bad[e.Path] = true
	}
	applyDefaults(&st)
	v := &validator{d: d, st: &st, skip: bad}
	v.validate()
	if len(d.errs) > 0 {
		return nil, d.errs.sorted()
	}
	return &st, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func yamlSyntaxError(file string, err error) *Error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: file, Pos: Pos{Line: line, Column: 1}, Msg: "invalid YAML: " + m[2]}
	}
	return &Error{File: file, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

// RoleDefaults are the service ports and kinds of the roles instactl knows.
var RoleDefaults = map[string]int{"app": 8080, "pg": 5432, "redis": 6379, "memcached": 11211}

func applyDefaults(s *Stack) {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	defInt := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	defDur := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	def(&s.Provider, "sandbox")
	def(&s.Region, "us-east-1")
	def(&s.Zone, s.Region+"a")
	if s.Provider == "sandbox" {
		def(&s.SSH.User, "root")
		defInt(&s.SSH.Port, 2222)
		def(&s.Sandbox.Dir, "/var/lib/instactl/sandbox/"+s.Name)
		def(&s.SSH.Key, s.Sandbox.Dir+"/keys/id_ed25519")
		def(&s.SSH.KnownHosts, s.Sandbox.Dir+"/known_hosts")
	} else {
		def(&s.SSH.User, "ubuntu")
		defInt(&s.SSH.Port, 22)
		def(&s.SSH.Key, "~/.ssh/id_ed25519")
		def(&s.SSH.KnownHosts, "~/.ssh/known_hosts")
	}
	def(&s.SSH.AdminCIDR, "127.0.0.1/32")
	for i := range s.Roles {
		r := &s.Roles[i]
		defInt(&r.Port, RoleDefaults[r.Name])
		def(&r.InstanceType, "t3.medium")
		if r.Volumes.Count > 0 {
			def(&r.Volumes.Type, "gp3")
			def(&r.Volumes.Filesystem, "xfs")
		}
	}
	lb := &s.LoadBalancer
	def(&lb.TargetRole, "app")
	defInt(&lb.ListenerPort, 80)
	if r := s.Role(lb.TargetRole); r != nil {
		defInt(&lb.TargetPort, r.Port)
	}
	def(&lb.HealthCheck, "/healthz")
	defDur(&lb.DrainTimeout, 5*time.Second)
	dp := &s.Deploy
	def(&dp.Role, "app")
	def(&dp.Path, "/opt/instagram")
	def(&dp.Service, "app")
	defInt(&dp.KeepReleases, 5)
	if len(dp.Batches) == 0 {
		dp.Batches = []string{"1", "50%", "100%"}
	}
	def(&dp.MaxFail, "0")
	defDur(&dp.HealthTimeout, 30*time.Second)
	defInt(&dp.HealthPasses, 2)
	defInt(&dp.Parallel, 50)
	sh := &s.Shards
	defInt(&sh.Logical, 64)
	def(&sh.Role, "pg")
	def(&sh.Database, "instagram")
	def(&sh.ControlDatabase, "instagram_control")
	b := &s.Backup
	if len(b.Targets) == 0 {
		for _, name := range []string{"pg", "redis"} {
			if r := s.Role(name); r != nil && r.Replicas > 0 && r.Volumes.Count > 0 {
				b.Targets = append(b.Targets, name)
			}
		}
	}
	if b.MaxLagBytes == 0 {
		b.MaxLagBytes = 64 << 20
	}
	defDur(&b.MaxLagTime, 60*time.Second)
	defDur(&b.FreezeBudget, 30*time.Second)
	defInt(&b.Retention.Hourly, 24)
	defInt(&b.Retention.Daily, 7)
	defInt(&b.Retention.Weekly, 4)
	defInt(&b.Retention.Monthly, 6)
	defInt(&b.Retention.MinVerified, 1)
	if !s.Network.AddressBase.IsValid() {
		s.Network.AddressBase = netip.MustParseAddr("172.31.0.10") // the default VPC's first subnet
		if s.Provider == "sandbox" {
			s.Network.AddressBase = netip.MustParseAddr("127.0.10.1")
		}
	}
	sb := &s.Sandbox
	defInt(&sb.VolumeSizeMiB, 512)
	defInt(&sb.LBPort, 18080)
	defInt(&sb.MotoPort, 15000)
}

func parseCIDR(s string) (netip.Prefix, error) { return netip.ParsePrefix(s) }
