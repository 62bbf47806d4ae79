package sandbox

import (
	"context"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/instactl/instactl/cloud"
)

// webServer answers /HealthCheck and /whoami with the host's name, and /slow after two seconds.
const webServer = `import http.server, sys, time
name = sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(2)
        body = (name + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
`

// startWeb starts webServer inside a host, on the host's address, over SSH.
func startWeb(t *testing.T, p *Provider, in cloud.Instance, port int) {
	t.Helper()
	path, err := p.HostPath(context.Background(), in.ID, "/tmp/web.py")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(webServer), 0o644); err != nil {
		t.Fatal(err)
	}
	c := mustDial(t, p, in)
	mustSh(t, c, "{ setsid nohup python3 /tmp/web.py "+in.PrivateAddress+" "+strconv.Itoa(port)+" "+in.Name+
		" </dev/null >/tmp/www.log 2>&1 & echo $! > /tmp/www.pid; }")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := sh(c, "exec 3<>/dev/tcp/"+in.PrivateAddress+"/"+strconv.Itoa(port)); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("web server on %s did not start", in.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	code, body, err := tryGet(url)
	if err != nil {
		t.Fatal(err)
	}
	return code, body
}

func tryGet(url string) (int, string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

func TestLoadBalancer(t *testing.T) {
	t.Parallel()
	p := newTestProvider(t, "127.0.21.0")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const stack, port = "lbt", 18001
	a := createHost(t, p, stack, "app", 0, "")
	b := createHost(t, p, stack, "app", 1, "")

	lb, err := p.CreateLoadBalancer(ctx, cloud.LoadBalancer{Name: "front", ListenerPort: 80, TargetPort: port,
		HealthCheck: "/HealthCheck", Tags: tags(stack)})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + lb.DNSName
	if code, body := get(t, url+"/whoami"); code != http.StatusServiceUnavailable {
		t.Errorf("with no instances: %d %q, want 503", code, body)
	}
	startWeb(t, p, a, port)
	startWeb(t, p, b, port)

	if err := p.RegisterInstances(ctx, "front", []string{a.ID, b.ID}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i := 0; i < 10; i++ {
		code, body := get(t, url+"/whoami")
		if code != http.StatusOK {
			t.Fatalf("through the LB: %d %q", code, body)
		}
		seen[body]++
	}
	if seen[a.Name] == 0 || seen[b.Name] == 0 {
		t.Errorf("traffic went to %v, want both hosts", seen)
	}
	health, err := p.InstanceHealth(ctx, "front")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range health {
		if h.State != "InService" {
			t.Errorf("health %+v, want InService", h)
		}
	}

	// Drain: requests in flight on a deregistered instance still complete.
	type result struct {
		code int
		body string
	}
	results := make(chan result, 4)
	for i := 0; i < 4; i++ {
		go func() {
			code, body, err := tryGet(url + "/slow")
			if err != nil {
				body = err.Error()
			}
			results <- result{code, body}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	if err := p.DeregisterInstances(ctx, "front", []string{a.ID}); err != nil {
		t.Fatal(err)
	}
	drained := map[string]int{}
	for i := 0; i < 4; i++ {
		r := <-results
		if r.code != http.StatusOK {
			t.Errorf("in-flight request during deregistration: %d %q", r.code, r.body)
		}
		drained[r.body]++
	}
	if drained[a.Name] == 0 {
		t.Errorf("no in-flight request was on %s (%v); the drain was not exercised", a.Name, drained)
	}
	for i := 0; i < 6; i++ {
		if code, body := get(t, url+"/whoami"); code != http.StatusOK || body != b.Name {
			t.Errorf("after deregistering %s: %d %q, want %s", a.Name, code, body, b.Name)
		}
	}

	// A backend that dies while registered: nginx retries the other one, health says so.
	if err := p.RegisterInstances(ctx, "front", []string{a.ID}); err != nil {
		t.Fatal(err)
	}
	mustSh(t, mustDial(t, p, a), "kill $(cat /tmp/www.pid)")
	for i := 0; i < 6; i++ {
		if code, body := get(t, url+"/whoami"); code != http.StatusOK || body != b.Name {
			t.Errorf("with %s down: %d %q, want %s", a.Name, code, body, b.Name)
		}
	}
	health, _ = p.InstanceHealth(ctx, "front")
	states := map[string]string{}
	for _, h := range health {
		states[h.InstanceID] = h.State
	}
	if states[a.ID] != "OutOfService" || states[b.ID] != "InService" {
		t.Errorf("health = %+v; want %s out, %s in", health, a.ID, b.ID)
	}

	// Terminating a registered instance deregisters it.
	if err := p.TerminateInstances(ctx, []string{b.ID}); err != nil {
		t.Fatal(err)
	}
	res, _ := p.Describe(ctx, stack)
	if len(res.LoadBalancers) != 1 || len(res.LoadBalancers[0].Instances) != 1 || res.LoadBalancers[0].Instances[0] != a.ID {
		t.Errorf("after terminate, lb = %+v", res.LoadBalancers)
	}
	if err := p.DeleteLoadBalancer(ctx, "front"); err != nil {
		t.Fatal(err)
	}
	if code := func() int {
		c := &http.Client{Timeout: time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}(); code != 0 {
		t.Errorf("after deleting the last load balancer nginx still answers (%d)", code)
	}
}
