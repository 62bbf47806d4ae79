package stack

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/instactl/instactl/homedir"
	"go.yaml.in/yaml/v3"
)

// DefaultFile is the stack file read when neither --stack nor INSTACTL_STACK says otherwise.
const DefaultFile = "instagram.yaml"

// MaxFileSize bounds what Load reads and Parse accepts: a stack file is a few KiB, and a bound
// keeps a wrong or hostile file from costing unbounded time and memory.
const MaxFileSize = 1 << 20

// Load reads and parses the stack file at path.
func Load(path string) (*Stack, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("stack file %s not found: run `instactl init` to write an example, or pass --stack PATH", path)
		}
		return nil, fmt.Errorf("read stack file: %w", err)
	}
	defer f.Close()
	// One byte more than the bound, so Parse can tell a file at the bound from one over it.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read stack file %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse decodes a stack file, applies defaults and validates it. On any problem it returns
// Errors holding every problem found (up to maxErrors), each with file:line:column, key path and
// the fix. Hostile input (binary data, alias bombs, deep nesting, files over MaxFileSize) is
// refused the same way, in time and memory bounded by MaxFileSize.
func Parse(file string, data []byte) (*Stack, error) {
	if e := checkText(file, data); e != nil {
		return nil, Errors{e}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, Errors{yamlSyntaxError(file, data, err)}
	}
	d := &decoder{file: file, pos: map[string]Pos{}}
	var st Stack
	if len(root.Content) == 0 {
		return nil, Errors{{File: file, Pos: Pos{Line: 1, Column: 1}, Msg: "the file is empty; run `instactl init` for a documented example"}}
	}
	d.decode(root.Content[0], "", reflect.ValueOf(&st).Elem())
	st.Path = file
	if d.full() {
		return nil, d.errs.sorted()
	}
	// Validate even after decode errors so one run reports everything, but say nothing more
	// about a key whose value could not be read.
	bad := map[string]bool{}
	for _, e := range d.errs {
		bad[e.Path] = true
	}
	st.pos = d.pos
	applyDefaults(&st)
	st.canaryDefaults()
	expandPaths(&st)
	v := &validator{d: d, st: &st, skip: bad}
	v.validate()
	if len(d.errs) > 0 {
		return nil, d.errs.sorted()
	}
	return &st, nil
}

// checkText refuses what is not a stack file at all before the YAML parser sees it: a file over
// MaxFileSize, and binary data (bytes that are not UTF-8, control characters other than tab and
// line breaks), at the place they start. The YAML parser's own words for these name no line.
func checkText(file string, data []byte) *Error {
	if len(data) > MaxFileSize {
		return &Error{File: file, Pos: posAt(data, MaxFileSize), Msg: fmt.Sprintf(
			"the file is larger than %d KiB (a stack file is a few KiB); reading stopped here: is this the right file?", MaxFileSize>>10)}
	}
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return &Error{File: file, Pos: posAt(data, i), Msg: fmt.Sprintf(
				"byte 0x%02x is not UTF-8 text: a stack file is YAML text; is this the right file?", data[i])}
		case r < 0x20 && r != '\t' && r != '\n' && r != '\r', r >= 0x7f && r <= 0x9f && r != 0x85,
			r == 0xfffe, r == 0xffff, r == 0xfeff && i > 0: // what YAML calls non-printable
			return &Error{File: file, Pos: posAt(data, i), Msg: fmt.Sprintf(
				"control character 0x%02x is not allowed in YAML text: is this the right file?", r)}
		}
		i += size
	}
	return nil
}

// posAt is the line and column (in characters, from 1) of byte offset off of data.
func posAt(data []byte, off int) Pos {
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	start := bytes.LastIndexByte(data[:off], '\n') + 1
	return Pos{Line: line, Column: 1 + utf8.RuneCount(data[start:off])}
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlSyntaxError places the YAML parser's error. The parser names a line but no column; a tab,
// the most common cause, is pointed at exactly.
func yamlSyntaxError(file string, data []byte, err error) *Error {
	msg := err.Error()
	m := yamlLine.FindStringSubmatch(msg)
	if m == nil {
		return &Error{File: file, Pos: Pos{Line: 1, Column: 1}, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
	}
	line, _ := strconv.Atoi(m[1])
	e := &Error{File: file, Pos: Pos{Line: line, Column: 1}, Msg: "invalid YAML: " + m[2]}
	lines := bytes.Split(data, []byte("\n"))
	if line >= 1 && line <= len(lines) {
		if i := bytes.IndexByte(lines[line-1], '\t'); i >= 0 {
			e.Column = 1 + utf8.RuneCount(lines[line-1][:i])
			e.Msg += " (a tab: YAML indents with spaces only)"
		}
	}
	return e
}

// RoleDefaults are the service ports and kinds of the roles instactl knows.
var RoleDefaults = map[string]int{"app": 8080, "pg": 5432, "redis": 6379, "memcached": 11211, MonitorRole: 9090}

// MonitorRole is the role whose host runs Prometheus (on the role's port), Alertmanager and
// blackbox_exporter. A stack that declares it gets exporters on every host; one host is enough
// and is the default count.
const MonitorRole = "monitor"

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
	if len(s.Zones) > 0 {
		def(&s.Zone, s.Zones[0])
	}
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
		if len(r.InstanceTypes) > 0 {
			def(&r.InstanceType, r.InstanceTypes[0])
		}
		if r.Name == MonitorRole {
			defInt(&r.Count, 1)
		}
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
	defDur(&b.ArchiveTimeout, 60*time.Second)
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

// expandPaths expands a leading ~ in every key that names a file or directory on this machine,
// once, here: every command then reads the same absolute paths (the provisioner reads
// ssh.key + ".pub", remote loads ssh.key, the sandbox creates sandbox.dir). deploy.path and
// volume mounts are paths on the hosts, not here, and are left as written.
func expandPaths(s *Stack) {
	for _, p := range []*string{&s.SSH.Key, &s.SSH.KnownHosts, &s.Sandbox.Dir} {
		*p = homedir.Expand(*p)
	}
}
