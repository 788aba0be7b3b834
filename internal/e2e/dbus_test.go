package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/testbed"
)

// newBusTestbed is a testbed whose balancer serves its D-Bus API on a
// private system bus with the shipped policy; its configuration holds only
// be1 and be2, so be3 can be added at run time.
func newBusTestbed(t *testing.T) (*testbed.Testbed, *dbustest.Bus, dbus.BusObject) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces)")
	}
	bus := dbustest.Start(t)
	tb := openTestbed(t, testbed.Options{Prefix: "dbe", Backends: 3, Workers: 2, BalancerBus: bus.Address})
	if err := tb.StartBalancerWith(tb.Backends[:2]); err != nil {
		t.Fatal(err)
	}
	return tb, bus, bus.Connect(t).Object(dbusname.BusName, dbusname.ManagerPath)
}

func listBackends(t *testing.T, mgr dbus.BusObject) map[string]dbusapi.BackendRow {
	t.Helper()
	var rows []dbusapi.BackendRow
	if err := mgr.Call(dbusname.ManagerIface+".ListBackends", 0).Store(&rows); err != nil {
		t.Fatal(err)
	}
	out := map[string]dbusapi.BackendRow{}
	for _, r := range rows {
		out[r.Name] = r
	}
	return out
}

func call(t *testing.T, mgr dbus.BusObject, method string, args ...any) {
	t.Helper()
	if err := mgr.Call(dbusname.ManagerIface+"."+method, 0, args...).Err; err != nil {
		t.Fatalf("%s%v: %v", method, args, err)
	}
}

// servedBy makes n new connections and counts who served them.
func servedBy(t *testing.T, tb *testbed.Testbed, n int) map[string]int {
	t.Helper()
	client := tb.HTTPClient(false)
	count := map[string]int{}
	for i := range n {
		name, err := testbed.Get(client, "/")
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		count[name]++
	}
	return count
}

// udpFlows opens n UDP flows and returns them with their backends.
func udpFlows(t *testing.T, tb *testbed.Testbed, n int) ([]*net.UDPConn, []string) {
	t.Helper()
	conns, names := make([]*net.UDPConn, n), make([]string, n)
	for i := range conns {
		c, err := tb.DialEcho()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
		if names[i], err = testbed.Echo(c, []byte("hello")); err != nil {
			t.Fatal(err)
		}
	}
	return conns, names
}

func checkFlowsStay(t *testing.T, conns []*net.UDPConn, before []string, except ...string) {
	t.Helper()
	for i, c := range conns {
		after, err := testbed.Echo(c, []byte("again"))
		if err != nil {
			t.Fatal(err)
		}
		if after != before[i] && !slices.Contains(except, before[i]) {
			t.Errorf("flow %d moved from %s to %s", i, before[i], after)
		}
	}
}

// backgroundTraffic makes new HTTP connections until the returned function
// is called, which fails the test if any of them failed.
func backgroundTraffic(t *testing.T, tb *testbed.Testbed) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	result := make(chan string)
	go func() {
		client := tb.HTTPClient(false)
		n, failed := 0, ""
		for {
			select {
			case <-done:
				if n == 0 {
					failed = "no request was made"
				}
				result <- failed
				return
			default:
			}
			if _, err := testbed.Get(client, "/"); err != nil && failed == "" {
				failed = err.Error()
			}
			n++
		}
	}()
	return func() {
		close(done)
		if failed := <-result; failed != "" {
			t.Errorf("background traffic: %s", failed)
		}
	}
}

