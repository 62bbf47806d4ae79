package pooler

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Fixed names every app host's PgBouncer is rendered with (package templates renders them).
const (
	// DatabasesFile holds the [databases] section, one entry per Postgres group.
	DatabasesFile = "/etc/instagram/pgbouncer-databases.ini"
	// AdminUser is in PgBouncer's admin_users: it may PAUSE, RELOAD, RESUME and SHOW.
	AdminUser = "instactl"
	// Port is PgBouncer's port on every app host's address.
	Port = 6432
	// adminDB is PgBouncer's virtual admin database.
	adminDB = "pgbouncer"
)

// rollbackTimeout bounds the RESUME that undoes a PAUSE whose deadline passed: it runs after
// the caller's context is done, so it needs a bound of its own.
const rollbackTimeout = 10 * time.Second

// Target is one pooler: the app host it runs on and its listen address.
type Target struct {
	Host string
	Addr netip.AddrPort
}

func (t Target) String() string { return fmt.Sprintf("pooler %s (%s)", t.Host, t.Addr) }

// DBEntry is one line of SHOW DATABASES: a database PgBouncer serves and where it points.
type DBEntry struct {
	// Name is the name clients connect to: the group name ("pg-0").
	Name string
	// Host and Port locate the Postgres server; Database is the database name there.
	Host     string
	Port     int
	Database string
	// Paused is true while PAUSE holds the database.
	Paused bool
}

// Set is one admin connection to each of a set of poolers. Its methods act on every pooler in
// parallel and return an error naming every pooler that failed. A Set's methods may be called
// from several goroutines; calls on the same pooler take turns.
type Set struct {
	user, password string
	conns          []*adminConn
}

// adminConn is the admin connection of one pooler; it is reopened when an interrupted
// command left it closed.
type adminConn struct {
	target Target
	mu     sync.Mutex
	conn   *pgx.Conn
}

// dbNameRe is what a database name may look like: PgBouncer's admin console takes it as a
// bare word, and it ends up in an ini file.
var dbNameRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// Open opens one admin connection per target, in parallel, as user (AdminUser) with password
// (empty when the pooler trusts the caller). The error names every pooler that failed; then
// no connection stays open.
func Open(ctx context.Context, targets []Target, user, password string) (*Set, error) {
	s := &Set{user: user, password: password}
	for _, t := range targets {
		s.conns = append(s.conns, &adminConn{target: t})
	}
	err := s.each(ctx, func(ctx context.Context, c *adminConn) error {
		conn, err := s.connect(ctx, c.target)
		c.conn = conn
		return err
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open the admin console of %d pooler(s): %w", len(targets), err)
	}
	return s, nil
}

// connect opens an admin connection. The password is set on the config, never in a
// connection string, so it appears in no error.
func (s *Set) connect(ctx context.Context, t Target) (*pgx.Conn, error) {
	dsn := fmt.Sprintf("host=%s port=%d dbname=%s sslmode=disable connect_timeout=5",
		t.Addr.Addr(), t.Addr.Port(), adminDB)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.User, cfg.Password = s.user, s.password
	// The admin console speaks only the simple query protocol.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect as %s: %w", s.user, err)
	}
	return conn, nil
}

// Targets returns the poolers of the set, in the order Open got them.
func (s *Set) Targets() []Target {
	out := make([]Target, len(s.conns))
	for i, c := range s.conns {
		out[i] = c.target
	}
	return out
}

// Close closes every admin connection.
func (s *Set) Close() error {
	for _, c := range s.conns {
		c.mu.Lock()
		if c.conn != nil {
			_ = c.conn.Close(context.Background())
			c.conn = nil
		}
		c.mu.Unlock()
	}
	return nil
}

