package backup

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/remote"
)

// VerifyOptions configures Verify.
type VerifyOptions struct {
	Env
	// Set is the set to drill; empty means the newest complete set of Target.
	Set    string
	Target string
	// ScratchHost is the host (name or id) the set is restored onto; it must have the role's
	// mount point free.
	ScratchHost string
	// Mount and Port override where the copy is mounted and listens (RestoreOptions).
	Mount string
	Port  int
	// SkipAmcheck skips pg_amcheck (for very large sets).
	SkipAmcheck bool

	// testHookRestored runs on the restored copy before the checks.
	testHookRestored func(*Restored) error
	// testHookChecked runs on the restored copy once the checks passed, before teardown.
	testHookChecked func(*Restored) error
}

// VerifyResult is a drill's outcome.
type VerifyResult struct {
	Set          string        `json:"set"`
	Verification *Verification `json:"verification"`
	// RowCounts maps "database.schema.table" to its row count in the restored copy (pg).
	RowCounts map[string]int64 `json:"row_counts,omitempty"`
	// Keys is how many keys the restored copy holds (redis), with a TTL or not.
	Keys int64 `json:"keys,omitempty"`
}

// verifyFailed prefixes TagVerified's value after a failed drill.
const verifyFailed = "failed "

// Verify is a restore drill: it restores the set onto the scratch host, waits for a consistent
// open, runs the checks (Postgres: queries answer, the system identifier matches the manifest,
// row counts of every user table, pg_amcheck; Redis: the keys the snapshot promises, see
// checkRedis), records
// the outcome on the set and tears the scratch volumes down. A failed check is returned as an
// error, and recorded.
func Verify(ctx context.Context, opts VerifyOptions) (*VerifyResult, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	set, err := FindSet(ctx, opts.Env, opts.Set, opts.Target)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	out := &VerifyResult{Set: set.ID}
	v := &Verification{Time: opts.now().UTC(), Host: opts.ScratchHost}
	r, err := Restore(ctx, RestoreOptions{Env: opts.Env, Set: set.ID, To: opts.ScratchHost, Mount: opts.Mount, Port: opts.Port})
	if err == nil {
		v.Checks = append(v.Checks, "restored and started")
		if opts.testHookRestored != nil {
			err = opts.testHookRestored(r)
		}
		if err == nil {
			err = runChecks(ctx, &opts, r, v, out)
		}
		if err == nil && opts.testHookChecked != nil {
			err = opts.testHookChecked(r)
		}
	}
	if r != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		if terr := Teardown(cctx, opts.Env, r); terr != nil {
			err = errors.Join(err, terr)
		}
		cancel()
	}
	v.Duration = time.Since(start)
	v.OK = err == nil
	if err != nil {
		v.Error = err.Error()
	}
	out.Verification = v
	if rerr := recordVerification(ctx, &opts.Env, set, v); rerr != nil {
		err = errors.Join(err, rerr)
	}
	opts.emit(set.ID, opts.ScratchHost, "verify", "drill %s in %s", map[bool]string{true: "passed", false: "failed"}[v.OK], v.Duration.Round(time.Millisecond))
	return out, err
}

func runChecks(ctx context.Context, o *VerifyOptions, r *Restored, v *Verification, out *VerifyResult) error {
	res, err := o.Provider.Describe(ctx, o.Stack.Name)
	if err != nil {
		return fmt.Errorf("verify %s: %w", r.Set, err)
	}
	for _, in := range res.Instances {
		if in.ID != r.InstanceID {
			continue
		}
		c, err := o.dial(ctx, in)
		if err != nil {
			return err
		}
		defer c.Close()
		if r.Target == TargetRedis {
			return checkRedis(ctx, o, c, r, v, out)
		}
		return checkPostgres(ctx, o, c, r, v, out)
	}
	return fmt.Errorf("verify %s: scratch host %s is gone", r.Set, r.Host)
}

