package sandbox

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/instactl/instactl/cloud"
)

// Load balancers are one nginx (master pid in state) serving a server block per load balancer:
// the first listens on Config.LBAddress:LBPort, later ones on the next free ports. DNSName is that
// "address:port". Registering and deregistering rewrite the config atomically and reload nginx;
// old workers finish their in-flight requests, which is the drain. Health is the sandbox's own
// HTTP GET of each registered instance, not nginx's view.

// generationPath is answered by nginx itself on every load balancer port with the config
// generation, so the sandbox knows when a reload is in effect.
const generationPath = "/.instactl-generation"

func (p *Provider) nginxDir(elem ...string) string {
	return p.path(append([]string{"nginx"}, elem...)...)
}

// CreateLoadBalancer creates a load balancer, or returns the stack's existing one of that name.
// Tags must carry the stack. Instances listed are registered.
func (p *Provider) CreateLoadBalancer(ctx context.Context, lb cloud.LoadBalancer) (cloud.LoadBalancer, error) {
	stack := lb.Tags[cloud.TagStack]
	if stack == "" || lb.Name == "" {
		return cloud.LoadBalancer{}, fmt.Errorf("create load balancer: a name and the %s tag are required", cloud.TagStack)
	}
	if lb.TargetPort <= 0 {
		return cloud.LoadBalancer{}, fmt.Errorf("create load balancer %s: target port is required", lb.Name)
	}
	var out cloud.LoadBalancer
	err := p.update(func(s *state) error {
		if e, err := s.lb(lb.Name); err == nil {
			if e.Tags[cloud.TagStack] != stack {
				return fmt.Errorf("create load balancer: %s exists and belongs to stack %q", lb.Name, e.Tags[cloud.TagStack])
			}
			// Ours already: take the health check and drain timeout, as AWS's configure calls do.
			e.HealthCheck, e.DrainTimeout = lb.HealthCheck, lb.DrainTimeout
			out = p.lbView(e)
			return nil
		}
		port, err := p.allocateLBPort(s)
		if err != nil {
			return fmt.Errorf("create load balancer %s: %w", lb.Name, err)
		}
		rec := &lbRec{LoadBalancer: lb, Port: port}
		rec.Tags = copyTags(lb.Tags)
		rec.Instances = nil
		rec.DNSName = net.JoinHostPort(p.cfg.LBAddress.String(), strconv.Itoa(port))
		if err := checkRegistrable(s, rec, lb.Instances); err != nil {
			return fmt.Errorf("create load balancer %s: %w", lb.Name, err)
		}
		rec.Instances = addIDs(nil, lb.Instances)
		s.LoadBalancers = append(s.LoadBalancers, rec)
		if err := p.applyNginx(s); err != nil {
			s.LoadBalancers = s.LoadBalancers[:len(s.LoadBalancers)-1]
			_ = p.applyNginx(s)
			return fmt.Errorf("create load balancer %s: %w", lb.Name, err)
		}
		out = p.lbView(rec)
		return nil
	})
	return out, err
}

func (p *Provider) lbView(l *lbRec) cloud.LoadBalancer {
	out := l.LoadBalancer
	out.Instances = append([]string(nil), l.Instances...)
	out.Tags = copyTags(l.Tags)
	return out
}

