package xdp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/netnstest"
)

var (
	lbAddr4 = netip.MustParseAddr("10.0.0.1")
	clAddr4 = netip.MustParseAddr("10.0.0.2")
	vip4    = netip.MustParseAddr("10.0.0.100")
	lbAddr6 = netip.MustParseAddr("fd00::1")
	clAddr6 = netip.MustParseAddr("fd00::2")
	vip6    = netip.MustParseAddr("fd00::100")
)

// waitFor is how long a test waits for a packet that should come.
const waitFor = 10 * time.Second

// lab is a balancer host "lb", whose eth0 carries the program and one
// socket per receive queue, and a client host "cl" on the same bridge. Both
// VIPs are also addresses of lb's eth0, so a packet the program passes
// reaches lb's stack (and a listener there) as it would without XDP.
type lab struct {
	lb, cl       *netnstest.Host
	lbMAC, clMAC net.HardwareAddr
	lbIndex      int
	clIndex      int
	prog         *Program
	mode         Mode
	socks        []*Socket
}

func newLab(t *testing.T) *lab {
	t.Helper()
	nl := netnstest.NewForTest(t, "xdp")
	lb, err := nl.AddHost("lb", netip.PrefixFrom(lbAddr4, 24), netip.PrefixFrom(vip4, 32),
		netip.PrefixFrom(lbAddr6, 64), netip.PrefixFrom(vip6, 128))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := nl.AddHost("cl", netip.PrefixFrom(clAddr4, 24), netip.PrefixFrom(clAddr6, 64))
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{lb: lb, cl: cl}
	l.clMAC, l.clIndex = linkOf(t, cl)
	l.lbMAC, l.lbIndex = linkOf(t, lb)
	// Static neighbours: the frames the tests write by hand need no
	// resolution, and a stray ND or ARP exchange cannot race them.
	for _, n := range []struct {
		h    *netnstest.Host
		idx  int
		addr []netip.Addr
		mac  net.HardwareAddr
	}{{lb, l.lbIndex, []netip.Addr{clAddr4, clAddr6}, l.clMAC}, {cl, l.clIndex, []netip.Addr{lbAddr4, vip4, lbAddr6, vip6}, l.lbMAC}} {
		err := n.h.Do(func() error {
			for _, a := range n.addr {
				family := netlink.FAMILY_V4
				if a.Is6() {
					family = netlink.FAMILY_V6
				}
				if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: n.idx, Family: family, State: netlink.NUD_PERMANENT,
					IP: a.AsSlice(), HardwareAddr: n.mac}); err != nil {
					return fmt.Errorf("neighbour %v: %w", a, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	// A link's queues start working only when the kernel's link watcher
	// gets to it, some time after it is up: until a ping makes the round
	// trip, a frame may be dropped on any of the four veth ends.
	err = cl.Do(func() error {
		deadline := time.Now().Add(waitFor)
		for {
			err := ping(lbAddr4, 100*time.Millisecond)
			if err == nil || time.Now().After(deadline) {
				return err
			}
		}
	})
	if err != nil {
		t.Fatalf("lab not ready: ping %v from cl: %v", lbAddr4, err)
	}

	queues := rxQueues(t, lb)
	err = lb.Do(func() error {
		var err error
		l.prog, err = Load(Options{MaxVIPs: 16, MaxQueues: queues})
		if err != nil {
			return err
		}
		if l.mode, err = l.prog.Attach(l.lbIndex); err != nil {
			return err
		}
		for q := range queues {
			s, err := NewSocket(SocketConfig{Ifindex: l.lbIndex, Queue: q, RingSize: 256, Frames: 512})
			if err != nil {
				return err
			}
			l.socks = append(l.socks, s)
			if err := l.prog.Register(s); err != nil {
				return err
			}
		}
		return nil
	})
	t.Cleanup(func() {
		for _, s := range l.socks {
			if err := s.Close(); err != nil {
				t.Error(err)
			}
		}
		if l.prog != nil {
			if err := l.prog.Close(); err != nil {
				t.Error(err)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("attached in %v mode; %d receive queues; zero-copy %v", l.mode, queues, l.socks[0].ZeroCopy())
	return l
}

// rxQueues counts the receive queues the kernel uses on h's eth0 (its
// real_num_rx_queues, which a socket's queue must be below), from the
// namespace's sysfs, which `ip netns exec` mounts.
func rxQueues(t *testing.T, h *netnstest.Host) int {
	t.Helper()
	out, err := h.Command(t.Context(), "ls", "/sys/class/net/eth0/queues").Output()
	if err != nil {
		t.Fatalf("queues of %s's eth0: %v", h.Name(), err)
	}
	n := strings.Count(string(out), "rx-")
	if n == 0 {
		t.Fatalf("no receive queue on %s's eth0: %q", h.Name(), out)
	}
	return n
}

func linkOf(t *testing.T, h *netnstest.Host) (net.HardwareAddr, int) {
	t.Helper()
	var mac net.HardwareAddr
	var idx int
	err := h.Do(func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		mac, idx = link.Attrs().HardwareAddr, link.Attrs().Index
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac, idx
}

// udpFrame builds an Ethernet frame from cl to lb carrying a UDP datagram
// from src:40000 to dst:port.
func (l *lab) udpFrame(t testing.TB, src, dst netip.Addr, port uint16, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: l.clMAC, DstMAC: l.lbMAC}
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(port)}
	var ip gopacket.SerializableLayer
	if dst.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	return serialize(t, eth, ip, udp, gopacket.Payload(payload))
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fragments splits the IP packet of the Ethernet frame udpFrame built into
// two fragments (the first carrying 16 bytes of the UDP datagram), each in
// an Ethernet frame from cl to lb.
func (l *lab) fragments(t *testing.T, frame []byte) [][]byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: l.clMAC, DstMAC: l.lbMAC}
	const first = 16
	var out [][]byte
	switch binary.BigEndian.Uint16(frame[12:]) {
	case unix.ETH_P_IP:
		eth.EthernetType = layers.EthernetTypeIPv4
		udp := frame[14+20:]
		for _, f := range []struct {
			off   int
			data  []byte
			flags layers.IPv4Flag
		}{{0, udp[:first], layers.IPv4MoreFragments}, {first, udp[first:], 0}} {
			ip := &layers.IPv4{Version: 4, TTL: 64, Id: 4242, Protocol: layers.IPProtocolUDP, Flags: f.flags,
				FragOffset: uint16(f.off / 8), SrcIP: frame[14+12 : 14+16], DstIP: frame[14+16 : 14+20]}
			out = append(out, serialize(t, eth, ip, gopacket.Payload(f.data)))
		}
	case unix.ETH_P_IPV6:
		eth.EthernetType = layers.EthernetTypeIPv6
		udp := frame[14+40:]
		for _, f := range []struct {
			off  int
			data []byte
			more uint16
		}{{0, udp[:first], 1}, {first, udp[first:], 0}} {
			ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Fragment,
				SrcIP: frame[14+8 : 14+24], DstIP: frame[14+24 : 14+40]}
			// Fragment header: next header, reserved, offset<<3|M, identification.
			hdr := []byte{unix.IPPROTO_UDP, 0, 0, 0, 0, 0, 0x42, 0x42}
			binary.BigEndian.PutUint16(hdr[2:], uint16(f.off)|f.more)
			out = append(out, serialize(t, eth, ip, gopacket.Payload(append(hdr, f.data...))))
		}
	default:
		t.Fatalf("not an IP frame: %x", frame[:14])
	}
	return out
}

// withDestOpts inserts an empty destination options header (PadN) between
// the IPv6 header and the UDP datagram of a frame udpFrame built.
func (l *lab) withDestOpts(t *testing.T, frame []byte) [][]byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: l.clMAC, DstMAC: l.lbMAC, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6Destination,
		SrcIP: frame[14+8 : 14+24], DstIP: frame[14+24 : 14+40]}
	// Next header UDP, length 0 (8 bytes), PadN of 4 bytes.
	opts := []byte{unix.IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0}
	return [][]byte{serialize(t, eth, ip, gopacket.Payload(append(opts, frame[14+40:]...)))}
}

// send writes whole Ethernet frames on cl's eth0 from a packet socket.
func (l *lab) send(t *testing.T, frames ...[]byte) {
	t.Helper()
	err := l.cl.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: l.clIndex, Halen: 6}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send from cl: %v", err)
	}
}

// receive waits for a frame on any of lb's sockets and returns a copy of
// it, giving the frame back to the fill ring; it fails the test after
// waitFor.
func (l *lab) receive(t *testing.T) []byte {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	descs := make([]Desc, 1)
	for time.Now().Before(deadline) {
		for _, s := range l.socks {
			if s.Receive(descs) == 1 {
				b := bytes.Clone(s.Data(descs[0]))
				if s.Fill([]uint64{descs[0].Addr}) != 1 {
					t.Fatal("the fill ring refused a frame it had handed out")
				}
				return b
			}
		}
		if _, err := l.socks[0].Wait(10); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatalf("no frame on the AF_XDP sockets within %v", waitFor)
	return nil
}

// noneReceived fails the test if a socket holds a frame.
func (l *lab) noneReceived(t *testing.T) {
	t.Helper()
	descs := make([]Desc, 1)
	for q, s := range l.socks {
		if s.Receive(descs) == 1 {
			t.Errorf("socket of queue %d got a frame the stack should have: %x", q, s.Data(descs[0]))
		}
	}
}

// listen opens a UDP socket in lb on addr:port.
func (l *lab) listen(t *testing.T, addr netip.Addr, port uint16) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := l.lb.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, port)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stackGets waits for payload on c.
func stackGets(t *testing.T, c *net.UDPConn, payload []byte) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(waitFor)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("lb's stack: %v", err)
	}
	if diff := cmp.Diff(payload, buf[:n]); diff != "" {
		t.Errorf("datagram on %v (-want +got):\n%s", c.LocalAddr(), diff)
	}
}

