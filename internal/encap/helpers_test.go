package encap_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/inet"
)

// Addresses shared by the tests: a balancer sending to a backend's encap
// port, and the VIPs the backend serves.
var (
	balancer  = netip.MustParseAddr("192.0.2.1")
	balancer6 = netip.MustParseAddr("2001:db8::1")
	stranger  = netip.MustParseAddr("192.0.2.99")
	backend   = netip.MustParseAddr("198.51.100.7")
	client    = netip.MustParseAddr("203.0.113.5")
	client6   = netip.MustParseAddr("2001:db8:c::5")
	vip4      = netip.MustParseAddr("10.0.0.100")
	vip4b     = netip.MustParseAddr("10.0.0.102")
	vip6      = netip.MustParseAddr("2001:db8:f::100")
	notVIP4   = netip.MustParseAddr("10.0.0.101")
	vip6b     = netip.MustParseAddr("2001:db8:f::102")
	notVIP6   = netip.MustParseAddr("2001:db8:f::101")
	// hostAddrs is the backend host's own addresses, and its subnet's
	// broadcast address.
	hostAddrs        = encap.NewLocalAddrs([]netip.Addr{backend, backend6}, []netip.Addr{backendBroadcast})
	backend6         = netip.MustParseAddr("2001:db8:b::7")
	backendBroadcast = netip.MustParseAddr("198.51.100.255")
	encapPort        = uint16(5555)
	flowHash         = uint64(0x0123456789abcdef)
)

func newDecap(t testing.TB) *encap.Decapsulator {
	t.Helper()
	d, err := encap.NewDecapsulator(encapPort, []netip.Addr{balancer, balancer6}, []netip.Addr{vip4, vip4b, vip6, vip6b})
	if err != nil {
		t.Fatalf("NewDecapsulator: %v", err)
	}
	return d
}

func newOuter(t testing.TB) encap.Outer {
	t.Helper()
	o, err := encap.NewOuter(balancer, backend, encapPort)
	if err != nil {
		t.Fatalf("NewOuter: %v", err)
	}
	return o
}

func newOuter6(t testing.TB) encap.Outer {
	t.Helper()
	o, err := encap.NewOuter(balancer6, backend6, encapPort)
	if err != nil {
		t.Fatalf("NewOuter: %v", err)
	}
	return o
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return buf.Bytes()
}

// innerV4 is a client TCP segment to dst with payloadLen bytes of payload;
// with options it carries IPv4 options (a router alert, padded).
func innerV4(t testing.TB, dst netip.Addr, df, options bool, payloadLen int) []byte {
	t.Helper()
	ip := &layers.IPv4{
		Version: 4, TTL: 57, Protocol: layers.IPProtocolTCP, Id: 0x1234,
		SrcIP: net.IP(client.AsSlice()), DstIP: net.IP(dst.AsSlice()),
	}
	if df {
		ip.Flags = layers.IPv4DontFragment
	}
	if options {
		ip.Options = []layers.IPv4Option{
			{OptionType: 0x94, OptionLength: 4, OptionData: []byte{0, 0}},
			{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0},
		}
	}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1, SYN: true, Window: 64240}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, ip, tcp, gopacket.Payload(pattern(payloadLen)))
}

// innerV4UDP is a client UDP datagram of exactly total bytes, without DF, as
// the kernel hands over a reassembled datagram.
func innerV4UDP(t testing.TB, total int) []byte {
	t.Helper()
	ip := &layers.IPv4{
		Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: net.IP(client.AsSlice()), DstIP: net.IP(vip4.AsSlice()),
	}
	udp := &layers.UDP{SrcPort: 40000, DstPort: 53}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, ip, udp, gopacket.Payload(pattern(total-28)))
}

