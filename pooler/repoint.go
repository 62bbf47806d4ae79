package pooler

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/instactl/instactl/remote"
)

// WriteFunc writes content as DatabasesFile on the app host named host, atomically (a reader
// sees the old file or the new one, never a part).
type WriteFunc func(ctx context.Context, host string, content []byte) error

// RenderDatabases renders the content of DatabasesFile: a [databases] section with one line
// per entry, sorted by name ("pg-0 = host=10.0.1.10 port=5432 dbname=instagram").
func RenderDatabases(entries []DBEntry) []byte {
	sorted := slices.Clone(entries)
	slices.SortFunc(sorted, func(a, b DBEntry) int { return strings.Compare(a.Name, b.Name) })
	var b bytes.Buffer
	b.WriteString("; Written by instactl: one entry per Postgres group, pointing at its primary.\n")
	b.WriteString("[databases]\n")
	for _, e := range sorted {
		fmt.Fprintf(&b, "%s = host=%s port=%d dbname=%s\n", e.Name, e.Host, e.Port, e.Database)
	}
	return b.Bytes()
}

// Repoint points db at the Postgres server addr (database dbname) on every pooler, in
// parallel. On each pooler it reads the entries PgBouncer serves now (SHOW DATABASES), replaces
// db's (or adds it) and keeps every other group's entry as it is, writes the result with
// write, sends RELOAD, and checks that SHOW DATABASES names the new server.
//
// Repoint is meant to run while db is paused (switchover) or killed (failover). RELOAD while
// paused is safe: PAUSE has already released every server connection of db, and a changed
// host makes PgBouncer drop any server connection it still has to the old one, so the clients
// PAUSE holds reach the new server once RESUME lets them through.
func (s *Set) Repoint(ctx context.Context, db string, addr netip.AddrPort, dbname string, write WriteFunc) error {
	if err := checkDB(db); err != nil {
		return err
	}
	if !dbNameRe.MatchString(dbname) {
		return fmt.Errorf("repoint %s: bad database name %q", db, dbname)
	}
	host := addr.Addr().Unmap().String()
	err := s.each(ctx, func(ctx context.Context, c *adminConn) error {
		entries, err := s.showDatabases(ctx, c)
		if err != nil {
			return err
		}
		want := DBEntry{Name: db, Host: host, Port: int(addr.Port()), Database: dbname}
		i := slices.IndexFunc(entries, func(e DBEntry) bool { return e.Name == db })
		if i < 0 {
			entries = append(entries, want)
		} else {
			entries[i] = want
		}
		if err := write(ctx, c.target.Host, RenderDatabases(entries)); err != nil {
			return fmt.Errorf("write %s: %w", DatabasesFile, err)
		}
		if err := s.exec(ctx, c, "RELOAD"); err != nil {
			return err
		}
		after, err := s.showDatabases(ctx, c)
		if err != nil {
			return err
		}
		i = slices.IndexFunc(after, func(e DBEntry) bool { return e.Name == db })
		if i < 0 || after[i].Host != host || after[i].Port != want.Port || after[i].Database != dbname {
			got := "no entry"
			if i >= 0 {
				got = fmt.Sprintf("host=%s port=%d dbname=%s", after[i].Host, after[i].Port, after[i].Database)
			}
			return fmt.Errorf("after RELOAD %s shows %s, not host=%s port=%d dbname=%s (does pgbouncer.ini %%include %s?)",
				db, got, host, want.Port, dbname, DatabasesFile)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("repoint %s to %s:\n%w", db, addr, err)
	}
	return nil
}

// RemoteWriter returns a WriteFunc that writes path (DatabasesFile on a real host) over SSH:
// one command writes a temporary file beside it from stdin and renames it into place. targets maps the app host names of the Set's Targets to their SSH targets; the
// pool keeps one connection per host for the whole operation (the caller closes it).
func RemoteWriter(p *remote.Pool, targets map[string]remote.Target, path string) WriteFunc {
	return func(ctx context.Context, host string, content []byte) error {
		t, ok := targets[host]
		if !ok {
			return fmt.Errorf("no SSH target for host %s", host)
		}
		c, err := p.Get(ctx, t)
		if err != nil {
			return err
		}
		// One exec on the pooled connection: a switchover holds writes while this runs, and a
		// session is cheaper than an SFTP upload. Temporary file, then rename: a reader sees
		// the old file or the new one.
		tmp := path + ".instactl-tmp"
		script := "cat > " + remote.Quote(tmp) + " && chmod 0644 " + remote.Quote(tmp) + " && mv -f " + remote.Quote(tmp) + " " + remote.Quote(path)
		res, err := c.Run(ctx, remote.Script(script), bytes.NewReader(content))
		if err != nil {
			return err
		}
		return res.Err()
	}
}