// checkRedis compares the restored copy with what the snapshot promises, read from the RDB on
// the restored volume itself (the very file the backup checked: same sha256): every key
// without a TTL, exactly; of the keys with a TTL, at least those whose TTL has still not run out
// and at most all the RDB holds. Keys whose TTL ran out between the snapshot and the drill are
// gone (Redis drops them on load and expires them after), so a total count would fail a sound
// set, and a count of live keys alone would pass a set that lost keys without a TTL.
func checkRedis(ctx context.Context, o *VerifyOptions, c *remote.Client, r *Restored, v *Verification, out *VerifyResult) error {
	// The copy is counted before the RDB is checked: a key with a TTL still live at the check
	// was live, and so loaded, at the count.
	res, err := runCmd(ctx, c, redisCLI(r.Address, r.Port, "INFO", "keyspace"))
	if err != nil {
		return fmt.Errorf("verify %s: info keyspace: %w", r.Set, err)
	}
	keys, expires := keyspaceCounts(string(res.Stdout))
	out.Keys = keys
	rdb := path.Join(r.DataDir, restoredRDBFile(r))
	res, err = runCmd(ctx, c, o.cmds().checkRDB(rdb))
	if err != nil {
		return fmt.Errorf("verify %s: redis-check-rdb %s on %s: %w", r.Set, rdb, r.Host, err)
	}
	chk, err := parseCheckRDB(string(res.Stdout))
	if err != nil {
		return fmt.Errorf("verify %s: %s on %s: %w", r.Set, rdb, r.Host, err)
	}
	since := ""
	if m := r.Manifest; m != nil && m.Redis != nil {
		if m.Redis.RDBSHA256 != "" && chk.SHA256 != m.Redis.RDBSHA256 {
			return fmt.Errorf("verify %s: the RDB restored at %s has sha256 %s, the backup checked %s", r.Set, rdb, chk.SHA256, m.Redis.RDBSHA256)
		}
		if m.Redis.Keys != chk.Keys {
			return fmt.Errorf("verify %s: the RDB restored at %s holds %d keys, the backup counted %d", r.Set, rdb, chk.Keys, m.Redis.Keys)
		}
		since = fmt.Sprintf(", %d of them run out since the snapshot", chk.Expired-m.Redis.ExpiredAtSave)
	}
	persistent, wantPersistent := keys-expires, chk.Keys-chk.Expires
	if persistent != wantPersistent {
		return fmt.Errorf("verify %s: restored redis holds %d keys without a TTL, the RDB has %d", r.Set, persistent, wantPersistent)
	}
	live := chk.Expires - chk.Expired
	if expires < live || expires > chk.Expires {
		return fmt.Errorf("verify %s: restored redis holds %d keys with a TTL; the RDB has %d, of which %d have not run out and must be loaded", r.Set, expires, chk.Expires, live)
	}
	v.Checks = append(v.Checks, fmt.Sprintf("redis loaded the RDB's %d keys without a TTL and %d keys with one "+
		"(the RDB has %d with a TTL, %d still live at the drill%s); RDB sha256 %s", persistent, expires, chk.Expires, live, since, chk.SHA256))
	return nil
}

// restoredRDBFile is the RDB's file name in the restored directory.
func restoredRDBFile(r *Restored) string {
	if r.Manifest != nil && r.Manifest.Redis != nil && r.Manifest.Redis.RDBPath != "" {
		return path.Base(r.Manifest.Redis.RDBPath)
	}
	return "dump.rdb"
}

// keyspaceCounts sums the keys and the keys with a TTL of every database in INFO keyspace
// ("db0:keys=9,expires=8,avg_ttl=1200").
func keyspaceCounts(info string) (keys, expires int64) {
	for k, v := range parseInfo(info) {
		if !strings.HasPrefix(k, "db") {
			continue
		}
		for _, f := range strings.Split(v, ",") {
			name, n, _ := strings.Cut(f, "=")
			c, _ := strconv.ParseInt(n, 10, 64)
			switch name {
			case "keys":
				keys += c
			case "expires":
				expires += c
			}
		}
	}
	return keys, expires
}

