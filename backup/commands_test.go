package backup

import (
	"strings"
	"testing"
	"time"
)

func TestCommandStrings(t *testing.T) {
	c := commands{}
	tests := []struct {
		name, got, want string
	}{
		{"lock nowait", c.lock("me since t", 0).String(),
			`sh -c 'mkdir -p /var/lib/instagram/backup && flock -E 75 -n /var/lib/instagram/backup/lock sh -c '\''printf '\''\'\'''\''%s\n'\''\'\'''\'' "$1" >"$2.tmp" && mv "$2.tmp" "$2" && echo acquired && exec cat >/dev/null'\'' instactl-backup-lock '\''me since t'\'' /var/lib/instagram/backup/lock.holder; rc=$?; if [ $rc -eq 75 ]; then cat /var/lib/instagram/backup/lock.holder 2>/dev/null; fi; exit $rc'`},
		{"freeze", c.freeze("/var/lib/postgresql").String(), `sh -c 'm=$1 f=$2; { mkdir -p "$(dirname "$f")" && { grep -vF "mountpoint=\"$m\"}" "$f" 2>/dev/null; printf '\''instactl_volume_frozen_since_seconds{mountpoint="%s"} %s\n'\'' "$m" "$(date +%s)"; } >"$f.tmp" && mv "$f.tmp" "$f"; } 2>/dev/null; exec xfs_freeze -f "$m"' instactl-freeze /var/lib/postgresql /var/lib/instagram/textfile/instactl_freeze.prom`},
		{"freeze sudo", strings.Join(commands{sudo: true}.freeze("/data")[:4], " "), `sudo -n sh -c`},
		{"sync", c.syncMounts([]string{"/a", "/b"}).String(), `sync -f /a /b`},
		{"psql", c.psql("/usr/lib/postgresql/15/bin", 5432, "postgres", "CHECKPOINT").String(),
			`runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -At -v 'ON_ERROR_STOP=1' -h /run/postgresql -p 5432 -d postgres -c CHECKPOINT`},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, tt.got, tt.want)
		}
	}
}

func TestLockWaitUsesTimeout(t *testing.T) {
	got := commands{}.lock("h", 1500*time.Millisecond)
	if s := got.String(); !strings.Contains(s, "flock -E 75 -w 1.5 /var/lib/instagram/backup/lock") {
		t.Errorf("lock with wait: %s", s)
	}
}

func TestGuardianCommand(t *testing.T) {
	cmd := commands{}.armGuardian(2500*time.Millisecond, "/usr/lib/postgresql/15/bin", 5432, []string{"/var/lib/postgresql"})
	s := cmd[len(cmd)-1]
	for _, want := range []string{
		`setsid sh -c`, `instactl-thaw-guardian /var/lib/instagram/backup/guardian.pid 2.5 /var/lib/instagram/backup/guardian.fired 5432 /usr/lib/postgresql/15/bin /var/lib/instagram/textfile/instactl_freeze.prom /var/lib/postgresql`,
		`</dev/null >>/var/log/instagram/backup-guardian.log 2>&1 &`, `sleep "$2"`, `xfs_freeze -u "$m"`, `pg_wal_replay_resume()`,
		`pidfile=$1 `, `rm -f "$pidfile"`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("guardian script lacks %q:\n%s", want, s)
		}
	}
	kill := commands{}.killGuardian()[2]
	for _, want := range []string{`grep -q instactl-thaw-guardian`, `kill -TERM -$pid`, `echo fired`} {
		if !strings.Contains(kill, want) {
			t.Errorf("kill script lacks %q:\n%s", want, kill)
		}
	}
}

func TestParsers(t *testing.T) {
	if n, err := parseLSN("16/B374D848"); err != nil || n != 0x16B374D848 {
		t.Errorf("parseLSN = %x, %v", n, err)
	}
	st, err := parsePGStatus("t|streaming|0/3000148|0/3000200|1|7301|not paused")
	if err != nil || !st.InRecovery || st.WALReceiver != "streaming" || st.Timeline != 1 || st.PauseState != "not paused" {
		t.Errorf("parsePGStatus = %+v, %v", st, err)
	}
	chk, err := parseCheckRDB("[offset 99] \\o/ RDB looks OK! \\o/\n[info] 12 keys read\n[info] 8 expires\n[info] 3 already expired\n" +
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef  /var/lib/redis/dump.rdb\n")
	if err != nil || chk.Keys != 12 || chk.Expires != 8 || chk.Expired != 3 || len(chk.SHA256) != 64 {
		t.Errorf("parseCheckRDB = %+v, %v", chk, err)
	}
	if _, err := parseCheckRDB("--- RDB ERROR DETECTED ---"); err == nil {
		t.Error("parseCheckRDB accepted a failed check")
	}
	if k, e := keyspaceCounts("# Keyspace\r\ndb0:keys=9,expires=8,avg_ttl=1200\r\ndb2:keys=3,expires=0,avg_ttl=0\r\n"); k != 12 || e != 8 {
		t.Errorf("keyspaceCounts = %d keys, %d expires; want 12, 8", k, e)
	}
	fs := parseFSInfo("/var/lib/postgresql|/dev/loop3|xfs|1234-abcd\nBEGIN\nmeta-data=/dev/loop3 isize=512 agcount=4, agsize=32768 blks\ndata     =  bsize=4096   blocks=131072, imaxpct=25\nEND\n")
	if len(fs) != 1 || fs[0].UUID != "1234-abcd" || fs[0].Geometry["data.bsize"] != "4096" || fs[0].Geometry["meta-data.agcount"] != "4" {
		t.Errorf("parseFSInfo = %+v", fs)
	}
}
