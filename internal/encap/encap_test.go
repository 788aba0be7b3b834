package encap_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/inet"
)

// outerFields are the decoded outer header fields the policy fixes.
type outerFields struct {
	Version, IHL, TOS, TTL uint8
	Protocol               layers.IPProtocol
	Flags                  layers.IPv4Flag
	FragOffset, ID, Length uint16
	Src, Dst               netip.Addr
	SrcPort, DstPort       layers.UDPPort
	UDPLength, UDPChecksum uint16
}

func TestEncapsulate(t *testing.T) {
	v4 := innerV4(t, vip4, true, false, 100)
	// The inner length field is not trusted: here it claims 20 bytes less
	// than arrive, and the outer length must still cover every byte.
	lying := mutate(v4, func(p []byte) { binary.BigEndian.PutUint16(p[2:4], uint16(len(p)-20)) })

	tests := []struct {
		name   string
		inner  []byte
		hash   uint64
		wantDF bool
	}{
		{name: "v4 inner with DF", inner: v4, hash: 1, wantDF: true},
		{name: "v4 inner without DF", inner: innerV4(t, vip4, false, false, 100), hash: ^uint64(0), wantDF: false},
		{name: "v4 inner with IP options", inner: innerV4(t, vip4, true, true, 10), hash: 0, wantDF: true},
		{name: "v6 inner sets DF", inner: innerV6(t, vip6, 100), hash: 1 << 40, wantDF: true},
		{name: "60000-byte v4 inner", inner: innerV4UDP(t, 60000), hash: 0xdeadbeef, wantDF: false},
		{name: "largest inner", inner: innerV4UDP(t, 65535-encap.HeaderLen4), hash: 1, wantDF: false},
		{name: "inner length field ignored", inner: lying, hash: 1, wantDF: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOuter(t)
			// Spare capacity behind the packet, filled with a canary, shows
			// Encapsulate writes nothing past len(pkt).
			const spare = 64
			buf := make([]byte, encap.HeaderLen4+len(tt.inner)+spare)
			for i := range buf {
				buf[i] = 0xa5
			}
			pkt := buf[:encap.HeaderLen4+len(tt.inner)]
			copy(pkt[encap.HeaderLen4:], tt.inner)

			if err := o.Encapsulate(pkt, tt.hash); err != nil {
				t.Fatalf("Encapsulate: %v", err)
			}

			if !bytes.Equal(pkt[encap.HeaderLen4:], tt.inner) {
				t.Error("inner packet modified")
			}
			if !bytes.Equal(buf[len(pkt):], bytes.Repeat([]byte{0xa5}, spare)) {
				t.Error("Encapsulate wrote past len(pkt)")
			}

			var ip layers.IPv4
			if err := ip.DecodeFromBytes(pkt, gopacket.NilDecodeFeedback); err != nil {
				t.Fatalf("gopacket IPv4: %v", err)
			}
			var udp layers.UDP
			if err := udp.DecodeFromBytes(ip.Payload, gopacket.NilDecodeFeedback); err != nil {
				t.Fatalf("gopacket UDP: %v", err)
			}
			var wantFlags layers.IPv4Flag
			if tt.wantDF {
				wantFlags = layers.IPv4DontFragment
			}
			want := outerFields{
				Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP,
				Flags: wantFlags, Length: uint16(len(pkt)),
				Src: balancer, Dst: backend,
				SrcPort: layers.UDPPort(encap.SourcePort(tt.hash)), DstPort: layers.UDPPort(encapPort),
				UDPLength: uint16(len(pkt) - 20), UDPChecksum: 0,
			}
			src, _ := netip.AddrFromSlice(ip.SrcIP)
			dst, _ := netip.AddrFromSlice(ip.DstIP)
			got := outerFields{
				Version: ip.Version, IHL: ip.IHL, TOS: ip.TOS, TTL: ip.TTL, Protocol: ip.Protocol,
				Flags: ip.Flags, FragOffset: ip.FragOffset, ID: ip.Id, Length: ip.Length,
				Src: src, Dst: dst,
				SrcPort: udp.SrcPort, DstPort: udp.DstPort,
				UDPLength: udp.Length, UDPChecksum: udp.Checksum,
			}
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("outer header (-want +got):\n%s", diff)
			}

			if got, want := ip.Checksum, checksumAt(pkt[:20], 10); got != want {
				t.Errorf("header checksum = %#04x, want %#04x", got, want)
			}
			// gopacket's serializer recomputes the checksum from the decoded
			// fields; its header must be byte-identical to ours.
			reser := ip
			reser.Checksum = 0
			sb := gopacket.NewSerializeBuffer()
			if err := reser.SerializeTo(sb, gopacket.SerializeOptions{ComputeChecksums: true}); err != nil {
				t.Fatalf("gopacket serialize: %v", err)
			}
			if diff := cmp.Diff(sb.Bytes(), pkt[:20]); diff != "" {
				t.Errorf("header vs gopacket's with ComputeChecksums (-want +got):\n%s", diff)
			}

			if !bytes.Equal(udp.Payload, tt.inner) {
				t.Errorf("UDP payload differs from the inner packet (len %d, want %d)", len(udp.Payload), len(tt.inner))
			}
			if &udp.Payload[0] != &pkt[encap.HeaderLen4] {
				t.Error("decoded payload is not pkt[HeaderLen:] in place")
			}
		})
	}
}

