package healthd

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/model"
)

// settle is long enough for several probes (interval 100ms): nothing more
// may be reported after a transition settles.
const settle = 400 * time.Millisecond

// TestReportsTransitions: backends come up after rise probes, one goes
// down after fall probes when its listener closes and up again when it
// returns; each transition is reported exactly once.
func TestReportsTransitions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l1, l2 := listen(t), listen(t)
	e.startCaplanced(tcpCheck("web1", "10.0.1.11", l1), tcpCheck("web2", "10.0.1.12", l2))
	start := time.Now()
	e.startHealthd(testConfig())

	e.waitHealth("web1", "up: "+l1.connected(2), 2*time.Second)
	e.waitHealth("web2", "up: "+l2.connected(2), 2*time.Second)
	t.Logf("both up after %v", time.Since(start))

	l1.close()
	e.waitHealth("web1", "down: "+l1.refused(2), 2*time.Second)
	l1.open()
	e.waitHealth("web1", "up: "+l1.connected(2), 2*time.Second)
	time.Sleep(settle)

	if diff := cmp.Diff([]string{"up: " + l1.connected(2), "down: " + l1.refused(2), "up: " + l1.connected(2)}, e.calls.of("web1")); diff != "" {
		t.Errorf("ReportHealth calls for web1 (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"up: " + l2.connected(2)}, e.calls.of("web2")); diff != "" {
		t.Errorf("ReportHealth calls for web2 (-want +got):\n%s", diff)
	}
	if s := e.notes.lastStatus(); s != "checking 2 backends" {
		t.Errorf("STATUS=%q, want checking 2 backends", s)
	}
}

// TestHealth1 reads caplance-healthd's objects as an unprivileged user.
func TestHealth1(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l1 := listen(t)
	e.startCaplanced(
		tcpCheck("web-1.a", "10.0.1.11", l1),
		config.Backend{Name: "nocheck", Address: netip.MustParseAddr("10.0.1.12"), Weight: 100},
	)
	e.startHealthd(testConfig())
	e.waitHealth("web-1.a", "up: "+l1.connected(2), 2*time.Second)
	// A spec healthd cannot run (caplanced checks only the kind).
	e.inLoop(func() { e.d.upsert("bad", "default", netip.MustParseAddr("10.0.1.13"), "tcp://:0", "config") })
	nobody := e.bus.ConnectAs(t, dbustest.Nobody(t))

	path := CheckPath("web-1.a")
	if path != "/org/caplance/Health1/backend/web_2d1_2ea" {
		t.Errorf("CheckPath = %s", path)
	}
	props, err := getAll(nobody, path, CheckIface)
	if err != nil {
		t.Fatalf("GetAll %s: %v", path, err)
	}
	got := map[string]any{}
	for k, v := range props {
		got[k] = v.Value()
	}
	if lat := got["LatencyUSec"].(uint64); lat == 0 || lat > 100000 {
		t.Errorf("LatencyUSec = %d, want within the 100ms timeout", lat)
	}
	if last := time.UnixMicro(int64(got["LastProbeUSec"].(uint64))); time.Since(last) > time.Second {
		t.Errorf("LastProbeUSec = %v, %v ago", last, time.Since(last))
	}
	if n := got["Successes"].(uint32); n < 2 {
		t.Errorf("Successes = %d, want at least rise (2)", n)
	}
	delete(got, "LatencyUSec")
	delete(got, "LastProbeUSec")
	delete(got, "Successes")
	want := map[string]any{
		"Name": "web-1.a", "Service": "default", "Address": "10.0.1.11", "Check": "tcp://" + l1.addr,
		"State": "up", "Reason": l1.connected(2), "Detail": "tcp: " + l1.addr + ": connected",
		"Failures": uint32(0),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("properties of %s (-want +got):\n%s", path, diff)
	}

	// The invalid spec is shown, not run and not reported; the backend
	// without a check has no object.
	bad, err := getAll(nobody, CheckPath("bad"), CheckIface)
	if err != nil {
		t.Fatal(err)
	}
	if bad["State"].Value() != "invalid" || !strings.Contains(bad["Detail"].Value().(string), "port") {
		t.Errorf("bad: State %v Detail %v, want invalid and the parse error", bad["State"], bad["Detail"])
	}
	if _, err := getAll(nobody, CheckPath("nocheck"), CheckIface); errorName(err) != "org.freedesktop.DBus.Error.NoSuchObject" {
		t.Errorf("nocheck: %v (%s), want NoSuchObject", err, errorName(err))
	}
	var objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant
	if err := nobody.Object(dbusname.HealthBusName, dbusname.HealthPath).Call(dbusname.ObjectManagerIface+".GetManagedObjects", 0).Store(&objs); err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[path] == nil || objs[CheckPath("bad")] == nil {
		t.Errorf("GetManagedObjects: %v", objs)
	}
	mgr, err := getAll(nobody, dbusname.HealthPath, dbusname.HealthManagerIface)
	if err != nil {
		t.Fatal(err)
	}
	if mgr["Caplanced"].Value() != "running" || mgr["Status"].Value() != "checking 1 backend" {
		t.Errorf("manager properties: %v", mgr)
	}

	// Read-only, and the policy lets nobody call nothing else.
	err = nobody.Object(dbusname.HealthBusName, path).Call(propertiesIface+".Set", 0, CheckIface, "State", dbus.MakeVariant("down")).Err
	if name := errorName(err); name != "org.freedesktop.DBus.Error.AccessDenied" {
		t.Errorf("Set as nobody: %v (%s), want the policy's AccessDenied", err, name)
	}
	root := e.bus.Connect(t)
	err = root.Object(dbusname.HealthBusName, path).Call(propertiesIface+".Set", 0, CheckIface, "State", dbus.MakeVariant("down")).Err
	if name := errorName(err); name != "org.freedesktop.DBus.Properties.Error.ReadOnly" {
		t.Errorf("Set as root: %v (%s), want ReadOnly", err, name)
	}
	var xml string
	if err := nobody.Object(dbusname.HealthBusName, path).Call(introspectableIface+".Introspect", 0).Store(&xml); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(xml, `<property name="LatencyUSec" type="t" access="read">`) {
		t.Errorf("introspection of %s:\n%s", path, xml)
	}
	if err := nobody.Object(dbusname.HealthBusName, "/org/caplance/Health1/backend").Call(introspectableIface+".Introspect", 0).Store(&xml); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(xml, `<node name="web_2d1_2ea"></node>`) || !strings.Contains(xml, `<node name="bad"></node>`) {
		t.Errorf("introspection of the backends' parent:\n%s", xml)
	}

	// Another connection of the health user cannot take the name.
	other, err := e.bus.DialAs(dbustest.Health(t))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	d2 := New(Options{Config: testConfig(), Conn: other, Notify: func(string) {}})
	if err := d2.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "another caplance-healthd") {
		t.Errorf("a second healthd: %v, want a refusal naming another caplance-healthd", err)
	}
	// Nobody may not own it at all.
	if reply, err := nobody.RequestName(dbusname.HealthBusName, dbus.NameFlagDoNotQueue); err == nil {
		t.Errorf("nobody took %s: %v", dbusname.HealthBusName, reply)
	}
}

