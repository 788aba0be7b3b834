package flow_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/caplance/caplance/internal/flow"
	"github.com/google/go-cmp/cmp"
)

// Addresses used throughout: a client, the VIP, and a router on the path
// that sends ICMP errors.
const (
	client4 = "10.0.0.1"
	vip4    = "10.0.0.100"
	router4 = "192.0.2.1"
	client6 = "2001:db8::1"
	vip6    = "2001:db8::100"
	router6 = "2001:db8:ffff::1"
)

// Protocol numbers, spelled out here rather than borrowed from the package
// so that the tests state the wire values independently.
const (
	pHopByHop = 0
	pICMP     = 1
	pTCP      = 6
	pUDP      = 17
	pDCCP     = 33
	pRouting  = 43
	pFragment = 44
	pGRE      = 47
	pESP      = 50
	pAH       = 51
	pICMPv6   = 58
	pNoNext   = 59
	pDestOpts = 60
	pSCTP     = 132
	pUDPLite  = 136
)

// keyCmp shows addresses as text in diffs.
var keyCmp = cmp.Transformer("addr", func(a [16]byte) string {
	return netip.AddrFrom16(a).String()
})

// key builds a Key; IPv4 addresses come out IPv4-mapped.
func key(proto uint8, src string, sport uint16, dst string, dport uint16) flow.Key {
	return flow.Key{
		Src:     netip.MustParseAddr(src).As16(),
		Dst:     netip.MustParseAddr(dst).As16(),
		SrcPort: sport,
		DstPort: dport,
		Proto:   proto,
	}
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// set returns a copy of b with the bytes at off replaced by v.
func set(b []byte, off int, v ...byte) []byte {
	c := append([]byte(nil), b...)
	copy(c[off:], v)
	return c
}

// set16 returns a copy of b with the big-endian v at off.
func set16(b []byte, off int, v uint16) []byte {
	return set(b, off, byte(v>>8), byte(v))
}

// cut returns a copy of the first n bytes of b.
func cut(b []byte, n int) []byte {
	return append([]byte(nil), b[:n]...)
}

// v4 builds an IPv4 packet with a 20-byte header, total length set.
func v4(proto uint8, src, dst string, l4 []byte) []byte {
	return v4opts(proto, src, dst, nil, l4)
}

// v4opts builds an IPv4 packet whose header carries opts (a multiple of 4 bytes).
func v4opts(proto uint8, src, dst string, opts, l4 []byte) []byte {
	h := make([]byte, 20, 20+len(opts)+len(l4))
	h[0] = 0x40 | byte(5+len(opts)/4)
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(opts)+len(l4)))
	h[8] = 64
	h[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	return cat(h, opts, l4)
}

// v4frag builds an IPv4 fragment with the given offset (in 8-byte units) and MF flag.
func v4frag(proto uint8, src, dst string, offset uint16, more bool, l4 []byte) []byte {
	if more {
		offset |= 0x2000
	}
	return set16(v4(proto, src, dst, l4), 6, offset)
}

// v6 builds an IPv6 packet, payload length set.
func v6(next uint8, src, dst string, payload []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6] = next
	h[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return cat(h, payload)
}

// ports builds an n-byte transport header that starts with the two ports.
func ports(sport, dport uint16, n int) []byte {
	b := make([]byte, n)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	return b
}

// tcp builds a TCP header: the ports, and a data offset of 5 words, without
// which gopacket (BenchmarkParse's baseline) refuses it.
func tcp(sport, dport uint16) []byte {
	b := ports(sport, dport, 20)
	b[12] = 5 << 4
	return b
}

func udp(sport, dport uint16) []byte { return ports(sport, dport, 8) }

// icmpEcho builds an ICMP echo header (either family) with identifier id.
func icmpEcho(typ uint8, id uint16) []byte {
	b := make([]byte, 8)
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], 1) // sequence
	return b
}

// icmpErr builds an ICMP error (either family) quoting quote.
func icmpErr(typ, code uint8, quote []byte) []byte {
	return cat([]byte{typ, code, 0, 0, 0, 0, 0x05, 0xdc}, quote)
}

// quoteOf cuts an IPv4 packet down to what a router quotes: the IP header
// and 8 bytes of transport.
func quoteOf(pkt []byte) []byte {
	return cut(pkt, int(pkt[0]&0x0f)*4+8)
}

// ext builds an IPv6 extension header (hop-by-hop, routing, destination
// options) of n bytes, n a multiple of 8.
func ext(next uint8, n int) []byte {
	b := make([]byte, n)
	b[0] = next
	b[1] = byte(n/8 - 1)
	return b
}

// ah builds an IPv6 authentication header of n bytes, n a multiple of 4.
func ah(next uint8, n int) []byte {
	b := make([]byte, n)
	b[0] = next
	b[1] = byte(n/4 - 2)
	return b
}

// frag builds an IPv6 fragment header; offset in 8-byte units.
func frag(next uint8, offset uint16, more bool) []byte {
	b := make([]byte, 8)
	b[0] = next
	v := offset << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:], v)
	binary.BigEndian.PutUint32(b[4:], 0xcafe)
	return b
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
