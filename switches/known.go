package switches

import (
	"fmt"
	"strings"
)

// Def is one switch the app knows: its name, its value when nobody set it, and what it does.
type Def struct {
	Name    string `json:"name"`
	Default bool   `json:"default"`
	Help    string `json:"help"`
}

// The names of the switches, for the code that consults them.
const (
	FeedRanking = "feed.ranking"
	FeedFanout  = "feed.fanout"
	Uploads     = "uploads"
	ReadOnly    = "readonly"
)

// Known lists every switch, in the order list shows them. The app consults exactly these;
// Set refuses any other name.
var Known = []Def{
	{Name: FeedRanking, Default: true, Help: "home feed with photo objects (memcached, then Postgres); off: the feed from Redis alone (ids and owners), no database"},
	{Name: FeedFanout, Default: true, Help: "fan-out of new photos to followers' feeds; off: photos of users with many followers are queued until it is on again"},
	{Name: Uploads, Default: true, Help: "photo uploads; off: POST /photos answers 503 with Retry-After"},
	{Name: ReadOnly, Default: false, Help: "read-only mode; on: every write answers 503 with Retry-After, reads still work"},
}

// Names returns the known switch names in Known's order.
func Names() []string {
	out := make([]string, len(Known))
	for i, d := range Known {
		out[i] = d.Name
	}
	return out
}

// Lookup returns the definition of name, or an error that lists the known switches.
func Lookup(name string) (Def, error) {
	for _, d := range Known {
		if d.Name == name {
			return d, nil
		}
	}
	return Def{}, fmt.Errorf("unknown switch %q: the known switches are %s", name, strings.Join(Names(), ", "))
}

// ParseValue reads "on" or "off".
func ParseValue(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, fmt.Errorf("switch value must be on or off (got %q)", s)
}

// Word renders a value as on or off.
func Word(on bool) string {
	if on {
		return "on"
	}
	return "off"
}