func innerV6(t testing.TB, dst netip.Addr, payloadLen int) []byte {
	t.Helper()
	ip := &layers.IPv6{
		Version: 6, HopLimit: 60, NextHeader: layers.IPProtocolUDP,
		SrcIP: net.IP(client6.AsSlice()), DstIP: net.IP(dst.AsSlice()),
	}
	udp := &layers.UDP{SrcPort: 40000, DstPort: 443}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, ip, udp, gopacket.Payload(pattern(payloadLen)))
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

// withHeadroom returns a packet buffer as the data path has it for an IPv4
// outer: HeaderLen4 bytes of stale headroom, then a copy of inner.
func withHeadroom(inner []byte) []byte { return withRoom(encap.HeaderLen4, inner) }

// withRoom returns n bytes of stale headroom, then a copy of inner.
func withRoom(n int, inner []byte) []byte {
	pkt := make([]byte, n+len(inner))
	for i := range n {
		pkt[i] = 0xee
	}
	copy(pkt[n:], inner)
	return pkt
}

// encapsulated is inner wrapped by the package's own Encapsulate, for the
// decapsulation tests (the encapsulation tests check Encapsulate
// independently with gopacket).
func encapsulated(t testing.TB, inner []byte) []byte {
	t.Helper()
	o := newOuter(t)
	pkt := withHeadroom(inner)
	if err := o.Encapsulate(pkt, flowHash); err != nil {
		t.Fatalf("Encapsulate: %v", err)
	}
	return pkt
}

// encapsulated6 is inner wrapped by Encapsulate in an IPv6 outer header
// from balancer6 to backend6.
func encapsulated6(t testing.TB, inner []byte) []byte {
	t.Helper()
	o := newOuter6(t)
	pkt := withRoom(encap.HeaderLen6, inner)
	if err := o.Encapsulate(pkt, flowHash); err != nil {
		t.Fatalf("Encapsulate: %v", err)
	}
	return pkt
}

// fixUDP6 rewrites the UDP checksum of the IPv6+UDP packet p after a test
// mutated it, computed here over the whole datagram (RFC 8200 section 8.1).
func fixUDP6(p []byte) {
	p[46], p[47] = 0, 0
	binary.BigEndian.PutUint16(p[46:48], ^upper6Sum(p))
}

