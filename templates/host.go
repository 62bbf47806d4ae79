package templates

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/instactl/instactl/cloud"
	"github.com/instactl/instactl/stack"
	"github.com/instactl/instactl/topology"
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

// PhotoBucket is the S3 bucket the stack's photos live in.
func PhotoBucket(st *stack.Stack) string { return cloud.PhotoBucket(st.Name) }

// AppEnv is the app server's environment derived from the stack, the same on every app host:
// the control database, the first Redis master, every memcached host and the photo bucket. On
// the sandbox S3 is the local moto_server, so the AWS SDK is pointed there and never looks for
// instance metadata. The host's own PgBouncer (INSTAGRAM_PGBOUNCER) is per host: app.env
// renders it from Data.Address and Data.PgBouncerPort.
//
// INSTAGRAM_CONTROL_DSN is a multi-host libpq URL over every member of the control group (the
// first Postgres group, members in stack order) with target_session_attrs=read-write:
// whichever member is primary answers, a standby or a fenced old primary does not, so the app
// finds the control database after a failover without a new app.env.
func AppEnv(st *stack.Stack) (map[string]string, error) {
	env := map[string]string{"INSTAGRAM_S3_BUCKET": PhotoBucket(st), "INSTAGRAM_PHOTO_BASE_URL": PhotoBaseURL(st)}
	hostPort := func(role string, index int) (string, error) {
		a, err := st.Address(stack.HostRef{Role: role, Index: index})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s:%d", a, st.Role(role).Port), nil
	}
	if dsn, err := ControlDSN(st, "app"); err != nil {
		return nil, err
	} else if dsn != "" {
		env["INSTAGRAM_CONTROL_DSN"] = dsn
	}
	if st.Role(RoleRedis) != nil {
		rd, err := hostPort(RoleRedis, 0)
		if err != nil {
			return nil, err
		}
		env["INSTAGRAM_REDIS_ADDR"] = rd
	}
	if r := st.Role(RoleMemcached); r != nil {
		var addrs []string
		for i := 0; i < r.Count; i++ {
			mc, err := hostPort(RoleMemcached, i)
			if err != nil {
				return nil, err
			}
			addrs = append(addrs, mc)
		}
		env["INSTAGRAM_MEMCACHED_ADDRS"] = strings.Join(addrs, ",")
	}
	if st.Provider == "sandbox" {
		env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:" + strconv.Itoa(st.Sandbox.MotoPort)
		env["AWS_REGION"] = st.Region
		env["AWS_ACCESS_KEY_ID"] = "sandbox"
		env["AWS_SECRET_ACCESS_KEY"] = "sandbox"
		env["AWS_EC2_METADATA_DISABLED"] = "true"
	}
	return env, nil
}

// ControlDSN is the multi-host URL of the control database as user: every member of the
// control group in stack order, target_session_attrs=read-write, a short connect_timeout so a
// dead member costs little. It is "" for a stack without Postgres groups.
func ControlDSN(st *stack.Stack, user string) (string, error) {
	topo, err := topology.FromStack(st)
	if err != nil {
		return "", fmt.Errorf("templates: control database of stack %s: %w", st.Name, err)
	}
	if len(topo.OfKind(topology.KindPostgres)) == 0 {
		return "", nil
	}
	return topology.ControlDSN(topo, user, st.Shards.ControlDatabase)
}
