package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/caplance/caplance/internal/daemon"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/testbed"
	"github.com/caplance/caplance/internal/vip"
)

// birdRoute is a route of BIRD's protocol (12) in caplanced's table, which
// caplanced must never touch.
var birdRoute = netip.MustParseAddr("198.18.0.200")

// routedConfig is the testbed balancer's configuration, routed in table 100
// with protocol 252, withdrawing for delay.
func routedConfig(tb *testbed.Testbed, delay string) string {
	return strings.Replace(tb.BalancerConfig(tb.Backends), "[balancer]\n",
		fmt.Sprintf("[balancer]\nrouted = true\nroute_table = 100\nroute_protocol = 252\nwithdraw_delay = %q\n", delay), 1)
}

// tableRoutes lists the VIPs with a route in table 100 of the balancer's
// namespace, of protocol 252 (caplanced's) and 12 (BIRD's).
func tableRoutes(t *testing.T, tb *testbed.Testbed) (ours, birds []netip.Addr) {
	t.Helper()
	err := tb.LB.Do(func() (err error) {
		if ours, err = vip.Routes(100, 252); err != nil {
			return err
		}
		birds, err = vip.Routes(100, 12)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ours, birds
}

// waitRoutes waits until caplanced's routes in table 100 are want, and
// checks BIRD's route is still there.
func waitRoutes(t *testing.T, tb *testbed.Testbed, what string, want ...netip.Addr) {
	t.Helper()
	within(t, 10*time.Second, what, func() error {
		ours, birds := tableRoutes(t, tb)
		if !slices.Equal(birds, []netip.Addr{birdRoute}) {
			t.Fatalf("%s: BIRD's route in table 100 is gone or changed: %v", what, birds)
		}
		if !slices.Equal(ours, want) {
			return fmt.Errorf("caplanced's routes in table 100 are %v, want %v", ours, want)
		}
		return nil
	})
}

// alive says whether the process pid still runs (the testbed reaps it as
// soon as it exits).
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// waitStatus waits for a STATUS= line of d that contains text.
func waitStatus(t *testing.T, d *testbed.Daemon, text string) {
	t.Helper()
	within(t, 10*time.Second, "STATUS "+text, func() error {
		for _, m := range d.Messages() {
			if strings.Contains(m, "STATUS=") && strings.Contains(m, text) {
				return nil
			}
		}
		return fmt.Errorf("no STATUS= with %q in %q", text, d.Messages())
	})
}

// TestRoutedBalancer: a routed balancer has its VIP on lo and its route in
// table 100 with protocol 252 while it serves; maintenance withdraws and
// restores it, across a restart; SIGTERM withdraws the route first and the
// balancer still forwards through the VIP during withdraw_delay, then exits;
// a second SIGTERM ends the delay early; a kill -9 leaves the route, which
// caplanced --cleanup removes. BIRD's route in the same table is never
// touched.
func TestRoutedBalancer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces)")
	}
	bus := dbustest.Start(t)
	tb := openTestbed(t, testbed.Options{Prefix: "rtd", Backends: 1, Workers: 1, BalancerBus: bus.Address})
	// The router's part: the client reaches the VIP through the balancer's
	// address, as a BGP next hop.
	if err := tb.Client.AddRoute(netip.PrefixFrom(testbed.VIP, 32), testbed.LBAddr); err != nil {
		t.Fatal(err)
	}
	err := tb.LB.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		dst, err := netlink.ParseIPNet(birdRoute.String() + "/32")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Dst: dst, LinkIndex: lo.Attrs().Index, Table: 100, Protocol: 12})
	})
	if err != nil {
		t.Fatal(err)
	}
	d, err := tb.StartDaemon(tb.LB, "lb", routedConfig(tb, "3s"), bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	tb.Balancer = d
	waitRoutes(t, tb, "announced once ready", testbed.VIP)
	waitStatus(t, d, "routes: 1 announced")
	var onLo bool
	err = tb.LB.Do(func() error {
		iface, err := vip.HasAddress(testbed.VIP)
		onLo = iface == "lo"
		return err
	})
	if err != nil || !onLo {
		t.Errorf("the routed VIP is not on lo (%v)", err)
	}
	echo, err := tb.DialEcho()
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	if _, err := testbed.Echo(echo, []byte("announced")); err != nil {
		t.Fatalf("UDP through the routed VIP: %v", err)
	}

	ctl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(caplancectlBin, append([]string{"--bus", bus.Address}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("caplancectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	wantRoutesLine := func(want string) {
		t.Helper()
		if out := ctl("status"); !strings.Contains(out, "\nroutes: "+want+"\n") {
			t.Errorf("caplancectl status does not say routes: %s:\n%s", want, out)
		}
	}
	wantRoutesLine("announced 198.18.0.100 (table 100, protocol 252)")

	// Maintenance withdraws without stopping, and survives a restart.
	mgr := bus.Connect(t).Object(dbusname.BusName, dbusname.ManagerPath)
	ctl("maintenance", "on")
	waitRoutes(t, tb, "maintenance on")
	if out := ctl("maintenance", "on"); out != "maintenance is already on\n" {
		t.Errorf("caplancectl maintenance on, again: %q", out)
	}
	wantRoutesLine("withdrawn (maintenance)")
	var announced []string
	if err := mgr.Call("org.freedesktop.DBus.Properties.Get", 0, dbusname.ManagerIface, "AnnouncedVIPs").Store(&announced); err != nil || len(announced) != 0 {
		t.Errorf("AnnouncedVIPs in maintenance = %v, %v; want none", announced, err)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := d.Restart(tb.LB, caplancedBin); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, d, "routes: 0 announced (maintenance)")
	waitRoutes(t, tb, "restarted in maintenance")
	ctl("maintenance", "off")
	waitRoutes(t, tb, "maintenance off", testbed.VIP)
	if err := mgr.Call("org.freedesktop.DBus.Properties.Get", 0, dbusname.ManagerIface, "AnnouncedVIPs").Store(&announced); err != nil || !slices.Equal(announced, []string{testbed.VIP.String()}) {
		t.Errorf("AnnouncedVIPs = %v, %v; want the VIP", announced, err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(d.RuntimeDir), "state", daemon.MaintenanceFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("maintenance file after maintenance off: %v", err)
	}

	// SIGTERM: the route goes first, the VIP still forwards, then the exit.
	seen := len(d.Messages())
	if err := d.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, tb, "withdrawn at SIGTERM")
	waitStatus(t, d, "routes withdrawn, forwarding for 3s more")
	if _, err := testbed.Echo(echo, []byte("withdrawn")); err != nil {
		t.Errorf("UDP through the VIP during withdraw_delay: %v", err)
	}
	if !alive(d.PID()) {
		t.Fatal("caplanced exited before the withdraw delay ended (or the echo took the whole delay)")
	}
	if code, err := d.Wait(); err != nil || code != 0 {
		t.Fatalf("exit after the withdraw delay: code %d, %v\n%s", code, err, d.Log())
	}
	var statuses []string
	for _, m := range d.Messages()[seen:] {
		if _, s, ok := strings.Cut(m, "STATUS="); ok {
			statuses = append(statuses, strings.SplitN(s, "\n", 2)[0])
		}
	}
	want := []string{"withdrawing routes", "routes withdrawn, forwarding for 3s more", "stopping"}
	if diff := cmp.Diff(want, statuses); diff != "" {
		t.Errorf("STATUS= lines of the stop (-want +got):\n%s", diff)
	}

	// A second SIGTERM ends a delay of 5 minutes early.
	if err := os.WriteFile(d.ConfigPath, []byte(routedConfig(tb, "5m")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Restart(tb.LB, caplancedBin); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, tb, "announced after a restart", testbed.VIP)
	if err := d.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, d, "routes withdrawn, forwarding for 5m0s more")
	if err := d.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := d.Wait(); err != nil || code != 0 {
		t.Fatalf("a second SIGTERM in the withdraw delay: code %d, %v\n%s", code, err, d.Log())
	}
	if !strings.Contains(d.Log(), "ending the withdraw delay early") {
		t.Errorf("the log does not say the delay was ended early:\n%s", d.Log())
	}

	// kill -9 leaves the route; the next start deletes it (and announces
	// again once ready), and so does --cleanup.
	if err := d.Restart(tb.LB, caplancedBin); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, tb, "announced after a restart", testbed.VIP)
	killed := func() {
		t.Helper()
		if err := d.Kill(); err != nil {
			t.Fatal(err)
		}
		if ours, _ := tableRoutes(t, tb); !slices.Equal(ours, []netip.Addr{testbed.VIP}) {
			t.Fatalf("after kill -9 the table has %v, want the VIP's route left", ours)
		}
	}
	killed()
	if err := d.Restart(tb.LB, caplancedBin); err != nil {
		t.Fatal(err)
	}
	const undone = `change="route 198.18.0.100/32 dev lo table 100 proto 252"`
	if !strings.Contains(d.Log(), undone) {
		t.Errorf("the start after kill -9 did not undo the route left (%s):\n%s", undone, d.Log())
	}
	waitRoutes(t, tb, "announced after the start that cleaned up", testbed.VIP)
	killed()
	if out, code := runCaplanced(t, tb.LB, "--cleanup", "--runtime-dir", d.RuntimeDir); code != 0 {
		t.Fatalf("--cleanup: exit code %d\n%s", code, out)
	}
	waitRoutes(t, tb, "after --cleanup")
}
