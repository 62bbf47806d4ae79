package app

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/switches"
)

// DefaultConfigFile is where `instactl deploy` writes the app's settings on a host.
const DefaultConfigFile = "/etc/instagram/app.env"

// Config is everything the app server needs. Each field has an env-file key (also read from the
// process environment) and a flag; precedence is flag > environment > file > default.
type Config struct {
	// Listen is the HTTP listen address (INSTAGRAM_LISTEN, -listen).
	Listen string
	// ControlDSN is the control database holding the shard map (INSTAGRAM_CONTROL_DSN,
	// -control-dsn). It must allow LISTEN: point it at Postgres or a session-mode pool. It may
	// list every member of the control group with target_session_attrs=read-write
	// (postgres://app@h1:5432,h2:5432/instactl?target_session_attrs=read-write): the app then
	// follows the control primary across a switchover or failover.
	ControlDSN string
	// PgBouncer is ADDR:PORT of the local PgBouncer (INSTAGRAM_PGBOUNCER, -pgbouncer). When set,
	// the app reaches shard node N through it, as database N; empty: the shard map's node DSNs
	// directly.
	PgBouncer string
	// RedisAddr is host:port of the Redis master (INSTAGRAM_REDIS_ADDR, -redis) until the
	// control database's topology names the Redis group's primary; from then on the app follows
	// the topology.
	RedisAddr string
	// MemcachedAddrs are host:port of the memcached servers (INSTAGRAM_MEMCACHED_ADDRS,
	// comma-separated, -memcached).
	MemcachedAddrs []string
	// S3Bucket holds photo bytes (INSTAGRAM_S3_BUCKET, -s3-bucket). The endpoint, region and
	// credentials come from the standard AWS settings (AWS_ENDPOINT_URL, AWS_REGION, ...), which
	// the env file may also set.
	S3Bucket string
	// PhotoBaseURL is where clients fetch photo bytes: every photo's "url" is this prefix and
	// its S3 key (INSTAGRAM_PHOTO_BASE_URL, -photo-base-url). On AWS the CDN in front of the
	// bucket, on the sandbox the bucket in moto; empty: photos carry no url.
	PhotoBaseURL string
	// Release is the deployed release name, reported by /healthz and /metrics
	// (INSTAGRAM_VERSION, -release).
	Release string
	// Workers is the number of fan-out workers (INSTAGRAM_FANOUT_WORKERS, -workers).
	Workers int
	// FeedLength caps each user's feed list (INSTAGRAM_FEED_LENGTH, -feed-length).
	FeedLength int
	// PoolMaxConns caps the pgx pool per Postgres node (INSTAGRAM_DB_POOL_MAX, -db-pool-max).
	PoolMaxConns int
	// MapRefresh is the timer refresh of the shard map, a backstop to NOTIFY
	// (INSTAGRAM_MAP_REFRESH, -map-refresh).
	MapRefresh time.Duration
	// FenceWait bounds how long a fenced write waits for the shard map to flip before its one
	// retry (INSTAGRAM_FENCE_WAIT, -fence-wait).
	FenceWait time.Duration
	// ShutdownTimeout bounds finishing in-flight requests and draining fan-out workers on
	// SIGTERM (INSTAGRAM_SHUTDOWN_TIMEOUT, -shutdown-timeout).
	ShutdownTimeout time.Duration
	// MaxUploadBytes limits a photo upload (INSTAGRAM_MAX_UPLOAD_BYTES, -max-upload-bytes).
	MaxUploadBytes int64
	// QueueHeartbeat is how often fan-out workers prove they are alive; a worker silent for
	// three heartbeats is dead and its jobs are recovered (INSTAGRAM_QUEUE_HEARTBEAT).
	QueueHeartbeat time.Duration
	// SwitchesFile keeps the last switch state applied, so a restart without the control
	// database starts from it (INSTAGRAM_SWITCHES_FILE, -switches-file; default
	// /var/lib/instagram/switches/state.json).
	SwitchesFile string
	// SwitchRefresh is the periodic re-read of the switches, a backstop to NOTIFY
	// (INSTAGRAM_SWITCH_REFRESH, -switch-refresh).
	SwitchRefresh time.Duration
	// FanoutBigFollowers is the follower count from which fan-out is queued while the switch
	// feed.fanout is off (INSTAGRAM_FANOUT_BIG_FOLLOWERS, -fanout-big-followers).
	FanoutBigFollowers int
}

