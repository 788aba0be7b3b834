package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/testbed"
)

// ipv6Config is the dual-stack lab's balancer configuration: one service
// for each combination of client and backend families. web6 (VIP6, TCP
// HTTPPort and UDP EchoPort) over the IPv6 addresses of backends (6-in-6);
// web4 (VIP, HTTP) over be1's and be2's IPv6 addresses (4-in-6); mixed
// (VIP6B, HTTP and UDP DNSPort) over be2's and be3's IPv4 addresses
// (6-in-4).
func ipv6Config(tb *testbed.Testbed, web6 []*testbed.Backend) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[balancer]\nworkers = 2\n")
	service := func(name string, vip netip.Addr, ports string, backends []string) {
		fmt.Fprintf(&b, "\n[[service]]\nname = %q\nvips = [%q]\nports = [%s]\n", name, vip, ports)
		for i, a := range backends {
			fmt.Fprintf(&b, "\n[[service.backend]]\nname = \"%s-%d\"\naddress = %q\n", name, i+1, a)
		}
	}
	var addrs []string
	for _, be := range web6 {
		addrs = append(addrs, be.Addr6.String())
	}
	be := tb.Backends
	service("web6", testbed.VIP6, fmt.Sprintf("%d, %d", testbed.HTTPPort, testbed.EchoPort), addrs)
	service("web4", testbed.VIP, fmt.Sprint(testbed.HTTPPort), []string{be[0].Addr6.String(), be[1].Addr6.String()})
	service("mixed", testbed.VIP6B, fmt.Sprintf("%d, %d", testbed.HTTPPort, testbed.DNSPort), []string{be[1].Addr.String(), be[2].Addr.String()})
	return b.String()
}