// each runs fn on every pooler in parallel, each under its connection's lock, and joins the
// failures, each prefixed with its pooler, in the order of the set.
func (s *Set) each(ctx context.Context, fn func(ctx context.Context, c *adminConn) error) error {
	errs := make([]error, len(s.conns))
	var wg sync.WaitGroup
	for i, c := range s.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.mu.Lock()
			defer c.mu.Unlock()
			if err := fn(ctx, c); err != nil {
				errs[i] = fmt.Errorf("%s: %w", c.target, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// exec runs one admin command, reopening the connection first if an interrupted command
// closed it.
func (s *Set) exec(ctx context.Context, c *adminConn, cmd string) error {
	if err := s.ensureConn(ctx, c); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if _, err := c.conn.Exec(ctx, cmd); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	return nil
}

// ensureConn reopens c's connection when an interrupted command (a cancelled PAUSE) closed it.
func (s *Set) ensureConn(ctx context.Context, c *adminConn) error {
	if c.conn != nil && !c.conn.IsClosed() {
		return nil
	}
	conn, err := s.connect(ctx, c.target)
	if err != nil {
		return fmt.Errorf("reconnect: %w", err)
	}
	c.conn = conn
	return nil
}

// quoteDB quotes a database name for the admin console, which takes a bare word only when it
// is a plain identifier ("pg-0" must be quoted).
func quoteDB(db string) string { return `"` + db + `"` }

func checkDB(db string) error {
	if !dbNameRe.MatchString(db) || db == adminDB {
		return fmt.Errorf("bad pooler database name %q (want a group name like pg-0)", db)
	}
	return nil
}

// Pause sends PAUSE db to every pooler in parallel and returns once every one of them holds
// no server connection for db: new queries for db wait in the poolers. PAUSE has no timeout
// of its own, so ctx's deadline is the bound: when it passes, or any pooler fails, Pause
// cancels the outstanding PAUSEs, sends RESUME db to every pooler (a pooler that never got
// paused answers "not paused", which is fine) and returns an error naming the poolers that
// did not pause and whether the rollback worked.
func (s *Set) Pause(ctx context.Context, db string) error {
	if err := checkDB(db); err != nil {
		return err
	}
	err := s.each(ctx, func(ctx context.Context, c *adminConn) error {
		return s.exec(ctx, c, "PAUSE "+quoteDB(db))
	})
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("pause %s: not every pooler paused before the deadline (%w):\n%w", db, ctx.Err(), err)
	} else {
		err = fmt.Errorf("pause %s:\n%w", db, err)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	if rerr := s.Resume(rctx, db); rerr != nil {
		return fmt.Errorf("%w\nrollback failed, %s may still be paused on some poolers (run RESUME %s there):\n%w", err, db, db, rerr)
	}
	return fmt.Errorf("%w\nrolled back: %s resumed on every pooler", err, db)
}

// Resume sends RESUME db to every pooler. A pooler on which db is not paused is fine, so
// Resume can always be repeated.
func (s *Set) Resume(ctx context.Context, db string) error {
	if err := checkDB(db); err != nil {
		return err
	}
	return s.each(ctx, func(ctx context.Context, c *adminConn) error {
		err := s.exec(ctx, c, "RESUME "+quoteDB(db))
		if err != nil && strings.Contains(err.Error(), "is not paused") {
			return nil
		}
		return err
	})
}

// Reconnect sends RECONNECT db: every pooler closes its server connections for db as soon as
// they are released, so new transactions reach the server db points at now.
func (s *Set) Reconnect(ctx context.Context, db string) error {
	if err := checkDB(db); err != nil {
		return err
	}
	return s.each(ctx, func(ctx context.Context, c *adminConn) error { return s.exec(ctx, c, "RECONNECT "+quoteDB(db)) })
}

// Kill sends KILL db: every pooler drops db's client and server connections at once and
// refuses new ones until RESUME db. It is the failover's fence when the old primary cannot be
// waited for.
func (s *Set) Kill(ctx context.Context, db string) error {
	if err := checkDB(db); err != nil {
		return err
	}
	return s.each(ctx, func(ctx context.Context, c *adminConn) error { return s.exec(ctx, c, "KILL "+quoteDB(db)) })
}

// Databases returns every pooler's SHOW DATABASES (without PgBouncer's own admin database),
// keyed by Target.Host, each sorted by name.
func (s *Set) Databases(ctx context.Context) (map[string][]DBEntry, error) {
	out := make(map[string][]DBEntry, len(s.conns))
	var mu sync.Mutex
	err := s.each(ctx, func(ctx context.Context, c *adminConn) error {
		entries, err := s.showDatabases(ctx, c)
		if err != nil {
			return err
		}
		mu.Lock()
		out[c.target.Host] = entries
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// showDatabases reads SHOW DATABASES by column name (the column set grows between PgBouncer
// versions).
func (s *Set) showDatabases(ctx context.Context, c *adminConn) ([]DBEntry, error) {
	if err := s.ensureConn(ctx, c); err != nil {
		return nil, err
	}
	rows, err := c.conn.Query(ctx, "SHOW DATABASES")
	if err != nil {
		return nil, fmt.Errorf("SHOW DATABASES: %w", err)
	}
	defer rows.Close()
	col := map[string]int{}
	for i, f := range rows.FieldDescriptions() {
		col[f.Name] = i
	}
	for _, name := range []string{"name", "host", "port", "database", "paused"} {
		if _, ok := col[name]; !ok {
			return nil, fmt.Errorf("SHOW DATABASES has no column %q", name)
		}
	}
	var out []DBEntry
	for rows.Next() {
		raw := rows.RawValues()
		e := DBEntry{Name: string(raw[col["name"]]), Host: string(raw[col["host"]]),
			Database: string(raw[col["database"]]), Paused: string(raw[col["paused"]]) == "1"}
		if e.Name == adminDB {
			continue
		}
		if p := string(raw[col["port"]]); p != "" {
			if e.Port, err = strconv.Atoi(p); err != nil {
				return nil, fmt.Errorf("SHOW DATABASES: %s has port %q", e.Name, p)
			}
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("SHOW DATABASES: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
