package healthd

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
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

// TestServiceCheckChange: a backend without a check of its own runs its
// service's; when an admin changes the service's check over D-Bus, the
// change reaches healthd as a change of the backend's Check, and healthd
// probes the new check from scratch.
func TestServiceCheckChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	open, closed := listen(t), listen(t)
	closed.close()
	e.startCaplanced()
	e.startHealthd(testConfig())
	admin := e.bus.ConnectAs(t, dbustest.Admin(t))
	manager := admin.Object(dbusname.BusName, dbusname.ManagerPath)
	v := dbus.MakeVariant
	err := manager.Call(dbusname.ManagerIface+".AddService", 0, "dns", map[string]dbus.Variant{
		"vips": v([]string{"10.0.0.53"}), "ports": v("53"), "protocols": v("udp"), "check": v("tcp://" + open.addr), "runtime": v(true),
	}).Err
	if err != nil {
		t.Fatalf("AddService: %v", err)
	}
	err = manager.Call(dbusname.ManagerIface+".AddBackend", 0, "dns1", "10.0.1.11", map[string]dbus.Variant{"service": v("dns"), "runtime": v(true)}).Err
	if err != nil {
		t.Fatalf("AddBackend: %v", err)
	}
	e.waitHealth("dns1", "up: "+open.connected(2), 2*time.Second)

	err = manager.Call(dbusname.ManagerIface+".ChangeService", 0, "dns", map[string]dbus.Variant{"check": v("tcp://" + closed.addr)}).Err
	if err != nil {
		t.Fatalf("ChangeService: %v", err)
	}
	e.waitHealth("dns1", "down: "+closed.refused(2), 2*time.Second)
	props, err := getAll(e.bus.ConnectAs(t, dbustest.Nobody(t)), CheckPath("dns1"), CheckIface)
	if err != nil {
		t.Fatal(err)
	}
	if props["Check"].Value() != "tcp://"+closed.addr || props["Service"].Value() != "dns" {
		t.Errorf("dns1's check after the change: %v", props)
	}
	if diff := cmp.Diff([]string{"up: " + open.connected(2), "down: " + closed.refused(2)}, e.calls.of("dns1")); diff != "" {
		t.Errorf("ReportHealth calls for dns1 (-want +got):\n%s", diff)
	}
}

// TestSameAddressTwoServices: one host in two services under two names,
// with a check each, is probed and reported per (service, backend): one
// up, the other down, and a change of one leaves the other alone.
func TestSameAddressTwoServices(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	web, dns := listen(t), listen(t)
	dns.close()
	svc := model.Service{Name: "dns", VIPs: []model.VIP{{Addr: netip.MustParseAddr("10.0.0.53")}}, Protocols: model.UDP, TableSize: 251}
	host := netip.MustParseAddr("10.0.1.11")
	e.startCaplancedServices([]model.Service{svc},
		config.Backend{Service: config.DefaultService, Name: "host1-web", Address: host, Weight: 100, Check: "tcp://" + web.addr},
		config.Backend{Service: "dns", Name: "host1-dns", Address: host, Weight: 100, Check: "tcp://" + dns.addr},
	)
	e.startHealthd(testConfig())
	e.waitHealth("host1-web", "up: "+web.connected(2), 2*time.Second)
	e.waitHealth("host1-dns", "down: "+dns.refused(2), 2*time.Second)

	dns.open()
	e.waitHealth("host1-dns", "up: "+dns.connected(2), 2*time.Second)
	time.Sleep(settle)
	if diff := cmp.Diff([]string{"up: " + web.connected(2)}, e.calls.of("host1-web")); diff != "" {
		t.Errorf("ReportHealth calls for host1-web (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"down: " + dns.refused(2), "up: " + dns.connected(2)}, e.calls.of("host1-dns")); diff != "" {
		t.Errorf("ReportHealth calls for host1-dns (-want +got):\n%s", diff)
	}
	for name, service := range map[string]string{"host1-web": "default", "host1-dns": "dns"} {
		props, err := getAll(e.bus.Connect(t), CheckPath(name), CheckIface)
		if err != nil {
			t.Fatal(err)
		}
		if props["Service"].Value() != service || props["Address"].Value() != host.String() {
			t.Errorf("%s: %v, want service %s on %s", name, props, service, host)
		}
	}
}

// TestServiceExecCheckRefused: an exec check that an admin gives a service
// over D-Bus is its run-time backends' check, and runs under the same rule
// as their own: only a program under exec_dir; /usr/bin/touch is not run,
// and the backend is reported down saying why.
func TestServiceExecCheckRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	touched := filepath.Join(t.TempDir(), "touched")
	e.startCaplanced()
	cfg := testConfig()
	cfg.ExecDir = t.TempDir()
	e.startHealthd(cfg)
	admin := e.bus.ConnectAs(t, dbustest.Admin(t))
	manager := admin.Object(dbusname.BusName, dbusname.ManagerPath)
	v := dbus.MakeVariant
	err := manager.Call(dbusname.ManagerIface+".AddService", 0, "dns", map[string]dbus.Variant{
		"vips": v([]string{"10.0.0.53"}), "check": v("exec:///usr/bin/touch?arg=" + touched), "runtime": v(true),
	}).Err
	if err != nil {
		t.Fatalf("AddService: %v", err)
	}
	err = manager.Call(dbusname.ManagerIface+".AddBackend", 0, "dns1", "10.0.1.11", map[string]dbus.Variant{"service": v("dns"), "runtime": v(true)}).Err
	if err != nil {
		t.Fatalf("AddBackend: %v", err)
	}
	e.waitFor("dns1 to be reported down as refused", 2*time.Second, func() bool {
		return strings.HasPrefix(e.health("dns1"), "down: exec check refused: /usr/bin/touch is not under "+cfg.ExecDir)
	})
	time.Sleep(settle)
	if _, err := os.Stat(touched); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused exec check ran: %v", err)
	}
}
