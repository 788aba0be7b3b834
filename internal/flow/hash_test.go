package flow_test

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"testing"

	"github.com/caplance/caplance/internal/flow"
	"github.com/google/go-cmp/cmp"
)

// TestHashGolden pins Hash. The values are XXH64 with seed 0 of each key's
// 37-byte layout, computed with the reference C library (libxxhash 0.8.1),
// not with this package. A change here moves every flow of every balancer
// at the upgrade: it must never happen by accident.
func TestHashGolden(t *testing.T) {
	ones := [16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	tests := []struct {
		key  flow.Key
		want uint64
	}{
		{flow.Key{}, 0x4a4623374a95327f},
		{key(pTCP, client4, 1234, vip4, 80), 0xc1c4b6976fd514ba},
		{key(pTCP, vip4, 80, client4, 1234), 0x50002806323600a3},
		{key(pUDP, client6, 53000, vip6, 53), 0xe7915f3449dcc20f},
		{key(pICMP, client4, 7, vip4, 7), 0x2a2cc72964b45d1e},
		{key(pUDP, "192.0.2.1", 0, "198.51.100.7", 0), 0x53e750f9936f13fb},
		{flow.Key{Src: ones, Dst: ones, SrcPort: 0xffff, DstPort: 0xffff, Proto: 0xff}, 0x467c399c4ae58f3d},
		{key(pSCTP, "fe80::1", 5000, "fe80::2", 6000), 0x0c88f236427e39e0},
	}
	for _, tt := range tests {
		t.Run(tt.key.String(), func(t *testing.T) {
			if diff := cmp.Diff(fmt.Sprintf("%#016x", tt.want), fmt.Sprintf("%#016x", tt.key.Hash())); diff != "" {
				t.Errorf("Hash changed (-want +got):\n%s", diff)
			}
		})
	}
}

// chiSquare returns Pearson's statistic for counts against a uniform spread.
func chiSquare(counts []int, n int) float64 {
	e := float64(n) / float64(len(counts))
	var x float64
	for _, c := range counts {
		d := float64(c) - e
		x += d * d / e
	}
	return x
}

// TestHashDistribution checks that hash mod the table size spreads flows
// evenly, which is what Maglev's lookup depends on. The bound is the
// statistic's mean (the degrees of freedom, k-1) plus six standard
// deviations; a count of e per bucket has variance 2+1/e per bucket. The
// inputs are fixed, so the test is deterministic.
func TestHashDistribution(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	sourcePorts := make([]flow.Key, 0, 1<<16)
	for p := range 1 << 16 {
		sourcePorts = append(sourcePorts, key(pTCP, client4, uint16(p), vip4, 443))
	}
	sourcePorts6 := make([]flow.Key, 0, 1<<16)
	for p := range 1 << 16 {
		sourcePorts6 = append(sourcePorts6, key(pTCP, client6, uint16(p), vip6, 443))
	}
	random := make([]flow.Key, 100_000)
	for i := range random {
		k := key(pTCP, client4, uint16(r.Uint32()), vip4, 443)
		k.Src[12], k.Src[13], k.Src[14], k.Src[15] = byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())
		random[i] = k
	}
	sets := []struct {
		name string
		keys []flow.Key
	}{
		{"v4 source ports", sourcePorts},
		{"v6 source ports", sourcePorts6},
		{"random v4 sources and ports", random},
	}
	for _, s := range sets {
		for _, m := range []int{3, 256, 65537} {
			t.Run(fmt.Sprintf("%s mod %d", s.name, m), func(t *testing.T) {
				counts := make([]int, m)
				for _, k := range s.keys {
					counts[k.Hash()%uint64(m)]++
				}
				e := float64(len(s.keys)) / float64(m)
				df := float64(m - 1)
				limit := df + 6*math.Sqrt(df*(2+1/e))
				if x := chiSquare(counts, len(s.keys)); x > limit {
					t.Errorf("chi-square %.1f over %d buckets, want at most %.1f", x, m, limit)
				}
				if m == 3 {
					for b, c := range counts {
						if math.Abs(float64(c)-e) > 0.05*e {
							t.Errorf("bucket %d holds %d, more than 5%% off %.0f", b, c, e)
						}
					}
				}
			})
		}
	}
}

// TestHashAvalanche checks that flipping any one input bit flips each output
// bit with probability close to 1/2, so that flows differing in one port bit
// or one address bit land on unrelated backends.
func TestHashAvalanche(t *testing.T) {
	const samples = 2000
	r := rand.New(rand.NewPCG(3, 4))
	const inputBits = (16 + 16 + 2 + 2 + 1) * 8
	var flips [inputBits][64]int
	for range samples {
		var k flow.Key
		for i := range k.Src {
			k.Src[i], k.Dst[i] = byte(r.Uint32()), byte(r.Uint32())
		}
		k.SrcPort, k.DstPort, k.Proto = uint16(r.Uint32()), uint16(r.Uint32()), uint8(r.Uint32())
		h := k.Hash()
		for bit := range inputBits {
			f := flipBit(k, bit)
			d := h ^ f.Hash()
			for d != 0 {
				flips[bit][bits.TrailingZeros64(d)]++
				d &= d - 1
			}
		}
	}
	// With 2000 samples a fair bit has a standard deviation of 1.1%; allow 7%.
	for in := range inputBits {
		for out := range 64 {
			if p := float64(flips[in][out]) / samples; math.Abs(p-0.5) > 0.07 {
				t.Errorf("input bit %d flips output bit %d with probability %.3f", in, out, p)
			}
		}
	}
}

// flipBit flips bit i of k's 37-byte layout Src ‖ Dst ‖ SrcPort ‖ DstPort ‖ Proto.
func flipBit(k flow.Key, i int) flow.Key {
	switch b := i / 8; {
	case b < 16:
		k.Src[b] ^= 1 << (i % 8)
	case b < 32:
		k.Dst[b-16] ^= 1 << (i % 8)
	case b < 34:
		k.SrcPort ^= 1 << (i - 32*8)
	case b < 36:
		k.DstPort ^= 1 << (i - 34*8)
	default:
		k.Proto ^= 1 << (i - 36*8)
	}
	return k
}