func TestEncapsulateErrors(t *testing.T) {
	tests := []struct {
		name string
		pkt  []byte
		want error
	}{
		{name: "nil", pkt: nil, want: encap.ErrInnerEmpty},
		{name: "shorter than the headroom", pkt: make([]byte, encap.HeaderLen4-1), want: encap.ErrInnerEmpty},
		{name: "headroom only", pkt: make([]byte, encap.HeaderLen4), want: encap.ErrInnerEmpty},
		{name: "too long", pkt: withHeadroom(innerV4UDP(t, 65535-encap.HeaderLen4+1)), want: encap.ErrTooLong},
		{name: "version 0", pkt: withHeadroom(make([]byte, 60)), want: encap.ErrInnerVersion},
		{name: "version 5", pkt: withHeadroom(mutate(innerV4(t, vip4, true, false, 0), func(p []byte) { p[0] = 0x55 })), want: encap.ErrInnerVersion},
		{name: "v4 shorter than 20", pkt: withHeadroom(innerV4(t, vip4, true, false, 0)[:19]), want: encap.ErrInnerShort},
		{name: "v6 shorter than 40", pkt: withHeadroom(innerV6(t, vip6, 0)[:39]), want: encap.ErrInnerShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOuter(t)
			before := append([]byte(nil), tt.pkt...)
			err := o.Encapsulate(tt.pkt, flowHash)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Encapsulate error = %v, want %v", err, tt.want)
			}
			if !bytes.Equal(tt.pkt, before) {
				t.Error("Encapsulate changed the packet although it failed")
			}
		})
	}
}