// TestLiveChanges: backends added, removed and given another check while
// healthd runs.
func TestLiveChanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l1, l3, closed := listen(t), listen(t), listen(t)
	closed.close()
	web1 := tcpCheck("web1", "10.0.1.11", l1)
	e.startCaplanced(web1)
	e.startHealthd(testConfig())
	e.waitHealth("web1", "up: "+l1.connected(2), 2*time.Second)
	nobody := e.bus.ConnectAs(t, dbustest.Nobody(t))

	// Added over D-Bus by an admin, as caplancectl add-backend does.
	admin := e.bus.ConnectAs(t, dbustest.Admin(t))
	opts := map[string]dbus.Variant{"check": dbus.MakeVariant("tcp://" + l3.addr), "runtime": dbus.MakeVariant(true)}
	if err := admin.Object(dbusname.BusName, dbusname.ManagerPath).Call(dbusname.ManagerIface+".AddBackend", 0, "web3", "10.0.1.13", opts).Err; err != nil {
		t.Fatal(err)
	}
	e.waitHealth("web3", "up: "+l3.connected(2), 2*time.Second)

	// web1's check changes (a reload): caplanced resets its health to
	// unknown, healthd starts the new check afresh.
	web1.Check = "tcp://" + closed.addr
	if _, err := e.registry().Reload([]model.Service{defaultService}, inDefault([]config.Backend{web1})); err != nil {
		t.Fatal(err)
	}
	e.waitHealth("web1", "down: "+closed.refused(2), 2*time.Second)
	props, err := getAll(nobody, CheckPath("web1"), CheckIface)
	if err != nil {
		t.Fatal(err)
	}
	if props["Check"].Value() != web1.Check || props["State"].Value() != "down" {
		t.Errorf("web1 after the change: %v", props)
	}

	// web3 removed: its object goes, nothing more is reported of it.
	if err := e.registry().Remove("web3"); err != nil {
		t.Fatal(err)
	}
	e.waitFor("web3's object to go", 2*time.Second, func() bool {
		_, err := getAll(nobody, CheckPath("web3"), CheckIface)
		return err != nil
	})
	l3.close()
	time.Sleep(settle)
	if diff := cmp.Diff([]string{"up: " + l3.connected(2)}, e.calls.of("web3")); diff != "" {
		t.Errorf("ReportHealth calls for web3 (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"up: " + l1.connected(2), "down: " + closed.refused(2)}, e.calls.of("web1")); diff != "" {
		t.Errorf("ReportHealth calls for web1 (-want +got):\n%s", diff)
	}
	e.inLoop(func() {
		if len(e.d.jobs) != 1 {
			t.Errorf("jobs %v, want web1's only", e.d.jobs)
		}
	})
}

