package nft_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/inet"
	"github.com/caplance/caplance/internal/nft"
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

// TestTunnelSpoofedSources sends, to a listener on the VIP, IPv4 datagrams
// from sources no client can have, from B as raw frames (so that B's own
// stack leaves the sources alone), with a0 standing in for the decapsulating
// device. Each is dropped by the rule for its kind; a balancer's datagram,
// sent last, arrives.
func TestTunnelSpoofedSources(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	l := newLink(t, []string{addrA + "/24", vip + "/32"}, []string{balancer + "/24"})
	err := nft.Apply(int(l.a), nft.Rules{Tunnel: &nft.Tunnel{
		Port: encap, Balancers: addrs(balancer), Device: "a0", VIPs: addrs(vip),
	}})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenUDP(t, l.a, vip, 7)
	spoofed := []struct{ src, rule string }{
		{"0.0.0.0", nft.RuleTunnelSourceUnspecified},
		{"0.1.2.3", nft.RuleTunnelSourceUnspecified},
		{"127.0.0.1", nft.RuleTunnelSourceLoopback},
		{"224.0.0.1", nft.RuleTunnelSourceMulticast},
		{"239.1.2.3", nft.RuleTunnelSourceMulticast},
		{"255.255.255.255", nft.RuleTunnelSourceBroadcast},
		{"10.99.0.255", nft.RuleTunnelSourceBroadcast}, // a0's subnet
		{"240.0.0.1", nft.RuleTunnelSourceReserved},
		{vip, nft.RuleTunnelSourceLocal}, // source = destination
		{addrA, nft.RuleTunnelSourceLocal},
	}
	want := map[string]nft.Counter{}
	for _, s := range spoofed {
		sendFrame(t, l, s.src, vip, 7)
		c := want[s.rule]
		c.Packets++
		c.Bytes += 20 + 8 + uint64(len(framePayload))
		want[s.rule] = c
	}
	sendFrame(t, l, balancer, vip, 7)
	// The frames cross the veth in order: once the last one is in, every
	// spoofed one has met the table.
	expectUDP(t, ln, framePayload, balancer)
	ctrs, err := nft.Counters(int(l.a))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]nft.Counter{}
	for rule := range want {
		got[rule] = ctrs[rule]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	ln.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if n, src, err := ln.ReadFromUDP(make([]byte, 64)); err == nil {
		t.Errorf("%s: got %d bytes from %s after the balancer's datagram", ln.LocalAddr(), n, src)
	}
}

const framePayload = "spoofed?"

// sendFrame sends a UDP datagram from src to dst:port out of b0 as a raw
// IPv4 frame to a0's MAC address, its header exactly as written here.
func sendFrame(t *testing.T, l link, src, dst string, port uint16) {
	t.Helper()
	pkt := make([]byte, 20+8+len(framePayload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	pkt[8] = 64
	pkt[9] = unix.IPPROTO_UDP
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(pkt[12:16], s[:])
	copy(pkt[16:20], d[:])
	binary.BigEndian.PutUint16(pkt[10:12], inet.Checksum(pkt[:20]))
	binary.BigEndian.PutUint16(pkt[20:22], 40000)
	binary.BigEndian.PutUint16(pkt[22:24], port)
	binary.BigEndian.PutUint16(pkt[24:26], uint16(8+len(framePayload)))
	copy(pkt[28:], framePayload)

	a0 := mustInNetNS(t, l.a, func() (*net.Interface, error) { return net.InterfaceByName("a0") })
	_, err := inNetNS(t, l.b, func() (any, error) {
		b0, err := net.InterfaceByName("b0")
		if err != nil {
			return nil, err
		}
		proto := int(htons(unix.ETH_P_IP))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return nil, err
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: b0.Index, Protocol: htons(unix.ETH_P_IP), Halen: 6}
		copy(to.Addr[:], a0.HardwareAddr)
		return nil, unix.Sendto(fd, pkt, 0, to)
	})
	if err != nil {
		t.Fatalf("send a frame from %s to %s:%d: %v", src, dst, port, err)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

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
	c.SetReadDeadline(time.Now().Add(5 * time.Second)) // generous: it arrives long before under any load
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
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
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
