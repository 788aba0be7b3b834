package dbustest_test

import (
	osuser "os/user"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"github.com/caplance/caplance/internal/dbustest"
)

const (
	busName  = "org.caplance.Caplance1"
	objPath  = dbus.ObjectPath("/org/caplance/Caplance1")
	manager  = "org.caplance.Caplance1.Manager"
	denied   = "org.freedesktop.DBus.Error.AccessDenied"
	propsIfc = "org.freedesktop.DBus.Properties"
)

// stub answers every call of the Manager interface with success, so that
// whatever refuses a call in these tests is the bus.
type stub struct{}

func (stub) AddBackend(string, string, map[string]dbus.Variant) (dbus.ObjectPath, *dbus.Error) {
	return "/", nil
}
func (stub) RemoveBackend(string) *dbus.Error              { return nil }
func (stub) SetWeight(string, uint32) *dbus.Error          { return nil }
func (stub) Drain(string) *dbus.Error                      { return nil }
func (stub) Undrain(string) *dbus.Error                    { return nil }
func (stub) Reload() *dbus.Error                           { return nil }
func (stub) ReportHealth(string, bool, string) *dbus.Error { return nil }
func (stub) ListBackends() ([]string, *dbus.Error)         { return nil, nil }
func (stub) GetStats() (map[string]uint64, *dbus.Error)    { return nil, nil }

type stubProps struct{}

func (stubProps) Get(string, string) (dbus.Variant, *dbus.Error) { return dbus.MakeVariant(""), nil }
func (stubProps) GetAll(string) (map[string]dbus.Variant, *dbus.Error) {
	return map[string]dbus.Variant{}, nil
}
func (stubProps) Set(string, string, dbus.Variant) *dbus.Error { return nil }

type stubObjectManager struct{}

func (stubObjectManager) GetManagedObjects() (map[dbus.ObjectPath]map[string]map[string]dbus.Variant, *dbus.Error) {
	return nil, nil
}

// serve exports the stub on conn and takes the bus name.
func serve(t *testing.T, conn *dbus.Conn) {
	t.Helper()
	for iface, v := range map[string]any{
		manager: stub{}, propsIfc: stubProps{},
		"org.freedesktop.DBus.ObjectManager":  stubObjectManager{},
		"org.freedesktop.DBus.Introspectable": introspect.Introspectable("<node/>"),
	} {
		if err := conn.Export(v, objPath, iface); err != nil {
			t.Fatal(err)
		}
	}
	reply, err := conn.RequestName(busName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName: %v, %v", reply, err)
	}
}

type call struct {
	method string
	args   []any
}

// calls are every method of caplanced.dbus(7) the policy names, with
// arguments of the right signature.
var calls = []call{
	{manager + ".AddBackend", []any{"web1", "10.0.0.1", map[string]dbus.Variant{"weight": dbus.MakeVariant(uint32(5))}}},
	{manager + ".RemoveBackend", []any{"web1"}},
	{manager + ".SetWeight", []any{"web1", uint32(5)}},
	{manager + ".Drain", []any{"web1"}},
	{manager + ".Undrain", []any{"web1"}},
	{manager + ".Reload", nil},
	{manager + ".ReportHealth", []any{"web1", true, "ok"}},
	{manager + ".ListBackends", nil},
	{manager + ".GetStats", nil},
	{propsIfc + ".Get", []any{manager, "Version"}},
	{propsIfc + ".GetAll", []any{manager}},
	{propsIfc + ".Set", []any{manager, "Version", dbus.MakeVariant("x")}},
	{"org.freedesktop.DBus.ObjectManager.GetManagedObjects", nil},
	{"org.freedesktop.DBus.Introspectable.Introspect", nil},
	{"org.freedesktop.DBus.Peer.Ping", nil},
}

var (
	reads    = []string{"ListBackends", "GetStats", "Get", "GetAll", "GetManagedObjects", "Introspect", "Ping"}
	mutating = []string{"AddBackend", "RemoveBackend", "SetWeight", "Drain", "Undrain", "Reload"}
)

func member(method string) string {
	for i := len(method) - 1; i >= 0; i-- {
		if method[i] == '.' {
			return method[i+1:]
		}
	}
	return method
}

// TestShippedPolicy is caplanced.dbus(7), AUTHORIZATION, as the bus
// enforces it with the shipped policy file.
func TestShippedPolicy(t *testing.T) {
	bus := dbustest.Start(t)
	serve(t, bus.Connect(t))

	tests := []struct {
		name    string
		cred    dbustest.Credential
		allowed []string // members allowed besides reads
	}{
		{"root", dbustest.Root(), append(slices.Clone(mutating), "ReportHealth", "Set")},
		{"nobody", dbustest.Nobody(t), nil},
		{"caplance-admin", dbustest.Admin(t), mutating},
		{"caplance-health", dbustest.Health(t), []string{"ReportHealth"}},
		{"caplance", dbustest.User(t, dbustest.DaemonUser), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := bus.ConnectAs(t, tt.cred)
			obj := conn.Object(busName, objPath)
			for _, c := range calls {
				err := obj.Call(c.method, 0, c.args...).Err
				m := member(c.method)
				want := slices.Contains(reads, m) || slices.Contains(tt.allowed, m)
				switch {
				case want && err != nil:
					t.Errorf("%s: %v, want allowed", c.method, err)
				case !want && dbustest.ErrorName(err) != denied:
					t.Errorf("%s: error %q (%v), want %s", c.method, dbustest.ErrorName(err), err, denied)
				}
			}
		})
	}
}

