package awsfault

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
)

// NewProxy returns a reverse proxy to target (moto_server's URL) that sends every request
// through in, so that a separate process (the instactl binary, with AWS_ENDPOINT_URL set to the
// proxy) meets the same faults. A lost reply resets the client's connection.
func NewProxy(target *url.URL, in *Injector) http.Handler {
	return &proxy{target: target, in: in}
}

type proxy struct {
	target *url.URL
	in     *Injector
}

// hopHeaders are connection-level headers a proxy does not forward.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	u := *p.target
	u.Path, u.RawPath, u.RawQuery = r.URL.Path, r.URL.RawPath, r.URL.RawQuery
	out, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	out.Host = r.Host // the SDK signed it; moto routes some services by host
	resp, err := p.in.RoundTrip(out)
	if err == errLost {
		reset(w)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		if k == "Content-Length" {
			continue
		}
		w.Header()[k] = vs
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		reset(w)
		return
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(data)
}

// reset closes the client's connection with a TCP reset: the reply is lost.
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}
