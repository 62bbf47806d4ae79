package monitorhost

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/instactl/instactl/errtext"
	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/templates"
)

// Host is the stack's monitor host as instactl reaches it.
type Host struct {
	// Target is its SSH target.
	Target remote.Target
	// Address is its private address: Prometheus, Alertmanager and blackbox listen there.
	Address string
	// PrometheusPort is the monitor role's port.
	PrometheusPort int
	// ServiceManager is templates.ServiceManagerSystemd or templates.ServiceManagerSandbox.
	ServiceManager string
}

// HostOf finds the monitor host of st: host 0 of its monitor role.
func HostOf(st *stack.Stack) (Host, error) {
	r := st.Role(stack.MonitorRole)
	if r == nil {
		return Host{}, fmt.Errorf("stack %s declares no %s role: add roles.%s: {} to %s and run instactl apply (or sandbox up)",
			st.Name, stack.MonitorRole, stack.MonitorRole, st.Path)
	}
	ref := stack.HostRef{Role: stack.MonitorRole}
	a, err := st.Address(ref)
	if err != nil {
		return Host{}, err
	}
	sm := templates.ServiceManagerSystemd
	if st.Provider == "sandbox" {
		sm = templates.ServiceManagerSandbox
	}
	return Host{
		Target:         remote.Target{Name: ref.Name(), Address: a.String(), Port: st.SSH.Port, User: st.SSH.User},
		Address:        a.String(),
		PrometheusPort: r.Port,
		ServiceManager: sm,
	}, nil
}

// PrometheusURL and AlertmanagerURL are the services' base URLs on the monitor host's address.
func (h Host) PrometheusURL() string {
	return "http://" + net.JoinHostPort(h.Address, strconv.Itoa(h.PrometheusPort))
}

// AlertmanagerURL is Alertmanager's base URL on the monitor host's address.
func (h Host) AlertmanagerURL() string {
	return "http://" + net.JoinHostPort(h.Address, strconv.Itoa(templates.AlertmanagerPort))
}

// services are the monitor host's services `monitor up` starts when they are stopped.
var services = []string{templates.ServicePrometheus, templates.ServiceAlertmanager, templates.ServiceBlackbox}

// UpResult is what Up did.
type UpResult struct {
	Host string `json:"host"`
	// Files are the installed files, relative to templates.MonitorConfigDir.
	Files []string `json:"files"`
	// Started are the services that were stopped and are running now.
	Started []string `json:"started,omitempty"`
	// Reloaded are the services that read the new configuration by a reload.
	Reloaded []string `json:"reloaded,omitempty"`
	// PrometheusURL and AlertmanagerURL are where the services answer (the host's address).
	PrometheusURL   string `json:"prometheus_url"`
	AlertmanagerURL string `json:"alertmanager_url"`
}

// Up installs files on the monitor host and makes Prometheus and Alertmanager run with them:
// the files land in a staging directory, promtool and amtool check them there, and only then do
// they replace the old ones (the rules directory as a whole); stopped services are started,
// running ones reloaded. A configuration the tools reject changes nothing.
func Up(ctx context.Context, d remote.Dialer, h Host, files Files) (*UpResult, error) {
	for _, want := range []string{"prometheus.yml", "alertmanager.yml"} {
		if _, ok := files[want]; !ok {
			return nil, fmt.Errorf("monitor up: the generated configuration has no %s", want)
		}
	}
	c, err := d.Dial(ctx, h.Target)
	if err != nil {
		return nil, fmt.Errorf("monitor up: %w", err)
	}
	archive, err := tarFiles(files)
	if err != nil {
		return nil, fmt.Errorf("monitor up: %w", err)
	}
	res, err := c.Run(ctx, InstallCommand(templates.MonitorConfigDir), bytes.NewReader(archive))
	if err != nil {
		return nil, fmt.Errorf("monitor up: install the configuration on %s: %w", h.Target, err)
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("%s", errtext.Cause(fmt.Sprintf("monitor up: %s refused the configuration (exit %d), nothing changed",
			h.Target, res.ExitCode), string(res.Stderr)+"\n"+string(res.Stdout)))
	}
	out := &UpResult{Host: h.Target.Name, Files: files.Names(), PrometheusURL: h.PrometheusURL(), AlertmanagerURL: h.AlertmanagerURL()}
	for _, s := range services {
		st, err := c.Run(ctx, remote.Command(templates.StatusCommand(h.ServiceManager, s)), nil)
		if err != nil {
			return out, fmt.Errorf("monitor up: status of %s on %s: %w", s, h.Target, err)
		}
		if st.ExitCode == 0 {
			continue
		}
		r, err := c.Run(ctx, remote.Command(templates.StartCommand(h.ServiceManager, s)), nil)
		if err != nil {
			return out, fmt.Errorf("monitor up: start %s on %s: %w", s, h.Target, err)
		}
		if r.ExitCode != 0 {
			return out, fmt.Errorf("monitor up: start %s on %s: %w", s, h.Target, r.Err())
		}
		out.Started = append(out.Started, s)
	}
	api := NewAPI(c, h)
	for _, s := range []struct{ name, base string }{
		{templates.ServicePrometheus, h.PrometheusURL()}, {templates.ServiceAlertmanager, h.AlertmanagerURL()},
	} {
		if err := api.waitReady(ctx, s.base, 2*time.Minute); err != nil {
			return out, fmt.Errorf("monitor up: %s on %s: %w", s.name, h.Target, err)
		}
		if err := api.reload(ctx, s.base); err != nil {
			return out, fmt.Errorf("monitor up: reload %s on %s: %w", s.name, h.Target, err)
		}
		out.Reloaded = append(out.Reloaded, s.name)
	}
	return out, nil
}

// InstallCommand is the script Up runs on the monitor host with a tar archive of the files on
// stdin: unpack into a staging directory beside dir, check prometheus.yml (with its rule files)
// with promtool and alertmanager.yml with amtool, then move the files into dir and replace
// dir/rules as a whole, so a rule file dropped from the set is gone. Exit 1 with the tools'
// words on stderr leaves dir as it was.
func InstallCommand(dir string) remote.Command {
	return remote.Script(fmt.Sprintf(`set -eu
dir=%s
mkdir -p -- "$dir"
new=$(mktemp -d -- "$dir.new.XXXXXX")
trap 'rm -rf -- "$new"' EXIT
tar -x -C "$new" --no-same-owner
mkdir -p -- "$new/rules"
promtool check config "$new/prometheus.yml" >&2
amtool check-config "$new/alertmanager.yml" >&2
for f in "$new"/*; do
  [ -f "$f" ] || continue
  chmod 0644 "$f"
  mv -f -- "$f" "$dir/"
done
chmod 0755 "$new/rules"
rm -rf -- "$dir/rules.old"
if [ -d "$dir/rules" ]; then mv -- "$dir/rules" "$dir/rules.old"; fi
mv -- "$new/rules" "$dir/rules"
rm -rf -- "$dir/rules.old"`, remote.Quote(dir)))
}

// tarFiles packs files (relative paths) into a tar archive.
func tarFiles(files Files) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, name := range files.Names() {
		if strings.HasPrefix(name, "/") || strings.Contains(name, "..") {
			return nil, fmt.Errorf("configuration file %q is not a relative path inside the configuration directory", name)
		}
		if i := strings.LastIndex(name, "/"); i > 0 && !dirs[name[:i]] {
			dirs[name[:i]] = true
			if err := tw.WriteHeader(&tar.Header{Name: name[:i] + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				return nil, err
			}
		}
		body := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
