package flow_test

import (
	"encoding/binary"
	"hash/maphash"
	"testing"

	"github.com/caplance/caplance/internal/flow"
)

// benchPackets are the shapes the data path sees most, plus the costly ones.
var benchPackets = []struct {
	name string
	pkt  []byte
}{
	{"tcp4", tcp4},
	{"udp6", v6(pUDP, client6, vip6, cat(udp(5353, 53), make([]byte, 64)))},
	{"icmp4-error", v4(pICMP, router4, vip4, icmpErr(3, 4, quoteOf(reply4)))},
	{"ipv6-ext-chain", v6(pHopByHop, client6, vip6, cat(ext(pRouting, 24), ext(pAH, 16), ah(pDestOpts, 24), ext(pTCP, 8), tcp(1234, 80)))},
	{"fragment", v4frag(pUDP, client4, vip4, 185, true, make([]byte, 64))},
}

// TestZeroAllocs: Parse and Hash run per packet and must not allocate, on
// success or on error.
func TestZeroAllocs(t *testing.T) {
	cases := append([]struct {
		name string
		pkt  []byte
	}{
		{"error", set16(tcp4, 2, 41)},
		{"icmp-nested-error", v6(pICMPv6, router6, vip6, icmpErr(1, 0, v6(pICMPv6, vip6, client6, icmpErr(2, 0, reply6))))},
	}, benchPackets...)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var sink uint64
			allocs := testing.AllocsPerRun(100, func() {
				k, _, err := flow.Parse(c.pkt)
				if err != nil {
					sink++
				}
				sink += k.Hash()
			})
			if allocs != 0 {
				t.Errorf("Parse and Hash allocate %v times per packet, want 0", allocs)
			}
			_ = sink
		})
	}
}

// BenchmarkParse measures Parse on each of benchPackets, and in the same run as
// the baseline gopacketKeyer getting the same key: each result reports
// x-gopacket, its time as a multiple of the gopacket run just before it.
func BenchmarkParse(b *testing.B) {
	g := newGopacketKeyer()
	for _, bp := range benchPackets {
		var base float64 // ns/op of gopacket
		b.Run("gopacket/"+bp.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bp.pkt)))
			for b.Loop() {
				if _, err := g.key(bp.pkt); err != nil {
					b.Fatal(err)
				}
			}
			base = nsPerOp(b)
		})
		b.Run(bp.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bp.pkt)))
			for b.Loop() {
				if _, _, err := flow.Parse(bp.pkt); err != nil {
					b.Fatal(err)
				}
			}
			reportRatio(b, base, "x-gopacket")
		})
	}
}

// BenchmarkHash measures Hash, and in the same run as the baseline
// hash/maphash over the same 37-byte layout: Key.Hash reports x-maphash, its
// time as a multiple of the maphash run just before it.
func BenchmarkHash(b *testing.B) {
	var base float64 // ns/op of maphash
	b.Run("maphash", func(b *testing.B) {
		seed := maphash.MakeSeed()
		k := flowTCP6
		b.ReportAllocs()
		var sink uint64
		for b.Loop() {
			l := layout(k)
			sink += maphash.Bytes(seed, l[:])
			k.SrcPort++
		}
		_ = sink
		base = nsPerOp(b)
	})
	b.Run("Key.Hash", func(b *testing.B) {
		k := flowTCP6
		b.ReportAllocs()
		var sink uint64
		for b.Loop() {
			sink += k.Hash()
			k.SrcPort++
		}
		_ = sink
		reportRatio(b, base, "x-maphash")
	})
}

// layout is k's 37-byte layout Src ‖ Dst ‖ SrcPort ‖ DstPort ‖ Proto, ports
// big-endian, which Hash hashes.
func layout(k flow.Key) [37]byte {
	var l [37]byte
	copy(l[0:16], k.Src[:])
	copy(l[16:32], k.Dst[:])
	binary.BigEndian.PutUint16(l[32:34], k.SrcPort)
	binary.BigEndian.PutUint16(l[34:36], k.DstPort)
	l[36] = k.Proto
	return l
}