// TestCaplancedRestart: caplanced goes away; healthd keeps probing and,
// when a new caplanced (health unknown everywhere) appears, syncs and sends
// the whole state, including a change that happened while it was away.
func TestCaplancedRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l1, l2 := listen(t), listen(t)
	backends := []config.Backend{tcpCheck("web1", "10.0.1.11", l1), tcpCheck("web2", "10.0.1.12", l2)}
	e.startCaplanced(backends...)
	e.startHealthd(testConfig())
	e.waitHealth("web1", "up: "+l1.connected(2), 2*time.Second)
	e.waitHealth("web2", "up: "+l2.connected(2), 2*time.Second)

	e.stopCaplanced()
	e.waitFor("the away status", 2*time.Second, func() bool {
		return e.notes.lastStatus() == "caplanced not running: probing 2 backends, will report when it returns"
	})
	l1.close()
	// web1 falls while caplanced is away: its report waits, and is
	// retried.
	e.waitFor("web1 to fall", 2*time.Second, func() bool {
		p, err := getAll(e.bus.Connect(t), CheckPath("web1"), CheckIface)
		return err == nil && p["State"].Value() == "down"
	})
	if n := e.d.reporter.pendingCount(); n != 1 {
		t.Errorf("%d reports pending while caplanced is away, want 1", n)
	}
	time.Sleep(300 * time.Millisecond) // a few retries (50ms, 100ms, 200ms)

	e.startCaplanced(backends...)
	e.waitHealth("web1", "down: "+l1.refused(2), 2*time.Second)
	e.waitHealth("web2", "up: "+l2.connected(2), 2*time.Second)
	e.waitFor("the running status", 2*time.Second, func() bool { return e.notes.lastStatus() == "checking 2 backends" })
	time.Sleep(settle)
	if n := e.d.reporter.pendingCount(); n != 0 {
		t.Errorf("%d reports still pending", n)
	}
	// web2 reported twice: once to each caplanced.
	if diff := cmp.Diff([]string{"up: " + l2.connected(2), "up: " + l2.connected(2)}, e.calls.of("web2")); diff != "" {
		t.Errorf("ReportHealth calls for web2 (-want +got):\n%s", diff)
	}
}

// TestStartsBeforeCaplanced: READY=1 comes with caplanced away; the
// backends are learnt when it appears.
func TestStartsBeforeCaplanced(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l1 := listen(t)
	e.startHealthd(testConfig())
	want := []string{"READY=1", "STATUS=caplanced not running: probing 0 backends, will report when it returns"}
	if diff := cmp.Diff(want, e.notes.lines()[:2]); diff != "" {
		t.Errorf("sd_notify (-want +got):\n%s", diff)
	}
	e.startCaplanced(tcpCheck("web1", "10.0.1.11", l1))
	e.waitHealth("web1", "up: "+l1.connected(2), 2*time.Second)

	// The loop answers (the bound only keeps a hang from stalling the run).
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := e.d.Alive(ctx); err != nil {
		t.Errorf("Alive: %v", err)
	}

	if err := e.stopHealthd(); err != nil {
		t.Errorf("Run: %v", err)
	}
	lines := e.notes.lines()
	if diff := cmp.Diff([]string{"STOPPING=1", "STATUS=stopping"}, lines[len(lines)-2:]); diff != "" {
		t.Errorf("last sd_notify lines (-want +got):\n%s", diff)
	}
	// The name is released.
	var has bool
	if err := e.bus.Connect(t).BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, dbusname.HealthBusName).Store(&has); err != nil || has {
		t.Errorf("NameHasOwner(%s) = %v, %v after the stop", dbusname.HealthBusName, has, err)
	}
}