func TestVIPPacketsReachTheSocket(t *testing.T) {
	l := newLab(t)
	if err := l.prog.SetVIPs([]netip.Addr{vip4, vip6}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ src, dst netip.Addr }{{clAddr4, vip4}, {clAddr6, vip6}} {
		t.Run(tc.dst.String(), func(t *testing.T) {
			want := l.udpFrame(t, tc.src, tc.dst, 5000, []byte("to the VIP "+tc.dst.String()))
			l.send(t, want)
			if diff := cmp.Diff(want, l.receive(t)); diff != "" {
				t.Errorf("frame on the socket (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOtherPacketsReachTheStack(t *testing.T) {
	l := newLab(t)
	if err := l.prog.SetVIPs([]netip.Addr{vip4, vip6}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		src, dst netip.Addr
		// reshape turns the frame of a whole datagram into what is sent.
		reshape func(*testing.T, []byte) [][]byte
	}{
		{"non-VIP IPv4", clAddr4, lbAddr4, nil},
		{"non-VIP IPv6", clAddr6, lbAddr6, nil},
		{"IPv4 fragments to the VIP", clAddr4, vip4, l.fragments},
		{"IPv6 fragments to the VIP", clAddr6, vip6, l.fragments},
		{"IPv6 with destination options to the VIP", clAddr6, vip6, l.withDestOpts},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := l.listen(t, tc.dst, 6000)
			payload := []byte(strings.Repeat("a datagram the stack must see, ", 3))
			frame := l.udpFrame(t, tc.src, tc.dst, 6000, payload)
			if tc.reshape != nil {
				l.send(t, tc.reshape(t, frame)...)
			} else {
				l.send(t, frame)
			}
			stackGets(t, c, payload)
			l.noneReceived(t)
		})
	}
	for _, dst := range []netip.Addr{lbAddr4, lbAddr6} {
		if err := l.cl.Do(func() error { return ping(dst, waitFor) }); err != nil {
			t.Errorf("ping %v from cl: %v", dst, err)
		}
	}
}

// ping sends an ICMP echo request to dst and waits up to timeout for the
// reply.
func ping(dst netip.Addr, timeout time.Duration) error {
	network, typ, proto := "ip4:icmp", icmp.Type(ipv4.ICMPTypeEcho), 1
	if dst.Is6() {
		network, typ, proto = "ip6:ipv6-icmp", ipv6.ICMPTypeEchoRequest, 58
	}
	c, err := icmp.ListenPacket(network, "")
	if err != nil {
		return err
	}
	defer c.Close()
	req, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: 4242, Seq: 1, Data: []byte("ping")}}).Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(req, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return err
	}
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == 4242 && (m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply) {
			return nil
		}
	}
}

