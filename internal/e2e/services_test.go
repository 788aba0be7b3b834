package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/nft"
	"github.com/caplance/caplance/internal/testbed"
	"github.com/caplance/caplance/internal/vip"
)

// newServicesTestbed runs testbed.ServicesConfig (web over be1 and be2, dns
// over be2 and be3) with the D-Bus API on a private
// system bus, and returns caplancectl runners as root: ctl fails the test
// when the command fails, try returns its output and error.
func newServicesTestbed(t *testing.T, dataplane string) (tb *testbed.Testbed, ctl func(args ...string) string, try func(args ...string) (string, error)) {
	t.Helper()
	bus := dbustest.Start(t)
	tb = openTestbed(t, testbed.Options{Prefix: "svc", Backends: 4, Workers: 2, BalancerBus: bus.Address, Dataplane: dataplane})
	d, err := tb.StartDaemon(tb.LB, "lb", tb.ServicesConfig(), bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	tb.Balancer = d
	try = func(args ...string) (string, error) {
		out, err := exec.Command(caplancectlBin, append([]string{"--bus", bus.Address}, args...)...).CombinedOutput()
		return string(out), err
	}
	ctl = func(args ...string) string {
		t.Helper()
		out, err := try(args...)
		if err != nil {
			t.Fatalf("caplancectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	return tb, ctl, try
}

// spreadFlows is how many new flows a spread check makes. With two
// backends, ±25% is 5 standard deviations of an even split at 400 flows (at
// 200 it was 3.5, and a run of the suite failed one check in some hundreds).
const spreadFlows = 400

// spreadWithin says whether every count is within ±25% of an even share of n.
func spreadWithin(counts map[string]int, names []string, n int) error {
	even := float64(n) / float64(len(names))
	total := 0
	for _, name := range names {
		c := counts[name]
		total += c
		if float64(c) < 0.75*even || float64(c) > 1.25*even {
			return fmt.Errorf("%s served %d of %d, outside ±25%% of %.0f", name, c, n, even)
		}
	}
	if total != n {
		return fmt.Errorf("%d of %d served by backends outside the pool %v", n-total, n, names)
	}
	return nil
}

// TestServices runs once per data plane.
func TestServices(t *testing.T) {
	for _, dataplane := range []string{"raw", "xdp"} {
		t.Run(dataplane, func(t *testing.T) { testServices(t, dataplane) })
	}
}

func testServices(t *testing.T, dataplane string) {
	tb, ctl, try := newServicesTestbed(t, dataplane)

	t.Run("each service spreads over its own pool", func(t *testing.T) {
		const n = spreadFlows
		client := tb.HTTPClient(false)
		web := map[string]int{}
		for i := range n {
			name, err := testbed.GetFrom(client, testbed.VIP, "/")
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			web[name]++
		}
		if err := spreadWithin(web, []string{"be1", "be2"}, n); err != nil {
			t.Errorf("web: %v (%v)", err, web)
		}
		dns := map[string]int{}
		for i := range n {
			c, err := tb.DialUDP(netip.AddrPortFrom(testbed.VIP2, testbed.DNSPort))
			if err != nil {
				t.Fatal(err)
			}
			name, err := testbed.Echo(c, []byte("query"))
			c.Close()
			if err != nil {
				t.Fatalf("flow %d: %v", i, err)
			}
			dns[name]++
		}
		if err := spreadWithin(dns, []string{"be2", "be3"}, n); err != nil {
			t.Errorf("dns: %v (%v)", err, dns)
		}
		// Each service counts its own flows, in stats.json and GetStats.
		eventually(t, "per-service counters", func() error {
			st, err := tb.Balancer.Stats(time.Now())
			if err != nil {
				return err
			}
			// Packets, not new flows: the client may reuse a source
			// port, and a reused UDP 5-tuple is the same flow.
			got := map[string]uint64{}
			for _, s := range st.Balancer.Services {
				got[s.Name] = s.Packets
			}
			if got["web"] < n || got["dns"] < n {
				return fmt.Errorf("packets per service %v, want at least %d each", got, n)
			}
			return nil
		})
		out := ctl("stats")
		for _, want := range []string{"web", "dns", "NEW_FLOWS"} {
			if !strings.Contains(out, want) {
				t.Errorf("caplancectl stats does not show %s:\n%s", want, out)
			}
		}
	})

	t.Run("a packet for a port no service takes is dropped and counted", func(t *testing.T) {
		before, err := tb.Balancer.Stats(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		// UDP to the web VIP (web takes TCP only) and to a port of the
		// dns VIP that dns does not take.
		for _, to := range []netip.AddrPort{netip.AddrPortFrom(testbed.VIP, testbed.DNSPort), netip.AddrPortFrom(testbed.VIP2, 54)} {
			c, err := tb.DialUDP(to)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte("lost")); err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		eventually(t, "no_service drops", func() error {
			st, err := tb.Balancer.Stats(time.Now())
			if err != nil {
				return err
			}
			if got := st.Balancer.Drops["no_service"] - before.Balancer.Drops["no_service"]; got < 2 {
				return fmt.Errorf("no_service counted %d more drops, want at least 2", got)
			}
			return nil
		})
	})

	t.Run("source-ip hashing keeps a client on one backend", func(t *testing.T) {
		ctl("add-service", "sticky", "--vip", testbed.VIP3.String(), "--port", "80", "--proto", "tcp", "--hash", "source-ip")
		for i, be := range tb.Backends {
			ctl("add-backend", "--service", "sticky", fmt.Sprintf("sticky-be%d", i+1), be.Addr.String())
		}
		used := map[string]bool{}
		for _, src := range testbed.ClientAddrs {
			client := tb.HTTPClientFrom(src, false)
			first := ""
			for i := range 20 { // 20 connections, 20 source ports
				name, err := testbed.GetFrom(client, testbed.VIP3, "/")
				if err != nil {
					t.Fatalf("client %s, connection %d: %v", src, i, err)
				}
				if first == "" {
					first = name
				}
				if name != first {
					t.Fatalf("client %s: connection %d served by %s, the first by %s", src, i, name, first)
				}
			}
			used[first] = true
		}
		if len(used) < 2 {
			t.Errorf("%d client addresses all went to %v: source-ip hashing does not spread clients", len(testbed.ClientAddrs), used)
		}
		ctl("remove-service", "sticky")
	})

	t.Run("a change to one service never moves another's flows", func(t *testing.T) {
		// Long-lived flows of both services.
		var webConns []*httpConn
		var webNames []string
		for range 8 {
			c := dialHTTP(t, tb)
			webConns = append(webConns, c)
			webNames = append(webNames, c.get(t))
		}
		var dnsConns []*net.UDPConn
		var dnsNames []string
		for i := range 8 {
			c, err := tb.DialUDP(netip.AddrPortFrom(testbed.VIP2, testbed.DNSPort))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			name, err := testbed.Echo(c, []byte("first"))
			if err != nil {
				t.Fatalf("dns flow %d: %v", i, err)
			}
			dnsConns, dnsNames = append(dnsConns, c), append(dnsNames, name)
		}
		check := func(when string) {
			t.Helper()
			for i, c := range webConns {
				if got := c.get(t); got != webNames[i] {
					t.Errorf("%s: web connection %d moved from %s to %s", when, i, webNames[i], got)
				}
			}
			checkFlowsStay(t, dnsConns, dnsNames)
		}
		// A third service comes, gets a pool, changes, and goes.
		ctl("add-service", "extra", "--vip", testbed.VIP3.String(), "--port", "80", "--proto", "tcp")
		ctl("add-backend", "--service", "extra", "extra-be4", tb.Backends[3].Addr.String())
		if name, err := testbed.GetFrom(tb.HTTPClient(false), testbed.VIP3, "/"); err != nil || name != "be4" {
			t.Fatalf("the added service: served by %q, %v; want be4", name, err)
		}
		check("after adding a service")
		ctl("change-service", "extra", "--hash", "source-ip-port", "--port", "80,8080")
		check("after changing it")
		ctl("remove-service", "extra")
		check("after removing it")
		var iface string
		if err := tb.LB.Do(func() (err error) { iface, err = vip.HasAddress(testbed.VIP3); return err }); err != nil || iface != "" {
			t.Errorf("the removed service's VIP %s is still on the balancer's %q (%v)", testbed.VIP3, iface, err)
		}
	})

	t.Run("a reload adds and removes a service the same way", func(t *testing.T) {
		web := dialHTTP(t, tb)
		first := web.get(t)
		withExtra := tb.ServicesConfig() + fmt.Sprintf("\n[[service]]\nname = \"files\"\nvips = [%q]\nprotocols = [\"tcp\"]\nports = [%d]\n\n[[service.backend]]\nname = \"files-be4\"\naddress = %q\n",
			testbed.VIP3, testbed.HTTPPort, tb.Backends[3].Addr)
		if err := tb.Balancer.Reload(withExtra); err != nil {
			t.Fatal(err)
		}
		if name, err := testbed.GetFrom(tb.HTTPClient(false), testbed.VIP3, "/"); err != nil || name != "be4" {
			t.Errorf("the service the reload added: served by %q, %v; want be4", name, err)
		}
		if err := tb.Balancer.Reload(tb.ServicesConfig()); err != nil {
			t.Fatal(err)
		}
		var iface string
		if err := tb.LB.Do(func() (err error) { iface, err = vip.HasAddress(testbed.VIP3); return err }); err != nil || iface != "" {
			t.Errorf("the VIP of the service the reload removed is still on %q (%v)", iface, err)
		}
		if got := web.get(t); got != first {
			t.Errorf("a web connection moved from %s to %s across the reloads", first, got)
		}
	})

	t.Run("a refused service changes nothing on the host", func(t *testing.T) {
		// A replaced table starts its counters from zero: the rules that
		// counted web's traffic would show it.
		counters := func() map[string]nft.Counter {
			var c map[string]nft.Counter
			if err := tb.LB.Do(func() (err error) { c, err = nft.Counters(nft.CurrentNetNS); return err }); err != nil {
				t.Fatal(err)
			}
			return c
		}
		addrs := addressesOf(t, tb)
		// A connection to web's VIP from the balancer host itself crosses
		// lo and the prerouting hook, where the rule counts it, in either
		// data plane (AF_XDP takes what arrives on eth0 before the hook).
		_ = tb.LB.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(testbed.VIP, 80).String(), 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return nil
		})
		if c := counters(); c[nft.RuleForwardTCPPorts].Packets == 0 {
			t.Fatalf("no packet counted by %s yet: the test would prove nothing (%v)", nft.RuleForwardTCPPorts, c)
		}
		for _, tc := range []struct {
			args []string
			want string
			// replaced: the refusal comes after the table took the new
			// VIP, and putting the old rules back restarts the counters.
			replaced bool
		}{
			// The balancer's own address, every port: the host's services'.
			{[]string{"add-service", "own", "--vip", testbed.LBAddr.String()}, "is already an address of this host", false},
			// web's traffic.
			{[]string{"add-service", "copy", "--vip", testbed.VIP.String(), "--port", "80,443", "--proto", "tcp"},
				`services "copy" and "web" both take tcp port 80 of VIP 198.18.0.100`, false},
			// A VIP no interface of the balancer can carry: attaching fails.
			{[]string{"add-service", "far", "--vip", "203.0.113.5"}, "no interface has an address in its subnet", true},
		} {
			before := counters()
			out, err := try(tc.args...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("caplancectl %s: %v\n%s\nwant an error with %q", strings.Join(tc.args, " "), err, out, tc.want)
			}
			after := counters()
			for rule, c := range before {
				if a, ok := after[rule]; !ok || (!tc.replaced && a.Packets < c.Packets) {
					t.Errorf("%s: nft rule %s: %d packets before, %+v after", tc.args[1], rule, c.Packets, a)
				}
			}
			if len(after) != len(before) {
				t.Errorf("%s: nft rules before %v, after %v", tc.args[1], before, after)
			}
			if diff := cmp.Diff(addrs, addressesOf(t, tb)); diff != "" {
				t.Errorf("%s: addresses changed (-before +after):\n%s", tc.args[1], diff)
			}
			if out := ctl("services"); strings.Contains(out, tc.args[1]) {
				t.Errorf("%s: the refused service is listed:\n%s", tc.args[1], out)
			}
		}
	})

	t.Run("a VIP two services share stays while one of them does", func(t *testing.T) {
		ctl("add-service", "alt", "--vip", testbed.VIP.String(), "--port", "8080", "--proto", "tcp")
		ctl("remove-service", "alt")
		if name, err := testbed.GetFrom(tb.HTTPClient(false), testbed.VIP, "/"); err != nil || (name != "be1" && name != "be2") {
			t.Errorf("web after a service on its VIP came and went: %q, %v", name, err)
		}
	})

	t.Run("a run-time service survives a restart of caplanced", func(t *testing.T) {
		ctl("add-service", "kept", "--vip", testbed.VIP3.String(), "--port", "80", "--proto", "tcp")
		ctl("add-backend", "--service", "kept", "kept-be4", tb.Backends[3].Addr.String())
		if err := tb.Balancer.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := tb.Balancer.Restart(tb.LB, caplancedBin); err != nil {
			t.Fatal(err)
		}
		if name, err := testbed.GetFrom(tb.HTTPClient(false), testbed.VIP3, "/"); err != nil || name != "be4" {
			t.Errorf("the run-time service after a restart: served by %q, %v; want be4", name, err)
		}
		ctl("remove-service", "kept")
	})

	t.Run("caplancectl shows services with their backends", func(t *testing.T) {
		out := ctl("list")
		web, dns := strings.Index(out, "web"), strings.Index(out, "dns")
		if web < 0 || dns < 0 || !strings.Contains(out[web:], "web-be1") || !strings.Contains(out[dns:], "dns-be3") {
			t.Errorf("caplancectl list does not group the backends under their services:\n%s", out)
		}
		if out := ctl("show-service", "dns"); !strings.Contains(out, "dns-be2") || !strings.Contains(out, "udp") {
			t.Errorf("caplancectl show-service dns:\n%s", out)
		}
	})
}
