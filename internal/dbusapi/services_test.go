package dbusapi_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/model"
)

type opts = map[string]dbus.Variant

var v = dbus.MakeVariant

// addDNS adds the run-time service dns: 10.0.0.53:53/udp.
func addDNS(t *testing.T, e *env, extra opts) dbus.ObjectPath {
	t.Helper()
	o := opts{"vips": v([]string{"10.0.0.53"}), "ports": v("53"), "protocols": v("udp")}
	for k, x := range extra {
		o[k] = x
	}
	var path dbus.ObjectPath
	if err := call(e.conn, "", "AddService", "dns", o).Store(&path); err != nil {
		t.Fatalf("AddService dns: %v", err)
	}
	return path
}

// getAll is GetAll of iface at path, each value as text.
func getAll(t *testing.T, conn *dbus.Conn, path dbus.ObjectPath, iface string) map[string]string {
	t.Helper()
	props := map[string]dbus.Variant{}
	if err := call(conn, path, "org.freedesktop.DBus.Properties.GetAll", iface).Store(&props); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for k, x := range props {
		out[k] = x.String()
	}
	return out
}

// TestServices: AddService, ChangeService and RemoveService change the
// registry and the objects, with their signals in order: a service's
// object appears before its backends' and disappears after them.
func TestServices(t *testing.T) {
	e := newEnv(t, envOptions{})
	sigs := subscribe(t, e.conn)
	path := addDNS(t, e, opts{"hash": v("source-ip"), "table_size": v(uint32(251)), "check": v("tcp://:53"), "runtime": v(true)})
	if want := dbusname.ServicePath("dns"); path != want {
		t.Errorf("AddService returned %s, want %s", path, want)
	}
	const (
		om  = "/org/caplance/Caplance1 org.freedesktop.DBus.ObjectManager."
		mgr = "/org/caplance/Caplance1 org.caplance.Caplance1.Manager."
		vp  = "/org/caplance/Caplance1 org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Manager, map[VIPs:"
		sp  = "/org/caplance/Caplance1/service/dns org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Service, "
		bp  = "/org/caplance/Caplance1/service/dns/backend/dns1 org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Backend, "
	)
	got := sigs.take(t, 3)
	if !strings.HasPrefix(got[0], om+"InterfacesAdded(/org/caplance/Caplance1/service/dns, map[org.caplance.Caplance1.Service:map[") {
		t.Errorf("first signal %s, want InterfacesAdded of dns", got[0])
	}
	if diff := cmp.Diff([]string{mgr + "ServiceAdded(dns, /org/caplance/Caplance1/service/dns)", vp + `["10.0.0.53", "10.0.0.100"]], [])`}, got[1:]); diff != "" {
		t.Errorf("AddService signals (-want +got):\n%s", diff)
	}
	want := map[string]string{
		"Name": `"dns"`, "VIPs": `{"10.0.0.53": "53"}`, "Protocols": `"udp"`, "Hash": `"source-ip"`, "TableSize": "@u 251",
		"Check": `"tcp://:53"`, "Source": `"runtime"`, "Persistent": "false",
		"Packets": "@t 0", "Bytes": "@t 0", "NewFlows": "@t 0", "ActiveFlows": "@t 0", "InactiveFlows": "@t 0", "Drops": "@t 0",
	}
	if diff := cmp.Diff(want, getAll(t, e.conn, path, dbusname.ServiceIface)); diff != "" {
		t.Errorf("GetAll (-want +got):\n%s", diff)
	}

	// A backend of dns, its check the service's.
	var bpath dbus.ObjectPath
	if err := call(e.conn, "", "AddBackend", "dns1", "10.0.1.11", opts{"service": v("dns")}).Store(&bpath); err != nil {
		t.Fatal(err)
	}
	if want := dbusname.BackendPath("dns", "dns1"); bpath != want {
		t.Errorf("AddBackend returned %s, want %s", bpath, want)
	}
	sigs.take(t, 2)
	if got := getAll(t, e.conn, bpath, dbusname.BackendIface); got["Service"] != `"dns"` || got["Check"] != `"tcp://:53"` {
		t.Errorf("dns1: %v", got)
	}

	for _, tt := range []struct {
		options opts
		want    []string
	}{
		// The service's check reaches its backend as a change of Check.
		{opts{"check": v("tcp://:5353")}, []string{sp + `map[Check:"tcp://:5353"], [])`, bp + `map[Check:"tcp://:5353"], [])`}},
		{opts{"ports": v("53,5353")}, []string{sp + `map[VIPs:{"10.0.0.53": "53,5353"}], [])`}},
		{opts{"vips": v([]string{"10.0.0.54", "10.0.0.53"})}, []string{
			sp + `map[VIPs:{"10.0.0.53": "53,5353", "10.0.0.54": "53,5353"}], [])`,
			vp + `["10.0.0.53", "10.0.0.54", "10.0.0.100"]], [])`,
		}},
		{opts{"protocols": v("tcp+udp"), "hash": v("5-tuple"), "table_size": v(uint32(65537))}, []string{
			sp + `map[Hash:"5-tuple"], [])`, sp + `map[Protocols:"tcp+udp"], [])`, sp + `map[TableSize:@u 65537], [])`,
		}},
		{opts{"check": v("")}, []string{sp + `map[Check:""], [])`, bp + `map[Check:""], [])`}},
		{opts{}, nil},
	} {
		mustCall(t, e.conn, "", "ChangeService", "dns", tt.options)
		if diff := cmp.Diff(tt.want, sigs.take(t, len(tt.want))); diff != "" {
			t.Errorf("ChangeService %v: signals (-want +got):\n%s", tt.options, diff)
		}
	}
	if got := getAll(t, e.conn, path, dbusname.ServiceIface)["VIPs"]; got != `{"10.0.0.53": "53,5353", "10.0.0.54": "53,5353"}` {
		t.Errorf("VIPs after the changes: %s", got)
	}

	e.svcCounts.Store(&map[string]dbusapi.ServiceCounters{"dns": {Packets: 7, Bytes: 700, NewFlows: 2, ActiveFlows: 1, InactiveFlows: 1, Drops: 1}})
	var rows []dbusapi.ServiceRow
	if err := call(e.conn, "", "ListServices").Store(&rows); err != nil {
		t.Fatal(err)
	}
	wantRows := []dbusapi.ServiceRow{
		{Name: "default", VIPs: map[string]string{vip: "all"}, Protocols: "tcp+udp", Hash: "5-tuple", TableSize: 65537, Source: "config", Backends: 2},
		{Name: "dns", VIPs: map[string]string{"10.0.0.53": "53,5353", "10.0.0.54": "53,5353"}, Protocols: "tcp+udp", Hash: "5-tuple", TableSize: 65537,
			Source: "runtime", Backends: 1, Packets: 7, Bytes: 700, ActiveFlows: 1},
	}
	if diff := cmp.Diff(wantRows, rows); diff != "" {
		t.Errorf("ListServices (-want +got):\n%s", diff)
	}
	var packets uint64
	if err := call(e.conn, path, "org.freedesktop.DBus.Properties.Get", dbusname.ServiceIface, "Packets").Store(&packets); err != nil || packets != 7 {
		t.Errorf("Get Packets = %d, %v; want the live 7", packets, err)
	}

	// RemoveService takes its backends with it, before it.
	mustCall(t, e.conn, "", "RemoveService", "dns")
	wantSigs := []string{
		om + "InterfacesRemoved(/org/caplance/Caplance1/service/dns/backend/dns1, [org.caplance.Caplance1.Backend org.freedesktop.DBus.Properties org.freedesktop.DBus.Introspectable org.freedesktop.DBus.Peer])",
		mgr + "BackendRemoved(dns1, /org/caplance/Caplance1/service/dns/backend/dns1)",
		om + "InterfacesRemoved(/org/caplance/Caplance1/service/dns, [org.caplance.Caplance1.Service org.freedesktop.DBus.Properties org.freedesktop.DBus.Introspectable org.freedesktop.DBus.Peer])",
		mgr + "ServiceRemoved(dns, /org/caplance/Caplance1/service/dns)",
		vp + `["10.0.0.100"]], [])`,
	}
	if diff := cmp.Diff(wantSigs, sigs.take(t, len(wantSigs))); diff != "" {
		t.Errorf("RemoveService signals (-want +got):\n%s", diff)
	}
	if _, ok := e.reg.GetService("dns"); ok {
		t.Error("dns is still registered after RemoveService")
	}
	if _, ok := e.reg.Get("dns1"); ok {
		t.Error("dns1 is still registered after RemoveService")
	}
	if err := call(e.conn, path, "org.freedesktop.DBus.Properties.Get", dbusname.ServiceIface, "Name").Err; err == nil {
		t.Error("the removed service's object still answers")
	}
}

