package dbusapi_test

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/registry"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestRoot: every method works for root, and its effect is visible in the
// registry, the properties and ListBackends.
func TestRoot(t *testing.T) {
	e := newEnv(t, envOptions{})
	conn := e.conn

	var path dbus.ObjectPath
	opts := map[string]dbus.Variant{
		"weight": dbus.MakeVariant(uint32(5)), "check": dbus.MakeVariant("tcp://10.0.1.14:80"), "runtime": dbus.MakeVariant(true),
	}
	if err := call(conn, "", "AddBackend", "web-4", "10.0.1.14", opts).Store(&path); err != nil {
		t.Fatal(err)
	}
	if want := dbusname.BackendPath("default", "web-4"); path != want {
		t.Errorf("AddBackend returned %s, want %s", path, want)
	}
	b, ok := e.reg.Get("web-4")
	if !ok || b.Weight != 5 || b.Check != "tcp://10.0.1.14:80" || b.Persistent {
		t.Errorf("registry has %+v, %v", b, ok)
	}
	mustCall(t, conn, "", "SetWeight", "web-4", uint32(7))
	mustCall(t, conn, "", "Drain", "web-4")
	mustCall(t, conn, "", "ReportHealth", "web-4", false, "connection refused")

	props := map[string]dbus.Variant{}
	if err := call(conn, path, "org.freedesktop.DBus.Properties.GetAll", dbusname.BackendIface).Store(&props); err != nil {
		t.Fatal(err)
	}
	got := map[string]any{}
	for k, v := range props {
		got[k] = v.Value()
	}
	want := map[string]any{
		"Name": "web-4", "Service": "default", "Address": "10.0.1.14", "Weight": uint32(7), "AdminState": "drained",
		"Health": "down", "HealthDetail": "connection refused", "Check": "tcp://10.0.1.14:80",
		"Source": "runtime", "Persistent": false, "ActiveFlows": uint64(0), "InactiveFlows": uint64(0), "Packets": uint64(0), "Bytes": uint64(0),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GetAll (-want +got):\n%s", diff)
	}

	e.counters.Store(&map[string]dbusapi.Counters{"web-4": {ActiveFlows: 3, InactiveFlows: 2, Packets: 40, Bytes: 5000}})
	var rows []dbusapi.BackendRow
	if err := call(conn, "", "ListBackends").Store(&rows); err != nil {
		t.Fatal(err)
	}
	wantRows := []dbusapi.BackendRow{
		{Name: "web-4", Service: "default", Address: "10.0.1.14", Weight: 7, AdminState: "drained", Health: "down", HealthDetail: "connection refused", ActiveFlows: 3, InactiveFlows: 2, Packets: 40, Bytes: 5000},
		{Name: "web1", Service: "default", Address: "10.0.1.11", Weight: 100, AdminState: "active", Health: "unknown"},
		{Name: "web2", Service: "default", Address: "10.0.1.12", Weight: 100, AdminState: "active", Health: "unknown"},
	}
	if diff := cmp.Diff(wantRows, rows); diff != "" {
		t.Errorf("ListBackends (-want +got):\n%s", diff)
	}
	var packets uint64
	if err := call(conn, path, "org.freedesktop.DBus.Properties.Get", dbusname.BackendIface, "Packets").Store(&packets); err != nil || packets != 40 {
		t.Errorf("Get Packets = %d, %v; want the live 40", packets, err)
	}

	mustCall(t, conn, "", "Undrain", "web-4")
	mustCall(t, conn, "", "ReportHealth", "web-4", true, "")
	if b, _ := e.reg.Get("web-4"); b.Admin != registry.AdminActive || b.Health != registry.HealthUp {
		t.Errorf("after Undrain and ReportHealth: %+v", b)
	}
	mustCall(t, conn, "", "RemoveBackend", "web-4")
	if _, ok := e.reg.Get("web-4"); ok {
		t.Error("web-4 is still registered after RemoveBackend")
	}
	mustCall(t, conn, "", "Reload")
	if n := e.reloads.Load(); n != 1 {
		t.Errorf("Reload called the hook %d times", n)
	}

	e.svcCounts.Store(&map[string]dbusapi.ServiceCounters{"default": {Packets: 50, Bytes: 6000, NewFlows: 4, ActiveFlows: 3, InactiveFlows: 2, Drops: 1}})
	stats := map[string]uint64{}
	if err := call(conn, "", "GetStats").Store(&stats); err != nil {
		t.Fatal(err)
	}
	wantStats := map[string]uint64{
		"received": 10, "forwarded": 9, "drop.no_backend": 1,
		"service.default.packets": 50, "service.default.bytes": 6000, "service.default.new_flows": 4,
		"service.default.active_flows": 3, "service.default.inactive_flows": 2, "service.default.drops": 1,
	}
	if diff := cmp.Diff(wantStats, stats); diff != "" {
		t.Errorf("GetStats (-want +got):\n%s", diff)
	}
	mustCall(t, conn, "", "org.freedesktop.DBus.Peer.Ping")
	mustCall(t, conn, path, "org.freedesktop.DBus.Peer.Ping")
}

