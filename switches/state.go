package switches

import "time"

// Setting is a switch someone set: its value, who set it, when and why, and when it expires.
type Setting struct {
	Name   string    `json:"name"`
	On     bool      `json:"on"`
	Reason string    `json:"reason"`
	SetBy  string    `json:"set_by"`
	SetAt  time.Time `json:"set_at"`
	// ExpiresAt, when set, is the moment the setting stops applying and the switch is back at
	// its default.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// Version is the global version of the change that set it.
	Version int64 `json:"version"`
}

// Expired reports whether s no longer applies at now.
func (s Setting) Expired(now time.Time) bool {
	return s.ExpiresAt != nil && !now.Before(*s.ExpiresAt)
}

// State is every switch that was set, at one global version. Version 0 with no settings is
// the state before any switch was ever set: every switch at its default.
type State struct {
	Version  int64              `json:"version"`
	Settings map[string]Setting `json:"settings"`
}

// Source says why a switch has the value it has.
const (
	SourceDefault = "default" // never set
	SourceSet     = "set"     // set, and not expired
	SourceExpired = "expired" // set, expired: back at the default
)

// Status is one switch as it is at a moment: its effective value and why.
type Status struct {
	Name    string   `json:"name"`
	On      bool     `json:"on"`
	Default bool     `json:"default"`
	Source  string   `json:"source"`
	Setting *Setting `json:"setting,omitempty"`
}

// Status returns the effective state of switch name at now. An unknown name is reported off
// with source default: callers ask only for Known names.
func (s State) Status(name string, now time.Time) Status {
	d, _ := Lookup(name)
	st := Status{Name: name, On: d.Default, Default: d.Default, Source: SourceDefault}
	set, ok := s.Settings[name]
	if !ok {
		return st
	}
	st.Setting = &set
	if set.Expired(now) {
		st.Source = SourceExpired
		return st
	}
	st.On, st.Source = set.On, SourceSet
	return st
}

// On returns the effective value of switch name at now.
func (s State) On(name string, now time.Time) bool { return s.Status(name, now).On }

// Statuses returns every known switch at now, in Known's order.
func (s State) Statuses(now time.Time) []Status {
	out := make([]Status, 0, len(Known))
	for _, d := range Known {
		out = append(out, s.Status(d.Name, now))
	}
	return out
}