// TestDualStackService: a service may have VIPs and backends of both
// families; IPv6 addresses are shown as the address alone (a{ss} keys,
// rows, the backend's Address).
func TestDualStackService(t *testing.T) {
	e := newEnv(t, envOptions{})
	var path dbus.ObjectPath
	o := opts{"vips": v([]string{"2001:db8::60", "10.0.0.60"}), "ports": v("80,443"), "protocols": v("tcp"), "runtime": v(true)}
	if err := call(e.conn, "", "AddService", "web6", o).Store(&path); err != nil {
		t.Fatalf("AddService web6: %v", err)
	}
	for _, b := range []struct{ name, addr string }{{"web6-a", "2001:db8:1::11"}, {"web6-b", "10.0.1.61"}} {
		var bpath dbus.ObjectPath
		if err := call(e.conn, "", "AddBackend", b.name, b.addr, opts{"service": v("web6")}).Store(&bpath); err != nil {
			t.Fatalf("AddBackend %s %s: %v", b.name, b.addr, err)
		}
		if got := getAll(t, e.conn, bpath, dbusname.BackendIface)["Address"]; got != `"`+b.addr+`"` {
			t.Errorf("%s: Address %s, want %q", b.name, got, b.addr)
		}
	}
	if got, want := getAll(t, e.conn, path, dbusname.ServiceIface)["VIPs"], `{"10.0.0.60": "80,443", "2001:db8::60": "80,443"}`; got != want {
		t.Errorf("service VIPs %s, want %s", got, want)
	}
	if got, want := getAll(t, e.conn, "", dbusname.ManagerIface)["VIPs"], `["10.0.0.60", "10.0.0.100", "2001:db8::60"]`; got != want {
		t.Errorf("manager VIPs %s, want %s", got, want)
	}
	var rows []dbusapi.ServiceRow
	if err := call(e.conn, "", "ListServices").Store(&rows); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(rows, func(r dbusapi.ServiceRow) bool { return r.Name == "web6" })
	if i < 0 {
		t.Fatalf("ListServices has no web6: %v", rows)
	}
	if diff := cmp.Diff(map[string]string{"10.0.0.60": "80,443", "2001:db8::60": "80,443"}, rows[i].VIPs); diff != "" {
		t.Errorf("ListServices web6 VIPs (-want +got):\n%s", diff)
	}
	var backends [][]any
	if err := call(e.conn, "", "ListBackends").Store(&backends); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, b := range backends {
		if b[1] == "web6" {
			addrs = append(addrs, b[2].(string))
		}
	}
	slices.Sort(addrs)
	if diff := cmp.Diff([]string{"10.0.1.61", "2001:db8:1::11"}, addrs); diff != "" {
		t.Errorf("ListBackends web6 addresses (-want +got):\n%s", diff)
	}
}