// A refused reload stays visible in LastReload and LastReloadError, with a
// PropertiesChanged each, until the next reload is applied.
func TestLastReload(t *testing.T) {
	e := newEnv(t, envOptions{})
	sigs := subscribe(t, e.conn)
	get := func() (string, string) {
		var at, msg dbus.Variant
		if err := call(e.conn, "", "org.freedesktop.DBus.Properties.Get", dbusname.ManagerIface, "LastReload").Store(&at); err != nil {
			t.Fatal(err)
		}
		if err := call(e.conn, "", "org.freedesktop.DBus.Properties.Get", dbusname.ManagerIface, "LastReloadError").Store(&msg); err != nil {
			t.Fatal(err)
		}
		return at.String(), msg.String()
	}
	if at, msg := get(); at != "@t 0" || msg != `""` {
		t.Errorf("before any reload: LastReload %s, LastReloadError %s; want @t 0, \"\"", at, msg)
	}
	e.srv.SetLastReload(time.Unix(1765000000, 0), errors.New("line 3: unknown key"))
	if at, msg := get(); at != "@t 1765000000" || msg != `"line 3: unknown key"` {
		t.Errorf("after a refused reload: LastReload %s, LastReloadError %s", at, msg)
	}
	e.srv.SetLastReload(time.Unix(1765000060, 0), nil)
	if at, msg := get(); at != "@t 1765000060" || msg != `""` {
		t.Errorf("after an applied reload: LastReload %s, LastReloadError %s", at, msg)
	}
	want := []string{
		"/org/caplance/Caplance1 org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Manager, map[LastReload:@t 1765000000], [])",
		`/org/caplance/Caplance1 org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Manager, map[LastReloadError:"line 3: unknown key"], [])`,
		"/org/caplance/Caplance1 org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Manager, map[LastReload:@t 1765000060], [])",
		`/org/caplance/Caplance1 org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Manager, map[LastReloadError:""], [])`,
	}
	if diff := cmp.Diff(want, sigs.take(t, len(want))); diff != "" {
		t.Errorf("signals (-want +got):\n%s", diff)
	}
}

func TestManagerProperties(t *testing.T) {
	e := newEnv(t, envOptions{})
	sigs := subscribe(t, e.conn)
	get := func() map[string]string {
		props := map[string]dbus.Variant{}
		if err := call(e.conn, "", "org.freedesktop.DBus.Properties.GetAll", dbusname.ManagerIface).Store(&props); err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for k, v := range props {
			out[k] = v.String()
		}
		return out
	}
	want := map[string]string{
		"APIVersion": "@u 2", "Version": `"1.2.3"`, "Roles": `["balancer"]`, "State": `"running"`,
		"VIPs": `["10.0.0.100"]`, "EncapPort": "@q 5555", "TableSize": "@u 65537",
		"Routed": "true", "Maintenance": "false", "AnnouncedVIPs": `["10.0.0.100"]`, "RouteTable": "@u 100", "RouteProtocol": "@y 0xfc",
		"Dataplane": `"xdp (native)"`, "LastReload": "@t 0", "LastReloadError": `""`,
	}
	if diff := cmp.Diff(want, get()); diff != "" {
		t.Errorf("GetAll (-want +got):\n%s", diff)
	}
	e.srv.SetState("reloading")
	// With a registry, the VIPs are its services': SetConfig's are not.
	e.srv.SetConfig([]string{"192.0.2.1"}, 6000, 65537)
	mustCall(t, e.conn, "", "AddService", "dns", map[string]dbus.Variant{
		"vips": dbus.MakeVariant([]string{"10.0.0.101", "10.0.0.99"}), "ports": dbus.MakeVariant("53"), "protocols": dbus.MakeVariant("udp"),
	})
	mustCall(t, e.conn, "", "ChangeService", "dns", map[string]dbus.Variant{"vips": dbus.MakeVariant([]string{"10.0.0.101"})})
	mustCall(t, e.conn, "", "RemoveService", "dns")
	const mgr = `/org/caplance/Caplance1 org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Manager, `
	wantSigs := []string{
		mgr + `map[State:"reloading"], [])`,
		mgr + `map[EncapPort:@q 6000], [])`,
		mgr + `map[VIPs:["10.0.0.99", "10.0.0.100", "10.0.0.101"]], [])`,
		mgr + `map[VIPs:["10.0.0.100", "10.0.0.101"]], [])`,
		mgr + `map[VIPs:["10.0.0.100"]], [])`,
	}
	var got []string
	for _, sig := range sigs.take(t, 10) { // and the service's own
		if strings.HasPrefix(sig, mgr) {
			got = append(got, sig)
		}
	}
	if diff := cmp.Diff(wantSigs, got); diff != "" {
		t.Errorf("signals (-want +got):\n%s", diff)
	}
	// Interfaces without properties have an empty dict.
	props := map[string]dbus.Variant{}
	if err := call(e.conn, "", "org.freedesktop.DBus.Properties.GetAll", dbusname.ObjectManagerIface).Store(&props); err != nil || len(props) != 0 {
		t.Errorf("GetAll(ObjectManager) = %v, %v", props, err)
	}
	err := call(e.conn, "", "org.freedesktop.DBus.Properties.Set", dbusname.ManagerIface, "State", dbus.MakeVariant("x")).Err
	checkError(t, "Set", err, "org.freedesktop.DBus.Properties.Error.ReadOnly")
}

