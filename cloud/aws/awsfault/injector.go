package awsfault

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// API versions of the query protocols the injector understands; other requests pass untouched.
const (
	ec2Version = "2016-11-15"
	elbVersion = "2012-06-01"
)

// Injector is a seeded http.RoundTripper that puts a Profile's faults between an AWS SDK
// client (or the reverse proxy, NewProxy) and the service behind next, usually moto_server. It
// also gives moto EC2's client-token semantics: a RunInstances or CreateVolume repeated with the
// same ClientToken and parameters gets the first answer, with other parameters
// IdempotentParameterMismatch.
type Injector struct {
	next    http.RoundTripper
	profile Profile
	seed    int64
	// AfterMutation, when set, runs after a mutating call took effect and before its reply
	// goes back, with the action and the number of mutating calls so far (from 1): kill points.
	AfterMutation func(action string, n int)

	mu        sync.Mutex
	off       bool
	calls     map[string]int
	mutations int
	fresh     map[string]*fresh     // new instance, volume and group ids
	shutting  map[string]*slowState // terminating instance -> its shutting-down
	attaching map[string]*slowState // volume -> its attaching
	health    map[string]*slowState // load balancer -> its OutOfService
	tokens    map[string]*tokenEntry
	locks     map[string]*sync.Mutex
	creates   map[string]int // client token -> resources the service made for it
	injected  map[string]int // fault kind -> count
}

// fresh is what the injector remembers of a new resource.
type fresh struct {
	notFound, hide int
	slow           *slowState
	dead           bool
}

// slowState is one slow state: polls left, and the time before which it lasts however many
// polls it took (Profile.SlowFor).
type slowState struct {
	polls int
	until time.Time
}

// newSlow starts a slow state of p (none for a profile without slow states).
func newSlow(p Profile) *slowState {
	if p.SlowPolls <= 0 {
		return nil
	}
	return &slowState{polls: p.SlowPolls, until: time.Now().Add(p.SlowFor)}
}

// show reports whether a poll still sees s (nil: no slow state), counting the poll.
func (s *slowState) show() bool {
	if s == nil {
		return false
	}
	if s.polls > 0 {
		s.polls--
		return true
	}
	return time.Now().Before(s.until)
}

type tokenEntry struct {
	fingerprint string
	status      int
	header      http.Header
	body        []byte
}

// New returns an injector with profile p and seed in front of next (nil: http.DefaultTransport).
func New(next http.RoundTripper, p Profile, seed int64) *Injector {
	if next == nil {
		next = http.DefaultTransport
	}
	return &Injector{next: next, profile: p, seed: seed, calls: map[string]int{}, fresh: map[string]*fresh{},
		shutting: map[string]*slowState{}, attaching: map[string]*slowState{}, health: map[string]*slowState{},
		tokens: map[string]*tokenEntry{}, locks: map[string]*sync.Mutex{}, creates: map[string]int{},
		injected: map[string]int{}}
}

// SetEnabled turns the faults on or off (client tokens stay emulated): a test converges under
// faults, then checks with faults off.
func (in *Injector) SetEnabled(on bool) {
	in.mu.Lock()
	in.off = !on
	in.mu.Unlock()
}

// Stats are what the injector did: calls per action, faults per kind, and the resources the
// service made per client token (more than one is a duplicate).
type Stats struct {
	Calls     map[string]int
	Injected  map[string]int
	Mutations int
	Creates   map[string]int
}

