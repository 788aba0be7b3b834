package conntrack

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caplance/caplance/internal/flow"
)

// lockedMap is the baseline the benchmarks compare against: one mutex over
// one Go map, without LRU order, timeouts or validity, bounded (for Insert)
// by forgetting flows in insertion order. It is the simplest table a worker
// could share, and a floor for what the LRU and the timeouts cost.
type lockedMap struct {
	mu   sync.Mutex
	m    map[flow.Key]uint32
	ring []flow.Key // insertion order, to bound the map
	next int
}

func newLockedMap(capacity int) *lockedMap {
	return &lockedMap{m: make(map[flow.Key]uint32, capacity), ring: make([]flow.Key, capacity)}
}

func (l *lockedMap) lookup(k flow.Key) (uint32, bool) {
	l.mu.Lock()
	id, ok := l.m[k]
	l.mu.Unlock()
	return id, ok
}

func (l *lockedMap) insert(k flow.Key, id uint32) {
	l.mu.Lock()
	if _, ok := l.m[k]; !ok {
		if len(l.m) == len(l.ring) {
			delete(l.m, l.ring[l.next])
		}
		l.ring[l.next] = k
		l.next = (l.next + 1) % len(l.ring)
	}
	l.m[k] = id
	l.mu.Unlock()
}

// benchFlows is the working set of the lookup benchmarks: more than fits in
// this machine's caches, as a busy balancer's table is.
const benchFlows = 1 << 18

// benchKeys returns n random IPv4 TCP flows to one VIP.
func benchKeys(n int) []flow.Key {
	rng := rand.New(rand.NewPCG(1, 2))
	keys := make([]flow.Key, n)
	for i := range keys {
		k := flow.Key{SrcPort: uint16(rng.Uint32()), DstPort: 443, Proto: pTCP}
		copy(k.Src[10:], []byte{0xff, 0xff})
		binary.BigEndian.PutUint32(k.Src[12:], rng.Uint32())
		copy(k.Dst[10:], []byte{0xff, 0xff, 192, 0, 2, 1})
		keys[i] = k
	}
	return keys
}

// benchValid is a valid function as the daemon builds one: once, over a
// backend state table indexed by ID.
func benchValid() func(uint32) bool {
	up := make([]bool, 16)
	for i := range up {
		up[i] = true
	}
	return func(id uint32) bool { return int(id) < len(up) && up[id] }
}

var sinkID uint32

// BenchmarkLookup measures Lookup of a present flow (hit), of one of 1024
// present flows that stay in the CPU caches (hit-cached), and of an absent
// flow (miss) in a default table holding benchFlows flows, and in the same run
// the baseline lockedMap: each conntrack result reports x-baseline, its time
// as a multiple of the baseline sub-benchmark run just before it.
func BenchmarkLookup(b *testing.B) {
	keys := benchKeys(2 * benchFlows) // the second half is never inserted
	tbl, err := New(DefaultCapacity, DefaultTimeouts)
	if err != nil {
		b.Fatal(err)
	}
	base := newLockedMap(benchFlows)
	for i, k := range keys[:benchFlows] {
		tbl.Insert(k, uint32(i%16), 0, 0)
		base.insert(k, uint32(i%16))
	}
	valid := benchValid()
	for _, c := range []struct {
		name string
		keys []flow.Key
	}{{"hit", keys[:benchFlows]}, {"hit-cached", keys[:1024]}, {"miss", keys[benchFlows:]}} {
		var baseNs float64
		b.Run("baseline/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			i, ops := 0, 0
			for b.Loop() {
				id, _ := base.lookup(c.keys[i])
				sinkID += id
				i = (i + 1) % len(c.keys)
				ops++
			}
			baseNs = float64(b.Elapsed().Nanoseconds()) / float64(ops)
		})
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			i, ops := 0, 0
			for b.Loop() {
				id, _ := tbl.Lookup(c.keys[i], 0, 1, valid)
				sinkID += id
				i = (i + 1) % len(c.keys)
				ops++
			}
			if baseNs > 0 {
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(ops)/baseNs, "x-baseline")
			}
		})
	}
}

// BenchmarkInsert measures Insert of a new flow into a full table, which
// evicts the least recently used flow, and in the same run the baseline
// lockedMap forgetting its oldest flow.
func BenchmarkInsert(b *testing.B) {
	const capacity = benchFlows
	keys := benchKeys(4 * capacity)
	var baseNs float64
	b.Run("baseline/evict", func(b *testing.B) {
		base := newLockedMap(capacity)
		b.ReportAllocs()
		i, ops := 0, 0
		for b.Loop() {
			base.insert(keys[i], 1)
			i = (i + 1) % len(keys)
			ops++
		}
		baseNs = float64(b.Elapsed().Nanoseconds()) / float64(ops)
	})
	b.Run("evict", func(b *testing.B) {
		tbl, err := New(capacity, DefaultTimeouts)
		if err != nil {
			b.Fatal(err)
		}
		for i := range capacity { // full before timing
			tbl.Insert(keys[len(keys)-1-i], 1, 0, 0)
		}
		b.ReportAllocs()
		i, ops := 0, 0
		for b.Loop() {
			tbl.Insert(keys[i], 1, 0, int64(ops))
			i = (i + 1) % len(keys)
			ops++
		}
		if baseNs > 0 {
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(ops)/baseNs, "x-baseline")
		}
		if tbl.Evictions() == 0 {
			b.Errorf("no evictions")
		}
	})
}

// BenchmarkLookupParallel measures Lookup hits from GOMAXPROCS goroutines at
// once, as the workers do, and in the same run the baseline, whose single
// mutex they all contend for.
func BenchmarkLookupParallel(b *testing.B) {
	keys := benchKeys(benchFlows)
	tbl, err := New(DefaultCapacity, DefaultTimeouts)
	if err != nil {
		b.Fatal(err)
	}
	base := newLockedMap(benchFlows)
	for i, k := range keys {
		tbl.Insert(k, uint32(i%16), 0, 0)
		base.insert(k, uint32(i%16))
	}
	valid := benchValid()
	var worker atomic.Uint64
	parallel := func(b *testing.B, lookup func(flow.Key) uint32) float64 {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			// Each goroutine walks the flows from its own random start.
			i := rand.New(rand.NewPCG(worker.Add(1), 3)).IntN(len(keys))
			var sink uint32
			for pb.Next() {
				sink += lookup(keys[i])
				i = (i + 1) % len(keys)
			}
			_ = sink
		})
		return float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	}
	var baseNs float64
	b.Run("baseline/hit", func(b *testing.B) {
		baseNs = parallel(b, func(k flow.Key) uint32 { id, _ := base.lookup(k); return id })
	})
	b.Run("hit", func(b *testing.B) {
		ns := parallel(b, func(k flow.Key) uint32 { id, _ := tbl.Lookup(k, 0, 1, valid); return id })
		if baseNs > 0 {
			b.ReportMetric(ns/baseNs, "x-baseline")
		}
	})
}
