// Command writer is the failover benchmark's fixed-rate writer: one write per tick to the
// primary of a replication group, every attempt logged in the format of the peers' writer.py
// (../shared/peers/failover), so the peers' analyze.py computes the same figures for both sides:
//
//	A <seq> <t_ack> <node> <latency_ms>   acknowledged
//	F <seq> <t> <error class>             failed attempt
//	C <t> <node>                          (re)connected to <node>
//
// pg: one INSERT INTO fo_writes(run, seq) per commit on a DSN (instactl's write path: the app
// host's PgBouncer, database named after the group); on any error the connection is dropped and
// the next tick reconnects, as writer.py does.
//
// redis: one RPUSH fo:<run> <seq> per write to the master the control database's topology names
// now; the writer LISTENs on channel "topology" and switches at once when the group's epoch
// changes (as instactl's app server does), and re-reads the topology after a failed write.
//
// A missed tick is not caught up after a stall, and the writer stops by itself after
// -max-seconds, so a forgotten one cannot run forever.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/topology"
)

func main() {
	kind := flag.String("kind", "pg", "pg or redis")
	run := flag.String("run", "", "round id: PG rows carry it, the Redis key is fo:<run>")
	out := flag.String("out", "", "acks log to write")
	rate := flag.Float64("rate", 200, "attempts per second")
	dsn := flag.String("dsn", "", "pg: DSN of the write path")
	control := flag.String("control", "", "redis: DSN of the control database (topology)")
	group := flag.String("group", "redis-0", "redis: replication group to write to")
	opTimeout := flag.Duration("op-timeout", time.Second, "timeout of one write")
	maxSeconds := flag.Float64("max-seconds", 900, "stop after this long")
	flag.Parse()
	if *run == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "writer: -run and -out are required")
		os.Exit(2)
	}
	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "writer:", err)
		os.Exit(1)
	}
	defer f.Close()
	log := &ackLog{f: f}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, time.Duration(*maxSeconds*float64(time.Second)))
	defer cancel()

	var w writer
	switch *kind {
	case "pg":
		if *dsn == "" {
			fmt.Fprintln(os.Stderr, "writer: -dsn is required for pg")
			os.Exit(2)
		}
		w = &pgWriter{dsn: *dsn, run: *run, log: log}
	case "redis":
		if *control == "" {
			fmt.Fprintln(os.Stderr, "writer: -control is required for redis")
			os.Exit(2)
		}
		rw := &redisWriter{key: "fo:" + *run, group: *group, control: *control, log: log}
		if err := rw.follow(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "writer:", err)
			os.Exit(1)
		}
		w = rw
	default:
		fmt.Fprintf(os.Stderr, "writer: -kind %q: want pg or redis\n", *kind)
		os.Exit(2)
	}

	interval := time.Duration(float64(time.Second) / *rate)
	next := time.Now()
	for seq := int64(1); ctx.Err() == nil; seq++ {
		opCtx, opCancel := context.WithTimeout(ctx, *opTimeout)
		start := time.Now()
		node, err := w.write(opCtx, seq)
		opCancel()
		now := time.Now()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			log.line("F %d %.6f %s", seq, epoch(now), class(err))
		} else {
			log.line("A %d %.6f %s %.2f", seq, epoch(now), node, float64(now.Sub(start).Microseconds())/1000)
		}
		next = next.Add(interval)
		if d := time.Until(next); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		} else {
			next = time.Now() // no burst after a stall
		}
	}
	w.close()
}

// writer writes one sequence number and returns the node that acknowledged it.
type writer interface {
	write(ctx context.Context, seq int64) (string, error)
	close()
}

type ackLog struct {
	mu sync.Mutex
	f  *os.File
}

func (l *ackLog) line(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.f, format+"\n", args...)
}

func epoch(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// class is a failed attempt's error class: one word, as writer.py logs it.
func class(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	default:
		s := strings.Fields(err.Error())
		if len(s) == 0 {
			return "error"
		}
		return strings.Trim(s[0], ":")
	}
}

type pgWriter struct {
	dsn, run string
	log      *ackLog
	conn     *pgx.Conn
	node     string
}

func (w *pgWriter) write(ctx context.Context, seq int64) (string, error) {
	if w.conn == nil {
		cfg, err := pgx.ParseConfig(w.dsn)
		if err != nil {
			return "", err
		}
		// PgBouncer in transaction mode keeps no prepared statements between transactions.
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return "", err
		}
		var node string
		if err := c.QueryRow(ctx, "SELECT host(inet_server_addr()) || ':' || inet_server_port()").Scan(&node); err != nil {
			c.Close(context.Background())
			return "", err
		}
		w.conn, w.node = c, node
		w.log.line("C %.6f %s", epoch(time.Now()), node)
	}
	if _, err := w.conn.Exec(ctx, "INSERT INTO fo_writes(run, seq) VALUES ($1, $2)", w.run, seq); err != nil {
		w.close()
		return "", err
	}
	return w.node, nil
}

func (w *pgWriter) close() {
	if w.conn != nil {
		w.conn.Close(context.Background())
		w.conn = nil
	}
}

type redisWriter struct {
	key, group, control string
	log                 *ackLog

	mu     sync.Mutex
	client *redis.Client
	addr   string
	epoch  int64
}

// follow reads the group's master now and keeps following it in the background.
func (w *redisWriter) follow(ctx context.Context) error {
	if err := w.reload(ctx); err != nil {
		return err
	}
	go func() {
		for ctx.Err() == nil {
			conn, err := pgx.Connect(ctx, w.control)
			if err != nil {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			_ = w.reload(ctx) // a change while we were not listening
			_ = topology.Listen(ctx, conn, func(group string, _ int64) {
				if group == w.group {
					_ = w.reload(ctx)
				}
			})
			conn.Close(context.Background())
		}
	}()
	return nil
}

// reload reads the topology and switches to the group's master when its epoch moved on.
func (w *redisWriter) reload(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, w.control)
	if err != nil {
		return fmt.Errorf("control database: %w", err)
	}
	defer conn.Close(context.Background())
	t, err := topology.Load(ctx, conn)
	if err != nil {
		return err
	}
	g, ok := t.Group(w.group)
	if !ok {
		return fmt.Errorf("no replication group %q in the topology", w.group)
	}
	m, err := g.PrimaryMember()
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client != nil && g.Epoch <= w.epoch {
		return nil
	}
	if w.client != nil {
		_ = w.client.Close()
	}
	w.addr, w.epoch = m.Addr.String(), g.Epoch
	w.client = redis.NewClient(&redis.Options{Addr: w.addr, MaxRetries: -1, DialTimeout: 500 * time.Millisecond})
	w.log.line("C %.6f %s", epoch(time.Now()), w.addr)
	return nil
}

func (w *redisWriter) write(ctx context.Context, seq int64) (string, error) {
	w.mu.Lock()
	c, addr := w.client, w.addr
	w.mu.Unlock()
	if err := c.RPush(ctx, w.key, seq).Err(); err != nil {
		_ = w.reload(context.WithoutCancel(ctx))
		return "", err
	}
	return addr, nil
}

func (w *redisWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client != nil {
		_ = w.client.Close()
	}
}