func (p *Provider) allocateLBPort(s *state) (int, error) {
	used := map[int]bool{}
	for _, l := range s.LoadBalancers {
		used[l.Port] = true
	}
	for port := p.cfg.LBPort; port < p.cfg.LBPort+100 && port < 65536; port++ {
		if used[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(p.cfg.LBAddress.String(), strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, fmt.Errorf("no free port from %s:%d", p.cfg.LBAddress, p.cfg.LBPort)
}

// DeleteLoadBalancer deletes a load balancer (nginx stops with the last one). A missing one is
// not an error, as with ELB.
func (p *Provider) DeleteLoadBalancer(ctx context.Context, name string) error {
	return p.update(func(s *state) error {
		l, err := s.lb(name)
		if err != nil {
			return nil
		}
		if _, err := stackOf("load balancer", name, l.Tags); err != nil {
			return fmt.Errorf("delete load balancer: %w", err)
		}
		out := s.LoadBalancers[:0]
		for _, o := range s.LoadBalancers {
			if o.Name != name {
				out = append(out, o)
			}
		}
		s.LoadBalancers = out
		return p.applyNginx(s)
	})
}

// checkRegistrable refuses instances that are missing, terminated or of another stack.
func checkRegistrable(s *state, l *lbRec, ids []string) error {
	for _, id := range ids {
		in, err := s.instance(id)
		if err != nil {
			return err
		}
		if in.State == "terminated" {
			return fmt.Errorf("instance %s is terminated", id)
		}
		if in.Tags[cloud.TagStack] != l.Tags[cloud.TagStack] {
			return fmt.Errorf("instance %s belongs to stack %q, load balancer %s to %q", id, in.Tags[cloud.TagStack], l.Name, l.Tags[cloud.TagStack])
		}
	}
	return nil
}

func addIDs(have, ids []string) []string {
	out := append([]string(nil), have...)
	for _, id := range ids {
		found := false
		for _, h := range out {
			found = found || h == id
		}
		if !found {
			out = append(out, id)
		}
	}
	return out
}

// RegisterInstances adds instances to the upstream; it returns once nginx runs the new config.
func (p *Provider) RegisterInstances(ctx context.Context, lbName string, instanceIDs []string) error {
	return p.update(func(s *state) error {
		l, err := s.lb(lbName)
		if err != nil {
			return fmt.Errorf("register instances: %w", err)
		}
		if _, err := stackOf("load balancer", lbName, l.Tags); err != nil {
			return fmt.Errorf("register instances: %w", err)
		}
		if err := checkRegistrable(s, l, instanceIDs); err != nil {
			return fmt.Errorf("register instances with %s: %w", lbName, err)
		}
		l.Instances = addIDs(l.Instances, instanceIDs)
		return p.applyNginx(s)
	})
}

// DeregisterInstances removes instances from the upstream; it returns once nginx runs the new
// config. Requests in flight on the old workers finish; callers still wait DrainTimeout.
func (p *Provider) DeregisterInstances(ctx context.Context, lbName string, instanceIDs []string) error {
	return p.update(func(s *state) error {
		l, err := s.lb(lbName)
		if err != nil {
			return fmt.Errorf("deregister instances: %w", err)
		}
		if _, err := stackOf("load balancer", lbName, l.Tags); err != nil {
			return fmt.Errorf("deregister instances: %w", err)
		}
		for _, id := range instanceIDs {
			if _, err := s.instance(id); err != nil {
				return fmt.Errorf("deregister instances from %s: %w", lbName, err)
			}
			l.Instances = removeID(l.Instances, id)
		}
		return p.applyNginx(s)
	})
}

// InstanceHealth GETs http://ADDRESS:TargetPort/HEALTHCHECK of every registered instance (the
// load balancer's HealthCheck path, "/" if empty): InService on 200, OutOfService otherwise.
func (p *Provider) InstanceHealth(ctx context.Context, lbName string) ([]cloud.InstanceHealth, error) {
	type target struct {
		id, url string
		running bool
	}
	var targets []target
	err := p.view(func(s *state) error {
		l, err := s.lb(lbName)
		if err != nil {
			return fmt.Errorf("instance health: %w", err)
		}
		path := l.HealthCheck
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		for _, id := range l.Instances {
			t := target{id: id}
			if in, err := s.instance(id); err == nil {
				t.running = in.State == "running" && p.sshdPID(in) != 0
				t.url = "http://" + net.JoinHostPort(in.PrivateAddress, strconv.Itoa(l.TargetPort)) + path
			}
			targets = append(targets, t)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]cloud.InstanceHealth, len(targets))
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	for i, t := range targets {
		out[i] = cloud.InstanceHealth{InstanceID: t.id, State: "OutOfService"}
		if !t.running {
			out[i].Reason = "instance is not running"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].Reason = probe(ctx, client, t.url)
			if out[i].Reason == "" {
				out[i].State = "InService"
			}
		}()
	}
	wg.Wait()
	return out, nil
}

// probe returns "" when url answers 200, else why not.
func probe(ctx context.Context, client *http.Client, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err.Error()
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Sprintf("health check failed: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("health check returned HTTP %d", resp.StatusCode)
	}
	return ""
}

// nginxConfData is what the config template renders.
type nginxConfData struct {
	Prefix     string
	Generation int
	Servers    []nginxServer
}

type nginxServer struct {
	Name      string
	Upstream  string
	Listen    string
	Backends  []string
	DrainNote string
}

var nginxConf = template.Must(template.New("nginx").Parse(`# Generated by the instactl sandbox (generation {{.Generation}}); rewritten on every change.
daemon off;
user root root;
worker_processes 1;
pid {{.Prefix}}/nginx.pid;
error_log {{.Prefix}}/error.log warn;
events { worker_connections 4096; }
http {
    access_log {{.Prefix}}/access.log;
    # No client keep-alive: a reload (every register/deregister) makes the old worker close its
    # idle client connections, and a client that sends on one at that moment gets EOF with no
    # response -- a lost request that no retry may repeat (POST). One connection per request
    # costs little on loopback; an ELB drains connections itself.
    keepalive_timeout 0;
    client_body_temp_path {{.Prefix}}/tmp/body;
    proxy_temp_path {{.Prefix}}/tmp/proxy;
    fastcgi_temp_path {{.Prefix}}/tmp/fastcgi;
    uwsgi_temp_path {{.Prefix}}/tmp/uwsgi;
    scgi_temp_path {{.Prefix}}/tmp/scgi;
{{- range .Servers}}

    # load balancer {{.Name}}
{{- if .Backends}}
    upstream {{.Upstream}} {
{{- range .Backends}}
        server {{.}} max_fails=1 fail_timeout=2s;
{{- end}}
        keepalive 16;
    }
{{- end}}
    server {
        listen {{.Listen}};
        location = ` + generationPath + ` { return 200 "{{$.Generation}}\n"; }
        location / {
{{- if .Backends}}
            proxy_pass http://{{.Upstream}};
            # a dying backend refuses connections: try the next one
            proxy_next_upstream error timeout;
            proxy_connect_timeout 1s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
{{- else}}
            return 503 "no instances registered\n";
{{- end}}
        }
    }
{{- end}}
}
`))

// renderNginx renders the config for every load balancer in s, in name order.
func (p *Provider) renderNginx(s *state) (string, error) {
	d := nginxConfData{Prefix: p.nginxDir(), Generation: s.NginxGeneration}
	lbs := append([]*lbRec(nil), s.LoadBalancers...)
	sort.Slice(lbs, func(i, j int) bool { return lbs[i].Name < lbs[j].Name })
	for i, l := range lbs {
		srv := nginxServer{Name: l.Name, Upstream: "lb_" + strconv.Itoa(i),
			Listen: net.JoinHostPort(p.cfg.LBAddress.String(), strconv.Itoa(l.Port))}
		for _, id := range l.Instances {
			in, err := s.instance(id)
			if err != nil || in.State == "terminated" {
				continue
			}
			srv.Backends = append(srv.Backends, net.JoinHostPort(in.PrivateAddress, strconv.Itoa(l.TargetPort)))
		}
		d.Servers = append(d.Servers, srv)
	}
	var b strings.Builder
	if err := nginxConf.Execute(&b, d); err != nil {
		return "", fmt.Errorf("render nginx config: %w", err)
	}
	return b.String(), nil
}

func (p *Provider) nginxConfPath() string { return p.nginxDir("nginx.conf") }

// nginxAlive reports whether the recorded nginx master is alive and ours.
func (p *Provider) nginxAlive(s *state) bool {
	return s.NginxPID > 0 && strings.Contains(cmdline(s.NginxPID), p.nginxConfPath())
}

// applyNginx makes nginx serve s's load balancers: stop it when there are none, else write the
// config (atomically, checked with nginx -t), reload or start, and wait until the new generation
// answers.
func (p *Provider) applyNginx(s *state) error {
	if len(s.LoadBalancers) == 0 {
		return p.stopNginx(s)
	}
	s.NginxGeneration++
	conf, err := p.renderNginx(s)
	if err != nil {
		return err
	}
	for _, d := range []string{"body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.MkdirAll(p.nginxDir("tmp", d), 0o700); err != nil {
			return fmt.Errorf("nginx temp directory: %w", err)
		}
	}
	tmp := p.nginxDir("nginx.conf.new")
	if err := os.WriteFile(tmp, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("write nginx config: %w", err)
	}
	if _, err := run("nginx", "-t", "-q", "-c", tmp, "-p", p.nginxDir(), "-e", p.nginxDir("error.log")); err != nil {
		return fmt.Errorf("nginx config check: %w", err)
	}
	if err := os.Rename(tmp, p.nginxConfPath()); err != nil {
		return fmt.Errorf("install nginx config: %w", err)
	}
	var done <-chan struct{}
	if p.nginxAlive(s) {
		oldWorkers := childrenOf(s.NginxPID)
		if _, err := run("nginx", "-c", p.nginxConfPath(), "-p", p.nginxDir(), "-e", p.nginxDir("error.log"), "-s", "reload"); err != nil {
			return fmt.Errorf("reload nginx: %w", err)
		}
		if err := p.waitOldWorkers(s, oldWorkers); err != nil {
			return err
		}
	} else {
		cmd := exec.Command("nginx", "-c", p.nginxConfPath(), "-p", p.nginxDir(), "-e", p.nginxDir("error.log"))
		if done, err = startDetached(cmd, p.nginxDir("console.log")); err != nil {
			return fmt.Errorf("start nginx: %w", err)
		}
		s.NginxPID = cmd.Process.Pid
	}
	return p.waitGeneration(s, done)
}

// waitOldWorkers waits until none of the workers of the previous configuration holds a
// listening socket of a load balancer any more: from then on every new connection is accepted by
// a worker of the new configuration. (The old workers live on while they finish requests in
// flight: that is the drain.)
func (p *Provider) waitOldWorkers(s *state, old []int) error {
	var inodes []string
	for _, l := range s.LoadBalancers {
		if ino := listenInode(p.cfg.LBAddress, l.Port); ino != "" {
			inodes = append(inodes, ino)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		holding := 0
		for _, pid := range old {
			for _, ino := range inodes {
				if holdsSocket(pid, ino) {
					holding++
				}
			}
		}
		if holding == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nginx workers of the old configuration still accept connections after 15s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listenInode returns the socket inode of the TCP listener on addr:port (from /proc/net/tcp).
func listenInode(addr netip.Addr, port int) string {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return ""
	}
	a := addr.As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], port)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == want && f[3] == "0A" {
			return f[9]
		}
	}
	return ""
}

// holdsSocket reports whether pid has socket inode open.
func holdsSocket(pid int, inode string) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && l == "socket:["+inode+"]" {
			return true
		}
	}
	return false
}

