package conntrack

import (
	"runtime"
	"testing"

	"github.com/caplance/caplance/internal/flow"
)

// TestZeroAllocs: Lookup and Insert run per packet and must not allocate,
// whatever they do, with a valid function built once by the caller.
func TestZeroAllocs(t *testing.T) {
	const capacity = 64
	up := make([]bool, 8)
	for i := range up {
		up[i] = i != 3
	}
	valid := func(id uint32) bool { return int(id) < len(up) && up[id] }

	tbl := mustNew(t, capacity, 1, testTimeouts)
	for i := range capacity {
		tbl.Insert(key(i, pTCP), uint32(i%8), 0, 0)
	}
	next := capacity // the next fresh flow
	fresh := func() flow.Key { next++; return key(next, pTCP) }
	var now int64 = 1
	cases := []struct {
		name string
		f    func()
	}{
		{"Lookup hit", func() { tbl.Lookup(key(0, pTCP), 0, now, valid) }},
		{"Lookup miss", func() { tbl.Lookup(key(1<<20, pTCP), 0, now, valid) }},
		{"Lookup invalid backend", func() {
			k := fresh()
			tbl.Insert(k, 3, 0, now)
			tbl.Lookup(k, 0, now, valid)
		}},
		{"Lookup expired", func() {
			k := fresh()
			tbl.Insert(k, 1, 0, now)
			tbl.Lookup(k, 0, now+1000, valid)
		}},
		{"Lookup FIN: to closing", func() { tbl.Lookup(key(1, pTCP), flow.FIN|flow.ACK, now, valid) }},
		{"Lookup SYN on closing", func() {
			k := fresh()
			tbl.Insert(k, 1, flow.RST, now)
			tbl.Lookup(k, flow.SYN, now, valid)
		}},
		{"Insert overwrite", func() { tbl.Insert(key(0, pTCP), 2, 0, now) }},
		{"Insert with eviction", func() { now++; tbl.Insert(fresh(), 1, 0, now) }},
		{"Sweep", func() { now += 50; tbl.Sweep(now) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if allocs := testing.AllocsPerRun(1000, c.f); allocs != 0 {
				t.Errorf("%v allocations per call, want 0", allocs)
			}
		})
	}
	// A long churn at the default shard size, where a Go map as the index
	// would now and then grow to shed its tombstones.
	t.Run("Insert churn", func(t *testing.T) {
		tbl := mustNew(t, DefaultCapacity/Shards, 1, DefaultTimeouts)
		var k flow.Key
		churn := func() {
			for i := range 100_000 {
				k.SrcPort, k.DstPort = uint16(i), uint16(i>>16)
				tbl.Insert(k, 1, 0, 0)
			}
		}
		churn()
		if allocs := testing.AllocsPerRun(1, churn); allocs != 0 {
			t.Errorf("%v allocations in 100000 inserts, want 0", allocs)
		}
	})
	check(t, tbl)
	if tbl.Evictions() == 0 {
		t.Errorf("no evictions: the test misses a case")
	}
}

// TestMemory: a default table takes the memory DefaultCapacity documents:
// EntryBytes plus 16 bytes of index per entry.
func TestMemory(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tbl, err := New(DefaultCapacity, DefaultTimeouts)
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perEntry := float64(after.HeapAlloc-before.HeapAlloc) / DefaultCapacity
	t.Logf("%d bytes, %.2f per entry", after.HeapAlloc-before.HeapAlloc, perEntry)
	if want := float64(EntryBytes + 16); perEntry < want || perEntry > want+0.5 {
		t.Errorf("%.2f bytes per entry, want about %v", perEntry, want)
	}
	if EntryBytes != 64 {
		t.Errorf("EntryBytes = %d, want 64 (one cache line)", EntryBytes)
	}
	runtime.KeepAlive(tbl)
}