func TestRemovedVIPGoesToTheStack(t *testing.T) {
	l := newLab(t)
	if err := l.prog.SetVIPs([]netip.Addr{vip4, vip6}); err != nil {
		t.Fatal(err)
	}
	if err := l.prog.SetVIPs([]netip.Addr{vip6}); err != nil {
		t.Fatal(err)
	}
	c := l.listen(t, vip4, 7000)
	payload := []byte("after the VIP left the map")
	l.send(t, l.udpFrame(t, clAddr4, vip4, 7000, payload))
	stackGets(t, c, payload)
	l.noneReceived(t)
	// The VIP that stayed still goes to the socket.
	want := l.udpFrame(t, clAddr6, vip6, 7000, payload)
	l.send(t, want)
	if diff := cmp.Diff(want, l.receive(t)); diff != "" {
		t.Errorf("frame on the socket (-want +got):\n%s", diff)
	}
}

func TestSetVIPsRejects(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading BPF needs root")
	}
	p, err := Load(Options{MaxVIPs: 2, MaxQueues: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.SetVIPs([]netip.Addr{vip4}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		vips []netip.Addr
		want string
	}{
		{"invalid", []netip.Addr{{}}, "not an unzoned IP address"},
		{"zoned", []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}, "not an unzoned IP address"},
		{"too many", []netip.Addr{vip4, vip6, lbAddr4}, "3 addresses, the map holds 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.SetVIPs(tc.vips)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("SetVIPs(%v) = %v, want an error with %q", tc.vips, err, tc.want)
			}
			if diff := cmp.Diff(map[[16]byte]struct{}{vip4.As16(): {}}, p.current); diff != "" {
				t.Errorf("VIP set after a refused update (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTransmitPrependsAndReachesThePeer receives a frame to the VIP,
// prepends an outer IPv4 header in the frame's headroom with an Ethernet
// header to cl, as an encapsulating worker would, transmits it, and finds
// it byte for byte on cl's eth0.
func TestTransmitPrependsAndReachesThePeer(t *testing.T) {
	l := newLab(t)
	if err := l.prog.SetVIPs([]netip.Addr{vip4}); err != nil {
		t.Fatal(err)
	}
	// Open the capture on cl before anything is sent.
	var capFD int
	err := l.cl.Do(func() error {
		var err error
		capFD, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		if err := unix.Bind(capFD, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.clIndex}); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		return unix.SetsockoptTimeval(capFD, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(capFD)

	// Long enough to need no Ethernet padding, which the lab's bridge strips.
	inner := l.udpFrame(t, clAddr4, vip4, 8000, []byte("encapsulate me, please"))
	l.send(t, inner)
	var s *Socket
	var d Desc
	descs := make([]Desc, 1)
	for deadline := time.Now().Add(waitFor); s == nil; {
		if time.Now().After(deadline) {
			t.Fatal("no frame on the AF_XDP sockets")
		}
		for _, sk := range l.socks {
			if sk.Receive(descs) == 1 {
				s, d = sk, descs[0]
				break
			}
		}
		if s == nil {
			if _, err := l.socks[0].Wait(10); err != nil {
				t.Fatal(err)
			}
		}
	}
	const outer = 20
	if s.Headroom(d) < 128 {
		t.Fatalf("headroom %d, want at least 128", s.Headroom(d))
	}
	encap := serialize(t,
		&layers.Ethernet{SrcMAC: l.lbMAC, DstMAC: l.clMAC, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolIPv4, SrcIP: lbAddr4.AsSlice(), DstIP: clAddr4.AsSlice()},
		gopacket.Payload(inner[14:]))
	d.Addr -= outer
	d.Len += outer
	// Only the new headers are written: the inner packet stays in place.
	copy(s.Data(d), encap[:14+outer])
	if diff := cmp.Diff(encap, s.Data(d)); diff != "" {
		t.Fatalf("frame after prepending (-want +got):\n%s", diff)
	}
	if n, err := s.Transmit([]Desc{d}); n != 1 || err != nil {
		t.Fatalf("Transmit = %d, %v; want 1, nil", n, err)
	}

	buf := make([]byte, 4096)
	for deadline := time.Now().Add(waitFor); ; {
		if time.Now().After(deadline) {
			t.Fatal("the transmitted frame did not reach cl")
		}
		n, _, err := unix.Recvfrom(capFD, buf, 0)
		if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			t.Fatal(err)
		}
		if n > 0 && bytes.Equal(buf[:n], encap) {
			break
		}
	}
	addrs := make([]uint64, 1)
	for deadline := time.Now().Add(waitFor); s.Complete(addrs) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no completion for the transmitted frame")
		}
		if err := s.Kick(); err != nil {
			t.Fatal(err)
		}
	}
	if addrs[0] != d.Addr {
		t.Errorf("completed address %d, want the transmitted %d", addrs[0], d.Addr)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestDetachLeavesNothing checks that Detach, and Close without it, leave no
// XDP program on the interface.
func TestDetachLeavesNothing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(*lab) error
	}{
		{"Detach", func(l *lab) error { return l.prog.Detach() }},
		{"Close", func(l *lab) error { return l.prog.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t)
			if got := l.xdpAttached(t); !got {
				t.Fatal("no XDP program on lb's eth0 after Attach")
			}
			if err := tc.close(l); err != nil {
				t.Fatal(err)
			}
			if l.xdpAttached(t) {
				t.Error("an XDP program is still on lb's eth0")
			}
		})
	}
}

func (l *lab) xdpAttached(t *testing.T) bool {
	t.Helper()
	var attached bool
	err := l.lb.Do(func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		x := link.Attrs().Xdp
		attached = x != nil && (x.Attached || x.ProgId != 0)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return attached
}

// TestWorkerLoopAllocatesNothing runs wait, receive, fill, transmit, kick and
// complete on real frames and counts allocations.
func TestWorkerLoopAllocatesNothing(t *testing.T) {
	l := newLab(t)
	if err := l.prog.SetVIPs([]netip.Addr{vip4}); err != nil {
		t.Fatal(err)
	}
	const runs = 100
	frame := l.udpFrame(t, clAddr4, vip4, 9000, []byte("count my allocations"))
	frames := make([][]byte, runs+1)
	for i := range frames {
		frames[i] = frame
	}
	l.send(t, frames...)
	// Wait until every frame is in some RX ring.
	for deadline := time.Now().Add(waitFor); ; {
		var pending uint32
		for _, s := range l.socks {
			pending += *s.rx.producer - *s.rx.consumer
		}
		if pending == runs+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d frames in the RX rings", pending, runs+1)
		}
		time.Sleep(time.Millisecond)
	}
	out := l.lbToCl(t)
	s0 := l.socks[0]
	spare := s0.FrameAddr(s0.Frames() - 1) // not in the fill ring
	copy(s0.umem[spare:], out)
	descs := make([]Desc, DefaultBatch)
	addrs := make([]uint64, DefaultBatch)
	tx := []Desc{{Addr: spare, Len: uint32(len(out))}}
	var received int
	var failed error
	allocs := testing.AllocsPerRun(runs, func() {
		if _, err := s0.Wait(0); err != nil {
			failed = err
			return
		}
		for _, s := range l.socks {
			n := s.Receive(descs)
			for i := range n {
				addrs[i] = descs[i].Addr
			}
			s.Fill(addrs[:n])
			received += n
		}
		if n, err := s0.Transmit(tx); n != 1 || err != nil {
			failed = fmt.Errorf("Transmit = %d, %v", n, err)
			return
		}
		for i := 0; s0.Complete(addrs) == 0; i++ {
			if i == 1e6 {
				failed = errors.New("no completion")
				return
			}
			if err := s0.Kick(); err != nil {
				failed = err
				return
			}
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if received != runs+1 {
		t.Errorf("received %d frames, want %d", received, runs+1)
	}
	if allocs != 0 {
		t.Errorf("%v allocations per receive-fill-transmit-complete round, want 0", allocs)
	}
}

// lbToCl returns a UDP frame from lb to cl.
func (l *lab) lbToCl(t *testing.T) []byte {
	eth := &layers.Ethernet{SrcMAC: l.lbMAC, DstMAC: l.clMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: lbAddr4.AsSlice(), DstIP: clAddr4.AsSlice()}
	udp := &layers.UDP{SrcPort: 9000, DstPort: 9001}
	_ = udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, eth, ip, udp, gopacket.Payload("from lb's socket"))
}

// TestMain turns the test binary into privilegedHelper when XDP_HELPER=1,
// and into attachAndHang when XDP_HELPER=attach, rather than running the
// tests.
func TestMain(m *testing.M) {
	if os.Getenv("XDP_HELPER") == "attach" {
		if err := attachAndHang(); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
	}
	if os.Getenv("XDP_HELPER") == "1" {
		if err := privilegedHelper(); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("ok")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// privilegedHelper does what caplanced will do, in the namespace and with the
// capabilities it was started with: load, attach to eth0, open a socket and
// register it. A failure that ErrUnsupported
// marks is reported as "unsupported: …".
func privilegedHelper() error {
	err := func() error {
		eth0, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		p, err := Load(Options{MaxVIPs: 1, MaxQueues: 1})
		if err != nil {
			return err
		}
		defer p.Close()
		if _, err := p.Attach(eth0.Index); err != nil {
			return err
		}
		// XDP_FRAMES frames, for the memory-lock accounting.
		frames, err := strconv.Atoi(os.Getenv("XDP_FRAMES"))
		if err != nil {
			return err
		}
		s, err := NewSocket(SocketConfig{Ifindex: eth0.Index, Frames: frames, RingSize: 256})
		if err != nil {
			return err
		}
		defer s.Close()
		return p.Register(s)
	}()
	if errors.Is(err, ErrUnsupported) {
		return fmt.Errorf("unsupported: %w", err)
	}
	return err
}

// TestPrivileges runs privilegedHelper in lb's namespace with a limited
// capability bounding set (root without the others, as caplanced's unit
// grants them) and an 8 MiB memory-lock limit (systemd's default; lowering
// it needs no privilege): which capabilities the data path needs, that their
// absence is ErrUnsupported, and that without CAP_IPC_LOCK the UMEMs count
// against RLIMIT_MEMLOCK (a 16 MiB UMEM, two workers' default, does not fit).
func TestPrivileges(t *testing.T) {
	nl := netnstest.NewForTest(t, "xdpcap")
	lb, err := nl.AddHost("lb", netip.PrefixFrom(lbAddr4, 24))
	if err != nil {
		t.Fatal(err)
	}
	const unitCaps = "+net_admin,+net_raw"
	for _, tc := range []struct {
		name   string
		caps   string
		frames int
		want   string // the helper's last line, up to its first colon
	}{
		{"unit's capabilities and CAP_BPF", unitCaps + ",+bpf", 256, "ok"},
		{"without CAP_BPF", unitCaps, 256, "unsupported"},
		{"without CAP_NET_RAW", "+net_admin,+bpf", 256, "unsupported"},
		{"16 MiB of UMEM", unitCaps + ",+bpf", 2 * DefaultFrames, "xdp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := lb.Command(t.Context(), "prlimit", "--memlock=8388608",
				"setpriv", "--bounding-set=-all,"+tc.caps, "--inh-caps=-all", os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "XDP_HELPER=1", fmt.Sprint("XDP_FRAMES=", tc.frames))
			out, _ := cmd.CombinedOutput()
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			got, _, _ := strings.Cut(lines[len(lines)-1], ":")
			if got != tc.want {
				t.Errorf("helper said %q, want %q first", out, tc.want)
			}
			t.Logf("%s", out)
		})
	}
}

// TestGenericModeOnLoopback attaches to lb's lo, whose driver has no native
// XDP, so Attach falls back to generic mode, and checks the path there: a
// datagram to the VIP reaches the socket, one to another address the stack.
func TestGenericModeOnLoopback(t *testing.T) {
	nl := netnstest.NewForTest(t, "xdplo")
	lb, err := nl.AddHost("lb", netip.PrefixFrom(lbAddr4, 24), netip.PrefixFrom(vip4, 32))
	if err != nil {
		t.Fatal(err)
	}
	var frame []byte
	err = lb.Do(func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		p, err := Load(Options{MaxVIPs: 1, MaxQueues: 1})
		if err != nil {
			return err
		}
		defer p.Close()
		mode, err := p.Attach(lo.Index)
		if err != nil {
			return err
		}
		if mode != ModeGeneric {
			return fmt.Errorf("attached to lo in %v mode, want generic", mode)
		}
		s, err := NewSocket(SocketConfig{Ifindex: lo.Index, RingSize: 64, Frames: 128})
		if err != nil {
			return err
		}
		defer s.Close()
		if err := p.Register(s); err != nil {
			return err
		}
		if err := p.SetVIPs([]netip.Addr{vip4}); err != nil {
			return err
		}
		other, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lbAddr4, 5353)))
		if err != nil {
			return err
		}
		defer other.Close()
		c, err := net.ListenUDP("udp", nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, dst := range []netip.Addr{vip4, lbAddr4} {
			if _, err := c.WriteToUDPAddrPort([]byte("over lo"), netip.AddrPortFrom(dst, 5353)); err != nil {
				return err
			}
		}
		if err := other.SetReadDeadline(time.Now().Add(waitFor)); err != nil {
			return err
		}
		if _, err := other.Read(make([]byte, 64)); err != nil {
			return fmt.Errorf("the datagram to %v did not reach the stack: %w", lbAddr4, err)
		}
		descs := make([]Desc, 1)
		for deadline := time.Now().Add(waitFor); s.Receive(descs) == 0; {
			if time.Now().After(deadline) {
				return fmt.Errorf("no frame on the socket")
			}
			if _, err := s.Wait(10); err != nil {
				return err
			}
		}
		frame = bytes.Clone(s.Data(descs[0]))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// lo's Ethernet header is zeros but for the type.
	if len(frame) < 14+20+8 || !bytes.Equal(frame[14+16:14+20], vip4.AsSlice()) || !bytes.HasSuffix(frame, []byte("over lo")) {
		t.Errorf("frame on the socket %x, want a datagram to %v carrying %q", frame, vip4, "over lo")
	}
}

// TestFullRingIsCounted sends frames to the VIP one at a time, more than the
// fill and RX rings have room for, with no one receiving: every frame ends
// up either in an RX ring or in the kernel's drop counters (Stats).
func TestFullRingIsCounted(t *testing.T) {
	l := newLab(t)
	if err := l.prog.SetVIPs([]netip.Addr{vip4}); err != nil {
		t.Fatal(err)
	}
	frame := l.udpFrame(t, clAddr4, vip4, 9100, []byte("one too many for the ring"))
	const extra = 5
	total := len(l.socks[0].rx.descs) + extra
	var drops Stats // summed over the sockets
	err := l.cl.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for i := range total {
			if err := unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: l.clIndex, Halen: 6}); err != nil {
				return err
			}
			// Wait for it before sending the next, so that no frame is lost
			// on the way, where no counter of the socket would see it.
			for deadline := time.Now().Add(waitFor); ; {
				var seen uint64
				drops = Stats{}
				for _, s := range l.socks {
					st, err := s.Stats()
					if err != nil {
						return err
					}
					seen += uint64(*s.rx.producer-*s.rx.consumer) + st.RxDropped + st.RxRingFull
					drops.RxDropped += st.RxDropped
					drops.RxRingFull += st.RxRingFull
				}
				if seen == uint64(i+1) {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("frame %d: %d frames in the rings and counters, want %d", i, seen, i+1)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if drops.RxDropped+drops.RxRingFull != extra {
		t.Errorf("drops counted %+v, want %d in RxDropped and RxRingFull", drops, extra)
	}
	t.Logf("drops counted: %+v", drops)
}

func TestNewSocketRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    SocketConfig
		want string
	}{
		{"frame size", SocketConfig{Ifindex: 1, FrameSize: 1500}, "frame size 1500: want 2048 or 4096"},
		{"ring size", SocketConfig{Ifindex: 1, RingSize: 1000}, "ring size 1000: want a power of two up to 65536"},
		{"frames below the ring size", SocketConfig{Ifindex: 1, RingSize: 256, Frames: 100}, "100 frames: want from the ring size (256)"},
		{"interface", SocketConfig{}, "interface 0 queue 0: want a positive index"},
		{"queue", SocketConfig{Ifindex: 1, Queue: -1}, "interface 1 queue -1: want a positive index and a queue from 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewSocket(tc.c)
			if err == nil {
				s.Close()
				t.Fatalf("NewSocket(%+v) succeeded, want an error with %q", tc.c, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewSocket(%+v) = %v, want an error with %q", tc.c, err, tc.want)
			}
		})
	}
}

func TestLoadRejects(t *testing.T) {
	for _, o := range []Options{{MaxQueues: 1}, {MaxVIPs: 1}, {MaxVIPs: -1, MaxQueues: 1}} {
		p, err := Load(o)
		if err == nil {
			p.Close()
			t.Fatalf("Load(%+v) succeeded, want an error", o)
		}
		if want := "must be at least 1"; !strings.Contains(err.Error(), want) {
			t.Errorf("Load(%+v) = %v, want an error with %q", o, err, want)
		}
	}
}

// loadForTestRun loads the program with VIPs vip4 and vip6 and a socket on
// lo's queue 0 in a namespace of its own, for BPF_PROG_TEST_RUN, which runs
// as queue 0.
func loadForTestRun(tb testing.TB) *Program {
	tb.Helper()
	nl := netnstest.NewForTest(tb, "xdprun")
	lb, err := nl.AddHost("lb")
	if err != nil {
		tb.Fatal(err)
	}
	var p *Program
	var s *Socket
	tb.Cleanup(func() {
		if s != nil {
			s.Close()
		}
		if p != nil {
			p.Close()
		}
	})
	err = lb.Do(func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		if p, err = Load(Options{MaxVIPs: 2, MaxQueues: 1}); err != nil {
			return err
		}
		if s, err = NewSocket(SocketConfig{Ifindex: lo.Index, RingSize: 64, Frames: 64}); err != nil {
			return err
		}
		if err := p.Register(s); err != nil {
			return err
		}
		return p.SetVIPs([]netip.Addr{vip4, vip6})
	})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// BenchmarkProgram measures the program's cost per frame in the kernel
// (BPF_PROG_TEST_RUN's own timing, so without the driver), for a frame to a
// VIP of each family and one that passes.
func BenchmarkProgram(b *testing.B) {
	p := loadForTestRun(b)
	l := &lab{clMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, lbMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}
	for _, bc := range []struct {
		name  string
		frame []byte
	}{
		{"IPv4 VIP", l.udpFrame(b, clAddr4, vip4, 53, []byte("a query"))},
		{"IPv6 VIP", l.udpFrame(b, clAddr6, vip6, 53, []byte("a query"))},
		{"IPv4 other", l.udpFrame(b, clAddr4, lbAddr4, 53, []byte("a query"))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			_, d, err := p.prog.Benchmark(bc.frame, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(d.Nanoseconds()), "kernel-ns/frame")
		})
	}
}

// TestProgramVerdicts runs the program on frames with BPF_PROG_TEST_RUN
// (no interface involved) with a socket registered for queue 0, the queue
// a test run uses: XDP_REDIRECT for what goes to the socket, XDP_PASS for
// the rest, including every frame too short for what it claims to be.
func TestProgramVerdicts(t *testing.T) {
	const redirect, pass = 4, 2
	p := loadForTestRun(t)
	l := &lab{clMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, lbMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}
	udp4 := l.udpFrame(t, clAddr4, vip4, 53, []byte("a query, long enough to fragment"))
	udp6 := l.udpFrame(t, clAddr6, vip6, 53, []byte("a query, long enough to fragment"))
	// edit returns a copy of frame with fn applied.
	edit := func(frame []byte, fn func([]byte)) []byte {
		b := bytes.Clone(frame)
		fn(b)
		return b
	}
	frag4 := l.fragments(t, udp4)
	frag6 := l.fragments(t, udp6)
	tests := []struct {
		name  string
		frame []byte
		want  uint32
	}{
		{"IPv4 to the VIP", udp4, redirect},
		{"IPv4 to the VIP, DF", edit(udp4, func(b []byte) { b[14+6] = 0x40 }), redirect},
		{"IPv4 to the VIP, IHL 6", edit(udp4, func(b []byte) { b[14] = 0x46 }), redirect},
		{"IPv4 to another address", l.udpFrame(t, clAddr4, lbAddr4, 53, []byte("a query, long enough to fragment")), pass},
		{"IPv4 first fragment", frag4[0], pass},
		{"IPv4 last fragment", frag4[1], pass},
		{"IPv4 IHL 4", edit(udp4, func(b []byte) { b[14] = 0x44 }), pass},
		{"IPv4 header cut short", udp4[:14+19], pass},
		{"IPv4 header whole, nothing after", udp4[:14+20], redirect},
		{"IPv6 to the VIP", udp6, redirect},
		{"IPv6 to another address", l.udpFrame(t, clAddr6, lbAddr6, 53, []byte("a query, long enough to fragment")), pass},
		{"IPv6 to the IPv4 VIP, mapped", edit(udp6, func(b []byte) { copy(b[14+24:], netip.AddrFrom16(vip4.As16()).AsSlice()) }), pass},
		{"IPv6 first fragment", frag6[0], pass},
		{"IPv6 last fragment", frag6[1], pass},
		{"IPv6 destination options", l.withDestOpts(t, udp6)[0], pass},
		{"IPv6 hop-by-hop", edit(l.withDestOpts(t, udp6)[0], func(b []byte) { b[14+6] = 0 }), pass},
		{"IPv6 header cut short", udp6[:14+39], pass},
		{"IPv6 header whole, nothing after", udp6[:14+40], redirect},
		{"ICMP to the VIP", edit(udp4, func(b []byte) { b[14+9] = 1 }), pass},
		{"ICMPv6 to the VIP", edit(udp6, func(b []byte) { b[14+6] = 58 }), pass},
		{"VLAN-tagged IPv4 to the VIP", slices.Concat(udp4[:12], []byte{0x81, 0, 0, 7}, udp4[12:]), pass},
		{"ARP", edit(udp4, func(b []byte) { b[12], b[13] = 0x08, 0x06 }), pass},
		{"Ethernet header only", udp4[:14], pass},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.prog.Run(&ebpf.RunOptions{Data: tc.frame})
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("verdict %d, want %d (2 pass, 4 redirect)", got, tc.want)
			}
		})
	}
	// Without a socket on the queue, a VIP's packet passes.
	if err := p.Unregister(0); err != nil {
		t.Fatal(err)
	}
	if got, err := p.prog.Run(&ebpf.RunOptions{Data: udp4}); err != nil || got != pass {
		t.Errorf("verdict for the VIP without a socket: %d, %v; want %d", got, err, pass)
	}
}