func TestNewOuter(t *testing.T) {
	tests := []struct {
		name     string
		src, dst netip.Addr
		port     uint16
		want     error
		wantLen  int // Len of the Outer when NewOuter succeeds
	}{
		{name: "ok", src: balancer, dst: backend, port: encapPort, wantLen: 28},
		{name: "IPv4-mapped addresses are IPv4", src: netip.AddrFrom16(balancer.As16()), dst: netip.AddrFrom16(backend.As16()), port: encapPort, wantLen: 28},
		{name: "IPv6", src: balancer6, dst: backend6, port: encapPort, wantLen: 48},
		{name: "IPv6 source, IPv4 destination", src: balancer6, dst: backend, port: encapPort, want: encap.ErrFamilyMismatch},
		{name: "IPv4 source, IPv6 destination", src: balancer, dst: backend6, port: encapPort, want: encap.ErrFamilyMismatch},
		{name: "IPv4 source, IPv4-mapped destination", src: balancer, dst: netip.AddrFrom16(backend.As16()), port: encapPort, wantLen: 28},
		{name: "link-local IPv6 destination", src: balancer6, dst: netip.MustParseAddr("fe80::7"), port: encapPort, want: encap.ErrNotUnicast},
		{name: "zoned IPv6 destination", src: balancer6, dst: backend6.WithZone("eth0"), port: encapPort, want: encap.ErrNotUnicast},
		{name: "link-local IPv4 source", src: netip.MustParseAddr("169.254.1.1"), dst: backend, port: encapPort, want: encap.ErrNotUnicast},
		{name: "multicast IPv6 destination", src: balancer6, dst: netip.MustParseAddr("ff02::1"), port: encapPort, want: encap.ErrNotUnicast},
		{name: "multicast IPv4 destination", src: balancer, dst: netip.MustParseAddr("224.0.0.1"), port: encapPort, want: encap.ErrNotUnicast},
		{name: "broadcast IPv4 destination", src: balancer, dst: netip.MustParseAddr("255.255.255.255"), port: encapPort, want: encap.ErrNotUnicast},
		{name: "loopback IPv6", src: netip.IPv6Loopback(), dst: netip.IPv6Loopback(), port: encapPort, wantLen: 48},
		{name: "loopback IPv4 destination", src: netip.MustParseAddr("127.0.0.1"), dst: netip.MustParseAddr("127.0.0.2"), port: encapPort, wantLen: 28},
		{name: "unspecified IPv6 source", src: netip.IPv6Unspecified(), dst: backend6, port: encapPort, want: encap.ErrInvalidAddr},
		{name: "zero source", src: netip.Addr{}, dst: backend, port: encapPort, want: encap.ErrInvalidAddr},
		{name: "unspecified destination", src: balancer, dst: netip.IPv4Unspecified(), port: encapPort, want: encap.ErrInvalidAddr},
		{name: "zero port", src: balancer, dst: backend, port: 0, want: encap.ErrZeroPort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := encap.NewOuter(tt.src, tt.dst, tt.port)
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewOuter error = %v, want %v", err, tt.want)
			}
			if err == nil && o.Len() != tt.wantLen {
				t.Errorf("Len = %d, want %d", o.Len(), tt.wantLen)
			}
		})
	}
}

func TestSourcePort(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))

	t.Run("stable and in range", func(t *testing.T) {
		hashes := []uint64{0, 1, 1 << 63, ^uint64(0)}
		for range 100000 {
			hashes = append(hashes, rng.Uint64())
		}
		for _, h := range hashes {
			p := encap.SourcePort(h)
			if p < encap.SourcePortMin || p > encap.SourcePortMax {
				t.Fatalf("SourcePort(%#x) = %d, outside [%d, %d]", h, p, encap.SourcePortMin, encap.SourcePortMax)
			}
			if again := encap.SourcePort(h); again != p {
				t.Fatalf("SourcePort(%#x) = %d, then %d", h, p, again)
			}
		}
	})

	// 10000 hashes into 256 equal buckets of the range: a chi-square
	// statistic above 330.5 (the 99.9th percentile for 255 degrees of freedom)
	// means the ports are not spread. Sequential hashes stand in for a weak
	// flow hash whose entropy sits in the low bits only.
	gens := []struct {
		name string
		next func(i int) uint64
	}{
		{"random hashes", func(int) uint64 { return rng.Uint64() }},
		{"sequential hashes", func(i int) uint64 { return uint64(i) }},
		{"low bits constant", func(i int) uint64 { return uint64(i) << 32 }},
	}
	for _, g := range gens {
		t.Run(g.name, func(t *testing.T) {
			const n, buckets = 10000, 256
			var count [buckets]int
			for i := range n {
				p := encap.SourcePort(g.next(i))
				count[int(p-encap.SourcePortMin)*buckets/(encap.SourcePortMax-encap.SourcePortMin+1)]++
			}
			expected := float64(n) / buckets
			var chi2 float64
			hit := 0
			for _, c := range count {
				d := float64(c) - expected
				chi2 += d * d / expected
				if c > 0 {
					hit++
				}
			}
			if chi2 > 330.5 {
				t.Errorf("chi-square = %.1f over %d buckets, want ≤ 330.5", chi2, buckets)
			}
			if hit < buckets*9/10 {
				t.Errorf("%d of %d buckets hit, want > 90%%", hit, buckets)
			}
		})
	}
}

