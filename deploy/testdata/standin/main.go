// Command standin is a tiny stand-in for instagram-app in the deploy integration tests: it
// listens on $INSTAGRAM_LISTEN (from /etc/instagram/app.env, as the real app), answers GET
// /healthz with its stamped version, and shuts down gracefully on SIGTERM like the real app.
// Built with -X main.healthy=false its health check fails, for the canary tests.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	version = "dev"
	healthy = "true"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-version" {
		fmt.Println("standin", version)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if healthy != "true" {
			http.Error(w, `{"status":"broken","version":"`+version+`"}`, http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, `{"status":"ok","version":%q}`+"\n", version)
	})
	// The load generator's sign-up, so internal/loadgen can drive the stand-in (a feed-only
	// mix needs users first); every other GET is the catch-all below.
	var users atomic.Int64
	mux.HandleFunc("POST /users", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":%d}`+"\n", users.Add(1))
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond) // a request in flight while the host drains
		fmt.Fprintf(w, "hello from %s\n", version)
	})
	addr := os.Getenv("INSTAGRAM_LISTEN")
	if addr == "" {
		fmt.Fprintln(os.Stderr, "INSTAGRAM_LISTEN is not set")
		os.Exit(2)
	}
	srv := &http.Server{Addr: addr, Handler: mux}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
