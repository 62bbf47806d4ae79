package shardmove

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/instactl/instactl/remote"
)

// HostRunner runs cmd on a host and returns its standard output; a non-zero exit is an error.
type HostRunner func(ctx context.Context, cmd remote.Command) ([]byte, error)

// FreeBytes reports the free space of the filesystem holding the data directory of the
// PostgreSQL server behind dsn: it asks the server for data_directory, then runs df on its
// host with run. It is the room pre-check of a move (Config.FreeBytes).
func FreeBytes(ctx context.Context, dsn string, run HostRunner) (int64, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	var dir string
	err = conn.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&dir)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return 0, fmt.Errorf("read data_directory: %w", err)
	}
	out, err := run(ctx, dfCommand(dir))
	if err != nil {
		return 0, err
	}
	return parseDF(out)
}

// dfCommand asks for the bytes available on the filesystem holding dir.
func dfCommand(dir string) remote.Command {
	return remote.Cmd("df", "-P", "-B1", "--", dir)
}

// parseDF reads the "Available" column of `df -P -B1` output.
func parseDF(out []byte) (int64, error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 {
		return 0, fmt.Errorf("unexpected df output %q", out)
	}
	fields := strings.Fields(lines[len(lines)-1])
	if len(fields) < 4 {
		return 0, fmt.Errorf("unexpected df output %q", out)
	}
	n, err := strconv.ParseInt(fields[3], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("unexpected df output %q: %w", out, err)
	}
	return n, nil
}