func TestEncapsulateDecapsulateRoundTrip(t *testing.T) {
	d := newDecap(t)
	for name, inner := range map[string][]byte{
		"v4":              innerV4(t, vip4, true, false, 100),
		"v4 with options": innerV4(t, vip4, false, true, 100),
		"v6":              innerV6(t, vip6, 100),
		"v4 60000 bytes":  innerV4UDP(t, 60000),
		"v6 TCP":          innerPacket(t, vip6, &layers.TCP{SrcPort: 40000, DstPort: 443, SYN: true}, 1000),
		"v6 60000 bytes":  innerPacket(t, vip6, &layers.UDP{SrcPort: 40000, DstPort: 53}, 60000),
	} {
		for _, outer := range []struct {
			name string
			wrap func(testing.TB, []byte) []byte
		}{{"in v4", encapsulated}, {"in v6", encapsulated6}} {
			t.Run(name+" "+outer.name, func(t *testing.T) {
				pkt := outer.wrap(t, inner)
				got, r := d.Packet(pkt, hostAddrs)
				if r != encap.Accept {
					t.Fatalf("Packet rejected: %v", r)
				}
				if !bytes.Equal(got, inner) {
					t.Errorf("Packet returned %d bytes, not the inner packet of %d", len(got), len(inner))
				}
				if &got[0] != &pkt[len(pkt)-len(inner)] {
					t.Error("Packet copied the inner packet")
				}
			})
		}
	}
}