// Stats returns a copy of the counters.
func (in *Injector) Stats() Stats {
	in.mu.Lock()
	defer in.mu.Unlock()
	cp := func(m map[string]int) map[string]int {
		out := make(map[string]int, len(m))
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	return Stats{Calls: cp(in.calls), Injected: cp(in.injected), Mutations: in.mutations, Creates: cp(in.creates)}
}

// chance is the seeded, per-call random number in [0,1) for one decision.
func (in *Injector) chance(kind, action string, n int) float64 {
	// A cryptographic hash, because FNV's high bits barely move with the last characters: the
	// calls of one action would all get nearly the same number.
	sum := sha256.Sum256([]byte(fmt.Sprintf("%d/%s/%s/%d", in.seed, kind, action, n)))
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / float64(1<<53)
}

// mutating reports whether an action changes something.
func mutating(action string) bool {
	for _, p := range []string{"Create", "Delete", "Run", "Terminate", "Attach", "Detach", "Authorize", "Revoke",
		"Import", "Register", "Deregister", "Modify", "Configure", "Start", "Stop", "Add", "Remove", "Apply", "Set"} {
		if strings.HasPrefix(action, p) {
			return true
		}
	}
	return false
}

// RoundTrip implements http.RoundTripper.
func (in *Injector) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		var err error
		body, err = io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
	}
	form, _ := url.ParseQuery(string(body))
	action, version := form.Get("Action"), form.Get("Version")
	if action == "" || (version != ec2Version && version != elbVersion) {
		if in.profile.Edge {
			if name, mut := edgeCall(req, form); name != "" {
				return in.edgeRoundTrip(req, body, name, mut)
			}
		}
		return in.forward(req, body)
	}
	ec2 := version == ec2Version
	in.mu.Lock()
	n := in.calls[action]
	in.calls[action]++
	off := in.off
	in.mu.Unlock()
	p := in.profile
	if off {
		p = Profile{}
	}
	if p.Throttle > 0 && in.chance("throttle", action, n) < p.Throttle {
		in.count("throttle")
		if ec2 {
			return ec2Error(req, 503, "RequestLimitExceeded", "Request limit exceeded."), nil
		}
		return elbError(req, 400, "Throttling", "Rate exceeded"), nil
	}
	if resp := in.refuseCapacity(req, p, form, action); resp != nil {
		return resp, nil
	}
	if ec2 {
		if resp := in.notYet(req, form, action); resp != nil {
			return resp, nil
		}
	}
	var resp *http.Response
	var out []byte
	var err error
	token := form.Get("ClientToken")
	if ec2 && token != "" && (action == "RunInstances" || action == "CreateVolume") {
		resp, out, err = in.withToken(req, body, form, action, token, p, n)
	} else {
		resp, out, err = in.forwardRead(req, body)
		if err == nil && resp.StatusCode/100 == 2 {
			in.track(req, form, action, out, p, n)
		}
	}
	if err != nil {
		return nil, err
	}
	out = in.rewrite(form, action, out)
	if mutating(action) && resp.StatusCode/100 == 2 {
		in.mu.Lock()
		in.mutations++
		m := in.mutations
		hook := in.AfterMutation
		in.mu.Unlock()
		if hook != nil {
			hook(action, m)
		}
		if p.LoseReply > 0 && in.chance("lose", action, n) < p.LoseReply {
			in.count("lost-reply")
			return nil, errLost
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(out))
	resp.ContentLength = int64(len(out))
	resp.Header.Del("Content-Length")
	return resp, nil
}

// errLost is a lost reply as the SDK sees one: the connection reset after the request went out.
var errLost = &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}

func (in *Injector) count(kind string) {
	in.mu.Lock()
	in.injected[kind]++
	in.mu.Unlock()
}

func (in *Injector) forward(req *http.Request, body []byte) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	return in.next.RoundTrip(r)
}

func (in *Injector) forwardRead(req *http.Request, body []byte) (*http.Response, []byte, error) {
	resp, err := in.forward(req, body)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	return resp, out, nil
}

// refuseCapacity answers RunInstances and CreateVolume for a pool without capacity, and
// RunInstances under a limit, without asking the service.
func (in *Injector) refuseCapacity(req *http.Request, p Profile, form url.Values, action string) *http.Response {
	switch action {
	case "RunInstances":
		zone, typ := form.Get("Placement.AvailabilityZone"), form.Get("InstanceType")
		if p.Limit != "" {
			in.count("limit")
			return ec2Error(req, 400, p.Limit, "You have requested more vCPU capacity than your current vCPU limit allows.")
		}
		if p.noCapacity(zone, typ) {
			in.count("no-capacity")
			return ec2Error(req, 500, "InsufficientInstanceCapacity", fmt.Sprintf(
				"We currently do not have sufficient %s capacity in the Availability Zone you requested (%s).", typ, zone))
		}
	case "CreateVolume":
		zone := form.Get("AvailabilityZone")
		if slices.ContainsFunc(p.NoCapacity, func(c Capacity) bool { return c.Zone == zone && c.Type == "" }) {
			in.count("no-capacity")
			return ec2Error(req, 500, "InsufficientVolumeCapacity", "There is not enough capacity to fulfill your EBS volume provision request in "+zone+".")
		}
	}
	return nil
}

// namedIDs lists the instance, volume and group ids a request names.
func namedIDs(form url.Values) []string {
	var ids []string
	for k, vs := range form {
		base := k
		if i := strings.IndexByte(k, '.'); i > 0 {
			base = k[:i]
		}
		switch base {
		case "InstanceId", "VolumeId", "GroupId":
			ids = append(ids, vs...)
		}
	}
	sort.Strings(ids)
	return ids
}