// TestInitialAndSharedProbes: initial=down is reported at once; two
// checks of one target share one probe; tunnel checks are aimed at the
// lowest VIP of their backend's service of the backend's family (of any
// family when the service has none of it) and the encap port, from the
// source address towards the backend, and follow a change of the VIPs.
func TestInitialAndSharedProbes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l1 := listen(t)
	// Never probed (the first probe waits up to an hour; and it could not
	// bind the fake source address).
	const never = "?interval=1h&jitter=1h"
	// dns is dual-stack: its IPv6 backend's tunnel check goes 6-in-6.
	dns := model.Service{Name: "dns", VIPs: []model.VIP{{Addr: netip.MustParseAddr("2001:db8::53")}, {Addr: netip.MustParseAddr("10.0.0.53")}}, Protocols: model.UDP, TableSize: 251}
	backends := []config.Backend{
		{Name: "a", Address: netip.MustParseAddr("10.0.1.11"), Weight: 100, Check: "tcp://" + l1.addr + "?initial=down&rise=3"},
		{Name: "b", Address: netip.MustParseAddr("10.0.1.12"), Weight: 100, Check: "tcp://" + l1.addr},
		{Name: "t", Address: netip.MustParseAddr("10.0.1.13"), Weight: 100, Check: "tunnel://:80" + never},
		{Service: "dns", Name: "t-dns", Address: netip.MustParseAddr("10.0.1.13"), Weight: 100, Check: "tunnel://:53" + never},
		{Service: "dns", Name: "t6-dns", Address: netip.MustParseAddr("2001:db8:1::13"), Weight: 100, Check: "tunnel://:53" + never},
	}
	e.startCaplancedServices([]model.Service{dns}, backends...)
	var sources []netip.Addr
	e.startHealthd(testConfig(), func(o *Options) {
		o.Source = func(a netip.Addr) (netip.Addr, error) {
			sources = append(sources, a) // on the loop's goroutine
			if a.Is6() {
				return netip.MustParseAddr("2001:db8:1::1"), nil
			}
			return netip.MustParseAddr("10.0.1.1"), nil
		}
	})
	e.waitHealth("a", "down: initial state down, before the first probe", 2*time.Second)
	e.waitHealth("a", "up: "+l1.connected(3), 2*time.Second)
	e.waitHealth("b", "up: "+l1.connected(2), 2*time.Second)

	tunnelKeys := func() (string, string, string) {
		var key, dnsKey, dns6Key string
		e.inLoop(func() {
			if len(e.d.jobs) != 4 {
				t.Errorf("%d jobs, want 4 (a and b share one)", len(e.d.jobs))
			}
			key, dnsKey, dns6Key = e.d.backends["t"].key, e.d.backends["t-dns"].key, e.d.backends["t6-dns"].key
		})
		return key, dnsKey, dns6Key
	}
	key, dnsKey, dns6Key := tunnelKeys()
	for _, want := range []string{"vip=" + testVIP, "backend=10.0.1.13", "encap-port=5555", "source=10.0.1.1"} {
		if !strings.Contains(key, want) {
			t.Errorf("tunnel key %q does not contain %q", key, want)
		}
	}
	if !strings.Contains(dnsKey, "vip=10.0.0.53") {
		t.Errorf("the tunnel key of dns's IPv4 backend %q is not aimed at dns's IPv4 VIP", dnsKey)
	}
	for _, want := range []string{"vip=2001:db8::53", "backend=2001:db8:1::13", "source=2001:db8:1::1"} {
		if !strings.Contains(dns6Key, want) {
			t.Errorf("the tunnel key of dns's IPv6 backend %q does not contain %q", dns6Key, want)
		}
	}
	e.mu.Lock()
	e.srv.SetConfig(nil, 6000, 65537)
	e.mu.Unlock()
	moved := defaultService
	moved.VIPs = []model.VIP{{Addr: netip.MustParseAddr("10.0.0.200")}, {Addr: netip.MustParseAddr(testVIP)}, {Addr: netip.MustParseAddr("10.0.0.50")}}
	if _, err := e.registry().Reload([]model.Service{moved, dns}, inDefault(backends)); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the tunnel check to follow the VIPs", 2*time.Second, func() bool {
		k, d, d6 := tunnelKeys()
		return strings.Contains(k, "vip=10.0.0.50") && strings.Contains(k, "encap-port=6000") &&
			strings.Contains(d, "vip=10.0.0.53") && strings.Contains(d, "encap-port=6000") &&
			strings.Contains(d6, "vip=2001:db8::53") && strings.Contains(d6, "encap-port=6000")
	})
	e.inLoop(func() {
		if len(sources) < 2 {
			t.Errorf("Source called %d times, want once at the start and again after the change", len(sources))
		}
		for _, a := range sources {
			if a != netip.MustParseAddr("10.0.1.13") && a != netip.MustParseAddr("2001:db8:1::13") {
				t.Errorf("Source asked for %v, want a tunnel-checked backend's address", a)
			}
		}
	})
}