func TestEncapsulateAllocs(t *testing.T) {
	o := newOuter(t)
	pkt := withHeadroom(innerV4(t, vip4, true, false, 1000))
	if n := testing.AllocsPerRun(100, func() {
		if err := o.Encapsulate(pkt, flowHash); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Encapsulate: %v allocs per run, want 0", n)
	}
	o6 := newOuter6(t)
	for name, inner := range map[string][]byte{
		"TCP in v6":                innerV4(t, vip4, true, false, 1000),
		"v6 fragment in v6 (pass)": withExtensionHeaders(innerV6(t, vip6, 1000), 44),
	} {
		pkt := withRoom(encap.HeaderLen6, inner)
		if n := testing.AllocsPerRun(100, func() {
			if err := o6.Encapsulate(pkt, flowHash); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("Encapsulate %s: %v allocs per run, want 0", name, n)
		}
	}
	bad := withHeadroom([]byte{0x50})
	if n := testing.AllocsPerRun(100, func() {
		if err := o.Encapsulate(bad, flowHash); err == nil {
			t.Fatal("no error")
		}
	}); n != 0 {
		t.Errorf("Encapsulate error path: %v allocs per run, want 0", n)
	}
	var h uint64
	if n := testing.AllocsPerRun(100, func() {
		h++
		_ = encap.SourcePort(h)
		_ = encap.FlowLabel(h)
	}); n != 0 {
		t.Errorf("SourcePort, FlowLabel: %v allocs per run, want 0", n)
	}
}

var sink []byte

// BenchmarkEncapsulate measures Encapsulate, and in the same run as the
// baseline what a naive implementation does: each inplace result reports
// x-copy, its time as a multiple of the copy-baseline run just before it.
func BenchmarkEncapsulate(b *testing.B) {
	for _, size := range []int{64, 1500} {
		inner := innerV4UDP(b, size)
		var base float64 // ns/op of copy-baseline
		// A fresh buffer per packet, the inner packet copied behind a header
		// built and summed from scratch.
		b.Run(fmt.Sprintf("%dB/copy-baseline", size), func(b *testing.B) {
			src, dst := balancer.As4(), backend.As4()
			b.SetBytes(int64(len(inner)))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				out := make([]byte, encap.HeaderLen4+len(inner))
				out[0], out[8], out[9] = 0x45, 64, 17
				binary.BigEndian.PutUint16(out[2:], uint16(len(out)))
				binary.BigEndian.PutUint16(out[6:], binary.BigEndian.Uint16(inner[6:])&0x4000)
				copy(out[12:], src[:])
				copy(out[16:], dst[:])
				binary.BigEndian.PutUint16(out[10:], inet.Checksum(out[:20]))
				binary.BigEndian.PutUint16(out[20:], encap.SourcePort(uint64(i)))
				binary.BigEndian.PutUint16(out[22:], encapPort)
				binary.BigEndian.PutUint16(out[24:], uint16(len(out)-20))
				copy(out[encap.HeaderLen4:], inner)
				sink = out
			}
			base = nsPerOp(b)
		})
		b.Run(fmt.Sprintf("%dB/inplace", size), func(b *testing.B) {
			o := newOuter(b)
			pkt := withHeadroom(inner)
			b.SetBytes(int64(len(inner)))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := o.Encapsulate(pkt, uint64(i)); err != nil {
					b.Fatal(err)
				}
			}
			reportRatio(b, base, "x-copy")
		})
	}
}

// outer6Fields are an IPv6 outer header's fields, decoded by outer6Of.
type outer6Fields struct {
	Version, TrafficClass uint8
	FlowLabel             uint32
	PayloadLength         uint16
	NextHeader, HopLimit  uint8
	Src, Dst              netip.Addr
	SrcPort, DstPort      uint16
	UDPLength             uint16
}

// outer6Of decodes the IPv6 and UDP headers at the front of pkt, here and
// without gopacket.
func outer6Of(pkt []byte) outer6Fields {
	word := binary.BigEndian.Uint32(pkt[0:4])
	return outer6Fields{
		Version: uint8(word >> 28), TrafficClass: uint8(word >> 20), FlowLabel: word & 0xfffff,
		PayloadLength: binary.BigEndian.Uint16(pkt[4:6]),
		NextHeader:    pkt[6], HopLimit: pkt[7],
		Src: netip.AddrFrom16([16]byte(pkt[8:24])), Dst: netip.AddrFrom16([16]byte(pkt[24:40])),
		SrcPort: binary.BigEndian.Uint16(pkt[40:42]), DstPort: binary.BigEndian.Uint16(pkt[42:44]),
		UDPLength: binary.BigEndian.Uint16(pkt[44:46]),
	}
}

