package stack

import (
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// decoder walks a YAML node tree into Go values by the fields' json names, recording where each
// key path was written so that validation errors can point at it, and collecting every error.
type decoder struct {
	file string
	errs Errors
	pos  map[string]Pos
	// aliases counts the aliases followed: each one decodes its anchor's value again, so a file
	// of aliases of aliases ("billion laughs") would cost exponential work without a bound.
	aliases int
}

const (
	// maxAliases is how many aliases one file may use; a stack file needs a handful at most.
	maxAliases = 100
	// maxErrors stops decoding once this many problems are found: a file with more is the wrong
	// file, and the first ones say so.
	maxErrors = 100
)

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	if d.full() {
		return
	}
	e := &Error{File: d.file, Path: path, Msg: fmt.Sprintf(format, args...), Pos: Pos{Line: 1, Column: 1}}
	if n != nil && n.Line > 0 {
		e.Pos = Pos{Line: n.Line, Column: n.Column}
	}
	d.errs = append(d.errs, e)
	if len(d.errs) == maxErrors {
		d.errs = append(d.errs, &Error{File: d.file, Pos: e.Pos,
			Msg: fmt.Sprintf("more than %d problems; stopped reading here: fix these first (is this the right file?)", maxErrors)})
	}
}

// full reports whether the decoder stopped collecting errors.
func (d *decoder) full() bool { return len(d.errs) > maxErrors }

var (
	durationType = reflect.TypeOf(time.Duration(0))
	addrType     = reflect.TypeOf(netip.Addr{})
	rolesType    = reflect.TypeOf([]Role{})
)

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	if n.Tag == "!!null" {
		return "nothing"
	}
	return fmt.Sprintf("%q", n.Value)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (d *decoder) decode(n *yaml.Node, path string, v reflect.Value) {
	if d.full() {
		return
	}
	if n.Kind == yaml.AliasNode {
		if d.aliases++; d.aliases > maxAliases {
			d.errorf(n, path, "more than %d aliases (*name) in one file; write the values out", maxAliases)
			return
		}
		alias := n
		if n = n.Alias; n == nil {
			d.errorf(alias, path, "alias *%s names no anchor", alias.Value)
			return
		}
	}
	d.pos[path] = Pos{Line: n.Line, Column: n.Column}
	switch {
	case v.Type() == rolesType:
		d.decodeRoles(n, path, v)
		return
	case v.Type() == durationType:
		dur, err := time.ParseDuration(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil {
			d.errorf(n, path, "expected a duration such as 30s or 5m, found %s", kindName(n))
			return
		}
		v.SetInt(int64(dur))
		return
	case v.Type() == addrType:
		a, err := netip.ParseAddr(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil {
			d.errorf(n, path, "expected an IP address such as 127.0.10.1, found %s", kindName(n))
			return
		}
		v.Set(reflect.ValueOf(a))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, path, v)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
			d.errorf(n, path, "expected a string, found %s", kindName(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int, reflect.Int64:
		i, err := strconv.ParseInt(n.Value, 10, 64)
		if n.Kind != yaml.ScalarNode || err != nil {
			d.errorf(n, path, "expected a whole number, found %s", kindName(n))
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		f, err := strconv.ParseFloat(n.Value, 64)
		if n.Kind != yaml.ScalarNode || err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.errorf(n, path, "expected a number such as 0.95, found %s", kindName(n))
			return
		}
		v.SetFloat(f)
	case reflect.Pointer:
		// An optional section: written means present.
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, path, v.Elem())
	case reflect.Bool:
		b, err := strconv.ParseBool(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil {
			d.errorf(n, path, "expected true or false, found %s", kindName(n))
			return
		}
		v.SetBool(b)
	case reflect.Slice:
		d.decodeStrings(n, path, v)
	default:
		d.errorf(n, path, "internal: cannot decode into %s", v.Type())
	}
}

// decodeStrings accepts a list of scalars or one comma-separated scalar ("1,10%,100%").
func (d *decoder) decodeStrings(n *yaml.Node, path string, v reflect.Value) {
	var items []string
	switch n.Kind {
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if d.full() {
				return
			}
			d.pos[fmt.Sprintf("%s[%d]", path, i)] = Pos{Line: c.Line, Column: c.Column}
			if c.Kind != yaml.ScalarNode {
				d.errorf(c, fmt.Sprintf("%s[%d]", path, i), "expected a scalar, found %s", kindName(c))
				continue
			}
			items = append(items, c.Value)
		}
	case yaml.ScalarNode:
		for _, s := range strings.Split(n.Value, ",") {
			if s = strings.TrimSpace(s); s != "" {
				items = append(items, s)
			}
		}
	default:
		d.errorf(n, path, "expected a list, found %s", kindName(n))
		return
	}
	v.Set(reflect.ValueOf(items))
}

func (d *decoder) decodeStruct(n *yaml.Node, path string, v reflect.Value) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping of keys, found %s", kindName(n))
		return
	}
	fields := map[string]int{}
	var names []string
	for i := 0; i < v.NumField(); i++ {
		name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
		if name == "" || name == "-" || name == "name" && v.Type() == reflect.TypeOf(Role{}) {
			continue
		}
		fields[name] = i
		names = append(names, name)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content) && !d.full(); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		kp := join(path, k.Value)
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "a key must be a plain name, found %s", kindName(k))
			continue
		}
		if seen[k.Value] {
			d.errorf(k, kp, "key is given twice; keep one")
			continue
		}
		seen[k.Value] = true
		idx, ok := fields[k.Value]
		if !ok {
			d.unknownKey(k, kp, names)
			continue
		}
		d.decode(val, kp, v.Field(idx))
	}
}

func (d *decoder) unknownKey(k *yaml.Node, path string, names []string) {
	sort.Strings(names)
	if s := suggest(k.Value, names); s != "" {
		d.errorf(k, path, "unknown key %q; did you mean %q?", k.Value, s)
		return
	}
	d.errorf(k, path, "unknown key %q; expected one of: %s", k.Value, strings.Join(names, ", "))
}

// decodeRoles reads the roles mapping (name -> role) in file order.
func (d *decoder) decodeRoles(n *yaml.Node, path string, v reflect.Value) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping of role name to role, found %s", kindName(n))
		return
	}
	var roles []Role
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content) && !d.full(); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		kp := join(path, k.Value)
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "a role name must be a plain name, found %s", kindName(k))
			continue
		}
		if seen[k.Value] {
			d.errorf(k, kp, "role is declared twice; keep one")
			continue
		}
		seen[k.Value] = true
		d.pos[kp+".name"] = Pos{Line: k.Line, Column: k.Column}
		r := Role{Name: k.Value}
		d.decode(val, kp, reflect.ValueOf(&r).Elem())
		roles = append(roles, r)
	}
	v.Set(reflect.ValueOf(roles))
}