// TestIntrospection compares the served XML with testdata/*.xml; -update
// rewrites them.
func TestIntrospection(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tt := range []struct {
		file string
		path dbus.ObjectPath
	}{
		{"manager.xml", dbusname.ManagerPath},
		{"backend.xml", dbusname.BackendPath("default", "web1")},
		{"service.xml", dbusname.ServicePath("default")},
		{"service-parent.xml", dbusname.ManagerPath + "/service"},
		{"backend-parent.xml", dbusname.ServicePath("default") + "/backend"},
		{"root.xml", "/"},
	} {
		var xml string
		if err := call(e.conn, tt.path, "org.freedesktop.DBus.Introspectable.Introspect").Store(&xml); err != nil {
			t.Fatal(err)
		}
		golden := filepath.Join("testdata", tt.file)
		if *update {
			if err := os.WriteFile(golden, []byte(xml), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(string(want), xml); diff != "" {
			t.Errorf("Introspect %s differs from %s (-want +got):\n%s", tt.path, golden, diff)
		}
	}
	// The nodes down to the manager lead to it.
	for path, child := range map[dbus.ObjectPath]string{"/org": "caplance", "/org/caplance": "Caplance1"} {
		var xml string
		if err := call(e.conn, path, "org.freedesktop.DBus.Introspectable.Introspect").Store(&xml); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(xml, fmt.Sprintf(`<node name="%s"></node>`, child)) {
			t.Errorf("Introspect %s:\n%s\nlacks the child %s", path, xml, child)
		}
	}
}

func TestObjectManager(t *testing.T) {
	e := newEnv(t, envOptions{})
	sigs := subscribe(t, e.conn)
	var objs dbusapi.ManagedObjects
	if err := call(e.conn, "", "org.freedesktop.DBus.ObjectManager.GetManagedObjects").Store(&objs); err != nil {
		t.Fatal(err)
	}
	if len(objs) != 3 {
		t.Fatalf("GetManagedObjects: %v, want the service default, web1 and web2", objs)
	}
	if got := objs[dbusname.ServicePath("default")][dbusname.ServiceIface]["VIPs"].Value(); !cmp.Equal(got, map[string]string{vip: "all"}) {
		t.Errorf("default VIPs = %v", got)
	}
	web1 := objs[dbusname.BackendPath("default", "web1")]
	if got := web1[dbusname.BackendIface]["Source"].Value(); got != "config" {
		t.Errorf("web1 Source = %v", got)
	}
	for _, iface := range []string{dbusapi.PropertiesIface, dbusapi.IntrospectableIface, dbusapi.PeerIface} {
		if props, ok := web1[iface]; !ok || len(props) != 0 {
			t.Errorf("web1 %s: %v, %v; want an empty dict", iface, props, ok)
		}
	}

	mustCall(t, e.conn, "", "AddBackend", "web3", "10.0.1.13", map[string]dbus.Variant{})
	path := dbusname.BackendPath("default", "web3")
	got := sigs.take(t, 2)
	if !strings.HasPrefix(got[0], "/org/caplance/Caplance1 org.freedesktop.DBus.ObjectManager.InterfacesAdded(/org/caplance/Caplance1/service/default/backend/web3, map[") ||
		!strings.Contains(got[0], `org.caplance.Caplance1.Backend:map[ActiveFlows:@t 0 Address:"10.0.1.13" AdminState:"active" Bytes:@t 0 Check:"" Health:"unknown" HealthDetail:"" InactiveFlows:@t 0 Name:"web3" Packets:@t 0 Persistent:true Service:"default" Source:"runtime" Weight:@u 100]`) ||
		!strings.Contains(got[0], "org.freedesktop.DBus.Peer:map[]") {
		t.Errorf("InterfacesAdded: %s", got[0])
	}
	if want := "/org/caplance/Caplance1 org.caplance.Caplance1.Manager.BackendAdded(web3, /org/caplance/Caplance1/service/default/backend/web3)"; got[1] != want {
		t.Errorf("got %s, want %s", got[1], want)
	}
	if err := call(e.conn, "", "org.freedesktop.DBus.ObjectManager.GetManagedObjects").Store(&objs); err != nil {
		t.Fatal(err)
	}
	if _, ok := objs[path]; !ok || len(objs) != 4 {
		t.Errorf("GetManagedObjects after AddBackend: %v", objs)
	}

	mustCall(t, e.conn, "", "RemoveBackend", "web3")
	want := []string{
		"/org/caplance/Caplance1 org.freedesktop.DBus.ObjectManager.InterfacesRemoved(/org/caplance/Caplance1/service/default/backend/web3, [org.caplance.Caplance1.Backend org.freedesktop.DBus.Properties org.freedesktop.DBus.Introspectable org.freedesktop.DBus.Peer])",
		"/org/caplance/Caplance1 org.caplance.Caplance1.Manager.BackendRemoved(web3, /org/caplance/Caplance1/service/default/backend/web3)",
	}
	if diff := cmp.Diff(want, sigs.take(t, 2)); diff != "" {
		t.Errorf("signals (-want +got):\n%s", diff)
	}
	err := call(e.conn, path, "org.freedesktop.DBus.Properties.Get", dbusname.BackendIface, "Name").Err
	if err == nil {
		t.Error("the removed backend's object still answers")
	}
}

// TestPropertiesChanged: Drain, SetWeight and ReportHealth announce what
// changed; the counters are announced as invalidated.
func TestPropertiesChanged(t *testing.T) {
	e := newEnv(t, envOptions{info: func(i *dbusapi.Info) { i.CounterInterval = 20 * 1e6 }})
	sigs := subscribe(t, e.conn)
	const p = "/org/caplance/Caplance1/service/default/backend/web2 org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Backend, "
	for _, tt := range []struct {
		method string
		args   []any
		want   []string
	}{
		{"Drain", []any{"web2"}, []string{p + `map[AdminState:"drained"], [])`}},
		{"Undrain", []any{"web2"}, []string{p + `map[AdminState:"active"], [])`}},
		{"SetWeight", []any{"web2", uint32(42)}, []string{p + `map[Weight:@u 42], [])`}},
		{"ReportHealth", []any{"web2", false, "timeout"}, []string{
			p + `map[Health:"down"], [])`,
			p + `map[HealthDetail:"timeout"], [])`,
			"/org/caplance/Caplance1 org.caplance.Caplance1.Manager.BackendHealthChanged(web2, false, timeout)",
		}},
		{"ReportHealth", []any{"web2", false, "timeout"}, nil},
		{"ReportHealth", []any{"web2", false, "refused"}, []string{p + `map[HealthDetail:"refused"], [])`}},
		{"ReportHealth", []any{"web2", true, ""}, []string{
			p + `map[Health:"up"], [])`,
			p + `map[HealthDetail:""], [])`,
			"/org/caplance/Caplance1 org.caplance.Caplance1.Manager.BackendHealthChanged(web2, true, )",
		}},
	} {
		mustCall(t, e.conn, "", tt.method, tt.args...)
		if diff := cmp.Diff(tt.want, sigs.take(t, len(tt.want)), cmpOpts); diff != "" {
			t.Errorf("%s%v: signals (-want +got):\n%s", tt.method, tt.args, diff)
		}
	}
	e.counters.Store(&map[string]dbusapi.Counters{"web2": {Packets: 1, Bytes: 60}})
	want := []string{p + "map[], [Packets Bytes])"}
	if diff := cmp.Diff(want, sigs.take(t, 1)); diff != "" {
		t.Errorf("counters: signals (-want +got):\n%s", diff)
	}
}

// TestErrors: every bad input of caplanced.dbus(7), ERRORS, gets its error
// name and a message naming the problem, and changes nothing.
func TestErrors(t *testing.T) {
	e := newEnv(t, envOptions{})
	mustCall(t, e.conn, "", "Drain", "web2")
	v := dbus.MakeVariant
	type opts = map[string]dbus.Variant
	const (
		invalid = dbusapi.ErrorInvalidArgument
		missing = dbusapi.ErrorNotFound
		exists  = dbusapi.ErrorAlreadyExists
		failed  = dbusapi.ErrorFailed
	)
	for _, tt := range []struct {
		method string
		args   []any
		name   string
		frags  []string
		setup  func()
	}{
		{"AddBackend", []any{"bad name", "10.0.1.20", opts{}}, invalid, []string{`"bad name"`}, nil},
		{"AddBackend", []any{"", "10.0.1.20", opts{}}, invalid, []string{"name"}, nil},
		{"AddBackend", []any{"web9", "10.0.1", opts{}}, invalid, []string{`"10.0.1"`}, nil},
		{"AddBackend", []any{"web9", "fe80::1", opts{}}, invalid, []string{`"fe80::1"`, "link-local"}, nil},
		{"AddBackend", []any{"web9", vip, opts{}}, invalid, []string{"VIP"}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"weight": v(uint32(10001))}}, invalid, []string{"10001"}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"check": v("bogus")}}, invalid, []string{"bogus"}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"weigth": v(uint32(1))}}, invalid, []string{`"weigth"`, "weight (u)"}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"weight": v("5")}}, invalid, []string{`"weight"`, "type u", "not s"}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"weight": v(int32(5))}}, invalid, []string{`"weight"`, "type u", "not i"}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"runtime": v("yes")}}, invalid, []string{`"runtime"`, "type b"}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"check": v(uint32(1))}}, invalid, []string{`"check"`, "type s"}, nil},
		{"AddBackend", []any{"web1", "10.0.1.20", opts{}}, exists, []string{`"web1"`}, nil},
		{"AddBackend", []any{"web2", "10.0.1.20", opts{}}, exists, []string{`"web2"`}, nil},
		{"AddBackend", []any{"web9", "10.0.1.11", opts{}}, exists, []string{"10.0.1.11", `"web1"`}, nil},
		{"RemoveBackend", []any{"web9"}, missing, []string{`"web9"`}, nil},
		{"RemoveBackend", []any{"web1"}, invalid, []string{"configuration file"}, nil},
		{"SetWeight", []any{"web9", uint32(1)}, missing, []string{`"web9"`}, nil},
		{"SetWeight", []any{"web2", uint32(10001)}, invalid, []string{"10001"}, nil},
		{"Drain", []any{"web9"}, missing, []string{`"web9"`}, nil},
		{"Drain", []any{"web2"}, dbusapi.ErrorUnchanged, []string{"already drained"}, nil},
		{"Undrain", []any{"web9"}, missing, []string{`"web9"`}, nil},
		{"Undrain", []any{"web1"}, dbusapi.ErrorUnchanged, []string{"not drained"}, nil},
		{"ReportHealth", []any{"web9", true, ""}, missing, []string{`"web9"`}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{}}, failed, []string{"data path", "disk full"}, func() { e.dp.setFail(errors.New("disk full")) }},
		{"SetWeight", []any{"web2", uint32(1)}, failed, []string{"disk full"}, nil},
		{"Reload", nil, failed, []string{"line 3"}, func() {
			e.dp.setFail(nil)
			err := errors.New("caplanced.toml: line 3: unknown key")
			e.reloadErr.Store(&err)
		}},
		{"Reload", nil, invalid, []string{"weight"}, func() {
			err := fmt.Errorf("reloading: backend \"x\": weight 20000: %w", registry.ErrInvalidArgument)
			e.reloadErr.Store(&err)
		}},
		// A wrong signature is refused by godbus before the method runs.
		{"SetWeight", []any{"web2", int32(1)}, "org.freedesktop.DBus.Error.InvalidArgs", nil, nil},
	} {
		if tt.setup != nil {
			tt.setup()
		}
		what := fmt.Sprintf("%s%v", tt.method, tt.args)
		before := e.snapshot(t)
		if tt.method == "Reload" {
			before.Reloads++ // the hook ran and refused
		}
		checkError(t, what, call(e.conn, "", tt.method, tt.args...).Err, tt.name, tt.frags...)
		e.unchanged(t, before, what)
	}
}