// TestIPv6 runs a dual-stack lab: IPv6 clients to IPv6 VIPs over IPv6
// backends (6-in-6) and over IPv4 ones (6-in-4), and IPv4 clients over IPv6
// backends (4-in-6).
func TestIPv6(t *testing.T) {
	bus := dbustest.Start(t)
	tb := openTestbed(t, testbed.Options{Prefix: "v6", Backends: 3, Workers: 2, IPv6: true, BalancerBus: bus.Address})
	be := tb.Backends
	d, err := tb.StartDaemon(tb.LB, "lb", ipv6Config(tb, be[:2]), bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	tb.Balancer = d
	// The backend's name in each service is "<service>-<n>"; who answers
	// says which host (be1, be2, be3) served.
	spread := func(t *testing.T, vip netip.Addr, n int, names []string) {
		t.Helper()
		client := tb.HTTPClient(false)
		counts := map[string]int{}
		for i := range n {
			name, err := testbed.GetFrom(client, vip, "/")
			if err != nil {
				t.Fatalf("connection %d to %s: %v", i, vip, err)
			}
			counts[name]++
		}
		if err := spreadWithin(counts, names, n); err != nil {
			t.Errorf("%s: %v (%v)", vip, err, counts)
		}
	}

	t.Run("caplancectl list brackets IPv6 VIPs", func(t *testing.T) {
		out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "list").CombinedOutput()
		if err != nil {
			t.Fatalf("caplancectl list: %v\n%s", err, out)
		}
		for _, want := range []string{
			`web6 .* \[2001:db8:18::100\]:7,80\n`, `mixed .* \[2001:db8:18::101\]:53,80\n`, `web4 .* 198\.18\.0\.100:80\n`,
			`-> web6-1 +2001:db8:18::11 `, `-> mixed-1 +198\.18\.0\.12 `,
		} {
			if !regexp.MustCompile(want).Match(out) {
				t.Errorf("caplancectl list has no match for %s:\n%s", want, out)
			}
		}
	})

	t.Run("6-in-6: spread, stickiness across a backend add, UDP", func(t *testing.T) {
		spread(t, testbed.VIP6, spreadFlows, []string{"be1", "be2"})
		c, err := tb.DialUDP(netip.AddrPortFrom(testbed.VIP6, testbed.EchoPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if name, err := testbed.Echo(c, []byte("over IPv6")); err != nil || (name != "be1" && name != "be2") {
			t.Errorf("UDP echo over VIP6: %q, %v", name, err)
		}

		long := dialHTTPTo(t, tb, testbed.VIP6)
		if err := tb.Balancer.Reload(ipv6Config(tb, be)); err != nil {
			t.Fatal(err)
		}
		// The new backend takes new connections...
		client := tb.HTTPClient(false)
		eventually(t, "be3 serving VIP6 after the add", func() error {
			for range 30 {
				if name, err := testbed.GetFrom(client, testbed.VIP6, "/"); err == nil && name == "be3" {
					return nil
				}
			}
			return errors.New("30 new connections and none to be3")
		})
		// ...and the established one stays where it was.
		for i := range 10 {
			if got := long.get(t); got != long.backend {
				t.Fatalf("request %d on the long-lived connection served by %s, first by %s", i, got, long.backend)
			}
		}
	})

	t.Run("6-in-6: a drained backend keeps its connection and gets no new one", func(t *testing.T) {
		// web6 has be1, be2 and be3 (after the add above).
		long := dialHTTPTo(t, tb, testbed.VIP6)
		drained := map[string]string{"be1": "web6-1", "be2": "web6-2", "be3": "web6-3"}[long.backend]
		out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "drain", drained).CombinedOutput()
		if err != nil {
			t.Fatalf("caplancectl drain %s: %v\n%s", drained, err, out)
		}
		client := tb.HTTPClient(false)
		for i := range 60 {
			name, err := testbed.GetFrom(client, testbed.VIP6, "/")
			if err != nil {
				t.Fatalf("new connection %d: %v", i, err)
			}
			if name == long.backend {
				t.Fatalf("new connection %d went to %s, drained", i, name)
			}
		}
		for i := range 5 {
			if got := long.get(t); got != long.backend {
				t.Fatalf("request %d on the drained backend's connection served by %s, not %s", i, got, long.backend)
			}
		}
		if out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "undrain", drained).CombinedOutput(); err != nil {
			t.Fatalf("caplancectl undrain %s: %v\n%s", drained, err, out)
		}
	})

	t.Run("4-in-6: IPv4 clients over IPv6 backends", func(t *testing.T) {
		spread(t, testbed.VIP, spreadFlows, []string{"be1", "be2"})
	})

	t.Run("6-in-4: IPv6 clients over IPv4 backends", func(t *testing.T) {
		spread(t, testbed.VIP6B, spreadFlows, []string{"be2", "be3"})
		c, err := tb.DialUDP(netip.AddrPortFrom(testbed.VIP6B, testbed.DNSPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if name, err := testbed.Echo(c, []byte("query")); err != nil || (name != "be2" && name != "be3") {
			t.Errorf("UDP over VIP6B: %q, %v", name, err)
		}
	})

	t.Run("large uploads: Packet Too Big", func(t *testing.T) {
		// The lab's links are 1500 bytes: a full-size IPv6 segment does
		// not fit an IPv6 (48 bytes) or IPv4 (28) tunnel, and IPv6 routers
		// never fragment, so only the balancer's Packet Too Big lets the
		// client send smaller ones.
		before, err := tb.Balancer.Stats(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		body := bytes.Repeat([]byte("0123456789abcdef"), 65536) // 1 MiB
		for _, vip := range []netip.Addr{testbed.VIP6, testbed.VIP6B} {
			req, err := http.NewRequest(http.MethodPost, "http://"+netip.AddrPortFrom(vip, testbed.HTTPPort).String()+"/upload", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := testbed.Do(tb.HTTPClient(false), req); err != nil {
				t.Errorf("1 MiB upload to %s: %v", vip, err)
			}
		}
		st, err := tb.Balancer.Stats(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if st.Balancer.Drops["too_big"] == before.Balancer.Drops["too_big"] {
			t.Errorf("no Packet Too Big was sent for full-size IPv6 segments: %v", st.Balancer.Drops)
		}
	})

	t.Run("the balancer host stays silent for IPv6 VIPs", func(t *testing.T) {
		// TCP to a port no service takes: no RST (a refused dial), the
		// SYN is dropped and the dial times out.
		err := tb.Client.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(testbed.VIP6, 81).String(), 2*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("TCP to [VIP6]:81: %v, want a timeout (no RST, no unreachable)", err)
		}
		// UDP likewise: an ICMPv6 port unreachable would make the
		// connected socket's read fail with ECONNREFUSED.
		c, err := tb.DialUDP(netip.AddrPortFrom(testbed.VIP6, 81))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write([]byte("anyone?")); err != nil {
				t.Fatalf("UDP to [VIP6]:81: write %v, want no answer at all", err)
			}
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 100))
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("UDP to [VIP6]:81: read %v, want a timeout (no port unreachable)", err)
		}
	})
}
