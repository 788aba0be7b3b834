package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/probe"
	"github.com/caplance/caplance/internal/testbed"
)

// The checks' tunables: fast, so that the test is.
const (
	checkInterval = 200 * time.Millisecond
	checkFall     = 2
	checkRise     = 2
	tunables      = "interval=200ms&timeout=150ms&rise=2&fall=2"
)

// TestHealth runs the real caplance-healthd beside the real caplanced and
// breaks backends in the ways a health checker must notice.
func TestHealth(t *testing.T) {
	tb, bus, mgr := newBusTestbed(t)
	be1, be2, be3 := tb.Backends[0], tb.Backends[1], tb.Backends[2]
	cfg := tb.BalancerConfig(nil) +
		backendWithCheck(be1, "http://:80/?"+tunables) +
		backendWithCheck(be2, "tunnel://:80?"+tunables) +
		backendWithCheck(be3, "tcp://:80?"+tunables)
	if err := tb.Balancer.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.StartHealthd(tb.LB, healthdBin, bus.Address); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, mgr, map[string]string{be1.Name: "up", be2.Name: "up", be3.Name: "up"}, 5*time.Second)
	out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "status").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Backends:   3") || !strings.Contains(string(out), "caplance-healthd: checking 3 backends") {
		t.Errorf("caplancectl status shows both daemons? %v\n%s", err, out)
	}

	t.Run("a stopped service is taken out in time, with no failed connection", func(t *testing.T) {
		if err := be1.StopHTTP(); err != nil {
			t.Fatal(err)
		}
		waitHealth(t, mgr, map[string]string{be1.Name: "down"}, checkInterval*checkFall+time.Second)
		if detail := listBackends(t, mgr)[be1.Name].HealthDetail; !strings.Contains(detail, "http") {
			t.Errorf("reason of the down report: %q, want it to name the http check", detail)
		}
		if n := servedBy(t, tb, 200)[be1.Name]; n != 0 { // servedBy fails on any failed connection
			t.Errorf("the down backend served %d connections", n)
		}
		if err := be1.StartHTTP(); err != nil {
			t.Fatal(err)
		}
		waitHealth(t, mgr, map[string]string{be1.Name: "up"}, checkInterval*checkRise+time.Second)
		if n := servedBy(t, tb, 60)[be1.Name]; n == 0 {
			t.Errorf("the backend back up served no new connection")
		}
	})

	t.Run("the tunnel check catches broken decapsulation, a tcp check would not", func(t *testing.T) {
		if err := be2.Receiver.Stop(); err != nil {
			t.Fatal(err)
		}
		waitHealth(t, mgr, map[string]string{be2.Name: "down"}, checkInterval*checkFall+time.Second)
		plain, err := checkspec.Parse("tcp://:80?" + tunables)
		if err != nil {
			t.Fatal(err)
		}
		var res probe.Result
		if err := tb.LB.Do(func() error {
			res = probe.Run(context.Background(), plain, checkspec.Target{Name: be2.Name, Address: be2.Addr})
			return nil
		}); err != nil || !res.Up {
			t.Errorf("a plain tcp check of %s: %+v (%v), want up: the test proves nothing", be2.Name, res, err)
		}
		if err := be2.Receiver.Restart(be2.Host, caplancedBin); err != nil {
			t.Fatal(err)
		}
		waitHealth(t, mgr, map[string]string{be2.Name: "up"}, checkInterval*checkRise+time.Second)
	})

	t.Run("after kill -9 of caplanced, healthd re-syncs within an interval", func(t *testing.T) {
		if err := be3.StopHTTP(); err != nil {
			t.Fatal(err)
		}
		waitHealth(t, mgr, map[string]string{be3.Name: "down"}, checkInterval*checkFall+time.Second)
		if err := tb.Balancer.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := tb.Balancer.Restart(tb.LB, caplancedBin); err != nil {
			t.Fatal(err)
		}
		// A restarted caplanced knows no health; healthd sends it all again.
		waitHealth(t, mgr, map[string]string{be1.Name: "up", be2.Name: "up", be3.Name: "down"}, checkInterval+time.Second)
		if err := be3.StartHTTP(); err != nil {
			t.Fatal(err)
		}
		// Settled before the next test compares the backends before and
		// after a call.
		waitHealth(t, mgr, map[string]string{be3.Name: "up"}, checkInterval*checkRise+time.Second)
	})

	t.Run("an invalid check spec is refused at AddBackend", func(t *testing.T) {
		before := listBackends(t, mgr)
		err := mgr.Call(dbusname.ManagerIface+".AddBackend", 0, "be9", "198.18.0.19",
			map[string]dbus.Variant{"check": dbus.MakeVariant("http://:80/?expect=20x")}).Err
		if err == nil || !strings.Contains(err.Error(), `expect "20x"`) {
			t.Errorf("AddBackend with a bad check: %v, want an error naming expect", err)
		}
		// The backends as defined: their counters, flows and health
		// move on their own (traffic, caplance-healthd), so they are left
		// out.
		defined := func(rows map[string]dbusapi.BackendRow) map[string]dbusapi.BackendRow {
			out := map[string]dbusapi.BackendRow{}
			for name, r := range rows {
				out[name] = dbusapi.BackendRow{Name: r.Name, Address: r.Address, Weight: r.Weight, AdminState: r.AdminState}
			}
			return out
		}
		if diff := cmp.Diff(defined(before), defined(listBackends(t, mgr))); diff != "" {
			t.Errorf("a refused AddBackend changed the backends (-before +after):\n%s", diff)
		}
	})
}

func backendWithCheck(b *testbed.Backend, spec string) string {
	return fmt.Sprintf("\n[[backend]]\nname = %q\naddress = %q\ncheck = %q\n", b.Name, b.Addr, spec)
}

// waitHealth waits until every named backend has the wanted health.
func waitHealth(t *testing.T, mgr dbus.BusObject, want map[string]string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		rows := listBackends(t, mgr)
		missing := ""
		for name, health := range want {
			if rows[name].Health != health {
				missing += fmt.Sprintf(" %s is %q (%s), want %q;", name, rows[name].Health, rows[name].HealthDetail, health)
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("within %s:%s", within, missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
