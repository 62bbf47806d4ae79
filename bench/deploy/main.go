// Command deploybench times `deploy` (staging plus activation, one batch of 100%, no load
// balancer) against the N OpenSSH hosts that ../../../shared/peers/deploy/hosts.sh starts, doing
// the same job as the peer tools: put the artifact on every host, flip current, run the
// "restart" command. It then times a redeploy of the unchanged artifact. See README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/instactl/instactl/deploy"
	"github.com/instactl/instactl/remote"
)

func main() {
	n := flag.Int("n", 10, "hosts h1..hN (127.0.0.11...)")
	bench := flag.String("bench", "/tmp/deploybench", "the peers' benchmark directory (keys, known_hosts, artifact)")
	artifact := flag.String("artifact", "", "file to deploy (default BENCH/artifact/app)")
	redeploy := flag.Bool("redeploy", true, "also time a redeploy of the unchanged artifact")
	ciphers := flag.String("ciphers", "", "comma-separated SSH cipher preference (default: remote's)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the deploy (not the redeploy) to this file")
	flag.Parse()
	if *artifact == "" {
		*artifact = filepath.Join(*bench, "artifact", "app")
	}
	var cs []string
	if *ciphers != "" {
		cs = strings.Split(*ciphers, ",")
	}
	if err := run(*n, *bench, *artifact, *redeploy, cs, *cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "deploybench:", err)
		os.Exit(1)
	}
}

func run(n int, bench, artifact string, redeploy bool, ciphers []string, cpuProfile string) error {
	ctx := context.Background()
	d, err := remote.NewDialer(remote.Config{User: "root", Port: 2222,
		IdentityFiles:  []string{filepath.Join(bench, "keys", "id_ed25519")},
		KnownHostsFile: filepath.Join(bench, "known_hosts"), MaxConcurrentDials: 50, Ciphers: ciphers})
	if err != nil {
		return err
	}
	var hosts []deploy.Host
	for i := 1; i <= n; i++ {
		hosts = append(hosts, deploy.Host{Name: fmt.Sprintf("h%d", i), Address: fmt.Sprintf("127.0.0.%d", 10+i)})
	}
	state, err := os.MkdirTemp("", "deploybench-state-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	cfg := deploy.Config{Stack: "bench", Role: "app", Path: "/srv/app", Binary: "app", Batches: []string{"100%"},
		MaxFail: "0", Parallel: n, SkipHealthGate: true, StateDir: state, KeepReleases: 5,
		// The peers' job: run the new binary once, then a 0.2 s "restart".
		Restart: []string{"sh", "-c", "{ /srv/app/current/app -V >/dev/null 2>&1 || true; sleep 0.2; }"}}
	for round := 1; round <= 2; round++ {
		if round == 1 && cpuProfile != "" {
			f, err := os.Create(cpuProfile)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
		}
		start := time.Now()
		a, err := deploy.OpenArtifact(artifact)
		if err != nil {
			return err
		}
		p, err := deploy.NewPlan(deploy.KindDeploy, cfg, hosts, a, "", deploy.NewRunID(time.Now()))
		if err != nil {
			return err
		}
		rep, err := (&deploy.Deployer{Dialer: d}).Deploy(ctx, p)
		if round == 1 && cpuProfile != "" {
			pprof.StopCPUProfile()
		}
		if err != nil {
			return err
		}
		uploaded := 0
		for _, h := range rep.Hosts {
			if h.Uploaded {
				uploaded++
			}
		}
		what := "deploy"
		if round == 2 {
			what = "redeploy"
		}
		fmt.Printf("%s\tN=%d\t%.2fs\tstage %.2fs\tactivate %.2fs\tuploaded %d/%d\tresult %s\n", what, n,
			time.Since(start).Seconds(), float64(rep.StageMS)/1000, float64(rep.ActivateMS)/1000, uploaded, n, rep.Result)
		if !redeploy {
			break
		}
	}
	return nil
}
