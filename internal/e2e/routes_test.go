package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/vishvananda/netlink"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/testbed"
)

// TestUnroutableBackend starts caplanced with one backend it has no route
// to: it starts, every change of the others goes through, the unroutable
// backend gets nothing and says why, once a route to it appears it gets new
// connections with no restart and no operator action, and when the route
// goes again it is taken out again.
func TestUnroutableBackend(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces)")
	}
	bus := dbustest.Start(t)
	tb := openTestbed(t, testbed.Options{Prefix: "rte", Backends: 3, Workers: 2, BalancerBus: bus.Address})
	// be3 also owns 198.51.100.7, outside the lab's subnet: the balancer
	// has no route to it until the test adds one via be3's lab address.
	be3, far := tb.Backends[2], netip.MustParseAddr("198.51.100.7")
	err := be3.Host.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: far.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := tb.BalancerConfig(tb.Backends[:2]) + fmt.Sprintf("\n[[backend]]\nname = %q\naddress = %q\n", be3.Name, far)
	cfg = strings.Replace(cfg, "[balancer]\n", "[balancer]\nmax_backends = 4\n", 1)
	d, err := tb.StartDaemon(tb.LB, "lb", cfg, bus.Address)
	if err != nil {
		t.Fatalf("caplanced with an unroutable backend: %v", err)
	}
	tb.Balancer = d
	mgr := bus.Connect(t).Object(dbusname.BusName, dbusname.ManagerPath)
	be1, be2 := tb.Backends[0].Name, tb.Backends[1].Name

	const reason = "no route to 198.51.100.7: network is unreachable"
	if row := listBackends(t, mgr)[be3.Name]; row.Health != "down" || row.HealthDetail != reason || row.AdminState != "active" {
		t.Errorf("the unroutable backend shows %s/%s %q, want active/down %q", row.AdminState, row.Health, row.HealthDetail, reason)
	}
	out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), reason) {
		t.Errorf("caplancectl list does not show why be3 is down: %v\n%s", err, out)
	}

	// Every change of the other backends goes through.
	call(t, mgr, "ReportHealth", be1, false, "test")
	call(t, mgr, "ReportHealth", be1, true, "")
	call(t, mgr, "Drain", be2)
	call(t, mgr, "Undrain", be2)
	call(t, mgr, "AddBackend", "be9", "198.18.0.19", map[string]dbus.Variant{})
	// max_backends = 4: a fifth is refused, naming the limit.
	err = mgr.Call(dbusname.ManagerIface+".AddBackend", 0, "be10", "198.18.0.20", map[string]dbus.Variant{}).Err
	var derr dbus.Error
	if !errors.As(err, &derr) || derr.Name != dbusname.ErrorPrefix+"InvalidArgument" || !strings.Contains(err.Error(), "max_backends = 4") {
		t.Errorf("AddBackend past max_backends: %v, want InvalidArgument naming max_backends = 4", err)
	}
	call(t, mgr, "RemoveBackend", "be9")
	call(t, mgr, "ReportHealth", be3.Name, true, "200 OK")

	if n := servedBy(t, tb, 30)[be3.Name]; n != 0 {
		t.Errorf("the unroutable backend served %d connections", n)
	}
	if row := listBackends(t, mgr)[be3.Name]; row.Packets != 0 || row.Health != "down" || row.HealthDetail != reason {
		t.Errorf("the unroutable backend: %d packets, %s %q; want none, down %q", row.Packets, row.Health, row.HealthDetail, reason)
	}

	if err := tb.LB.AddRoute(netip.PrefixFrom(far, 32), be3.Addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "be3 shows healthd's report once its route is there", func() error {
		if row := listBackends(t, mgr)[be3.Name]; row.Health != "up" || row.HealthDetail != "200 OK" {
			return fmt.Errorf("be3 shows %s %q", row.Health, row.HealthDetail)
		}
		return nil
	})
	if n := servedBy(t, tb, 60)[be3.Name]; n == 0 {
		t.Error("be3 served no new connection after its route appeared")
	}

	// Losing the route while running takes be3 out again, and changes of
	// the others still go through.
	err = tb.LB.Do(func() error {
		return netlink.RouteDel(&netlink.Route{Dst: &net.IPNet{IP: far.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "be3 shows the lost route", func() error {
		if row := listBackends(t, mgr)[be3.Name]; row.Health != "down" || row.HealthDetail != reason {
			return fmt.Errorf("be3 shows %s %q", row.Health, row.HealthDetail)
		}
		return nil
	})
	call(t, mgr, "Drain", be2)
	call(t, mgr, "Undrain", be2)
	if n := servedBy(t, tb, 30)[be3.Name]; n != 0 {
		t.Errorf("be3 served %d connections without a route", n)
	}
}