// TestEncapsulate6: 4-in-6 and 6-in-6. The outer header is decoded here,
// and the UDP checksum verified by a full computation over the pseudo-header
// and the whole datagram, whether Encapsulate read the inner payload (a
// fragment, UDP without a checksum, another protocol, IPv4 options, a
// routing header, a length field that lies) or derived its sum from the
// inner transport checksum. An inner packet whose transport checksum is
// wrong must get a wrong outer checksum, so the backend's kernel drops it.
func TestEncapsulate6(t *testing.T) {
	tcp := func() *layers.TCP { return &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1, ACK: true, Window: 501} }
	udp := func() *layers.UDP { return &layers.UDP{SrcPort: 40000, DstPort: 53} }
	v4TCP := innerPacket(t, vip4, tcp(), 1400)
	v6UDP := innerPacket(t, vip6, udp(), 100)
	v4UDPNoChecksum := mutate(innerV4UDP(t, 500), func(p []byte) { p[26], p[27] = 0, 0 })
	v4Fragment := mutate(innerV4UDP(t, 500), func(p []byte) { p[6] |= 0x20; fixChecksum(p) })
	v4GRE := mutate(innerV4UDP(t, 300), func(p []byte) { p[9] = 47; fixChecksum(p) })
	v6Other := mutate(v6UDP, func(p []byte) { p[6] = 47 })
	v6UDPNoChecksum := mutate(v6UDP, func(p []byte) { p[46], p[47] = 0, 0 })

	tests := []struct {
		name      string
		inner     []byte
		hash      uint64
		wantValid bool // whether the outer UDP checksum verifies
	}{
		{name: "v4 TCP", inner: v4TCP, hash: 1, wantValid: true},
		{name: "v4 TCP with IP options", inner: innerV4(t, vip4, true, true, 700), hash: 2, wantValid: true},
		{name: "v4 UDP", inner: innerV4UDP(t, 1000), hash: 3, wantValid: true},
		{name: "v4 UDP odd length", inner: innerV4UDP(t, 1001), hash: 4, wantValid: true},
		{name: "v4 UDP without checksum", inner: v4UDPNoChecksum, hash: 5, wantValid: true},
		{name: "v4 fragment", inner: v4Fragment, hash: 6, wantValid: true},
		{name: "v4 ICMP echo", inner: innerPacket(t, vip4, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 7, Seq: 1}, 56), hash: 7, wantValid: true},
		{name: "v4 other protocol", inner: v4GRE, hash: 8, wantValid: true},
		{name: "v4 length field lies", inner: mutate(v4TCP, func(p []byte) { binary.BigEndian.PutUint16(p[2:4], uint16(len(p)-20)); fixChecksum(p) }), hash: 9, wantValid: true},
		// The UDP length bounds the inner packet: 65535 - 8 bytes.
		{name: "v4 largest inner", inner: innerV4UDP(t, 65535-8), hash: 10, wantValid: true},
		{name: "v6 UDP", inner: v6UDP, hash: 11, wantValid: true},
		{name: "v6 UDP odd length", inner: innerPacket(t, vip6, udp(), 101), hash: 12, wantValid: true},
		{name: "v6 UDP without checksum", inner: v6UDPNoChecksum, hash: 13, wantValid: true},
		{name: "v6 TCP", inner: innerPacket(t, vip6, tcp(), 1400), hash: 14, wantValid: true},
		{name: "v6 ICMPv6 echo", inner: innerPacket(t, vip6, &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}, 60), hash: 15, wantValid: true},
		{name: "v6 hop-by-hop and destination options", inner: withExtensionHeaders(v6UDP, 0, 60), hash: 16, wantValid: true},
		{name: "v6 fragment header", inner: withExtensionHeaders(v6UDP, 44), hash: 17, wantValid: true},
		{name: "v6 routing header", inner: withExtensionHeaders(v6UDP, 60, 43), hash: 18, wantValid: true},
		{name: "v6 routing header to another final destination", inner: withRoutingHeader(innerPacket(t, notVIP6, udp(), 100), vip6), hash: 18, wantValid: true},
		{name: "v6 other protocol", inner: v6Other, hash: 19, wantValid: true},
		{name: "v6 extension header beyond the packet", inner: mutate(withExtensionHeaders(v6UDP, 0), func(p []byte) { p[41] = 255 }), hash: 20, wantValid: true},
		{name: "v6 length field lies", inner: mutate(v6UDP, func(p []byte) { binary.BigEndian.PutUint16(p[4:6], 8) }), hash: 21, wantValid: true},
		{name: "v6 largest inner", inner: innerPacket(t, vip6, udp(), 65535-8-40-8), hash: 22, wantValid: true},
		{name: "hash 0", inner: v6UDP, hash: 0, wantValid: true},

		{name: "v4 TCP with a wrong checksum", inner: mutate(v4TCP, func(p []byte) { p[36] ^= 1 }), hash: 1, wantValid: false},
		{name: "v4 TCP with a corrupt payload", inner: mutate(v4TCP, func(p []byte) { p[len(p)-1] ^= 1 }), hash: 1, wantValid: false},
		{name: "v6 UDP with a wrong checksum", inner: mutate(v6UDP, func(p []byte) { p[47] ^= 1 }), hash: 1, wantValid: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOuter6(t)
			const spare = 64
			buf := make([]byte, encap.HeaderLen6+len(tt.inner)+spare)
			for i := range buf {
				buf[i] = 0xa5
			}
			pkt := buf[:encap.HeaderLen6+len(tt.inner)]
			copy(pkt[encap.HeaderLen6:], tt.inner)

			if err := o.Encapsulate(pkt, tt.hash); err != nil {
				t.Fatalf("Encapsulate: %v", err)
			}
			if !bytes.Equal(pkt[encap.HeaderLen6:], tt.inner) {
				t.Error("inner packet modified")
			}
			if !bytes.Equal(buf[len(pkt):], bytes.Repeat([]byte{0xa5}, spare)) {
				t.Error("Encapsulate wrote past len(pkt)")
			}
			want := outer6Fields{
				Version: 6, FlowLabel: encap.FlowLabel(tt.hash),
				PayloadLength: uint16(len(pkt) - 40), NextHeader: 17, HopLimit: 64,
				Src: balancer6, Dst: backend6,
				SrcPort: encap.SourcePort(tt.hash), DstPort: encapPort,
				UDPLength: uint16(len(pkt) - 40),
			}
			if diff := cmp.Diff(want, outer6Of(pkt), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("outer header (-want +got):\n%s", diff)
			}
			if got := binary.BigEndian.Uint16(pkt[46:48]); got == 0 {
				t.Error("UDP checksum 0, which IPv6 forbids")
			}
			if got := upper6Sum(pkt) == 0xffff; got != tt.wantValid {
				t.Errorf("outer UDP checksum %#04x verifies: %v, want %v", binary.BigEndian.Uint16(pkt[46:48]), got, tt.wantValid)
			}
		})
	}
}

