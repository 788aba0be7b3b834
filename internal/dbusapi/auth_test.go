package dbusapi_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
)

// authCall is a call of the authorization matrix. The mutating calls make
// sense in this order (web3 is added, then removed) for a caller allowed
// them, so that a success is a real one (svc3 too).
type authCall struct {
	path   dbus.ObjectPath // "" for the manager
	method string
	args   []any
	right  string // "": everyone; "admin"; "health"
}

var authCalls = []authCall{
	{"", "AddService", []any{"svc3", map[string]dbus.Variant{"vips": dbus.MakeVariant([]string{"10.0.0.103"}), "runtime": dbus.MakeVariant(true)}}, "admin"},
	{"", "ChangeService", []any{"svc3", map[string]dbus.Variant{"ports": dbus.MakeVariant("80,443")}}, "admin"},
	{"", "RemoveService", []any{"svc3"}, "admin"},
	{"", "AddBackend", []any{"web3", "10.0.1.13", map[string]dbus.Variant{"runtime": dbus.MakeVariant(true)}}, "admin"},
	{"", "SetWeight", []any{"web2", uint32(7)}, "admin"},
	{"", "Drain", []any{"web2"}, "admin"},
	{"", "Undrain", []any{"web2"}, "admin"},
	{"", "ReportHealth", []any{"web2", false, "timeout"}, "health"},
	{"", "ReportHealth", []any{"web2", true, ""}, "health"},
	{"", "RemoveBackend", []any{"web3"}, "admin"},
	{"", "Reload", nil, "admin"},
	{"", "SetMaintenance", []any{true}, "admin"},
	{"", "SetMaintenance", []any{false}, "admin"},
	{"", "ListServices", nil, ""},
	{"", "ListBackends", nil, ""},
	{"", "GetStats", nil, ""},
	{"", "org.freedesktop.DBus.Properties.Get", []any{dbusname.ManagerIface, "Version"}, ""},
	{"", "org.freedesktop.DBus.Properties.GetAll", []any{dbusname.ManagerIface}, ""},
	{"", "org.freedesktop.DBus.ObjectManager.GetManagedObjects", nil, ""},
	{"", "org.freedesktop.DBus.Introspectable.Introspect", nil, ""},
	{"", "org.freedesktop.DBus.Peer.Ping", nil, ""},
	{"/org/caplance/Caplance1/service/default", "org.freedesktop.DBus.Properties.Get", []any{dbusname.ServiceIface, "VIPs"}, ""},
	{"/org/caplance/Caplance1/service/default", "org.freedesktop.DBus.Properties.GetAll", []any{dbusname.ServiceIface}, ""},
	{"/org/caplance/Caplance1/service/default", "org.freedesktop.DBus.Introspectable.Introspect", nil, ""},
	{"/org/caplance/Caplance1/service/default/backend/web2", "org.freedesktop.DBus.Properties.Get", []any{dbusname.BackendIface, "Weight"}, ""},
	{"/org/caplance/Caplance1/service/default/backend/web2", "org.freedesktop.DBus.Properties.GetAll", []any{dbusname.BackendIface}, ""},
	{"/org/caplance/Caplance1/service/default/backend/web2", "org.freedesktop.DBus.Introspectable.Introspect", nil, ""},
}

// TestAuthorization is caplanced.dbus(7), AUTHORIZATION, twice: on a bus
// with the shipped policy, which refuses first, and on a permissive bus,
// where only caplanced's own check refuses. Every refused call leaves the
// state as it was.
func TestAuthorization(t *testing.T) {
	for _, bus := range []struct {
		name   string
		opts   []dbustest.Option
		denied string
	}{
		{"shipped policy", nil, "org.freedesktop.DBus.Error.AccessDenied"},
		{"permissive policy", []dbustest.Option{dbustest.Permissive()}, dbusapi.ErrorAccessDenied},
	} {
		t.Run(bus.name, func(t *testing.T) {
			e := newEnv(t, envOptions{busOpts: bus.opts})
			for _, caller := range []struct {
				name   string
				cred   dbustest.Credential
				rights []string
			}{
				{"root", dbustest.Root(), []string{"admin", "health"}},
				{"nobody", dbustest.Nobody(t), nil},
				{"admin", dbustest.Admin(t), []string{"admin"}},
				{"health", dbustest.Health(t), []string{"health"}},
				{"daemon user", dbustest.User(t, dbustest.DaemonUser), nil},
			} {
				t.Run(caller.name, func(t *testing.T) {
					conn := e.as(t, caller.cred)
					for _, c := range authCalls {
						what := fmt.Sprintf("%s%v", c.method, c.args)
						before := e.snapshot(t)
						err := call(conn, c.path, c.method, c.args...).Err
						if c.right == "" || slices.Contains(caller.rights, c.right) {
							if err != nil {
								t.Errorf("%s: %v (%s), want success", what, err, dbustest.ErrorName(err))
							}
							continue
						}
						need := map[string]string{"admin": dbustest.AdminGroup, "health": dbustest.HealthUser}[c.right]
						var frags []string
						if bus.denied == dbusapi.ErrorAccessDenied {
							frags = []string{need, fmt.Sprintf("uid %d", caller.cred.UID)}
						}
						checkError(t, what, err, bus.denied, frags...)
						e.unchanged(t, before, what)
					}
				})
			}
		})
	}
}

// TestAuthorizationMissingAccounts: when the admin group and the health
// user do not exist, only root may change anything.
func TestAuthorizationMissingAccounts(t *testing.T) {
	e := newEnv(t, envOptions{
		busOpts: []dbustest.Option{dbustest.Permissive()},
		info: func(i *dbusapi.Info) {
			i.AdminGroup = "caplance-no-such-group"
			i.HealthUser = "caplance-no-such-user"
		},
	})
	for _, caller := range []dbustest.Credential{dbustest.Admin(t), dbustest.Health(t)} {
		conn := e.as(t, caller)
		before := e.snapshot(t)
		err := call(conn, "", "Drain", "web2").Err
		checkError(t, "Drain", err, dbusapi.ErrorAccessDenied, "needs root", "caplance-no-such-group does not exist")
		err = call(conn, "", "RemoveService", "default").Err
		checkError(t, "RemoveService", err, dbusapi.ErrorAccessDenied, "needs root", "caplance-no-such-group does not exist")
		err = call(conn, "", "ReportHealth", "web2", true, "").Err
		checkError(t, "ReportHealth", err, dbusapi.ErrorAccessDenied, "needs root", "caplance-no-such-user does not exist")
		e.unchanged(t, before, "refused calls")
	}
	mustCall(t, e.as(t, dbustest.Root()), "", "Drain", "web2")
}