// TestServiceCounters: changed service counters are announced as
// invalidated, as a backend's are.
func TestServiceCounters(t *testing.T) {
	e := newEnv(t, envOptions{info: func(i *dbusapi.Info) { i.CounterInterval = 20 * time.Millisecond }})
	sigs := subscribe(t, e.conn)
	e.svcCounts.Store(&map[string]dbusapi.ServiceCounters{"default": {Packets: 1, Bytes: 60, NewFlows: 1, ActiveFlows: 1}})
	want := []string{"/org/caplance/Caplance1/service/default org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Service, map[], [Packets Bytes NewFlows ActiveFlows])"}
	if diff := cmp.Diff(want, sigs.take(t, 1)); diff != "" {
		t.Errorf("signals (-want +got):\n%s", diff)
	}
}

// TestBackendMovedByReload: a reload that moves a backend to another
// service moves its object: removed at the old path, added at the new one,
// after the new service's object.
func TestBackendMovedByReload(t *testing.T) {
	e := newEnv(t, envOptions{})
	sigs := subscribe(t, e.conn)
	web := model.Service{Name: "web", VIPs: []model.VIP{{Addr: netip.MustParseAddr("10.0.0.80"), Ports: []model.PortRange{{First: 80, Last: 80}}}},
		Protocols: model.TCP, TableSize: 65537}
	backends := []config.Backend{{Service: "web", Name: "web1", Address: netip.MustParseAddr("10.0.1.11"), Weight: 100}}
	if _, err := e.reg.Reload([]model.Service{defaultService, web}, backends); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range sigs.take(t, 7) {
		// Without the properties.
		name, _, _ := strings.Cut(strings.TrimPrefix(s, "/org/caplance/Caplance1 "), ", map[")
		got = append(got, name)
	}
	want := []string{
		"org.freedesktop.DBus.ObjectManager.InterfacesAdded(/org/caplance/Caplance1/service/web",
		"org.caplance.Caplance1.Manager.ServiceAdded(web, /org/caplance/Caplance1/service/web)",
		"org.freedesktop.DBus.Properties.PropertiesChanged(org.caplance.Caplance1.Manager", // VIPs
		"org.freedesktop.DBus.ObjectManager.InterfacesRemoved(/org/caplance/Caplance1/service/default/backend/web1, [org.caplance.Caplance1.Backend org.freedesktop.DBus.Properties org.freedesktop.DBus.Introspectable org.freedesktop.DBus.Peer])",
		"org.caplance.Caplance1.Manager.BackendRemoved(web1, /org/caplance/Caplance1/service/default/backend/web1)",
		"org.freedesktop.DBus.ObjectManager.InterfacesAdded(/org/caplance/Caplance1/service/web/backend/web1",
		"org.caplance.Caplance1.Manager.BackendAdded(web1, /org/caplance/Caplance1/service/web/backend/web1)",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("signals (-want +got):\n%s", diff)
	}
	if got := getAll(t, e.conn, dbusname.BackendPath("web", "web1"), dbusname.BackendIface)["Service"]; got != `"web"` {
		t.Errorf("web1 Service = %s", got)
	}
}