// DefaultConfig returns the defaults used for every unset setting.
func DefaultConfig() Config {
	return Config{
		Listen:          "127.0.0.1:8080",
		Workers:         4,
		FeedLength:      500,
		PoolMaxConns:    10,
		MapRefresh:      30 * time.Second,
		FenceWait:       3 * time.Second,
		ShutdownTimeout: 20 * time.Second,
		MaxUploadBytes:  32 << 20,
		QueueHeartbeat:  2 * time.Second,

		// The degradation switches (switches.go).
		SwitchesFile:       switches.DefaultFile,
		SwitchRefresh:      10 * time.Second,
		FanoutBigFollowers: 1000,
	}
}

// Validate reports the first missing or invalid setting, naming its env key.
func (c Config) Validate() error {
	switch {
	case c.ControlDSN == "":
		return errors.New("INSTAGRAM_CONTROL_DSN (-control-dsn) is required")
	case c.RedisAddr == "":
		return errors.New("INSTAGRAM_REDIS_ADDR (-redis) is required")
	case len(c.MemcachedAddrs) == 0:
		return errors.New("INSTAGRAM_MEMCACHED_ADDRS (-memcached) is required")
	case c.S3Bucket == "":
		return errors.New("INSTAGRAM_S3_BUCKET (-s3-bucket) is required")
	case c.Workers < 1:
		return fmt.Errorf("INSTAGRAM_FANOUT_WORKERS must be >= 1 (got %d)", c.Workers)
	case c.FeedLength < 1:
		return fmt.Errorf("INSTAGRAM_FEED_LENGTH must be >= 1 (got %d)", c.FeedLength)
	case c.PoolMaxConns < 1:
		return fmt.Errorf("INSTAGRAM_DB_POOL_MAX must be >= 1 (got %d)", c.PoolMaxConns)
	case c.SwitchRefresh <= 0:
		return fmt.Errorf("INSTAGRAM_SWITCH_REFRESH must be positive (got %s)", c.SwitchRefresh)
	}
	if c.PgBouncer != "" {
		if _, _, err := net.SplitHostPort(c.PgBouncer); err != nil {
			return fmt.Errorf("INSTAGRAM_PGBOUNCER (-pgbouncer) must be ADDR:PORT (got %q): %w", c.PgBouncer, err)
		}
	}
	return nil
}

// setting binds one Config field to its env key and flag.
type setting struct {
	key, flag, usage string
	set              func(c *Config, v string) error
}

func settings() []setting {
	str := func(f func(*Config) *string) func(*Config, string) error {
		return func(c *Config, v string) error { *f(c) = v; return nil }
	}
	num := func(f func(*Config) *int) func(*Config, string) error {
		return func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			*f(c) = n
			return err
		}
	}
	dur := func(f func(*Config) *time.Duration) func(*Config, string) error {
		return func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			*f(c) = d
			return err
		}
	}
	return []setting{
		{"INSTAGRAM_LISTEN", "listen", "HTTP listen address", str(func(c *Config) *string { return &c.Listen })},
		{"INSTAGRAM_CONTROL_DSN", "control-dsn", "control database DSN (shard map)", str(func(c *Config) *string { return &c.ControlDSN })},
		{"INSTAGRAM_PGBOUNCER", "pgbouncer", "local PgBouncer ADDR:PORT; shard nodes are reached through it", str(func(c *Config) *string { return &c.PgBouncer })},
		{"INSTAGRAM_REDIS_ADDR", "redis", "Redis host:port", str(func(c *Config) *string { return &c.RedisAddr })},
		{"INSTAGRAM_MEMCACHED_ADDRS", "memcached", "memcached host:port list, comma-separated", func(c *Config, v string) error {
			c.MemcachedAddrs = nil
			for _, a := range strings.Split(v, ",") {
				if a = strings.TrimSpace(a); a != "" {
					c.MemcachedAddrs = append(c.MemcachedAddrs, a)
				}
			}
			return nil
		}},
		{"INSTAGRAM_S3_BUCKET", "s3-bucket", "S3 bucket for photo bytes", str(func(c *Config) *string { return &c.S3Bucket })},
		{"INSTAGRAM_PHOTO_BASE_URL", "photo-base-url", "URL prefix of photo bytes (the CDN); a photo's url is it plus the S3 key", str(func(c *Config) *string { return &c.PhotoBaseURL })},
		{"INSTAGRAM_VERSION", "release", "deployed release name", str(func(c *Config) *string { return &c.Release })},
		{"INSTAGRAM_FANOUT_WORKERS", "workers", "fan-out workers", num(func(c *Config) *int { return &c.Workers })},
		{"INSTAGRAM_FEED_LENGTH", "feed-length", "feed list cap per user", num(func(c *Config) *int { return &c.FeedLength })},
		{"INSTAGRAM_DB_POOL_MAX", "db-pool-max", "max connections per Postgres node", num(func(c *Config) *int { return &c.PoolMaxConns })},
		{"INSTAGRAM_MAP_REFRESH", "map-refresh", "shard map timer refresh", dur(func(c *Config) *time.Duration { return &c.MapRefresh })},
		{"INSTAGRAM_FENCE_WAIT", "fence-wait", "max wait for a shard flip before the retry", dur(func(c *Config) *time.Duration { return &c.FenceWait })},
		{"INSTAGRAM_SHUTDOWN_TIMEOUT", "shutdown-timeout", "bound on graceful shutdown", dur(func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
		{"INSTAGRAM_MAX_UPLOAD_BYTES", "max-upload-bytes", "max photo size", func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			c.MaxUploadBytes = n
			return err
		}},
		{"INSTAGRAM_QUEUE_HEARTBEAT", "queue-heartbeat", "fan-out worker heartbeat", dur(func(c *Config) *time.Duration { return &c.QueueHeartbeat })},
		{"INSTAGRAM_SWITCHES_FILE", "switches-file", "last switch state applied, read at start", str(func(c *Config) *string { return &c.SwitchesFile })},
		{"INSTAGRAM_SWITCH_REFRESH", "switch-refresh", "switch state timer re-read", dur(func(c *Config) *time.Duration { return &c.SwitchRefresh })},
		{"INSTAGRAM_FANOUT_BIG_FOLLOWERS", "fanout-big-followers", "followers from which fan-out waits while feed.fanout is off", num(func(c *Config) *int { return &c.FanoutBigFollowers })},
	}
}