// rowCountSQL emits one "schema.table|count" line per user table of the database it runs in.
const rowCountSQL = `SELECT format('SELECT %L || ''|'' || count(*) FROM %I.%I', n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1 \gexec
`

func checkPostgres(ctx context.Context, o *VerifyOptions, c *remote.Client, r *Restored, v *Verification, out *VerifyResult) error {
	cmds := o.cmds()
	psql := func(db, sql string) remote.Command { return cmds.psql(o.pgBin(), r.Port, db, sql) }
	res, err := runCmd(ctx, c, psql("postgres", "SELECT system_identifier FROM pg_control_system()"))
	if err != nil {
		return fmt.Errorf("verify %s: query: %w", r.Set, err)
	}
	if m := r.Manifest; m != nil && m.Postgres != nil && m.Postgres.SystemID != trimOut(res) {
		return fmt.Errorf("verify %s: system identifier %s, manifest says %s", r.Set, trimOut(res), m.Postgres.SystemID)
	}
	v.Checks = append(v.Checks, "postgres accepts queries, read-write, system identifier "+trimOut(res))
	res, err = runCmd(ctx, c, psql("postgres", "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"))
	if err != nil {
		return fmt.Errorf("verify %s: list databases: %w", r.Set, err)
	}
	out.RowCounts = map[string]int64{}
	for _, db := range lines(res.Stdout) {
		cmd := cmds.asPostgres(o.pgBin()+"/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", pgSocketDir,
			"-p", strconv.Itoa(r.Port), "-d", db, "-f", "-")
		cres, err := c.Run(ctx, cmd, strings.NewReader(rowCountSQL))
		if err == nil {
			err = cres.Err()
		}
		if err != nil {
			return fmt.Errorf("verify %s: count rows in %s: %w", r.Set, db, err)
		}
		for _, l := range lines(cres.Stdout) {
			if t, n, ok := strings.Cut(l, "|"); ok {
				cnt, _ := strconv.ParseInt(n, 10, 64)
				out.RowCounts[db+"."+t] = cnt
			}
		}
	}
	v.Checks = append(v.Checks, fmt.Sprintf("counted rows of %d tables", len(out.RowCounts)))
	if o.SkipAmcheck {
		return nil
	}
	am := cmds.asPostgres(o.pgBin()+"/pg_amcheck", "-h", pgSocketDir, "-p", strconv.Itoa(r.Port), "-U", "postgres",
		"--all", "--install-missing")
	if _, err := runCmd(ctx, c, am); err != nil {
		return fmt.Errorf("verify %s: pg_amcheck: %w", r.Set, err)
	}
	v.Checks = append(v.Checks, "pg_amcheck passed")
	return nil
}

// recordVerification stores v in the set's manifest (creating a minimal one when this machine
// has none) and tags the set's snapshots with the outcome, passed or failed, so that every
// machine lists the set the same way.
func recordVerification(ctx context.Context, env *Env, set Set, v *Verification) error {
	m := set.Manifest
	if m == nil {
		m = &Manifest{Format: ManifestFormat, SetID: set.ID, Stack: env.Stack.Name, Target: set.Target, Host: set.Host,
			State: StateComplete, InstactlVersion: env.Version}
		if set.CrashConsistent {
			m.State = StateCrashConsistent
		}
	}
	m.Verification = v
	if err := env.saveManifest(m); err != nil {
		return err
	}
	mark := v.Time.Format(time.RFC3339)
	if !v.OK {
		mark = verifyFailed + mark
	}
	var ids []string
	for _, sn := range set.Snapshots {
		ids = append(ids, sn.ID)
	}
	if err := env.Provider.TagSnapshots(ctx, ids, map[string]string{TagVerified: mark}); err != nil {
		return fmt.Errorf("record the drill on set %s's snapshots: %w", set.ID, err)
	}
	return nil
}