// TestEncapsulate6ChecksumZero: a datagram whose checksum computes to 0
// carries 0xffff instead (RFC 768; 0 would mean "no checksum", which IPv6
// forbids). The inner packet's last two bytes are searched for one such
// datagram.
func TestEncapsulate6ChecksumZero(t *testing.T) {
	o := newOuter6(t)
	// Another protocol: Encapsulate sums every byte, so the search is over
	// the real sum, not over a derived one.
	inner := mutate(innerV4UDP(t, 100), func(p []byte) { p[9] = 47; fixChecksum(p) })
	pkt := withRoom(encap.HeaderLen6, inner)
	for v := range 1 << 16 {
		binary.BigEndian.PutUint16(pkt[len(pkt)-2:], uint16(v))
		if err := o.Encapsulate(pkt, flowHash); err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint16(pkt[46:48]) == 0xffff {
			if upper6Sum(pkt) != 0xffff {
				t.Fatalf("checksum 0xffff does not verify")
			}
			return
		}
		if binary.BigEndian.Uint16(pkt[46:48]) == 0 {
			t.Fatalf("checksum 0 with last word %#04x", v)
		}
	}
	t.Fatal("no datagram with a checksum that computes to 0 found")
}

func TestEncapsulate6Errors(t *testing.T) {
	tests := []struct {
		name string
		pkt  []byte
		want error
	}{
		{name: "headroom only", pkt: make([]byte, encap.HeaderLen6), want: encap.ErrInnerEmpty},
		{name: "too long", pkt: withRoom(encap.HeaderLen6, innerPacket(t, vip6, &layers.UDP{}, 65535-8-40-8+1)), want: encap.ErrTooLong},
		{name: "version 0", pkt: withRoom(encap.HeaderLen6, make([]byte, 60)), want: encap.ErrInnerVersion},
		{name: "v4 shorter than 20", pkt: withRoom(encap.HeaderLen6, innerV4(t, vip4, true, false, 0)[:19]), want: encap.ErrInnerShort},
		{name: "v6 shorter than 40", pkt: withRoom(encap.HeaderLen6, innerV6(t, vip6, 0)[:39]), want: encap.ErrInnerShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOuter6(t)
			before := append([]byte(nil), tt.pkt...)
			if err := o.Encapsulate(tt.pkt, flowHash); !errors.Is(err, tt.want) {
				t.Fatalf("Encapsulate error = %v, want %v", err, tt.want)
			}
			if !bytes.Equal(tt.pkt, before) {
				t.Error("Encapsulate changed the packet although it failed")
			}
		})
	}
}

