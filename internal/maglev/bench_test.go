package maglev

import (
	"fmt"
	"testing"
)

// BenchmarkNew measures building a table, and in the same run the paper's plain algorithm
// (plainMaglev) on the same backends as the baseline: each N=…/M=… result reports x-plain, its
// time as a multiple of the plain sub-benchmark run just before it. The paper reports 1.8 ms
// (M = 65537) and 22.9 ms (M = 655373) for N = 1000.
func BenchmarkNew(b *testing.B) {
	for _, n := range []int{100, 1000} {
		for _, m := range []int{DefaultSize, 655373} {
			bs := equal(n, 1)
			names := make([]string, n)
			for i, be := range bs {
				names[i] = be.Name
			}
			var plain float64 // ns/op of the baseline
			b.Run(fmt.Sprintf("plain/N=%d/M=%d", n, m), func(b *testing.B) {
				b.ReportAllocs()
				ops := 0
				for b.Loop() {
					plainMaglev(names, m)
					ops++
				}
				plain = float64(b.Elapsed().Nanoseconds()) / float64(ops)
			})
			run := func(name string, bs []Backend) {
				b.Run(name, func(b *testing.B) {
					b.ReportAllocs()
					ops := 0
					for b.Loop() {
						if _, err := New(bs, m); err != nil {
							b.Fatal(err)
						}
						ops++
					}
					if plain > 0 {
						b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(ops)/plain, "x-plain")
					}
				})
			}
			run(fmt.Sprintf("N=%d/M=%d", n, m), bs)
			wbs := equal(n, 0)
			for i := range wbs {
				wbs[i].Weight = uint32(i%10 + 1)
			}
			run(fmt.Sprintf("N=%d/M=%d/weights=1..10", n, m), wbs)
		}
	}
}

var sink int

func BenchmarkLookup(b *testing.B) {
	tbl := mustNew(b, equal(1000, 1), DefaultSize)
	b.ReportAllocs()
	h := uint64(1)
	for b.Loop() {
		h = h*6364136223846793005 + 1442695040888963407 // a different flow each time
		sink += tbl.Lookup(h)
	}
}
