// Command faultproxy puts the awsfault injector in front of moto_server, so that the real
// instactl binary (or the aws CLI, or Terraform) meets throttling, lost replies, eventual
// consistency, slow states and capacity errors:
//
//	go run ./bench/provision/faultproxy -target http://127.0.0.1:5000 -listen 127.0.0.1:15151 -profile throttle-slow -seed 1
//	AWS_ENDPOINT_URL=http://127.0.0.1:15151 instactl apply --yes -v
//
// It prints its URL on stdout once it listens, and on SIGINT or SIGTERM what it injected on
// stderr. -profiles lists the profiles.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"github.com/instactl/instactl/cloud/aws/awsfault"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "faultproxy:", err)
		os.Exit(1)
	}
}

func run() error {
	target := flag.String("target", "", "moto_server's URL, e.g. http://127.0.0.1:5000 (required)")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (loopback)")
	profile := flag.String("profile", "throttle-slow", "fault profile (see -profiles)")
	seed := flag.Int64("seed", 1, "seed of the fault decisions")
	list := flag.Bool("profiles", false, "list the profiles and exit")
	slowFor := flag.Duration("slow-for", 0, "every slow state also lasts at least this long from the call that began it (0: the profile's polls only)")
	logPath := flag.String("log", "", "append one line per request (seconds since start, action or method and path) to this file")
	flag.Parse()
	if *list {
		for _, n := range awsfault.Names() {
			fmt.Printf("%-18s %s\n", n, awsfault.Profiles[n].Doc)
		}
		return nil
	}
	if *target == "" {
		return errors.New("-target is required (moto_server's URL)")
	}
	u, err := url.Parse(*target)
	if err != nil || u.Host == "" {
		return fmt.Errorf("-target %q: want a URL such as http://127.0.0.1:5000", *target)
	}
	p, err := awsfault.Lookup(*profile)
	if err != nil {
		return err
	}
	if *slowFor > 0 {
		if p.SlowPolls == 0 {
			return fmt.Errorf("-slow-for: profile %s has no slow states", p.Name)
		}
		p.SlowFor = *slowFor
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	inj := awsfault.New(nil, p, *seed)
	fmt.Printf("http://%s\n", ln.Addr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	var h http.Handler = awsfault.NewProxy(u, inj)
	lf, err := openLog(*logPath)
	if err != nil {
		return fmt.Errorf("-log: %w", err)
	}
	if lf != nil {
		defer lf.Close()
		h = &reqLog{next: h, start: time.Now(), w: lf}
	}
	srv := &http.Server{Handler: h}
	go func() {
		<-sig
		st := inj.Stats()
		var kinds []string
		for k := range st.Injected {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		fmt.Fprintf(os.Stderr, "faultproxy: profile %s seed %d (slow states at least %s): %d mutating calls\n", p.Name, *seed, p.SlowFor, st.Mutations)
		for _, k := range kinds {
			fmt.Fprintf(os.Stderr, "  %-20s %d\n", k, st.Injected[k])
		}
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