// ReadEnvFile parses a KEY=VALUE file (blank lines and # comments ignored, optional "export ",
// values optionally in single or double quotes), the format of systemd's EnvironmentFile.
func ReadEnvFile(r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: want KEY=VALUE, got %q", n, line)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		out[strings.TrimSpace(k)] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read env file: %w", err)
	}
	return out, nil
}

// Options are the parsed command line: the config plus program-level switches.
type Options struct {
	Config      Config
	ShowVersion bool
	// AWSEnv are AWS_* settings from the env file that the process environment lacks; Main
	// exports them so the AWS SDK's standard configuration sees them.
	AWSEnv map[string]string
}

// ParseArgs builds Options from args, the environment (getenv) and the env file named by -config
// (default DefaultConfigFile; a missing default file is fine, a missing named one is not).
func ParseArgs(args []string, getenv func(string) string) (Options, error) {
	fs := flag.NewFlagSet("instagram-app", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var opts Options
	configFile := fs.String("config", DefaultConfigFile, "env file with INSTAGRAM_* settings")
	fs.BoolVar(&opts.ShowVersion, "version", false, "print version and git commit, then exit")
	all := settings()
	flagVals := map[string]*string{}
	for _, s := range all {
		flagVals[s.flag] = fs.String(s.flag, "", s.usage+" ("+s.key+")")
	}
	if err := fs.Parse(args); err != nil {
		return opts, fmt.Errorf("parse flags: %w", err)
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })

	file := map[string]string{}
	if f, err := os.Open(*configFile); err == nil {
		file, err = ReadEnvFile(f)
		f.Close()
		if err != nil {
			return opts, fmt.Errorf("%s: %w", *configFile, err)
		}
	} else if explicit["config"] || !errors.Is(err, os.ErrNotExist) {
		return opts, fmt.Errorf("open config file: %w", err)
	}
	opts.AWSEnv = map[string]string{}
	for k, v := range file {
		if strings.HasPrefix(k, "AWS_") && getenv(k) == "" {
			opts.AWSEnv[k] = v
		}
	}
	opts.Config = DefaultConfig()
	for _, s := range all {
		v, ok := file[s.key], file[s.key] != ""
		if e := getenv(s.key); e != "" {
			v, ok = e, true
		}
		if explicit[s.flag] {
			v, ok = *flagVals[s.flag], true
		}
		if !ok {
			continue
		}
		if err := s.set(&opts.Config, v); err != nil {
			return opts, fmt.Errorf("%s (-%s) = %q: %w", s.key, s.flag, v, err)
		}
	}
	return opts, nil
}