// notYet answers *.NotFound for a call that names an id created moments ago (eventual
// consistency), for as many such calls as the profile says.
func (in *Injector) notYet(req *http.Request, form url.Values, action string) *http.Response {
	switch action {
	case "DescribeInstances", "DescribeVolumes", "AttachVolume", "AuthorizeSecurityGroupIngress":
	default:
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.off {
		return nil
	}
	missing := ""
	for _, id := range namedIDs(form) {
		if f := in.fresh[id]; f != nil && f.notFound > 0 {
			f.notFound--
			if missing == "" {
				missing = id
			}
		}
	}
	if missing == "" {
		return nil
	}
	in.injected["not-found"]++
	code := "InvalidInstanceID.NotFound"
	switch {
	case strings.HasPrefix(missing, "vol-"):
		code = "InvalidVolume.NotFound"
	case strings.HasPrefix(missing, "sg-"):
		code = "InvalidGroup.NotFound"
	}
	return ec2Error(req, 400, code, fmt.Sprintf("The id '%s' does not exist", missing))
}

// withToken emulates EC2's client tokens: one create per token, the first answer replayed to a
// repeat with the same parameters, IdempotentParameterMismatch to one with other parameters.
func (in *Injector) withToken(req *http.Request, body []byte, form url.Values, action, token string, p Profile, n int) (*http.Response, []byte, error) {
	key := action + "/" + token
	in.mu.Lock()
	l := in.locks[key]
	if l == nil {
		l = &sync.Mutex{}
		in.locks[key] = l
	}
	in.mu.Unlock()
	l.Lock()
	defer l.Unlock()
	fp := fingerprint(form)
	in.mu.Lock()
	e := in.tokens[key]
	in.mu.Unlock()
	if e != nil {
		if e.fingerprint != fp {
			in.count("idempotent-mismatch")
			r := ec2Error(req, 400, "IdempotentParameterMismatch", "Client token "+token+" was used with other parameters.")
			b, _ := io.ReadAll(r.Body)
			return r, b, nil
		}
		in.count("token-replay")
		out := in.replayState(e.body)
		return &http.Response{StatusCode: e.status, Status: http.StatusText(e.status), Header: e.header.Clone(),
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: req}, out, nil
	}
	resp, out, err := in.forwardRead(req, body)
	if err != nil || resp.StatusCode/100 != 2 {
		return resp, out, err
	}
	in.mu.Lock()
	in.tokens[key] = &tokenEntry{fingerprint: fp, status: resp.StatusCode, header: resp.Header.Clone(), body: out}
	in.creates[token]++
	in.mu.Unlock()
	in.track(req, form, action, out, p, n)
	return resp, out, nil
}

// replayState shows a replayed RunInstances answer's dead instances terminated, as EC2 does.
func (in *Injector) replayState(body []byte) []byte {
	in.mu.Lock()
	defer in.mu.Unlock()
	return eachItem(body, "instancesSet", func(item []byte) []byte {
		if f := in.fresh[firstValue(item, "instanceId")]; f != nil && f.dead {
			return setInstanceState(item, 48, "terminated")
		}
		return item
	})
}

func fingerprint(form url.Values) string {
	var keys []string
	for k := range form {
		if k != "ClientToken" && k != "Action" && k != "Version" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s&", k, strings.Join(form[k], ","))
	}
	return b.String()
}

// track remembers what a successful mutating call made or started.
func (in *Injector) track(req *http.Request, form url.Values, action string, out []byte, p Profile, n int) {
	var dead []string
	in.mu.Lock()
	switch action {
	case "RunInstances":
		for k, id := range allValues(out, "instanceId") {
			f := &fresh{notFound: p.NotFoundCalls, hide: p.HideCalls, slow: newSlow(p)}
			if p.DeadInstance > 0 && in.chance("dead", strconv.Itoa(k), n) < p.DeadInstance {
				f.dead = true
				dead = append(dead, id)
				in.injected["dead-instance"]++
			}
			in.fresh[id] = f
		}
	case "CreateVolume":
		if id := firstValue(out, "volumeId"); id != "" {
			in.fresh[id] = &fresh{notFound: p.NotFoundCalls, hide: p.HideCalls, slow: newSlow(p)}
		}
	case "CreateSecurityGroup":
		if id := firstValue(out, "groupId"); id != "" {
			in.fresh[id] = &fresh{notFound: p.NotFoundCalls, hide: p.HideCalls}
		}
	case "TerminateInstances":
		for _, id := range namedIDs(form) {
			in.shutting[id] = newSlow(p)
		}
	case "AttachVolume":
		in.attaching[form.Get("VolumeId")] = newSlow(p)
	case "RegisterInstancesWithLoadBalancer":
		in.health[form.Get("LoadBalancerName")] = newSlow(p)
	}
	in.mu.Unlock()
	for _, id := range dead {
		in.terminate(req, id)
	}
}

// terminate ends a dead instance in the service itself, so that the service (the oracle) agrees
// with what the injector shows.
func (in *Injector) terminate(req *http.Request, id string) {
	body := []byte(url.Values{"Action": {"TerminateInstances"}, "Version": {ec2Version}, "InstanceId.1": {id}}.Encode())
	r := req.Clone(req.Context())
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	r.Header.Del("Amz-Sdk-Invocation-Id")
	resp, _, err := in.forwardRead(r, body)
	if err != nil || resp.StatusCode/100 != 2 {
		in.count("dead-instance-terminate-failed")
	}
}

// rewrite shows the profile's slow states in describes by id and hides new ids from filtered
// describes.
func (in *Injector) rewrite(form url.Values, action string, out []byte) []byte {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.off {
		return out
	}
	filtered := len(namedIDs(form)) == 0
	switch action {
	case "DescribeInstances":
		return eachItem(out, "instancesSet", func(item []byte) []byte {
			id := firstValue(item, "instanceId")
			f := in.fresh[id]
			if filtered {
				if f != nil && f.hide > 0 {
					f.hide--
					in.injected["hidden"]++
					return nil
				}
				return item
			}
			switch {
			case firstValue([]byte(firstValue(item, "instanceState")), "name") == "terminated" && in.shutting[id].show():
				in.injected["slow"]++
				return setInstanceState(item, 32, "shutting-down")
			case f != nil && f.slow.show():
				in.injected["slow"]++
				return setInstanceState(item, 0, "pending")
			case f != nil && f.dead:
				return setStateReason(item, "Server.InsufficientInstanceCapacity", "Server.InsufficientInstanceCapacity: Insufficient capacity.")
			}
			return item
		})
	case "DescribeVolumes":
		return eachItem(out, "volumeSet", func(item []byte) []byte {
			id := firstValue(item, "volumeId")
			f := in.fresh[id]
			if filtered {
				if f != nil && f.hide > 0 {
					f.hide--
					in.injected["hidden"]++
					return nil
				}
				return item
			}
			switch {
			case f != nil && f.slow.show():
				in.injected["slow"]++
				return replaceFirst(item, "<status>available</status>", "<status>creating</status>")
			case in.attaching[id].show():
				in.injected["slow"]++
				return setAttachmentStatus(item, "attaching")
			}
			return item
		})
	case "DescribeSecurityGroups":
		if !filtered {
			return out
		}
		return eachItem(out, "securityGroupInfo", func(item []byte) []byte {
			if f := in.fresh[firstValue(item, "groupId")]; f != nil && f.hide > 0 {
				f.hide--
				in.injected["hidden"]++
				return nil
			}
			return item
		})
	case "DescribeInstanceHealth":
		lb := form.Get("LoadBalancerName")
		if in.health[lb].show() {
			in.injected["slow"]++
			return bytes.ReplaceAll(out, []byte("<State>InService</State>"), []byte("<State>OutOfService</State>"))
		}
	}
	return out
}

// ec2Error is an EC2 error reply (Response/Errors/Error).
func ec2Error(req *http.Request, status int, code, msg string) *http.Response {
	body := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>awsfault</RequestID></Response>`,
		code, xmlEscape(msg))
	return reply(req, status, body)
}

// elbError is a classic ELB (awsquery) error reply.
func elbError(req *http.Request, status int, code, msg string) *http.Response {
	body := fmt.Sprintf(`<ErrorResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2012-06-01/">`+
		`<Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>awsfault</RequestId></ErrorResponse>`,
		code, xmlEscape(msg))
	return reply(req, status, body)
}

func reply(req *http.Request, status int, body string) *http.Response {
	h := http.Header{}
	h.Set("Content-Type", "text/xml")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	return &http.Response{StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: h, Request: req,
		Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body))}
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xmlEscapeTo(&b, s)
	return b.String()
}
