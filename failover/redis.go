package failover

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/topology"
)

// Errors of the Redis operations; callers map them to exit codes (docs/failover.md). They
// are named Redis* rather than Err* so that the Redis and Postgres halves of the package
// cannot clash; hence the lint:ignore.

// The Redis errors are the Postgres ones under Redis names: the CLI maps each to one exit code.

// RedisErrBadInput: unknown group, a group that is not Redis, a host that is not the master or
// not a member, no journal to resume. Nothing changed.
var RedisErrBadInput = ErrBadInput

// RedisErrPrecondition: the servers are not in a state to start (replica not connected,
// lagging, the fence failed). Nothing changed.
var RedisErrPrecondition = ErrPrecondition

// RedisErrBusy: another operation holds the group's lock.
var RedisErrBusy = ErrBusy

// RedisErrRolledBack: the operation failed and was undone; the old master serves and the
// topology is unchanged.
var RedisErrRolledBack = ErrRolledBack

// RedisErrHalfway: the operation stopped half way; the journal says what RedisResume and
// RedisAbort will do.
var RedisErrHalfway = ErrHalfDone

// Settings every Redis master runs with while it has a replica: a master that has not heard
// from a replica for RedisMinReplicasMaxLag seconds refuses writes, so a master cut off from
// its group stops taking writes that a failover would lose.
const (
	RedisMinReplicasToWrite = 1
	RedisMinReplicasMaxLag  = 10
)

// Defaults of the options.
//
// RedisDefaultFailoverTimeout is 2 s, not 1 s: FAILOVER waits until the replica acknowledges
// the master's whole stream, a replica acknowledges from its once-a-second cron, and the
// master sends no GETACK while writes are paused. So even an idle pair may need up to ~1 s
// (measured: 22 ms to 1.003 s; a 1000 ms TIMEOUT rolled back now and then), and a pair under
// writes ~0.4-0.6 s.
const (
	RedisDefaultFailoverTimeout = 2 * time.Second
	RedisDefaultMaxLagBytes     = 1 << 20
	RedisDefaultSettle          = 10 * time.Second
	RedisDefaultLinkTimeout     = 60 * time.Second
)

// redisProbeKey is the key of the write probe: DEL of a key that never exists is a write
// command (refused with READONLY or NOREPLICAS exactly when a real write would be) that
// changes no data.
const redisProbeKey = "instactl:failover:probe:never-set"

// RedisFencer stops a host so that its Redis can take no more writes: the lead wires the
// provider's StopInstances (forced on AWS; on the sandbox every process of the host dies).
// Fence must be idempotent: a host already stopped is fenced.
type RedisFencer interface {
	Fence(ctx context.Context, host string) error
}

// RedisStep is one named step of an operation and how long it took.
type RedisStep struct {
	Name string        `json:"name"`
	Took time.Duration `json:"took_ns"`
	Err  string        `json:"error,omitempty"`
}

// RedisReport is what an operation did, for the operator and the audit log.
type RedisReport struct {
	Op        string `json:"op"`
	Group     string `json:"group"`
	OldMaster string `json:"old_master"`
	NewMaster string `json:"new_master"`
	// EpochBefore and EpochAfter are the group's topology epochs (equal when the topology
	// did not change).
	EpochBefore int64 `json:"epoch_before"`
	EpochAfter  int64 `json:"epoch_after"`
	// OldOffset is the old master's master_repl_offset: read at preflight (switchover), the
	// last known one (failover; 0 when unknown).
	OldOffset int64 `json:"old_offset"`
	// NewOffset is the new master's replication offset when it took over.
	NewOffset int64 `json:"new_offset"`
	// LossWindowBytes is, for a failover, how many bytes of the old master's replication
	// stream the promoted replica may not have had: OldOffset - NewOffset, when
	// LossWindowKnown. Writes in that window are lost.
	LossWindowBytes int64 `json:"loss_window_bytes"`
	LossWindowKnown bool  `json:"loss_window_known"`
	// WriteBlock is how long the group took no writes, as instactl measured it with a write
	// probe: from FAILOVER (which pauses writes) to the first write the new master (or,
	// rolled back, the old one) accepted.
	WriteBlock time.Duration `json:"write_block_ns"`
	// MinReplicasToWrite is what the master was left with.
	MinReplicasToWrite int         `json:"min_replicas_to_write"`
	Steps              []RedisStep `json:"steps"`
	// Warnings are things that did not stop the operation (a CONFIG REWRITE the server
	// refused, a client kill on an unreachable host).
	Warnings []string `json:"warnings,omitempty"`
	// Errors are the errors that ended it.
	Errors []string `json:"errors,omitempty"`
}

// step runs fn as the named step, recording its duration and error.
func (r *RedisReport) step(name string, fn func() error) error {
	start := time.Now()
	err := fn()
	s := RedisStep{Name: name, Took: time.Since(start)}
	if err != nil {
		s.Err = err.Error()
	}
	r.Steps = append(r.Steps, s)
	return err
}

