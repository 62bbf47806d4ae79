package backup

import (
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
)

// parseInfo parses the output of Redis INFO into key/value pairs.
func parseInfo(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = v
		}
	}
	return m
}

func (r *run) redisAddr() string { return r.h.inst.PrivateAddress }

// redisDo runs one redis command on the replica and returns its trimmed reply.
func (r *run) redisDo(ctx context.Context, args ...string) (string, error) {
	res, err := runCmd(ctx, r.c, redisCLI(r.redisAddr(), r.h.role.Port, args...))
	if err != nil {
		return "", fmt.Errorf("redis %s: %w", args[0], err)
	}
	out := trimOut(res)
	if strings.HasPrefix(out, "(error)") || strings.HasPrefix(out, "ERR") {
		return "", fmt.Errorf("redis %s: %s", args[0], out)
	}
	return out, nil
}

func (r *run) redisInfo(ctx context.Context, section string) (map[string]string, error) {
	out, err := r.redisDo(ctx, "INFO", section)
	if err != nil {
		return nil, err
	}
	return parseInfo(out), nil
}

func redisInt(s string) int64 {
	s = strings.TrimPrefix(strings.TrimSpace(s), "(integer) ")
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// gateRedis returns *UnsafeError unless the host is a replica with its master link up and no
// save or sync in progress.
func (r *run) gateRedis(ctx context.Context) error {
	unsafe := func(format string, a ...any) error {
		return &UnsafeError{Host: r.h.name(), Target: TargetRedis, Reason: fmt.Sprintf(format, a...)}
	}
	repl, err := r.redisInfo(ctx, "replication")
	if err != nil {
		return unsafe("cannot read INFO replication: %v", err)
	}
	pers, err := r.redisInfo(ctx, "persistence")
	if err != nil {
		return unsafe("cannot read INFO persistence: %v", err)
	}
	switch {
	case repl["role"] != "slave":
		return unsafe("role is %q, not a replica", repl["role"])
	case repl["master_link_status"] != "up":
		return unsafe("master link is %q", repl["master_link_status"])
	case repl["master_sync_in_progress"] == "1":
		return unsafe("a full sync from the master is in progress")
	case pers["loading"] == "1":
		return unsafe("it is loading its dataset")
	case pers["rdb_bgsave_in_progress"] == "1":
		return unsafe("a save is in progress")
	}
	r.emit("gate", "replica, master link up, no save in progress")
	return nil
}

// redis backs up a replica: BGSAVE and wait for it, check the RDB, freeze briefly, snapshot.
func (r *run) redis(ctx context.Context) error {
	if err := r.gateRedis(ctx); err != nil {
		return err
	}
	rec, err := r.bgsave(ctx)
	if err != nil {
		return err
	}
	dir, err := r.redisDo(ctx, "CONFIG", "GET", "dir")
	if err != nil {
		return err
	}
	file, err := r.redisDo(ctx, "CONFIG", "GET", "dbfilename")
	if err != nil {
		return err
	}
	rec.RDBPath = path.Join(configValue(dir), configValue(file))
	if !underMount(rec.RDBPath, r.mounts) {
		return fmt.Errorf("backup %s: the RDB %s is not on the data volume %s; a snapshot would not hold it", r.h.name(), rec.RDBPath, strings.Join(r.mounts, ", "))
	}
	res, err := runCmd(ctx, r.c, r.cmds.checkRDB(rec.RDBPath))
	if err != nil {
		return fmt.Errorf("backup %s: redis-check-rdb %s: %w", r.h.name(), rec.RDBPath, err)
	}
	chk, err := parseCheckRDB(string(res.Stdout))
	if err != nil {
		return fmt.Errorf("backup %s: %w", r.h.name(), err)
	}
	rec.Keys, rec.Expires, rec.ExpiredAtSave, rec.RDBSHA256 = chk.Keys, chk.Expires, chk.Expired, chk.SHA256
	r.m.Redis = rec
	r.emit("bgsave", "RDB checked: %d keys (%d with a TTL, %d of them run out), offset %d", chk.Keys, chk.Expires, chk.Expired, rec.MasterReplOffset)
	if err := r.sync(ctx); err != nil {
		return err
	}
	if err := r.filesystems(ctx); err != nil {
		return err
	}
	return r.freezeAndSnapshot(ctx, 0, nil, nil)
}

func (r *run) sync(ctx context.Context) error {
	if _, err := runCmd(ctx, r.c, r.cmds.syncMounts(r.mounts)); err != nil {
		return fmt.Errorf("backup %s: sync: %w", r.h.name(), err)
	}
	return nil
}

// configValue takes the value out of CONFIG GET's two-line reply.
func configValue(out string) string {
	ls := lines([]byte(out))
	v := ls[len(ls)-1]
	if i := strings.Index(v, `"`); i >= 0 {
		v = strings.Trim(v[i:], `"`)
	}
	return v
}

// bgsave starts a BGSAVE and waits until rdb_saves advances (LASTSAVE has one-second resolution,
// the counter does not) with rdb_last_bgsave_status:ok.
func (r *run) bgsave(ctx context.Context) (*RedisRecord, error) {
	pers, err := r.redisInfo(ctx, "persistence")
	if err != nil {
		return nil, err
	}
	saves := redisInt(pers["rdb_saves"])
	lastBefore := redisInt(pers["rdb_last_save_time"])
	// The offset read before BGSAVE forks is what the RDB is sure to hold: every write the
	// replica applied up to it. Read after the save, it would count writes the fork missed.
	repl, err := r.redisInfo(ctx, "replication")
	if err != nil {
		return nil, err
	}
	if _, err := r.redisDo(ctx, "BGSAVE"); err != nil {
		return nil, fmt.Errorf("backup %s: %w", r.h.name(), err)
	}
	timeout := r.o.SaveTimeout
	if timeout <= 0 {
		timeout = DefaultSaveTimeout
	}
	deadline := time.Now().Add(timeout)
	for {
		pers, err = r.redisInfo(ctx, "persistence")
		if err != nil {
			return nil, err
		}
		if pers["rdb_bgsave_in_progress"] == "0" && redisInt(pers["rdb_saves"]) > saves {
			break
		}
		if pers["rdb_bgsave_in_progress"] == "0" && pers["rdb_last_bgsave_status"] != "ok" {
			return nil, fmt.Errorf("backup %s: BGSAVE failed (rdb_last_bgsave_status:%s)", r.h.name(), pers["rdb_last_bgsave_status"])
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("backup %s: BGSAVE did not finish within %s", r.h.name(), timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if pers["rdb_last_bgsave_status"] != "ok" {
		return nil, fmt.Errorf("backup %s: BGSAVE failed (rdb_last_bgsave_status:%s)", r.h.name(), pers["rdb_last_bgsave_status"])
	}
	last, err := r.redisDo(ctx, "LASTSAVE")
	if err != nil {
		return nil, err
	}
	if redisInt(last) < lastBefore {
		return nil, fmt.Errorf("backup %s: LASTSAVE went back from %d to %s", r.h.name(), lastBefore, last)
	}
	size, err := r.redisDo(ctx, "DBSIZE")
	if err != nil {
		return nil, err
	}
	return &RedisRecord{MasterReplOffset: redisInt(repl["master_repl_offset"]), DBSize: redisInt(size),
		LastSave: redisInt(last), Port: r.h.role.Port}, nil
}

// rdbCheck is what redis-check-rdb found in an RDB.
type rdbCheck struct {
	// Keys is every key of the file, with a TTL or not.
	Keys int64
	// Expires is how many of them carry a TTL.
	Expires int64
	// Expired is how many of those had their TTL run out at the time of the check.
	Expired int64
	// SHA256 is the file's checksum.
	SHA256 string
}

// parseCheckRDB reads the key counts from redis-check-rdb's output and the sha256sum line after
// it; it requires the "RDB looks OK" verdict. The expires counts are absent from an RDB without
// a key with a TTL on some versions: they count as zero.
func parseCheckRDB(out string) (rdbCheck, error) {
	if !strings.Contains(out, "RDB looks OK") {
		return rdbCheck{}, fmt.Errorf("redis-check-rdb did not pass: %s", strings.TrimSpace(out))
	}
	chk := rdbCheck{Keys: -1}
	for _, l := range lines([]byte(out)) {
		if rest, ok := strings.CutPrefix(l, "[info] "); ok {
			n, what, _ := strings.Cut(rest, " ")
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				continue
			}
			switch what {
			case "keys read":
				chk.Keys = v
			case "expires":
				chk.Expires = v
			case "already expired":
				chk.Expired = v
			}
		}
		if f := strings.Fields(l); len(f) == 2 && len(f[0]) == 64 {
			chk.SHA256 = f[0]
		}
	}
	if chk.Keys < 0 || chk.SHA256 == "" {
		return rdbCheck{}, fmt.Errorf("redis-check-rdb output without key count or checksum: %s", strings.TrimSpace(out))
	}
	return chk, nil
}