// TestNoBalancer: without the balancer role the service and backend methods answer
// NotSupported; the rest works.
func TestNoBalancer(t *testing.T) {
	e := newEnv(t, envOptions{noReg: true})
	for _, c := range [][]any{
		{"AddService", "dns", map[string]dbus.Variant{"vips": dbus.MakeVariant([]string{"10.0.0.53"})}},
		{"ChangeService", "dns", map[string]dbus.Variant{}}, {"RemoveService", "dns"}, {"ListServices"},
		{"AddBackend", "web9", "10.0.1.20", map[string]dbus.Variant{}},
		{"RemoveBackend", "web9"}, {"SetWeight", "web9", uint32(1)}, {"Drain", "web9"},
		{"Undrain", "web9"}, {"ReportHealth", "web9", true, ""}, {"ListBackends"},
	} {
		err := call(e.conn, "", c[0].(string), c[1:]...).Err
		checkError(t, c[0].(string), err, dbusapi.ErrorNotSupported, "no balancer role")
	}
	mustCall(t, e.conn, "", "GetStats")
	mustCall(t, e.conn, "", "Reload")
	if objs := managedObjects(t, e.conn); objs != "map[]" {
		t.Errorf("GetManagedObjects = %s", objs)
	}
}

// TestNameTaken: Export fails when another connection owns the name, and
// leaves nothing exported.
func TestNameTaken(t *testing.T) {
	e := newEnv(t, envOptions{})
	other := e.bus.Connect(t)
	_, err := dbusapi.Export(other, e.reg, dbusapi.Info{})
	if err == nil || !strings.Contains(err.Error(), "owned by another connection") {
		t.Fatalf("second Export: %v", err)
	}
	// Nothing stays exported on the other connection.
	err = e.conn.Object(other.Names()[0], dbusname.ManagerPath).Call(manager+"ListBackends", 0).Err
	if err == nil {
		t.Error("the failed Export left the manager exported")
	}
	// The first server still answers.
	mustCall(t, e.conn, "", "Drain", "web2")
}

