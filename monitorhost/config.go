package monitorhost

import "sort"

// Files is the monitor host's configuration: paths relative to templates.MonitorConfigDir
// ("prometheus.yml", "alertmanager.yml", rule files beside them or under "rules/") and their
// content. Package monitor generates them from the stack; Up installs them.
type Files map[string]string

// Names lists the files in order.
func (f Files) Names() []string {
	out := make([]string, 0, len(f))
	for n := range f {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