func (r *RedisReport) warn(format string, args ...any) {
	r.Warnings = append(r.Warnings, fmt.Sprintf(format, args...))
}

// fail records err in the report and returns both.
func (r RedisReport) fail(err error) (RedisReport, error) {
	if err != nil {
		r.Errors = append(r.Errors, err.Error())
	}
	return r, err
}

// redisGroup loads the group from the control database and checks it is a Redis group.
func redisGroup(ctx context.Context, db topology.DB, name string) (topology.Group, error) {
	if db == nil {
		return topology.Group{}, fmt.Errorf("no control database connection: %w", RedisErrBadInput)
	}
	if name == "" {
		return topology.Group{}, fmt.Errorf("no group named: %w", RedisErrBadInput)
	}
	t, err := topology.Load(ctx, db)
	if err != nil {
		return topology.Group{}, err
	}
	g, ok := t.Group(name)
	if !ok {
		var redisGroups []string
		for _, g := range t.OfKind(topology.KindRedis) {
			redisGroups = append(redisGroups, g.Name)
		}
		return topology.Group{}, fmt.Errorf("no replication group %q (Redis groups: %v): %w", name, redisGroups, RedisErrBadInput)
	}
	if g.Kind != topology.KindRedis {
		return topology.Group{}, fmt.Errorf("group %s is a %s group, not a Redis group: %w", name, g.Kind, RedisErrBadInput)
	}
	return g, nil
}

// redisPick returns the master and the replica an operation works on: master must be the
// group's primary (when named), replica one of its other members (the first when not named).
func redisPick(g topology.Group, master, replica string) (topology.Member, topology.Member, error) {
	if master != "" && master != g.Primary {
		if _, ok := g.Member(master); !ok {
			return topology.Member{}, topology.Member{}, fmt.Errorf("%s is not a member of group %s: %w", master, g.Name, RedisErrBadInput)
		}
		return topology.Member{}, topology.Member{}, fmt.Errorf("%s is not the master of %s (the topology says %s, epoch %d): %w", master, g.Name, g.Primary, g.Epoch, RedisErrBadInput)
	}
	m, err := g.PrimaryMember()
	if err != nil {
		return topology.Member{}, topology.Member{}, fmt.Errorf("%v: %w", err, RedisErrBadInput)
	}
	standbys := g.Standbys()
	if replica == "" {
		if len(standbys) == 0 {
			return topology.Member{}, topology.Member{}, fmt.Errorf("group %s has no replica: %w", g.Name, RedisErrBadInput)
		}
		return m, standbys[0], nil
	}
	for _, s := range standbys {
		if s.Host == replica {
			return m, s, nil
		}
	}
	return topology.Member{}, topology.Member{}, fmt.Errorf("%s is not a replica of group %s (members %v, master %s): %w", replica, g.Name, redisHosts(g), g.Primary, RedisErrBadInput)
}

func redisHosts(g topology.Group) []string {
	var out []string
	for _, m := range g.Members {
		out = append(out, m.Host)
	}
	return out
}

// redisClient connects to one member: no retries (every command here is deliberate) and short
// timeouts (a dead member must not stall a bounded step).
func redisClient(m topology.Member) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:         m.Addr.String(),
		DialTimeout:  2 * time.Second,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
		MaxRetries:   -1,
		PoolSize:     2,
		Protocol:     2,
		// A step's own deadline (a short INFO while waiting) must cut the read short.
		ContextTimeoutEnabled: true,
	})
}

// redisInfo is the replication section of INFO.
type redisInfo struct {
	Role          string // "master" or "slave"
	MasterHost    string
	MasterPort    int
	LinkUp        bool
	Offset        int64 // master_repl_offset
	FailoverState string
	GoodReplicas  int // min_slaves_good_slaves; -1 when the server does not report it
	Replicas      []redisReplica
}

// redisReplica is one slaveN line of a master's INFO replication.
type redisReplica struct {
	Addr   string // ip:port
	State  string
	Offset int64
	Lag    int64 // seconds since its last ack
}

func parseRedisInfo(s string) redisInfo {
	info := redisInfo{GoodReplicas: -1}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch {
		case k == "role":
			info.Role = v
		case k == "master_host":
			info.MasterHost = v
		case k == "master_port":
			info.MasterPort, _ = strconv.Atoi(v)
		case k == "master_link_status":
			info.LinkUp = v == "up"
		case k == "master_repl_offset":
			info.Offset, _ = strconv.ParseInt(v, 10, 64)
		case k == "master_failover_state":
			info.FailoverState = v
		case k == "min_slaves_good_slaves":
			info.GoodReplicas, _ = strconv.Atoi(v)
		case strings.HasPrefix(k, "slave") && strings.Contains(v, "ip="):
			var r redisReplica
			var ip, port string
			for _, kv := range strings.Split(v, ",") {
				f, val, _ := strings.Cut(kv, "=")
				switch f {
				case "ip":
					ip = val
				case "port":
					port = val
				case "state":
					r.State = val
				case "offset":
					r.Offset, _ = strconv.ParseInt(val, 10, 64)
				case "lag":
					r.Lag, _ = strconv.ParseInt(val, 10, 64)
				}
			}
			r.Addr = net.JoinHostPort(ip, port)
			info.Replicas = append(info.Replicas, r)
		}
	}
	return info
}