// TestSetMaintenance: SetMaintenance reaches the daemon's hook and the
// properties follow with PropertiesChanged; a balancer that is not routed
// refuses it with NotSupported, and arguments of the wrong type are refused
// before anything changes.
func TestSetMaintenance(t *testing.T) {
	e := newEnv(t, envOptions{})
	sigs := subscribe(t, e.conn)
	mustCall(t, e.conn, "", "SetMaintenance", true)
	if !e.maintenance.Load() {
		t.Error("SetMaintenance(true) did not reach the daemon")
	}
	mustCall(t, e.conn, "", "SetMaintenance", false)
	const mgr = `/org/caplance/Caplance1 org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Manager, `
	want := []string{
		mgr + `map[Maintenance:true], [])`,
		mgr + `map[AnnouncedVIPs:@as []], [])`,
		mgr + `map[Maintenance:false], [])`,
		mgr + `map[AnnouncedVIPs:["10.0.0.100"]], [])`,
	}
	if diff := cmp.Diff(want, sigs.take(t, 4)); diff != "" {
		t.Errorf("signals (-want +got):\n%s", diff)
	}
	before := e.snapshot(t)
	err := call(e.conn, "", "SetMaintenance", "on").Err
	checkError(t, "SetMaintenance(\"on\")", err, "org.freedesktop.DBus.Error.InvalidArgs")
	e.unchanged(t, before, "SetMaintenance with a string")

	plain := newEnv(t, envOptions{info: func(i *dbusapi.Info) { i.Routed, i.AnnouncedVIPs, i.SetMaintenance = false, nil, nil }})
	err = call(plain.conn, "", "SetMaintenance", true).Err
	checkError(t, "SetMaintenance when not routed", err, dbusapi.ErrorNotSupported, "maintenance withdraws routes; this balancer is not routed")
	var routed bool
	if err := call(plain.conn, "", "org.freedesktop.DBus.Properties.Get", dbusname.ManagerIface, "Routed").Store(&routed); err != nil || routed {
		t.Errorf("Routed of a balancer that is not routed = %v, %v", routed, err)
	}
}
