package templates

import (
	"fmt"

	"github.com/instactl/instactl/stack"
)

// ForHost renders the user-data of host h of a stack, with every address taken from the stack's
// fixed addressing (a replica names its primary before the primary exists). appEnv is the app
// server's environment for app hosts (control DSN, Redis, memcached, S3), nil for others.
func ForHost(st *stack.Stack, h stack.HostRef, appEnv map[string]string) (string, error) {
	r := st.Role(h.Role)
	if r == nil {
		return "", fmt.Errorf("stack %s has no role %q", st.Name, h.Role)
	}
	if h.Index < 0 || h.Index >= r.Count {
		return "", fmt.Errorf("role %s has hosts 0-%d, not %d", h.Role, r.Count-1, h.Index)
	}
	addr, err := st.Address(h)
	if err != nil {
		return "", err
	}
	primary, err := st.Address(stack.HostRef{Role: h.Role, Index: r.PrimaryOf(h.Index)})
	if err != nil {
		return "", err
	}
	d, err := FromStack(st, h.Role, h.Index, addr.String(), primary.String())
	if err != nil {
		return "", err
	}
	if h.Role == RoleApp {
		d.AppEnv = appEnv
	}
	return UserData(h.Role, d)
}
