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
	notVIP6   = netip.MustParseAddr("2001:db8:f::101")
	// hostAddrs is the backend host's own addresses, and its subnet's
	// broadcast address.
	hostAddrs        = encap.NewLocalAddrs([]netip.Addr{backend, backend6}, []netip.Addr{backendBroadcast})
	backend6         = netip.MustParseAddr("2001:db8:b::7")
	backendBroadcast = netip.MustParseAddr("198.51.100.255")
	encapPort        = uint16(5555)
	srcPort          = uint16(50000)
)

func newDecap(t testing.TB) *encap.Decapsulator {
	t.Helper()
	d, err := encap.NewDecapsulator(encapPort, []netip.Addr{balancer, balancer6}, []netip.Addr{vip4, vip4b, vip6})
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

// withHeadroom returns a packet buffer as the data path has it: HeaderLen
// bytes of stale headroom, then a copy of inner.
func withHeadroom(inner []byte) []byte {
	pkt := make([]byte, encap.HeaderLen+len(inner))
	for i := range encap.HeaderLen {
		pkt[i] = 0xee
	}
	copy(pkt[encap.HeaderLen:], inner)
	return pkt
}

// encapsulated is inner wrapped by the package's own Encapsulate, for the
// decapsulation tests (the encapsulation tests check Encapsulate
// independently with gopacket).
func encapsulated(t testing.TB, inner []byte) []byte {
	t.Helper()
	o := newOuter(t)
	pkt := withHeadroom(inner)
	if err := o.Encapsulate(pkt, srcPort); err != nil {
		t.Fatalf("Encapsulate: %v", err)
	}
	return pkt
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
