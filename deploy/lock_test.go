package deploy

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestHolderGone(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tc := range []struct {
		name string
		info LockInfo
		gone bool
	}{
		{"this live process", LockInfo{Hostname: host, PID: os.Getpid(), Time: now}, false},
		{"a process that exited", LockInfo{Hostname: host, PID: dead.Process.Pid, Time: now}, true},
		{"a pid reused by a process started after the lock", LockInfo{Hostname: host, PID: os.Getpid(), Time: now.Add(-time.Hour)}, true},
		{"another machine", LockInfo{Hostname: host + "-other", PID: dead.Process.Pid, Time: now}, false},
		{"an old lock without a pid", LockInfo{Hostname: host, Time: now}, false},
	} {
		got := HolderGone(tc.info)
		if (got != "") != tc.gone {
			t.Errorf("%s: HolderGone = %q, want gone=%v", tc.name, got, tc.gone)
		}
	}
	le := &LockedError{Host: "app-0", Info: LockInfo{RunID: "R1"}, Gone: "its process 42 on x is gone"}
	for _, want := range []string{"stale", "process 42", "--resume R1", "instactl lock release --force"} {
		if !strings.Contains(le.Error(), want) {
			t.Errorf("stale lock error lacks %q: %s", want, le.Error())
		}
	}
}