// replica returns the INFO line of the replica at addr.
func (i redisInfo) replica(addr string) (redisReplica, bool) {
	for _, r := range i.Replicas {
		if r.Addr == addr {
			return r, true
		}
	}
	return redisReplica{}, false
}

func redisReadInfo(ctx context.Context, c *redis.Client) (redisInfo, error) {
	s, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return redisInfo{}, fmt.Errorf("INFO replication on %s: %w", c.Options().Addr, err)
	}
	return parseRedisInfo(s), nil
}

// redisProbeWrite reports whether the server accepts writes now (nil) or why not.
func redisProbeWrite(ctx context.Context, c *redis.Client) error {
	return c.Del(ctx, redisProbeKey).Err()
}

// redisSetMinReplicas sets min-replicas-to-write (and the max lag) on a server.
func redisSetMinReplicas(ctx context.Context, c *redis.Client, n int) error {
	if err := c.ConfigSet(ctx, "min-replicas-max-lag", strconv.Itoa(RedisMinReplicasMaxLag)).Err(); err != nil {
		return fmt.Errorf("CONFIG SET min-replicas-max-lag on %s: %w", c.Options().Addr, err)
	}
	if err := c.ConfigSet(ctx, "min-replicas-to-write", strconv.Itoa(n)).Err(); err != nil {
		return fmt.Errorf("CONFIG SET min-replicas-to-write %d on %s: %w", n, c.Options().Addr, err)
	}
	return nil
}

// redisRewriteConfig makes the server's configuration file say what it runs now (its role,
// min-replicas-to-write), so a restart keeps it. A server without a writable configuration
// file refuses; that is a warning, not a failure: the running server is what matters now.
func redisRewriteConfig(ctx context.Context, c *redis.Client, r *RedisReport, host string) {
	if err := c.ConfigRewrite(ctx).Err(); err != nil {
		r.warn("CONFIG REWRITE on %s: %v (a restart reads the old configuration)", host, err)
	}
}

// redisKillClients disconnects the normal clients of a demoted master: FAILOVER and REPLICAOF
// leave them connected, reading stale data or getting READONLY; cut off, they reconnect to
// the master the topology names.
func redisKillClients(ctx context.Context, c *redis.Client) error {
	if err := c.Do(ctx, "CLIENT", "KILL", "TYPE", "normal").Err(); err != nil {
		return fmt.Errorf("CLIENT KILL TYPE normal on %s: %w", c.Options().Addr, err)
	}
	return nil
}

// redisReplicaOf makes the server at c a replica of m.
func redisReplicaOf(ctx context.Context, c *redis.Client, m topology.Member) error {
	if err := c.Do(ctx, "REPLICAOF", m.Addr.Addr().String(), strconv.Itoa(int(m.Addr.Port()))).Err(); err != nil {
		return fmt.Errorf("REPLICAOF %s on %s: %w", m.Addr, c.Options().Addr, err)
	}
	return nil
}

// redisWait polls cond every 20 ms until it returns true or an error, or the bound passes.
func redisWait(ctx context.Context, bound time.Duration, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var last error
	for {
		ok, err := cond(ctx)
		if err == nil && ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%s: not within %s: %w", what, bound, last)
			}
			return fmt.Errorf("%s: not within %s", what, bound)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// redisRecordPrimary records host as the group's master if the topology does not name it yet.
// The compare-and-set expects the epoch the operation started from; a topology that already
// names host at a later epoch (a previous run recorded it) is taken as done.
func redisRecordPrimary(ctx context.Context, db topology.DB, group, host string, epoch int64) (int64, error) {
	g, err := redisGroup(ctx, db, group)
	if err != nil {
		return 0, err
	}
	if g.Primary == host {
		return g.Epoch, nil
	}
	ng, err := topology.RecordPrimary(ctx, db, group, host, epoch)
	if err != nil {
		return 0, err
	}
	return ng.Epoch, nil
}

func redisHostOf(c *redis.Client) string {
	h, _, _ := net.SplitHostPort(c.Options().Addr)
	return h
}

func redisPortOf(c *redis.Client) int {
	_, p, _ := net.SplitHostPort(c.Options().Addr)
	n, _ := strconv.Atoi(p)
	return n
}

// redisReplicaOfAddr makes the server at c a replica of the server at addr (host:port).
func redisReplicaOfAddr(ctx context.Context, c *redis.Client, addr string) error {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if err := c.Do(ctx, "REPLICAOF", h, p).Err(); err != nil {
		return fmt.Errorf("REPLICAOF %s on %s: %w", addr, c.Options().Addr, err)
	}
	return nil
}