// TestOwnership: only root and caplance may own the name.
func TestOwnership(t *testing.T) {
	bus := dbustest.Start(t)
	for _, tt := range []struct {
		name string
		cred dbustest.Credential
		ok   bool
	}{
		{"root", dbustest.Root(), true},
		{"caplance", dbustest.User(t, dbustest.DaemonUser), true},
		{"nobody", dbustest.Nobody(t), false},
		{"caplance-health", dbustest.Health(t), false},
		{"caplance-admin", dbustest.Admin(t), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn := bus.ConnectAs(t, tt.cred)
			reply, err := conn.RequestName(busName, dbus.NameFlagDoNotQueue)
			if tt.ok && (err != nil || reply != dbus.RequestNameReplyPrimaryOwner) {
				t.Errorf("RequestName: %v, %v; want primary owner", reply, err)
			}
			if !tt.ok && dbustest.ErrorName(err) != denied {
				t.Errorf("RequestName: %v, %v; want %s", reply, err, denied)
			}
			if err == nil {
				if _, err := conn.ReleaseName(busName); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestCredentials: the bus reports the uid and groups ConnectAs asked for,
// even groups the user is not a member of in /etc/group.
func TestCredentials(t *testing.T) {
	bus := dbustest.Start(t)
	root := bus.Connect(t)
	for _, cred := range []dbustest.Credential{dbustest.Root(), dbustest.Nobody(t), dbustest.Admin(t), dbustest.Health(t)} {
		conn := bus.ConnectAs(t, cred)
		var got map[string]dbus.Variant
		err := root.BusObject().Call("org.freedesktop.DBus.GetConnectionCredentials", 0, conn.Names()[0]).Store(&got)
		if err != nil {
			t.Fatal(err)
		}
		if uid := got["UnixUserID"].Value(); uid != cred.UID {
			t.Errorf("%v: UnixUserID %v", cred, uid)
		}
		gids, _ := got["UnixGroupIDs"].Value().([]uint32)
		for _, g := range cred.Groups {
			if !slices.Contains(gids, g) {
				t.Errorf("%v: UnixGroupIDs %v lack %d", cred, gids, g)
			}
		}
	}
}

// TestPermissive: with the permissive policy anyone may own the name and
// call anything.
func TestPermissive(t *testing.T) {
	bus := dbustest.Start(t, dbustest.Permissive())
	serve(t, bus.ConnectAs(t, dbustest.Nobody(t)))
	obj := bus.ConnectAs(t, dbustest.Nobody(t)).Object(busName, objPath)
	for _, c := range calls {
		if err := obj.Call(c.method, 0, c.args...).Err; err != nil {
			t.Errorf("%s: %v", c.method, err)
		}
	}
}

// TestUnknownUID documents why ConnectAs needs a uid with a passwd entry:
// the bus refuses the others.
func TestUnknownUID(t *testing.T) {
	const uid = 64999
	if _, err := osuser.LookupId(strconv.Itoa(uid)); err == nil {
		t.Skipf("uid %d has a passwd entry here", uid)
	}
	bus := dbustest.Start(t)
	if conn, err := bus.DialAs(dbustest.Credential{UID: uid, GID: uid}); err == nil {
		conn.Close()
		t.Errorf("uid %d without a passwd entry was accepted; update the package comment", uid)
	}
}

// Connections made by DialAs may be closed while the bus floods them: their
// close must never reach godbus's unrecovered panic on a message cut in
// half (which, without graceful, took down a test binary about once in
// three runs of this test).
func TestDialAsCloseUnderLoad(t *testing.T) {
	bus := dbustest.Start(t, dbustest.Permissive())
	emitter := bus.Connect(t)
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		payload := make([]byte, 16<<10) // spans several reads
		for !stop.Load() {
			_ = emitter.Emit("/test", "org.caplance.Test.Flood", payload)
		}
	}()
	for i := range 100 {
		conn, err := bus.DialAs(dbustest.Root())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		if err := conn.AddMatchSignal(dbus.WithMatchInterface("org.caplance.Test")); err != nil {
			t.Fatalf("match %d: %v", i, err)
		}
		signals := make(chan *dbus.Signal, 1)
		conn.Signal(signals)
		<-signals // the flood reaches this connection
		conn.Close()
	}
	stop.Store(true)
	<-done
}