// childrenOf lists the processes whose parent is ppid.
func childrenOf(ppid int) []int {
	var out []int
	for _, pid := range pids() {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...": comm may hold spaces, so parse after the last ')'.
		rest := string(b)
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+1:]
		}
		if f := strings.Fields(rest); len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	return out
}

// waitGeneration waits until every load balancer port answers the current generation three times
// in a row (one answer could still come from an old worker finishing its last accept).
func (p *Provider) waitGeneration(s *state, exited <-chan struct{}) error {
	want := strconv.Itoa(s.NginxGeneration)
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	deadline := time.Now().Add(15 * time.Second)
	for _, l := range s.LoadBalancers {
		url := "http://" + net.JoinHostPort(p.cfg.LBAddress.String(), strconv.Itoa(l.Port)) + generationPath
		for streak := 0; streak < 3; {
			if got := fetch(client, url); got == want {
				streak++
				continue
			}
			streak = 0
			select {
			case <-exited:
				return fmt.Errorf("nginx exited: %s", tail(p.nginxDir("error.log"), 1000))
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("nginx does not serve config generation %s on port %d after 15s: %s", want, l.Port, tail(p.nginxDir("error.log"), 1000))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func fetch(client *http.Client, url string) string {
	resp, err := client.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 100))
	return strings.TrimSpace(string(b))
}

// stopNginx stops the recorded nginx gracefully (SIGQUIT: requests in flight finish), then
// forcefully after 10 s.
func (p *Provider) stopNginx(s *state) error {
	if !p.nginxAlive(s) {
		s.NginxPID = 0
		return nil
	}
	pid := s.NginxPID
	_ = syscall.Kill(pid, syscall.SIGQUIT)
	deadline := time.Now().Add(10 * time.Second)
	for p.nginxAlive(s) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if p.nginxAlive(s) {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		time.Sleep(time.Second)
	}
	if p.nginxAlive(s) {
		return fmt.Errorf("nginx (pid %d) did not stop", pid)
	}
	_ = os.Remove(filepath.Join(p.nginxDir(), "nginx.pid"))
	s.NginxPID = 0
	return nil
}
