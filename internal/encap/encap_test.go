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
		name    string
		inner   []byte
		srcPort uint16
		wantDF  bool
	}{
		{name: "v4 inner with DF", inner: v4, srcPort: 50000, wantDF: true},
		{name: "v4 inner without DF", inner: innerV4(t, vip4, false, false, 100), srcPort: 65535, wantDF: false},
		{name: "v4 inner with IP options", inner: innerV4(t, vip4, true, true, 10), srcPort: 49152, wantDF: true},
		{name: "v6 inner sets DF", inner: innerV6(t, vip6, 100), srcPort: 51234, wantDF: true},
		{name: "60000-byte v4 inner", inner: innerV4UDP(t, 60000), srcPort: 60001, wantDF: false},
		{name: "largest inner", inner: innerV4UDP(t, 65535-encap.HeaderLen), srcPort: 50000, wantDF: false},
		{name: "inner length field ignored", inner: lying, srcPort: 50000, wantDF: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOuter(t)
			// Spare capacity behind the packet, filled with a canary, shows
			// Encapsulate writes nothing past len(pkt).
			const spare = 64
			buf := make([]byte, encap.HeaderLen+len(tt.inner)+spare)
			for i := range buf {
				buf[i] = 0xa5
			}
			pkt := buf[:encap.HeaderLen+len(tt.inner)]
			copy(pkt[encap.HeaderLen:], tt.inner)

			if err := o.Encapsulate(pkt, tt.srcPort); err != nil {
				t.Fatalf("Encapsulate: %v", err)
			}

			if !bytes.Equal(pkt[encap.HeaderLen:], tt.inner) {
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
				SrcPort: layers.UDPPort(tt.srcPort), DstPort: layers.UDPPort(encapPort),
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
			if &udp.Payload[0] != &pkt[encap.HeaderLen] {
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
		{name: "shorter than the headroom", pkt: make([]byte, encap.HeaderLen-1), want: encap.ErrInnerEmpty},
		{name: "headroom only", pkt: make([]byte, encap.HeaderLen), want: encap.ErrInnerEmpty},
		{name: "too long", pkt: withHeadroom(innerV4UDP(t, 65535-encap.HeaderLen+1)), want: encap.ErrTooLong},
		{name: "version 0", pkt: withHeadroom(make([]byte, 60)), want: encap.ErrInnerVersion},
		{name: "version 5", pkt: withHeadroom(mutate(innerV4(t, vip4, true, false, 0), func(p []byte) { p[0] = 0x55 })), want: encap.ErrInnerVersion},
		{name: "v4 shorter than 20", pkt: withHeadroom(innerV4(t, vip4, true, false, 0)[:19]), want: encap.ErrInnerShort},
		{name: "v6 shorter than 40", pkt: withHeadroom(innerV6(t, vip6, 0)[:39]), want: encap.ErrInnerShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOuter(t)
			before := append([]byte(nil), tt.pkt...)
			err := o.Encapsulate(tt.pkt, srcPort)
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
	}{
		{name: "ok", src: balancer, dst: backend, port: encapPort},
		{name: "IPv4-mapped addresses are IPv4", src: netip.AddrFrom16(balancer.As16()), dst: netip.AddrFrom16(backend.As16()), port: encapPort},
		{name: "IPv6 source", src: balancer6, dst: backend, port: encapPort, want: encap.ErrNotIPv4},
		{name: "IPv6 destination", src: balancer, dst: vip6, port: encapPort, want: encap.ErrNotIPv4},
		{name: "zero source", src: netip.Addr{}, dst: backend, port: encapPort, want: encap.ErrInvalidAddr},
		{name: "unspecified destination", src: balancer, dst: netip.IPv4Unspecified(), port: encapPort, want: encap.ErrInvalidAddr},
		{name: "zero port", src: balancer, dst: backend, port: 0, want: encap.ErrZeroPort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := encap.NewOuter(tt.src, tt.dst, tt.port)
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewOuter error = %v, want %v", err, tt.want)
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
	} {
		t.Run(name, func(t *testing.T) {
			pkt := encapsulated(t, inner)
			got, r := d.Packet(pkt, hostAddrs)
			if r != encap.Accept {
				t.Fatalf("Packet rejected: %v", r)
			}
			if !bytes.Equal(got, inner) {
				t.Errorf("Packet returned %d bytes, not the inner packet of %d", len(got), len(inner))
			}
			if &got[0] != &pkt[encap.HeaderLen] {
				t.Error("Packet copied the inner packet")
			}
		})
	}
}

func TestEncapsulateAllocs(t *testing.T) {
	o := newOuter(t)
	pkt := withHeadroom(innerV4(t, vip4, true, false, 1000))
	if n := testing.AllocsPerRun(100, func() {
		if err := o.Encapsulate(pkt, srcPort); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Encapsulate: %v allocs per run, want 0", n)
	}
	bad := withHeadroom([]byte{0x50})
	if n := testing.AllocsPerRun(100, func() {
		if err := o.Encapsulate(bad, srcPort); err == nil {
			t.Fatal("no error")
		}
	}); n != 0 {
		t.Errorf("Encapsulate error path: %v allocs per run, want 0", n)
	}
	var h uint64
	if n := testing.AllocsPerRun(100, func() {
		h++
		_ = encap.SourcePort(h)
	}); n != 0 {
		t.Errorf("SourcePort: %v allocs per run, want 0", n)
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
				out := make([]byte, encap.HeaderLen+len(inner))
				out[0], out[8], out[9] = 0x45, 64, 17
				binary.BigEndian.PutUint16(out[2:], uint16(len(out)))
				binary.BigEndian.PutUint16(out[6:], binary.BigEndian.Uint16(inner[6:])&0x4000)
				copy(out[12:], src[:])
				copy(out[16:], dst[:])
				binary.BigEndian.PutUint16(out[10:], inet.Checksum(out[:20]))
				binary.BigEndian.PutUint16(out[20:], encap.SourcePort(uint64(i)))
				binary.BigEndian.PutUint16(out[22:], encapPort)
				binary.BigEndian.PutUint16(out[24:], uint16(len(out)-20))
				copy(out[encap.HeaderLen:], inner)
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
				if err := o.Encapsulate(pkt, encap.SourcePort(uint64(i))); err != nil {
					b.Fatal(err)
				}
			}
			reportRatio(b, base, "x-copy")
		})
	}
}
