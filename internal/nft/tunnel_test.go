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
	l := newLink(t, []string{addrA + "/24", vip + "/32", "fd99:2::1/64"}, []string{balancer + "/24", stranger + "/24", "fd99:2::2/64"})

	t.Run("foreign source", func(t *testing.T) {
		// Device is not a0 here, so only the source rule applies.
		err := nft.Apply(int(l.a), nft.Rules{Tunnel: &nft.Tunnel{
			Port: encap, Balancers: addrs(balancer), Devices: []string{"caplance0"}, VIPs: addrs(vip),
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

	t.Run("raw tunnel packets", func(t *testing.T) {
		// Sent from the balancer's address too: only fou may feed the
		// tunnel devices, whoever sends.
		err := nft.Apply(int(l.a), nft.Rules{Tunnel: &nft.Tunnel{
			Port: encap, Balancers: addrs(balancer), Devices: []string{"caplance0"}, VIPs: addrs(vip),
		}})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []struct {
			af, proto int
			to        string
		}{{unix.AF_INET, unix.IPPROTO_IPIP, addrA}, {unix.AF_INET, unix.IPPROTO_IPV6, addrA}, {unix.AF_INET6, unix.IPPROTO_IPV6, "fd99:2::1"}} {
			_, err := inNetNS(t, l.b, func() (any, error) {
				fd, err := unix.Socket(s.af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, s.proto)
				if err != nil {
					return nil, err
				}
				defer unix.Close(fd)
				var to unix.Sockaddr = &unix.SockaddrInet6{Addr: netip.MustParseAddr(s.to).As16()}
				if s.af == unix.AF_INET {
					to = &unix.SockaddrInet4{Addr: netip.MustParseAddr(s.to).As4()}
				}
				return nil, unix.Sendto(fd, []byte("an inner packet, or not"), 0, to)
			})
			if err != nil {
				t.Fatalf("send protocol %d to %s: %v", s.proto, s.to, err)
			}
		}
		var got nft.Counter
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && got.Packets < 3; time.Sleep(5 * time.Millisecond) {
			ctrs, err := nft.Counters(int(l.a))
			if err != nil {
				t.Fatal(err)
			}
			got = ctrs[nft.RuleTunnelRaw]
		}
		if got.Packets != 3 {
			t.Errorf("counter %s = %d packets, want 3", nft.RuleTunnelRaw, got.Packets)
		}
	})

	t.Run("foreign destination", func(t *testing.T) {
		// a0 stands in for the decapsulating device.
		err := nft.Apply(int(l.a), nft.Rules{Tunnel: &nft.Tunnel{
			Port: encap, Balancers: addrs(balancer), Devices: []string{"a0"}, VIPs: addrs(vip),
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

// TestTunnelSpoofedSources sends, to a listener on the VIP, datagrams from
// sources no client can have, from B as raw frames (so that B's own stack
// leaves the sources alone), with a0 standing in for the decapsulating
// device, for each family. Each is dropped by the rule for its kind, or by
// the kernel before any hook (rule ""); a balancer's datagram, sent last,
// arrives.
func TestTunnelSpoofedSources(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	const (
		vip6      = "fd99:1::100"
		addrA6    = "fd99:1::1"
		balancer6 = "fd99:1::2"
	)
	for _, tc := range []struct {
		name, vip, balancer string
		spoofed             []struct{ src, rule string }
	}{
		{"IPv4", vip, balancer, []struct{ src, rule string }{
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
		}},
		{"IPv6", vip6, balancer6, []struct{ src, rule string }{
			{"::", nft.RuleTunnelSourceUnspecified6},
			{"::1", ""},
			{"ff02::1", ""},
			{"fe80::1", nft.RuleTunnelSourceLinkLocal},
			{"::ffff:10.99.0.3", nft.RuleTunnelSourceV4Mapped},
			{vip6, nft.RuleTunnelSourceLocal6}, // source = destination
			{addrA6, nft.RuleTunnelSourceLocal6},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newLink(t, []string{addrA + "/24", vip + "/32", addrA6 + "/64", vip6 + "/128"},
				[]string{balancer + "/24", balancer6 + "/64"})
			err := nft.Apply(int(l.a), nft.Rules{Tunnel: &nft.Tunnel{
				Port: encap, Balancers: addrs(tc.balancer), Devices: []string{"a0"}, VIPs: addrs(tc.vip),
			}})
			if err != nil {
				t.Fatal(err)
			}
			ln := listenUDP(t, l.a, tc.vip, 7)
			want := map[string]nft.Counter{}
			for _, s := range tc.spoofed {
				pkt := sendFrame(t, l, s.src, tc.vip, 7)
				if s.rule == "" {
					continue
				}
				c := want[s.rule]
				c.Packets++
				c.Bytes += uint64(len(pkt))
				want[s.rule] = c
			}
			sendFrame(t, l, tc.balancer, tc.vip, 7)
			// The frames cross the veth in order: once the last one is in,
			// every spoofed one has met the table.
			expectUDP(t, ln, framePayload, tc.balancer)
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
		})
	}
}

const framePayload = "spoofed?"

// sendFrame sends a UDP datagram from src to dst:port out of b0 as a raw
// IPv4 or IPv6 frame to a0's MAC address, its header exactly as written
// here, and returns the packet.
func sendFrame(t *testing.T, l link, src, dst string, port uint16) []byte {
	t.Helper()
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	udp := make([]byte, 8+len(framePayload))
	binary.BigEndian.PutUint16(udp[0:2], 40000)
	binary.BigEndian.PutUint16(udp[2:4], port)
	binary.BigEndian.PutUint16(udp[4:6], uint16(len(udp)))
	copy(udp[8:], framePayload)
	var pkt []byte
	ethType := uint16(unix.ETH_P_IP)
	if d.Is4() {
		pkt = make([]byte, 20, 20+len(udp))
		pkt[0] = 0x45
		binary.BigEndian.PutUint16(pkt[2:4], uint16(20+len(udp)))
		pkt[8] = 64
		pkt[9] = unix.IPPROTO_UDP
		s4, d4 := s.As4(), d.As4()
		copy(pkt[12:16], s4[:])
		copy(pkt[16:20], d4[:])
		binary.BigEndian.PutUint16(pkt[10:12], inet.Checksum(pkt[:20]))
	} else {
		// IPv6 UDP needs its checksum: over the pseudo-header and the
		// datagram.
		ethType = unix.ETH_P_IPV6
		pkt = make([]byte, 40, 40+len(udp))
		pkt[0] = 0x60
		binary.BigEndian.PutUint16(pkt[4:6], uint16(len(udp)))
		pkt[6] = unix.IPPROTO_UDP
		pkt[7] = 64
		s16, d16 := s.As16(), d.As16()
		copy(pkt[8:24], s16[:])
		copy(pkt[24:40], d16[:])
		sum := inet.Sum(pkt[8:40], uint32(len(udp))+unix.IPPROTO_UDP)
		binary.BigEndian.PutUint16(udp[6:8], ^inet.Fold(inet.Sum(udp, sum)))
	}
	pkt = append(pkt, udp...)

	a0 := mustInNetNS(t, l.a, func() (*net.Interface, error) { return net.InterfaceByName("a0") })
	_, err := inNetNS(t, l.b, func() (any, error) {
		b0, err := net.InterfaceByName("b0")
		if err != nil {
			return nil, err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(ethType)))
		if err != nil {
			return nil, err
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: b0.Index, Protocol: htons(ethType), Halen: 6}
		copy(to.Addr[:], a0.HardwareAddr)
		return nil, unix.Sendto(fd, pkt, 0, to)
	})
	if err != nil {
		t.Fatalf("send a frame from %s to %s:%d: %v", src, dst, port, err)
	}
	return pkt
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func listenUDP(t *testing.T, ns netns.NsHandle, addr string, port int) *net.UDPConn {
	t.Helper()
	return mustInNetNS(t, ns, func() (*net.UDPConn, error) { return net.ListenUDP("udp", udpAddr(addr, port)) })
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
