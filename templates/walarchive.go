package templates

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"

	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
	"github.com/instactl/instactl/walarchive"
)

// Paths of the continuous WAL archive on pg hosts (docs/pitr.md).
const (
	// ArchiverPath is the archiver Postgres runs as archive_command and restore_command: the
	// instactl binary, installed by `instactl wal install`.
	ArchiverPath = "/opt/instagram/bin/instactl"
	// WALEnvFile is the archive's configuration (bucket, group, S3 endpoint).
	WALEnvFile = "/etc/instagram/wal.env"
)

// WALArchive turns on the continuous WAL archive of a pg host: archive_mode = always,
// archive_command = instactl wal push, into Bucket under wal/Group/.
type WALArchive struct {
	Bucket string `json:"bucket"`
	// Group is the host's replication group (pg-0): every member archives into its directory.
	Group string `json:"group"`
	// TimeoutSeconds is archive_timeout.
	TimeoutSeconds int `json:"timeout_seconds"`
	// Env holds extra lines of WALEnvFile: the sandbox's moto endpoint and credentials.
	Env map[string]string `json:"env,omitempty"`
}

// WALBucket is the S3 bucket of the stack's WAL archive.
func WALBucket(st *stack.Stack) string { return st.Name + "-wal" }

// walArchiveFromStack is the archive of host, nil when the stack leaves it off.
func walArchiveFromStack(st *stack.Stack, host string) (*WALArchive, error) {
	if !st.Backup.WALArchive {
		return nil, nil
	}
	topo, err := topology.FromStack(st)
	if err != nil {
		return nil, fmt.Errorf("templates: wal archive of %s: %w", host, err)
	}
	g, ok := topo.GroupOf(host)
	if !ok {
		return nil, fmt.Errorf("templates: wal archive of %s: it is in no replication group", host)
	}
	return WALArchiveFor(st, g.Name), nil
}

// WALArchiveFor is the archive of replication group group as the stack configures it (whether
// or not backup.wal_archive is on): what a restore's restore_command reads.
func WALArchiveFor(st *stack.Stack, group string) *WALArchive {
	w := &WALArchive{Bucket: WALBucket(st), Group: group, TimeoutSeconds: int(st.Backup.ArchiveTimeout.Seconds()),
		Env: map[string]string{walarchive.EnvRegion: st.Region}}
	if st.Provider == "sandbox" {
		w.Env[walarchive.EnvEndpoint] = "http://127.0.0.1:" + strconv.Itoa(st.Sandbox.MotoPort)
		w.Env[walarchive.EnvAccessKey] = "sandbox"
		w.Env[walarchive.EnvSecretKey] = "sandbox"
	}
	return w
}

// Config is the archive as package walarchive opens it.
func (w *WALArchive) Config() walarchive.Config {
	return walarchive.Config{Bucket: w.Bucket, Group: w.Group, Endpoint: w.Env[walarchive.EnvEndpoint],
		Region: w.Env[walarchive.EnvRegion], AccessKey: w.Env[walarchive.EnvAccessKey], SecretKey: w.Env[walarchive.EnvSecretKey]}
}

var walValueRe = regexp.MustCompile(`^[A-Za-z0-9._:/@-]*$`)

func (w *WALArchive) validate() error {
	if w.TimeoutSeconds < 1 {
		return fmt.Errorf("wal_archive.timeout_seconds must be >= 1 (got %d)", w.TimeoutSeconds)
	}
	for k, v := range w.lines() {
		if !envKeyRe.MatchString(k) || !walValueRe.MatchString(v) {
			return fmt.Errorf("wal_archive: %s=%q cannot be written to %s", k, v, WALEnvFile)
		}
	}
	return nil
}

func (w *WALArchive) lines() map[string]string {
	m := map[string]string{walarchive.EnvBucket: w.Bucket, walarchive.EnvGroup: w.Group}
	for k, v := range w.Env {
		m[k] = v
	}
	return m
}

// EnvFile is WALEnvFile's content, sorted.
func (w *WALArchive) EnvFile() string {
	m := w.lines()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for _, k := range keys {
		s += k + "=" + m[k] + "\n"
	}
	return s
}

// ArchiveCommand is archive_command.
func (w *WALArchive) ArchiveCommand() string {
	return ArchiverPath + " wal push --config " + WALEnvFile + " %p"
}