// upper6Sum is the folded ones'-complement sum of an IPv6 packet's
// pseudo-header and upper-layer packet (UDP or ICMPv6, with no extension
// headers between), computed byte by byte into a wide accumulator,
// independently of package inet: a valid checksum makes it 0xffff.
func upper6Sum(p []byte) uint16 {
	var s uint64
	add := func(b []byte) {
		for i, c := range b {
			if i%2 == 0 {
				s += uint64(c) << 8
			} else {
				s += uint64(c)
			}
		}
	}
	add(p[8:40])
	upper := p[40:]
	s += uint64(len(upper)) + uint64(p[6])
	add(upper)
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// checksumAt is the checksum b should carry in its 16-bit checksum field
// b[at:at+2]: inet.Checksum of b with that field taken as zero.
func checksumAt(b []byte, at int) uint16 {
	z := append([]byte(nil), b...)
	z[at], z[at+1] = 0, 0
	return inet.Checksum(z)
}

// fixChecksum rewrites the IPv4 header checksum of the header at hdr, after
// a test mutated it.
func fixChecksum(hdr []byte) {
	ihl := int(hdr[0]&0x0f) * 4
	binary.BigEndian.PutUint16(hdr[10:12], checksumAt(hdr[:ihl], 10))
}

// withSource returns a copy of the inner IPv4 or IPv6 packet pkt with its
// source address replaced by src (the IPv4 header checksum fixed; UDP and TCP
// checksums are not checked by the decapsulator).
func withSource(pkt []byte, src netip.Addr) []byte {
	return mutate(pkt, func(p []byte) {
		if p[0]>>4 == 6 {
			a := src.As16()
			copy(p[8:24], a[:])
			return
		}
		a := src.As4()
		copy(p[12:16], a[:])
		fixChecksum(p)
	})
}

// mutate returns a copy of pkt changed by f.
func mutate(pkt []byte, f func(p []byte)) []byte {
	p := append([]byte(nil), pkt...)
	f(p)
	return p
}

// nsPerOp is b's time per iteration, once its b.Loop loop has ended.
func nsPerOp(b *testing.B) float64 {
	return float64(b.Elapsed().Nanoseconds()) / float64(b.N)
}

// reportRatio reports b's time per iteration as a multiple of base, the
// nsPerOp of a baseline sub-benchmark run just before it; nothing when -bench
// skipped the baseline (base 0).
func reportRatio(b *testing.B, base float64, unit string) {
	if base > 0 {
		b.ReportMetric(nsPerOp(b)/base, unit)
	}
}

// checksummed is a transport layer whose checksum covers a pseudo-header.
type checksummed interface {
	gopacket.SerializableLayer
	SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
}

// innerPacket is a client packet to dst (IPv4 or IPv6 by dst's family) with
// transport layer l4 and payloadLen bytes of payload, every checksum valid.
func innerPacket(t testing.TB, dst netip.Addr, l4 gopacket.SerializableLayer, payloadLen int) []byte {
	t.Helper()
	var ip gopacket.NetworkLayer
	proto := map[gopacket.LayerType]layers.IPProtocol{
		layers.LayerTypeTCP: layers.IPProtocolTCP, layers.LayerTypeUDP: layers.IPProtocolUDP,
		layers.LayerTypeICMPv4: layers.IPProtocolICMPv4, layers.LayerTypeICMPv6: layers.IPProtocolICMPv6,
	}[l4.LayerType()]
	if dst.Is4() {
		ip = &layers.IPv4{Version: 4, TTL: 57, Protocol: proto, SrcIP: net.IP(client.AsSlice()), DstIP: net.IP(dst.AsSlice())}
	} else {
		ip = &layers.IPv6{Version: 6, HopLimit: 57, NextHeader: proto, SrcIP: net.IP(client6.AsSlice()), DstIP: net.IP(dst.AsSlice())}
	}
	if c, ok := l4.(checksummed); ok {
		if err := c.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
	}
	return serialize(t, ip.(gopacket.SerializableLayer), l4, gopacket.Payload(pattern(payloadLen)))
}

// withExtensionHeaders inserts IPv6 extension headers, each 8 bytes, in
// front of the transport header of the IPv6 packet pkt, which must have none:
// for each type in types, a header of that type whose contents are padding.
// The transport checksum stays valid: its pseudo-header names the upper
// layer, not the extension headers.
func withExtensionHeaders(pkt []byte, types ...byte) []byte {
	upper := pkt[6]
	out := append([]byte(nil), pkt[:40]...)
	for i := range types {
		next := upper
		if i+1 < len(types) {
			next = types[i+1]
		}
		// Next header, length 0 (8 bytes), then a PadN option of 4 bytes of
		// data (meaningless, but harmless, in a fragment or routing header).
		out = append(out, next, 0, 1, 4, 0, 0, 0, 0)
	}
	out = append(out, pkt[40:]...)
	if len(types) > 0 {
		out[6] = types[0]
	}
	binary.BigEndian.PutUint16(out[4:6], uint16(len(out)-40))
	return out
}

// withRoutingHeader turns pkt, an IPv6 packet to its final destination,
// into the packet on its way to the first hop via: destination via and a
// type 0 routing header (RFC 2460) listing the final destination, one
// segment left. Its transport checksum, computed for the final
// destination, stays valid (RFC 8200 section 8.1).
func withRoutingHeader(pkt []byte, via netip.Addr) []byte {
	out := append([]byte(nil), pkt[:40]...)
	out = append(out, pkt[6], 2, 0, 1, 0, 0, 0, 0)
	out = append(out, pkt[24:40]...)
	out = append(out, pkt[40:]...)
	out[6] = 43
	a := via.As16()
	copy(out[24:40], a[:])
	binary.BigEndian.PutUint16(out[4:6], uint16(len(out)-40))
	return out
}