// attachAndHang attaches the program to eth0, says "attached" and waits to
// be killed.
func attachAndHang() error {
	eth0, err := net.InterfaceByName("eth0")
	if err != nil {
		return err
	}
	p, err := Load(Options{MaxVIPs: 1, MaxQueues: 1})
	if err != nil {
		return err
	}
	if _, err := p.Attach(eth0.Index); err != nil {
		return err
	}
	fmt.Println("attached")
	select {}
}

// TestKilledProcessLeavesNothing attaches from a process that is then
// killed with SIGKILL: the kernel drops the bpf_link with the process's
// descriptors, so no program stays on the interface (crash safety without
// any cleanup).
func TestKilledProcessLeavesNothing(t *testing.T) {
	nl := netnstest.NewForTest(t, "xdpkil")
	lb, err := nl.AddHost("lb", netip.PrefixFrom(lbAddr4, 24))
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{lb: lb}
	cmd := lb.Command(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "XDP_HELPER=attach")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := lb.Start(cmd); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 64)
	n, err := out.Read(line)
	if err != nil || string(line[:n]) != "attached\n" {
		t.Fatalf("helper said %q, %v; want \"attached\"", line[:n], err)
	}
	if !l.xdpAttached(t) {
		t.Fatal("no XDP program on lb's eth0 while the helper runs")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // killed: the error says so
	for deadline := time.Now().Add(waitFor); l.xdpAttached(t); {
		if time.Now().After(deadline) {
			t.Fatal("an XDP program is still on lb's eth0 after its process was killed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAttachLeavesOthersAlone checks that a second program cannot take the
// interface from the first, and that this is not ErrUnsupported (the kernel
// can do XDP; the interface is taken).
func TestAttachLeavesOthersAlone(t *testing.T) {
	l := newLab(t)
	err := l.lb.Do(func() error {
		p, err := Load(Options{MaxVIPs: 1, MaxQueues: 1})
		if err != nil {
			return err
		}
		defer p.Close()
		mode, err := p.Attach(l.lbIndex)
		if err == nil {
			return fmt.Errorf("a second program attached in %v mode", mode)
		}
		if errors.Is(err, ErrUnsupported) {
			return fmt.Errorf("attaching to a taken interface: %w; want an error that is not ErrUnsupported", err)
		}
		t.Logf("second Attach: %v", err)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !l.xdpAttached(t) {
		t.Error("the first program is gone")
	}
}

// TestTransmitSendsTheWholeBatch puts more frames on the TX ring than the
// kernel sends in one system call in copy mode (32) with one Transmit and
// kicks no more: every frame must complete, or a worker's batches would
// pile up on the ring under steady load until it refused frames.
func TestTransmitSendsTheWholeBatch(t *testing.T) {
	l := newLab(t)
	s := l.socks[0]
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: lbAddr4.AsSlice(), DstIP: clAddr4.AsSlice()}
	udp := &layers.UDP{SrcPort: 40000, DstPort: 9}
	_ = udp.SetNetworkLayerForChecksum(ip)
	frame := serialize(t,
		&layers.Ethernet{SrcMAC: l.lbMAC, DstMAC: l.clMAC, EthernetType: layers.EthernetTypeIPv4},
		ip, udp, gopacket.Payload("one of a batch"))
	// The last frames are the caller's: NewSocket fills the ring with the first.
	const n = 3 * DefaultBatch
	descs := make([]Desc, n)
	for i := range descs {
		d := Desc{Addr: s.FrameAddr(s.Frames() - n + i), Len: uint32(len(frame))}
		copy(s.Data(d), frame)
		descs[i] = d
	}
	if sent, err := s.Transmit(descs); sent != n || err != nil {
		t.Fatalf("Transmit = %d, %v; want %d, nil", sent, err, n)
	}
	addrs := make([]uint64, n)
	completed := 0
	for deadline := time.Now().Add(waitFor); completed < n && time.Now().Before(deadline); {
		completed += s.Complete(addrs[completed:])
		time.Sleep(time.Millisecond)
	}
	if completed != n {
		t.Fatalf("%d of %d frames completed after one Transmit", completed, n)
	}
}
