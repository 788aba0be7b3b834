package conntrack

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/caplance/caplance/internal/flow"
)

// Protocol numbers the tests use.
const (
	pICMP    = 1
	pTCP     = 6
	pUDP     = 17
	pICMPv6  = 58
	pSCTP    = 132
	pUDPLite = 136
)

// testTimeouts are short enough to count in nanoseconds by hand.
var testTimeouts = Timeouts{TCP: 100, UDP: 50, Other: 20, TCPClosing: 30}

// timeoutOf returns the timeout of protocol proto in to, or the closing
// TCP timeout.
func timeoutOf(to Timeouts, proto uint8, closing bool) int64 {
	switch {
	case closing:
		return int64(to.TCPClosing)
	case proto == pTCP:
		return int64(to.TCP)
	case proto == pUDP, proto == pUDPLite:
		return int64(to.UDP)
	}
	return int64(to.Other)
}

// key returns a distinct flow key for each n: client 10.x.y.z:port to
// 192.0.2.1:80 over proto.
func key(n int, proto uint8) flow.Key {
	k := flow.Key{SrcPort: uint16(1024 + n%50000), DstPort: 80, Proto: proto}
	copy(k.Src[:], []byte{10: 0xff, 11: 0xff, 12: 10})
	copy(k.Dst[:], []byte{10: 0xff, 11: 0xff, 12: 192, 13: 0, 14: 2, 15: 1})
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(n))
	copy(k.Src[13:], b[1:])
	return k
}

// mustNew is newTable that fails the test on error.
func mustNew(tb testing.TB, capacity, shards int, to Timeouts) *Table {
	tb.Helper()
	tbl, err := newTable(capacity, shards, to)
	if err != nil {
		tb.Fatal(err)
	}
	return tbl
}

// rec is one entry as the tests see it.
type rec struct {
	Key     flow.Key
	ID      uint32
	Last    int64
	Closing bool
}

// dump returns every entry of tbl, most recently used first (by time, then
// key, so equal times give a stable order).
func dump(tbl *Table) []rec {
	var out []rec
	for si := range tbl.shards {
		s := &tbl.shards[si].shardState
		s.mu.Lock()
		for c := range uint32(numClasses) {
			for i := s.entries[c].next; i != c; i = s.entries[i].next {
				e := &s.entries[i]
				out = append(out, rec{e.key, e.id, e.last, e.class == classClosing})
			}
		}
		s.mu.Unlock()
	}
	slices.SortStableFunc(out, func(a, b rec) int {
		return cmp.Or(cmp.Compare(b.Last, a.Last), bytes.Compare(a.Key.Src[:], b.Key.Src[:]),
			cmp.Compare(a.Key.SrcPort, b.Key.SrcPort), cmp.Compare(a.Key.Proto, b.Key.Proto))
	})
	return out
}

// check verifies the structure of every shard: lists doubly linked and of
// the right class, counts, free list, and an index in which every entry is
// found from its home slot and nothing else is.
func check(tb testing.TB, tbl *Table) {
	tb.Helper()
	total := 0
	for si := range tbl.shards {
		s := &tbl.shards[si].shardState
		s.mu.Lock()
		capacity := len(s.entries) - numClasses
		total += capacity
		inList := 0
		for c := range uint32(numClasses) {
			prev := c
			for i := s.entries[c].next; i != c; i = s.entries[i].next {
				e := &s.entries[i]
				if e.prev != prev {
					tb.Errorf("shard %d: entry %d: prev %d, want %d", si, i, e.prev, prev)
				}
				if want := class(e.key.Proto, 0); uint32(e.class) != c || (e.class != want && (want != classTCP || e.class != classClosing)) {
					tb.Errorf("shard %d: entry %d (%v) of class %d in list %d, want class %d (or closing for TCP)", si, i, e.key, e.class, c, want)
				}
				h := tbl.keyHash(&e.key)
				if e.tag != uint32(h) || int(h>>tbl.shift) != si {
					tb.Errorf("shard %d: entry %d (%v): tag %#x / shard of hash %#x", si, i, e.key, e.tag, h)
				}
				if _, j := s.find(&e.key, e.tag); j != i {
					tb.Errorf("shard %d: entry %d (%v): find gives %d", si, i, e.key, j)
				}
				prev = i
				inList++
				if inList > capacity {
					tb.Fatalf("shard %d: list %d does not end", si, c)
				}
			}
			if s.entries[c].prev != prev {
				tb.Errorf("shard %d: list %d: tail %d, want %d", si, c, s.entries[c].prev, prev)
			}
		}
		free := 0
		for i := s.free; i != none; i = s.entries[i].next {
			free++
			if free > capacity {
				tb.Fatalf("shard %d: free list does not end", si)
			}
		}
		used := 0
		for _, v := range s.slots {
			if v != 0 {
				used++
			}
		}
		if inList != s.n || used != s.n || free != capacity-s.n {
			tb.Errorf("shard %d: n %d, in lists %d, in index %d, free %d of %d", si, s.n, inList, used, free, capacity)
		}
		if 2*s.n > len(s.slots) {
			tb.Errorf("shard %d: %d entries in %d slots", si, s.n, len(s.slots))
		}
		s.mu.Unlock()
	}
	if total != tbl.Cap() {
		tb.Errorf("shards hold %d, Cap() = %d", total, tbl.Cap())
	}
}
