package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// reqLog writes one line per request through the proxy: seconds since the proxy started, the
// action (query protocols: EC2, ELB, IAM) or method and path (REST: S3, CloudFront, Route 53),
// and for describes by id how many ids the call named. terraform-slow.sh cuts it per phase
// into requests per action.
type reqLog struct {
	next  http.Handler
	start time.Time
	mu    sync.Mutex
	w     io.Writer
}

func (l *reqLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	what := r.Method + " " + r.URL.Path
	if form, err := url.ParseQuery(string(body)); err == nil && form.Get("Action") != "" {
		what = form.Get("Action")
		ids := 0
		for k := range form {
			if strings.HasPrefix(k, "InstanceId.") || strings.HasPrefix(k, "VolumeId.") {
				ids++
			}
		}
		if ids > 0 {
			what += fmt.Sprintf(" ids=%d", ids)
		}
	}
	l.mu.Lock()
	fmt.Fprintf(l.w, "%.3f %s\n", time.Since(l.start).Seconds(), what)
	l.mu.Unlock()
	l.next.ServeHTTP(w, r)
}

// openLog opens path for the request log ("" means none).
func openLog(path string) (io.WriteCloser, error) {
	if path == "" {
		return nil, nil
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}