// TestFlowLabel: 20 bits, never 0, stable, and spread like the source port.
func TestFlowLabel(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	hashes := []uint64{0, 1, 1 << 63, ^uint64(0)}
	for range 100000 {
		hashes = append(hashes, rng.Uint64())
	}
	for _, h := range hashes {
		l := encap.FlowLabel(h)
		if l == 0 || l > 0xfffff {
			t.Fatalf("FlowLabel(%#x) = %#x, want 1 to 0xfffff", h, l)
		}
		if again := encap.FlowLabel(h); again != l {
			t.Fatalf("FlowLabel(%#x) = %#x, then %#x", h, l, again)
		}
	}
	const n, buckets = 10000, 256
	var count [buckets]int
	for i := range n {
		count[encap.FlowLabel(uint64(i))*buckets>>20]++
	}
	var chi2 float64
	for _, c := range count {
		d := float64(c) - float64(n)/buckets
		chi2 += d * d / (float64(n) / buckets)
	}
	if chi2 > 330.5 {
		t.Errorf("sequential hashes: chi-square = %.1f over %d buckets, want ≤ 330.5", chi2, buckets)
	}
}

// BenchmarkEncapsulate6 measures an IPv6 outer against an IPv4 outer in the
// same run, for a 1400-byte inner TCP segment: x-ipv4 is the IPv6 time as a
// multiple of the IPv4 time just before it. The IPv6 outer's UDP checksum
// is derived from the inner TCP checksum; the full-pass case (an inner
// fragment, whose sum must be read) is reported beside it, against the same
// IPv4 time.
func BenchmarkEncapsulate6(b *testing.B) {
	tcp := innerPacket(b, vip4, &layers.TCP{SrcPort: 40000, DstPort: 80, ACK: true, Window: 501}, 1400-40)
	frag := mutate(tcp, func(p []byte) { p[6] |= 0x20; fixChecksum(p) })
	var base float64
	b.Run("1400B-TCP/ipv4-outer", func(b *testing.B) {
		o := newOuter(b)
		pkt := withHeadroom(tcp)
		b.SetBytes(int64(len(tcp)))
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := o.Encapsulate(pkt, uint64(i)); err != nil {
				b.Fatal(err)
			}
		}
		base = nsPerOp(b)
	})
	for _, c := range []struct {
		name  string
		inner []byte
	}{{"1400B-TCP/ipv6-outer", tcp}, {"1400B-fragment/ipv6-outer-full-pass", frag}} {
		b.Run(c.name, func(b *testing.B) {
			o := newOuter6(b)
			pkt := withRoom(encap.HeaderLen6, c.inner)
			b.SetBytes(int64(len(c.inner)))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := o.Encapsulate(pkt, uint64(i)); err != nil {
					b.Fatal(err)
				}
			}
			reportRatio(b, base, "x-ipv4")
		})
	}
}
