package failover_test

import (
	"testing"

	"github.com/instactl/instactl/failover"
	"github.com/instactl/instactl/templates"
)

// TestSSHServerCommands pins the commands the production Server sends.
func TestSSHServerCommands(t *testing.T) {
	s := failover.NewSSHServer(nil, "pg-1", templates.Data{Mount: "/var/lib/postgresql", PGVersion: "15",
		ServiceManager: templates.ServiceManagerSystemd, ReplicationPassword: `it's \ secret`})
	for name, c := range map[string]struct{ got, want string }{
		"stop":  {s.StopCmd.String(), "systemctl stop instagram-postgres.service"},
		"start": {s.StartCmd.String(), "systemctl start instagram-postgres.service"},
		"controldata": {s.ControlDataCommand().String(),
			"runuser -u postgres -- env 'LC_ALL=C' /usr/lib/postgresql/15/bin/pg_controldata -D /var/lib/postgresql/15/main"},
	} {
		if c.got != c.want {
			t.Errorf("%s command:\n%s\nwant:\n%s", name, c.got, c.want)
		}
	}
}