// TestServiceErrors: every bad option or argument of AddService,
// ChangeService, RemoveService and AddBackend's service option gets its
// error name and a message naming the problem, and changes nothing.
func TestServiceErrors(t *testing.T) {
	e := newEnv(t, envOptions{})
	addDNS(t, e, nil)
	const (
		invalid = dbusapi.ErrorInvalidArgument
		missing = dbusapi.ErrorNotFound
		exists  = dbusapi.ErrorAlreadyExists
		failed  = dbusapi.ErrorFailed
	)
	dnsVIP := opts{"vips": v([]string{"10.0.0.54"})}
	with := func(o opts, key string, x any) opts {
		out := opts{key: v(x)}
		for k, y := range o {
			if k != key {
				out[k] = y
			}
		}
		return out
	}
	for _, tt := range []struct {
		method string
		args   []any
		name   string
		frags  []string
		setup  func()
	}{
		{"AddService", []any{"dns2", opts{}}, invalid, []string{`adding service "dns2"`, "vips"}, nil},
		{"AddService", []any{"dns2", opts{"vips": v([]string{})}}, invalid, []string{"vips"}, nil},
		{"AddService", []any{"dns2", with(dnsVIP, "vip", "10.0.0.54")}, invalid, []string{`unknown option "vip"`, "vips (as)", "runtime (b)"}, nil},
		{"AddService", []any{"dns2", opts{"vips": v("10.0.0.54")}}, invalid, []string{`"vips"`, "type as", "not s"}, nil},
		{"AddService", []any{"dns2", with(dnsVIP, "table_size", int32(251))}, invalid, []string{`"table_size"`, "type u", "not i"}, nil},
		{"AddService", []any{"dns2", with(dnsVIP, "runtime", "yes")}, invalid, []string{`"runtime"`, "type b"}, nil},
		{"AddService", []any{"dns2", opts{"vips": v([]string{"10.0.0"})}}, invalid, []string{`adding service "dns2"`, "not an IP address"}, nil},
		{"AddService", []any{"dns2", opts{"vips": v([]string{"fe80::1"})}}, invalid, []string{`"fe80::1"`, "link-local"}, nil},
		{"AddService", []any{"dns2", opts{"vips": v([]string{"::ffff:10.0.0.54"})}}, invalid, []string{"IPv4-mapped", "write the IPv4 form 10.0.0.54"}, nil},
		{"AddBackend", []any{"web9", "ff02::1", opts{"service": v("dns")}}, invalid, []string{`"ff02::1"`, "multicast"}, nil},
		{"AddService", []any{"dns2", with(dnsVIP, "ports", "0")}, invalid, []string{`adding service "dns2"`, "port"}, nil},
		{"AddService", []any{"dns2", with(dnsVIP, "ports", "90-80")}, invalid, []string{`adding service "dns2"`, "90-80"}, nil},
		{"AddService", []any{"dns2", with(dnsVIP, "protocols", "sctp")}, invalid, []string{"sctp", "tcp+udp"}, nil},
		{"AddService", []any{"dns2", with(dnsVIP, "hash", "round-robin")}, invalid, []string{"round-robin", "source-ip"}, nil},
		{"AddService", []any{"dns2", with(dnsVIP, "check", "bogus")}, invalid, []string{"bogus"}, nil},
		{"AddService", []any{"bad name", dnsVIP}, invalid, []string{`"bad name"`, "name"}, nil},
		{"AddService", []any{"dns", dnsVIP}, exists, []string{`"dns"`}, nil},
		{"AddService", []any{"dns2", opts{"vips": v([]string{vip})}}, exists, []string{`"dns2"`, `"default"`, vip}, nil},
		{"AddService", []any{"dns2", opts{"vips": v([]string{"10.0.1.11"})}}, invalid, []string{"10.0.1.11", `"web1"`}, nil},
		{"ChangeService", []any{"default", opts{"ports": v("80")}}, invalid, []string{`"default"`, "configuration file"}, nil},
		{"ChangeService", []any{"nosuch", opts{}}, missing, []string{`"nosuch"`}, nil},
		{"ChangeService", []any{"bad name", opts{}}, invalid, []string{`"bad name"`}, nil},
		{"ChangeService", []any{"dns", opts{"runtime": v(true)}}, invalid, []string{`"runtime"`, "cannot change"}, nil},
		{"ChangeService", []any{"dns", opts{"name": v("x")}}, invalid, []string{`unknown option "name"`, "check (s)"}, nil},
		{"ChangeService", []any{"dns", opts{"vips": v([]string{vip})}}, exists, []string{`"default"`, vip}, nil},
		{"ChangeService", []any{"dns", opts{"vips": v([]string{})}}, invalid, []string{"vips"}, nil},
		{"ChangeService", []any{"dns", opts{"hash": v("x")}}, invalid, []string{`changing service "dns"`, "hash"}, nil},
		{"ChangeService", []any{"dns", opts{"ports": v("53-")}}, invalid, []string{`changing service "dns"`, "53-"}, nil},
		{"RemoveService", []any{"default"}, invalid, []string{"configuration file"}, nil},
		{"RemoveService", []any{"nosuch"}, missing, []string{`"nosuch"`}, nil},
		{"RemoveService", []any{"bad name"}, invalid, []string{`"bad name"`}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"service": v("nosuch")}}, missing, []string{`"nosuch"`}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"service": v("bad name")}}, invalid, []string{`"bad name"`}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"service": v(uint32(1))}}, invalid, []string{`"service"`, "type s"}, nil},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{}}, invalid, []string{"2 services", "default, dns"}, nil},
		{"AddService", []any{"dns2", dnsVIP}, failed, []string{"data path", "disk full"}, func() { e.dp.setFail(errors.New("disk full")) }},
		{"ChangeService", []any{"dns", opts{"ports": v("54")}}, failed, []string{"disk full"}, nil},
		{"RemoveService", []any{"dns"}, failed, []string{"disk full"}, nil},
	} {
		if tt.setup != nil {
			tt.setup()
		}
		what := fmt.Sprintf("%s%v", tt.method, tt.args)
		before := e.snapshot(t)
		checkError(t, what, call(e.conn, "", tt.method, tt.args...).Err, tt.name, tt.frags...)
		e.unchanged(t, before, what)
	}
}
