package conntrack

import (
	"container/list"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/flow"
)

// refTable is the reference the table is checked against: one map and one
// list in order of use, with every rule written the obvious way.
type refTable struct {
	capacity  int
	timeouts  Timeouts
	index     map[flow.Key]*list.Element // of *rec
	order     *list.List                 // front: most recently used
	evictions uint64
}

func newRef(capacity int, to Timeouts) *refTable {
	return &refTable{capacity: capacity, timeouts: to, index: map[flow.Key]*list.Element{}, order: list.New()}
}

func (r *refTable) expired(e *rec, now int64) bool {
	return now-e.Last > timeoutOf(r.timeouts, e.Key.Proto, e.Closing)
}

func (r *refTable) remove(el *list.Element) {
	delete(r.index, el.Value.(*rec).Key)
	r.order.Remove(el)
}

// closes reports whether a packet of key k with flags f ends its connection.
func closes(k flow.Key, f flow.TCPFlags) bool {
	return k.Proto == pTCP && (f&flow.FIN != 0 || f&flow.RST != 0)
}

func (r *refTable) lookup(k flow.Key, f flow.TCPFlags, now int64, valid func(uint32) bool) (uint32, bool) {
	el, ok := r.index[k]
	if !ok {
		return 0, false
	}
	e := el.Value.(*rec)
	reopened := e.Closing && f&flow.SYN != 0 && f&flow.ACK == 0
	if r.expired(e, now) || !valid(e.ID) || reopened {
		r.remove(el)
		return 0, false
	}
	e.Closing = e.Closing || closes(k, f)
	e.Last = now
	r.order.MoveToFront(el)
	return e.ID, true
}

func (r *refTable) insert(k flow.Key, id uint32, f flow.TCPFlags, now int64) {
	if el, ok := r.index[k]; ok {
		e := el.Value.(*rec)
		e.ID, e.Last, e.Closing = id, now, closes(k, f)
		r.order.MoveToFront(el)
		return
	}
	if r.order.Len() == r.capacity {
		// The least recently used expired entry, else the least recently
		// used entry, which counts as an eviction.
		victim := r.order.Back()
		for el := r.order.Back(); el != nil; el = el.Prev() {
			if r.expired(el.Value.(*rec), now) {
				victim = el
				break
			}
		}
		if !r.expired(victim.Value.(*rec), now) {
			r.evictions++
		}
		r.remove(victim)
	}
	r.index[k] = r.order.PushFront(&rec{Key: k, ID: id, Last: now, Closing: closes(k, f)})
}

func (r *refTable) sweep(now int64) int {
	removed := 0
	for el := r.order.Front(); el != nil; {
		next := el.Next()
		if r.expired(el.Value.(*rec), now) {
			r.remove(el)
			removed++
		}
		el = next
	}
	return removed
}

func (r *refTable) dump() []rec {
	var out []rec
	for el := r.order.Front(); el != nil; el = el.Next() {
		out = append(out, *el.Value.(*rec))
	}
	return out
}

// TestModel runs random operations on a one-shard table and on refTable and
// compares every result, Len, Evictions and the entries in order of use.
// Times only increase, and by at least 1 per operation, so that no two uses
// tie (the table may evict tied entries in either order).
func TestModel(t *testing.T) {
	protos := []uint8{pTCP, pTCP, pUDP, pUDPLite, pICMP, pSCTP}
	// A packet's TCP flags; non-TCP packets carry none, but the table
	// must not care.
	flagSets := []flow.TCPFlags{0, flow.ACK, flow.ACK, flow.SYN, flow.SYN | flow.ACK, flow.FIN | flow.ACK, flow.RST, flow.RST | flow.ACK}
	for seed := range uint64(12) {
		capacity := []int{1, 2, 3, 5, 8, 13}[seed%6]
		t.Run(fmt.Sprintf("seed=%d/capacity=%d", seed, capacity), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0xc0ffee))
			tbl := mustNew(t, capacity, 1, testTimeouts)
			ref := newRef(capacity, testTimeouts)
			keys := make([]flow.Key, 3*capacity+2)
			for i := range keys {
				keys[i] = key(i, protos[rng.IntN(len(protos))])
			}
			down := map[uint32]bool{}
			valid := func(id uint32) bool { return !down[id] }
			now := int64(1000)
			for step := range 2000 {
				now += 1 + rng.Int64N(4)
				if rng.IntN(100) == 0 {
					now += rng.Int64N(150)
				}
				k := keys[rng.IntN(len(keys))]
				f := flagSets[rng.IntN(len(flagSets))]
				if k.Proto != pTCP {
					f = 0
				}
				var desc string
				var got, want any
				switch n := rng.IntN(100); {
				case n < 45:
					desc = fmt.Sprintf("Lookup(%v, %#x, %d)", k, f, now)
					id, ok := tbl.Lookup(k, f, now, valid)
					rid, rok := ref.lookup(k, f, now, valid)
					got, want = [2]any{id, ok}, [2]any{rid, rok}
				case n < 90:
					id := uint32(1 + rng.IntN(6))
					desc = fmt.Sprintf("Insert(%v, %d, %#x, %d)", k, id, f, now)
					tbl.Insert(k, id, f, now)
					ref.insert(k, id, f, now)
				case n < 95:
					desc = fmt.Sprintf("Sweep(%d)", now)
					got, want = tbl.Sweep(now), ref.sweep(now)
				default:
					id := uint32(1 + rng.IntN(6))
					down[id] = !down[id]
					desc = fmt.Sprintf("backend %d down: %t", id, down[id])
				}
				// cmp.Diff walks every byte of the keys: call it only to
				// explain a difference.
				if got != want {
					t.Fatalf("step %d: %s (-want +got):\n%s", step, desc, cmp.Diff(want, got))
				}
				if want, got := ref.dump(), dump(tbl); !slices.Equal(want, got) {
					t.Fatalf("step %d: after %s: entries (-want +got):\n%s", step, desc, cmp.Diff(want, got))
				}
				if got, want := tbl.Evictions(), ref.evictions; got != want {
					t.Fatalf("step %d: after %s: Evictions() = %d, want %d", step, desc, got, want)
				}
				if got, want := tbl.Len(), ref.order.Len(); got != want {
					t.Fatalf("step %d: after %s: Len() = %d, want %d", step, desc, got, want)
				}
				check(t, tbl)
			}
			if ref.evictions == 0 {
				t.Errorf("no evictions in %d steps: the test misses a case", 2000)
			}
		})
	}
}
