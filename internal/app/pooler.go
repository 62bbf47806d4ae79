package app

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// PoolerDSN rewrites the shard map's DSN of node so that it reaches the node through the local
// PgBouncer at pooler (ADDR:PORT): host and port become the pooler's and the database becomes
// node, the name of the pooler's [databases] entry (the replication group's name). User,
// password and every other parameter are kept. Both libpq forms are accepted: a
// postgres:// URL and keyword=value pairs.
func PoolerDSN(dsn, pooler, node string) (string, error) {
	host, port, err := net.SplitHostPort(pooler)
	if err != nil {
		return "", fmt.Errorf("pooler address %q: want ADDR:PORT: %w", pooler, err)
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return poolerURL(dsn, host, port, node)
	}
	return poolerKeywords(dsn, host, port, node)
}

// targetKeys are the parameters that say where to connect; the pooler replaces them all
// (hostaddr and a second host list would otherwise win over the pooler's address).
var targetKeys = map[string]bool{"host": true, "hostaddr": true, "port": true, "dbname": true}

func poolerURL(dsn, host, port, node string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("parse node dsn as url: %w", err)
	}
	u.Host = net.JoinHostPort(host, port)
	u.Path = "/" + node
	u.RawPath = ""
	q := u.Query()
	for k := range targetKeys {
		q.Del(k)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func poolerKeywords(dsn, host, port, node string) (string, error) {
	pairs, err := parseKeywords(dsn)
	if err != nil {
		return "", fmt.Errorf("parse node dsn: %w", err)
	}
	out := []string{"host=" + quoteKeyword(host), "port=" + quoteKeyword(port), "dbname=" + quoteKeyword(node)}
	for _, p := range pairs {
		if !targetKeys[p[0]] {
			out = append(out, p[0]+"="+quoteKeyword(p[1]))
		}
	}
	return strings.Join(out, " "), nil
}

// parseKeywords splits a libpq keyword/value string into its pairs, in order: values may be
// single-quoted, with backslash escaping a quote or a backslash.
func parseKeywords(s string) ([][2]string, error) {
	var out [][2]string
	for {
		s = strings.TrimLeft(s, " \t\n\r")
		if s == "" {
			return out, nil
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, fmt.Errorf("%q: want keyword=value", s)
		}
		key := strings.TrimSpace(s[:eq])
		if key == "" || strings.ContainsAny(key, " \t") {
			return nil, fmt.Errorf("%q: bad keyword %q", s, key)
		}
		s = strings.TrimLeft(s[eq+1:], " \t")
		var val strings.Builder
		if strings.HasPrefix(s, "'") {
			i, closed := 1, false
			for ; i < len(s); i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
					val.WriteByte(s[i])
					continue
				}
				if s[i] == '\'' {
					closed = true
					break
				}
				val.WriteByte(s[i])
			}
			if !closed {
				return nil, fmt.Errorf("value of %s: unterminated quoted string", key)
			}
			s = s[i+1:]
		} else {
			i := 0
			for ; i < len(s) && !strings.ContainsRune(" \t\n\r", rune(s[i])); i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
			}
			s = s[i:]
		}
		out = append(out, [2]string{key, val.String()})
	}
}

// quoteKeyword quotes a keyword value when libpq needs it to.
func quoteKeyword(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r'\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
