// Command deploybench times `deploy` (staging plus activation, one batch of 100%, no load
// balancer) against the N OpenSSH hosts that the peers' hosts.sh starts, doing the same job
// as the peer tools: put the artifact on every host, flip current, run the "restart" command.
// It then times a redeploy of the unchanged artifact. With -s3 the artifact is staged
// through a moto_server's S3 (the sandbox's bucket); the object is deleted before the timed
// deploy so every round pays for its upload. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/remote"
)

type options struct {
	n          int
	net        string
	bench      string
	artifact   string
	redeploy   bool
	ciphers    []string
	kex        []string
	cpuProfile string
	s3         string
	bucket     string
	verbose    bool
	dialOnly   bool
	identity   string
	persist    bool
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 10, "hosts h1..hN (NET.11...)")
	flag.StringVar(&o.net, "net", "127.0.0", "the hosts' /24: host i is NET.(10+i), as hosts.sh puts it")
	flag.StringVar(&o.bench, "bench", "/tmp/deploybench", "the peers' benchmark directory (keys, known_hosts, artifact)")
	flag.StringVar(&o.artifact, "artifact", "", "file to deploy (default BENCH/artifact/app)")
	flag.BoolVar(&o.redeploy, "redeploy", true, "also time a redeploy of the unchanged artifact")
	ciphers := flag.String("ciphers", "", "comma-separated SSH cipher preference (default: remote's)")
	kex := flag.String("kex", "", "comma-separated SSH key exchange preference (default: remote's)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the deploy (not the redeploy) to this file")
	flag.StringVar(&o.s3, "s3", "", "stage through the S3 API at this endpoint (moto_server, e.g. http://127.0.0.1:15153); empty: over SSH")
	flag.StringVar(&o.bucket, "bucket", "deploybench", "bucket for -s3 (created if missing)")
	flag.BoolVar(&o.verbose, "v", false, "print the run-wide events (lock, S3 upload) and the first and last host of each stage, with times")
	flag.BoolVar(&o.dialOnly, "dial-only", false, "only open one SSH connection to every host at once, no session, and print the time: the floor under an unchanged redeploy")
	flag.StringVar(&o.identity, "identity", "", "SSH private key (default BENCH/keys/id_ed25519, the peers' key)")
	flag.BoolVar(&o.persist, "persist", true, "connect through an ssh keeper process, as instactl deploy does by default (deploy.ssh_persist), and also time a cold redeploy (new keeper)")
	keeperSocket := flag.String("keeper-serve", "", "internal: serve as the ssh keeper on this socket (SSH settings as JSON on stdin)")
	flag.Parse()
	if *keeperSocket != "" {
		if err := serveKeeper(*keeperSocket); err != nil {
			fmt.Fprintln(os.Stderr, "deploybench keeper:", err)
			os.Exit(1)
		}
		return
	}
	if o.artifact == "" {
		o.artifact = filepath.Join(o.bench, "artifact", "app")
	}
	if o.identity == "" {
		o.identity = filepath.Join(o.bench, "keys", "id_ed25519")
	}
	if *ciphers != "" {
		o.ciphers = strings.Split(*ciphers, ",")
	}
	if *kex != "" {
		o.kex = strings.Split(*kex, ",")
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "deploybench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	ctx := context.Background()
	rcfg := remote.Config{User: "root", Port: 2222,
		IdentityFiles:  []string{o.identity},
		KnownHostsFile: filepath.Join(o.bench, "known_hosts"), MaxConcurrentDials: 50, Ciphers: o.ciphers, KeyExchanges: o.kex}
	d, err := remote.NewDialer(rcfg)
	if err != nil {
		return err
	}
	var hosts []deploy.Host
	for i := 1; i <= o.n; i++ {
		hosts = append(hosts, deploy.Host{Name: fmt.Sprintf("h%d", i), Address: fmt.Sprintf("%s.%d", o.net, 10+i)})
	}
	if o.dialOnly {
		return dialAll(ctx, d, hosts)
	}
	state, err := os.MkdirTemp("", "deploybench-state-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	cfg := deploy.Config{Stack: "bench", Role: "app", Path: "/srv/app", Binary: "app", Batches: []string{"100%"},
		MaxFail: "0", Parallel: o.n, SkipHealthGate: true, StateDir: state, KeepReleases: 5, Staging: deploy.StagingSSH,
		// The peers' job: run the new binary once, then a 0.2 s "restart".
		Restart: []string{"sh", "-c", "{ /srv/app/current/app -V >/dev/null 2>&1 || true; sleep 0.2; }"}}
	a, err := deploy.OpenArtifact(o.artifact)
	if err != nil {
		return err
	}
	dep := &deploy.Deployer{Dialer: d}
	var keeper *remote.KeeperDialer
	if o.persist {
		if keeper, err = newKeeper(state, rcfg); err != nil {
			return err
		}
		defer keeper.Stop(ctx) //nolint:errcheck // best effort: it would exit when idle anyway
		dep.Dialer = keeper
	}
	if o.s3 != "" {
		c := s3.NewFromConfig(aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("bench", "bench", "")},
			func(so *s3.Options) {
				so.BaseEndpoint, so.UsePathStyle = aws.String(o.s3), true
				so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
			})
		if err := freshObject(ctx, c, o.bucket, deploy.StageKey(deploy.DefaultStagePrefix, a.SHA256)); err != nil {
			return err
		}
		dep.Store = deploy.S3Store{Client: c}
		cfg.Staging, cfg.Bucket = deploy.StagingS3, o.bucket
	}
	rounds := 2
	if o.persist {
		rounds = 3
	}
	for round := 1; round <= rounds; round++ {
		if round == 3 {
			// A cold redeploy: no keeper running, so the run starts one, which dials every host.
			if err := keeper.Stop(ctx); err != nil {
				return err
			}
			if keeper, err = newKeeper(state, rcfg); err != nil {
				return err
			}
			dep.Dialer = keeper
		}
		if round == 1 && o.cpuProfile != "" {
			f, err := os.Create(o.cpuProfile)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
		}
		start := time.Now()
		flush := func() {}
		if o.verbose {
			dep.OnEvent, flush = timeline(start)
		}
		a, err := deploy.OpenArtifact(o.artifact) // hashing is part of a deploy
		if err != nil {
			return err
		}
		p, err := deploy.NewPlan(deploy.KindDeploy, cfg, hosts, a, "", deploy.NewRunID(time.Now()))
		if err != nil {
			return err
		}
		rep, err := dep.Deploy(ctx, p)
		flush()
		if round == 1 && o.cpuProfile != "" {
			pprof.StopCPUProfile()
		}
		if err != nil {
			return err
		}
		var viaS3, viaSSH int
		for _, h := range rep.Hosts {
			switch {
			case h.Uploaded && h.Via == deploy.StagingS3:
				viaS3++
			case h.Uploaded:
				viaSSH++
			}
		}
		what := []string{"deploy", "redeploy", "cold-redeploy"}[round-1]
		fmt.Printf("%s\tN=%d\t%.2fs\tstage %.2fs\tactivate %.2fs\tvia-s3 %d\tvia-ssh %d\tsent %s\tresult %s\n", what, o.n,
			time.Since(start).Seconds(), float64(rep.StageMS)/1000, float64(rep.ActivateMS)/1000, viaS3, viaSSH,
			mib(rep.BytesSent), rep.Result)
		if !o.redeploy {
			break
		}
	}
	return nil
}

