package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
)

// Main runs the app server: parse flags, environment and the env file, connect, serve until
// SIGTERM or SIGINT, shut down gracefully. It returns the process exit code: 0 after a clean
// shutdown, 1 on a runtime failure, 2 on bad usage or configuration.
func Main(args []string, build Build, stdout, stderr io.Writer) int {
	opts, err := ParseArgs(args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(stderr, "usage: instagram-app [-config /etc/instagram/app.env] [-listen ADDR] [-control-dsn DSN] [-pgbouncer ADDR:PORT] [-redis ADDR] [-memcached ADDRS] [-s3-bucket NAME] [-version]")
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "instagram-app: %v\n", err)
		return 2
	}
	if opts.ShowVersion {
		fmt.Fprintf(stdout, "instagram-app %s (commit %s)\n", build.Version, build.Commit)
		if build.Fault != "" {
			fmt.Fprintf(stdout, "fault-injection build: %s\n", build.Fault)
		}
		return 0
	}
	if _, err := ParseFaults(build.Fault); err != nil {
		fmt.Fprintf(stderr, "instagram-app: built with a bad fault spec: %v\n", err)
		return 2
	}
	for k, v := range opts.AWSEnv {
		os.Setenv(k, v)
	}
	if err := opts.Config.Validate(); err != nil {
		fmt.Fprintf(stderr, "instagram-app: config: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil)).With("version", build.Version, "release", opts.Config.Release)
	if build.Fault != "" {
		log.Warn("fault-injection build: misbehaving on purpose", "fault", build.Fault)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, opts.Config, build, log); err != nil {
		log.Error("instagram-app failed", "err", err)
		return 1
	}
	return 0
}

func run(ctx context.Context, cfg Config, build Build, log *slog.Logger) error {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	a, err := New(ctx, cfg, build, log)
	if err != nil {
		ln.Close()
		return err
	}
	return a.Serve(ctx, ln)
}
