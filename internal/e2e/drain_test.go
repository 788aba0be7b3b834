package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/testbed"
)

// TestDrainReachesZero follows caplancectl(8)'s drain recipe: drain a
// backend, wait for its ActiveFlows to reach 0. Its clients' TCP
// connections keep working after the drain; once they close, ActiveFlows
// drops to 0 within the closing timeout (+ 1 s), not after tcp_timeout, and
// the closed connections pass through InactiveFlows. It does so once per
// data plane.
func TestDrainReachesZero(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces)")
	}
	for _, dataplane := range []string{"raw", "xdp"} {
		t.Run(dataplane, func(t *testing.T) { testDrainReachesZero(t, dataplane) })
	}
}

func testDrainReachesZero(t *testing.T, dataplane string) {
	const closing = time.Second
	bus := dbustest.Start(t)
	tb := openTestbed(t, testbed.Options{Prefix: "dr0", Backends: 2, Workers: 2, BalancerBus: bus.Address, TCPClosingTimeout: closing, Dataplane: dataplane})
	if err := tb.StartBalancer(); err != nil {
		t.Fatal(err)
	}
	mgr := bus.Connect(t).Object(dbusname.BusName, dbusname.ManagerPath)
	be1 := tb.Backends[0].Name

	// Enough connections that some land on be1 (each misses it with
	// probability 1/2).
	var conns []*httpConn
	onBe1 := 0
	for range 24 {
		c := dialHTTP(t, tb)
		conns = append(conns, c)
		if c.backend == be1 {
			onBe1++
		}
	}
	if onBe1 == 0 {
		t.Fatalf("no connection on %s: the test proves nothing", be1)
	}
	call(t, mgr, "Drain", be1)
	for _, c := range conns {
		if got := c.get(t); got != c.backend {
			t.Errorf("an established connection moved from %s to %s after the drain", c.backend, got)
		}
	}
	row := listBackends(t, mgr)[be1]
	if row.ActiveFlows != uint64(onBe1) || row.InactiveFlows != 0 {
		t.Fatalf("before the clients close: ActiveFlows %d, InactiveFlows %d; want %d, 0", row.ActiveFlows, row.InactiveFlows, onBe1)
	}
	var stats map[string]uint64
	if err := mgr.Call(dbusname.ManagerIface+".GetStats", 0).Store(&stats); err != nil {
		t.Fatal(err)
	}
	if stats["active_flows"] != uint64(len(conns)) {
		t.Errorf("GetStats active_flows = %d, want %d", stats["active_flows"], len(conns))
	}

	for _, c := range conns {
		c.Close()
	}
	within(t, closing+time.Second, "ActiveFlows of the drained backend after its clients closed", func() error {
		if n := backendFlows(t, bus, be1, "ActiveFlows"); n != 0 {
			return fmt.Errorf("ActiveFlows = %d", n)
		}
		return nil
	})
	// Closed connections are tracked a little longer, as inactive, until the
	// closing timeout and the next sweep (once a second) are over.
	within(t, closing+3*time.Second, "InactiveFlows of the drained backend", func() error {
		if n := backendFlows(t, bus, be1, "InactiveFlows"); n != 0 {
			return fmt.Errorf("InactiveFlows = %d", n)
		}
		return nil
	})
}

// backendFlows reads a counter property of backend name.
func backendFlows(t *testing.T, bus *dbustest.Bus, name, prop string) uint64 {
	t.Helper()
	obj := bus.Connect(t).Object(dbusname.BusName, dbusname.BackendPath(config.DefaultService, name))
	v, err := obj.GetProperty(dbusname.BackendIface + "." + prop)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	if err := dbus.Store([]any{v.Value()}, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// httpConn is one kept-alive TCP connection from the client to the VIP's
// HTTP server: one flow.
type httpConn struct {
	net.Conn
	r       *bufio.Reader
	backend string // who served the first request
}

func dialHTTP(t *testing.T, tb *testbed.Testbed) *httpConn {
	t.Helper()
	return dialHTTPTo(t, tb, testbed.VIP)
}

// dialHTTPTo is dialHTTP to vip (either family).
func dialHTTPTo(t *testing.T, tb *testbed.Testbed, vip netip.Addr) *httpConn {
	t.Helper()
	var nc net.Conn
	err := tb.Client.Do(func() (err error) {
		nc, err = net.DialTimeout("tcp", netip.AddrPortFrom(vip, testbed.HTTPPort).String(), 10*time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &httpConn{Conn: nc, r: bufio.NewReader(nc)}
	t.Cleanup(func() { c.Close() })
	c.backend = c.get(t)
	return c
}

// get sends one request on the connection and returns who answered.
func (c *httpConn) get(t *testing.T) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", testbed.VIP); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body strings.Builder
	if _, err := bufio.NewReader(resp.Body).WriteTo(&body); err != nil {
		t.Fatal(err)
	}
	name, _, _ := strings.Cut(body.String(), " ")
	return name
}