// newKeeper returns a dialer through a keeper on a new socket in dir, started as this
// program with -keeper-serve when first used, as instactl starts `ssh-keeper serve`.
func newKeeper(dir string, cfg remote.Config) (*remote.KeeperDialer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, fmt.Sprintf("keeper-%d.sock", time.Now().UnixNano()))
	return &remote.KeeperDialer{Socket: sock, Start: func(ctx context.Context) error {
		return remote.StartKeeper(ctx, sock, cfg, exec.Command(exe, "-keeper-serve", sock))
	}}, nil
}

// serveKeeper is -keeper-serve: the keeper process, as `instactl ssh-keeper serve`.
func serveKeeper(sock string) error {
	var cfg remote.Config
	if err := json.NewDecoder(os.Stdin).Decode(&cfg); err != nil {
		return err
	}
	d, err := remote.NewDialer(cfg)
	if err != nil {
		return err
	}
	ln, release, err := remote.ListenKeeper(sock)
	if err != nil {
		return err
	}
	defer release()
	return remote.ServeKeeper(context.Background(), ln, d, time.Minute)
}

// dialAll opens one connection to every host at once (handshake and authentication, no
// session), closes them and prints the wall time: what an unchanged redeploy cannot go
// below with fresh connections.
func dialAll(ctx context.Context, d remote.Dialer, hosts []deploy.Host) error {
	pool := remote.NewPool(d)
	defer pool.Close()
	targets := make([]remote.Target, len(hosts))
	for i, h := range hosts {
		targets[i] = h.Target()
	}
	start := time.Now()
	res := pool.FanOut(ctx, targets, len(targets), func(context.Context, *remote.Client, remote.Target) error { return nil })
	took := time.Since(start)
	for _, r := range res {
		if r.Err != nil {
			return r.Err
		}
	}
	fmt.Printf("dial\tN=%d\t%.2fs\n", len(hosts), took.Seconds())
	return nil
}

// freshObject makes sure the bucket exists and does not hold key, so the timed deploy pays
// for its upload like a first deploy of a new build.
func freshObject(ctx context.Context, c *s3.Client, bucket, key string) error {
	_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	var ae smithy.APIError
	if err != nil && !(errors.As(err, &ae) && (ae.ErrorCode() == "BucketAlreadyOwnedByYou" || ae.ErrorCode() == "BucketAlreadyExists")) {
		return fmt.Errorf("create bucket %s: %w", bucket, err)
	}
	if _, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
		return fmt.Errorf("delete s3://%s/%s: %w", bucket, key, err)
	}
	return nil
}

// timeline prints, relative to start, every run-wide event and the first host event of each
// stage and status; flush then prints the last one of each that had several, with their
// count: where a deploy's time goes without a line per host.
func timeline(start time.Time) (onEvent func(deploy.Event), flush func()) {
	type last struct {
		n    int
		host string
		at   time.Duration
	}
	var mu sync.Mutex
	var order []string
	seen := map[string]*last{}
	onEvent = func(ev deploy.Event) {
		mu.Lock()
		defer mu.Unlock()
		at := time.Since(start)
		k := string(ev.Stage) + " " + string(ev.Status)
		l := seen[k]
		if l == nil {
			l = &last{}
			seen[k] = l
			order = append(order, k)
		}
		l.n, l.host, l.at = l.n+1, ev.Host, at
		if ev.Host != "" && l.n > 1 && ev.Status != deploy.StatusFail {
			return
		}
		msg := ev.Message
		if ev.Err != nil {
			msg += " " + ev.Err.Error()
		}
		fmt.Fprintf(os.Stderr, "%7.3fs %-6s %s %s\n", at.Seconds(), ev.Host, k, msg)
	}
	flush = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, k := range order {
			if l := seen[k]; l.n > 1 {
				fmt.Fprintf(os.Stderr, "%7.3fs %-6s %s (last of %d)\n", l.at.Seconds(), l.host, k, l.n)
			}
		}
	}
	return onEvent, flush
}

func mib(n int64) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%.2fMiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
}