// TestLiveRegistration changes the backend set over D-Bus while traffic
// flows, and checks the data path follows without a restart.
func TestLiveRegistration(t *testing.T) {
	tb, bus, mgr := newBusTestbed(t)
	be1, be3 := tb.Backends[0].Name, tb.Backends[2].Name

	t.Run("caplancectl add-backend under load: new connections reach it, established flows stay", func(t *testing.T) {
		conns, before := udpFlows(t, tb, 30)
		stop := backgroundTraffic(t, tb)
		out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "add-backend", be3, testbed.BackendAddr(2).String()).CombinedOutput()
		if err != nil {
			t.Fatalf("caplancectl add-backend: %v\n%s", err, out)
		}
		if rows := listBackends(t, mgr); rows[be3].Address != testbed.BackendAddr(2).String() {
			t.Fatalf("after add-backend: %v", rows)
		}
		eventually(t, "STATUS counts the added backend", func() error {
			if msgs := strings.Join(tb.Balancer.Messages(), "\n"); !strings.Contains(msgs, "STATUS=balancing 1 service(s) on 1 VIP(s) over 3 backend(s)") {
				return fmt.Errorf("sd_notify messages: %q", msgs)
			}
			return nil
		})
		checkFlowsStay(t, conns, before)
		if n := servedBy(t, tb, 90)[be3]; n < 15 {
			t.Errorf("the added backend served %d of 90 new connections, want about 30", n)
		}
		stop()
	})

	t.Run("Drain: no new flows, established ones continue", func(t *testing.T) {
		conns, before := udpFlows(t, tb, 30)
		call(t, mgr, "Drain", be1)
		if got := listBackends(t, mgr)[be1].AdminState; got != "drained" {
			t.Errorf("AdminState %q after Drain", got)
		}
		checkFlowsStay(t, conns, before) // be1's flows included
		if !slices.Contains(before, be1) {
			t.Errorf("no flow was on %s: the test proves nothing", be1)
		}
		if n := servedBy(t, tb, 60)[be1]; n != 0 {
			t.Errorf("the drained backend served %d new connections", n)
		}
		call(t, mgr, "Undrain", be1)
		if n := servedBy(t, tb, 60)[be1]; n == 0 {
			t.Errorf("the undrained backend served no new connection")
		}
	})

	t.Run("weight 0 behaves like drain", func(t *testing.T) {
		call(t, mgr, "SetWeight", be1, uint32(0))
		if n := servedBy(t, tb, 60)[be1]; n != 0 {
			t.Errorf("a weight-0 backend served %d new connections", n)
		}
		call(t, mgr, "SetWeight", be1, uint32(100))
	})

	t.Run("RemoveBackend moves its flows, and only its", func(t *testing.T) {
		call(t, mgr, "AddBackend", "be3b", testbed.BackendAddr(2).String()+"0", map[string]dbus.Variant{})
		call(t, mgr, "RemoveBackend", "be3b") // an address nobody has: only checks the round trip
		conns, before := udpFlows(t, tb, 40)
		if !slices.Contains(before, be3) {
			t.Fatalf("no flow on %s: the test proves nothing", be3)
		}
		call(t, mgr, "RemoveBackend", be3)
		checkFlowsStay(t, conns, before, be3)
		for i, c := range conns {
			if before[i] != be3 {
				continue
			}
			if after, err := testbed.Echo(c, []byte("moved")); err != nil || after == be3 {
				t.Errorf("flow %d of the removed backend: %q, %v", i, after, err)
			}
		}
		call(t, mgr, "AddBackend", be3, testbed.BackendAddr(2).String(), map[string]dbus.Variant{})
	})

	t.Run("registrations survive a restart, --runtime ones do not", func(t *testing.T) {
		call(t, mgr, "AddBackend", "temp", "198.18.0.60", map[string]dbus.Variant{"runtime": dbus.MakeVariant(true)})
		call(t, mgr, "Drain", be1)
		lb := tb.Balancer
		if err := lb.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := lb.Restart(tb.LB, caplancedBin); err != nil {
			t.Fatal(err)
		}
		rows := listBackends(t, mgr)
		if _, ok := rows["temp"]; ok {
			t.Errorf("a runtime registration survived the restart: %v", rows)
		}
		if rows[be3].Address != testbed.BackendAddr(2).String() || rows[be1].AdminState != "drained" {
			t.Errorf("after the restart: %+v, want %s restored and %s still drained", rows, be3, be1)
		}
		if n := servedBy(t, tb, 30)[be1]; n != 0 {
			t.Errorf("the drained backend served %d new connections after the restart", n)
		}
		call(t, mgr, "Undrain", be1)
	})

	t.Run("Reload refuses an invalid file, naming every problem, and keeps running", func(t *testing.T) {
		before := listBackends(t, mgr)
		bad := "[balancer]\nvips = [\"198.18.0.100\"]\n[[backend]]\nname = \"x\"\naddress = \"1.2.3.400\"\nweight = 99999\n"
		if err := os.WriteFile(tb.Balancer.ConfigPath, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		err := mgr.Call(dbusname.ManagerIface+".Reload", 0).Err
		for _, want := range []string{`address "1.2.3.400": not an IP address`, "weight 99999"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Reload of an invalid file: %v, want it to name %q", err, want)
			}
		}
		if diff := fmt.Sprint(listBackends(t, mgr)); diff != fmt.Sprint(before) {
			t.Errorf("backends changed by a refused reload:\n%v\n%v", before, diff)
		}
		if _, err := testbed.Get(tb.HTTPClient(false), "/"); err != nil {
			t.Errorf("traffic after a refused reload: %v", err)
		}
		// The refusal stays visible: LastReload/LastReloadError, in status.
		out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "status").CombinedOutput()
		if err != nil || !regexp.MustCompile(`\nLastReload: +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ refused: .*weight 99999`).Match(out) {
			t.Errorf("caplancectl status after a refused reload: %v\n%s", err, out)
		}
	})
}
