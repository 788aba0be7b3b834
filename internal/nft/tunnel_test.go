package nft_test

import (
	"net"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/nft"
	"github.com/vishvananda/netns"
)

const (
	balancer = "10.99.0.2" // B's address that is a balancer
	stranger = "10.99.0.3" // B's address that is not
	encap    = 5555
)

// TestTunnel checks both tunnel rules on a veth: A is the receiver, B holds
// a balancer's and a stranger's address. The drop counters prove that what
// did not arrive was dropped by the table, so no test waits for a timeout.
func TestTunnel(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	l := newLink(t, []string{addrA + "/24", vip + "/32"}, []string{balancer + "/24", stranger + "/24"})

	t.Run("foreign source", func(t *testing.T) {
		// Device is not a0 here, so only the source rule applies.
		err := nft.Apply(int(l.a), nft.Rules{Tunnel: &nft.Tunnel{
			Port: encap, Balancers: addrs(balancer), Device: "caplance0", VIPs: addrs(vip),
		}})
		if err != nil {
			t.Fatal(err)
		}
		encapLn := listenUDP(t, l.a, addrA, encap)
		otherLn := listenUDP(t, l.a, addrA, encap+1)

		sendUDP(t, l.b, stranger, addrA, encap, "stranger")
		sendUDP(t, l.b, balancer, addrA, encap, "balancer")
		sendUDP(t, l.b, stranger, addrA, encap+1, "other port")

		expectUDP(t, encapLn, "balancer", balancer)
		expectUDP(t, otherLn, "other port", stranger)
		expectDropped(t, l.a, nft.RuleTunnelForeignSource, encapLn)
	})

	t.Run("foreign destination", func(t *testing.T) {
		// a0 stands in for the decapsulating device.
		err := nft.Apply(int(l.a), nft.Rules{Tunnel: &nft.Tunnel{
			Port: encap, Balancers: addrs(balancer), Device: "a0", VIPs: addrs(vip),
		}})
		if err != nil {
			t.Fatal(err)
		}
		ln := listenUDP(t, l.a, "0.0.0.0", 7777)

		sendUDP(t, l.b, balancer, addrA, 7777, "to A")
		sendUDP(t, l.b, balancer, vip, 7777, "to VIP")

		expectUDP(t, ln, "to VIP", balancer)
		expectDropped(t, l.a, nft.RuleTunnelForeignDestination, ln)
	})
}

func listenUDP(t *testing.T, ns netns.NsHandle, addr string, port int) *net.UDPConn {
	t.Helper()
	return mustInNetNS(t, ns, func() (*net.UDPConn, error) { return net.ListenUDP("udp4", udpAddr(addr, port)) })
}

// sendUDP sends payload from "from" (an ephemeral port) to to:port.
func sendUDP(t *testing.T, ns netns.NsHandle, from, to string, port int, payload string) {
	t.Helper()
	c := mustInNetNS(t, ns, func() (*net.UDPConn, error) {
		return net.DialUDP("udp4", udpAddr(from, 0), udpAddr(to, port))
	})
	if _, err := c.Write([]byte(payload)); err != nil {
		t.Fatalf("send %q from %s to %s:%d: %v", payload, from, to, port, err)
	}
}

// expectUDP reads one datagram from c and checks it is want, from "from".
func expectUDP(t *testing.T, c *net.UDPConn, want, from string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 64)
	n, src, err := c.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("%s: want %q from %s: %v", c.LocalAddr(), want, from, err)
	}
	if got := string(buf[:n]); got != want || src.IP.String() != from {
		t.Errorf("%s: got %q from %s, want %q from %s", c.LocalAddr(), got, src.IP, want, from)
	}
}

// expectDropped waits until the rule's counter shows exactly one drop, then
// checks that nothing more arrived on c.
func expectDropped(t *testing.T, ns netns.NsHandle, rule string, c *net.UDPConn) {
	t.Helper()
	var got nft.Counter
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		ctrs, err := nft.Counters(int(ns))
		if err != nil {
			t.Fatal(err)
		}
		if got = ctrs[rule]; got.Packets > 0 {
			break
		}
	}
	if got.Packets != 1 {
		t.Errorf("counter %s = %d packets, want 1", rule, got.Packets)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if n, src, err := c.ReadFromUDP(make([]byte, 64)); err == nil {
		t.Errorf("%s: got %d bytes from %s that the table should have dropped", c.LocalAddr(), n, src)
	}
}
