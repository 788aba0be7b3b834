package conntrack

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/flow"
)

// TestConcurrent has 8 goroutines look up, insert and sweep overlapping flows
// on a shared clock that every operation moves on (run it with -race), then
// checks that the
// table is whole: within capacity, every shard consistent, and every entry
// found by Lookup with its backend.
func TestConcurrent(t *testing.T) {
	const (
		workers  = 8
		capacity = 4 * Shards
		// Each worker makes opsEach operations; the clock moves by tick at
		// every operation of any worker, not with the wall clock, so that
		// entries expire, shards fill and evict whatever the machine's
		// load (a wall clock let a slow run expire every entry before its
		// shard filled).
		opsEach = 5000
		tick    = time.Microsecond
	)
	// Timeouts a few milliseconds long, so entries expire during the run.
	tbl, err := New(capacity, Timeouts{TCP: 8 * time.Millisecond, UDP: 4 * time.Millisecond, Other: 2 * time.Millisecond,
		TCPClosing: 3 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]flow.Key, 3*capacity) // more flows than room: evictions too
	for i := range keys {
		keys[i] = key(i, []uint8{pTCP, pUDP, pICMP}[i%3])
	}
	var down [8]atomic.Bool // backends 0..7
	valid := func(id uint32) bool { return !down[id%8].Load() }
	var ops atomic.Int64
	clock := func() int64 { return ops.Add(1) * int64(tick) }

	var (
		wg                    sync.WaitGroup
		lookups, hits, sweeps atomic.Int64
	)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range opsEach {
				now := clock()
				k := keys[rng.IntN(len(keys))]
				switch r := rng.IntN(1000); {
				case r < 600:
					lookups.Add(1)
					if _, ok := tbl.Lookup(k, tcpFlags(k, rng), now, valid); ok {
						hits.Add(1)
					}
				case r < 990:
					tbl.Insert(k, uint32(rng.IntN(8)), tcpFlags(k, rng), now)
				case r < 995:
					sweeps.Add(1)
					tbl.Sweep(now)
				case r < 998:
					if tbl.Len() > capacity {
						t.Errorf("Len() = %d > capacity %d", tbl.Len(), capacity)
					}
				default:
					d := &down[rng.IntN(8)]
					d.Store(!d.Load())
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d lookups, %d hits, %d sweeps, %d evictions, %d entries", lookups.Load(), hits.Load(), sweeps.Load(), tbl.Evictions(), tbl.Len())

	check(t, tbl)
	entries := dump(tbl)
	if len(entries) != tbl.Len() || len(entries) > capacity {
		t.Errorf("%d entries, Len() = %d, capacity %d", len(entries), tbl.Len(), capacity)
	}
	for _, e := range entries {
		// At its own last use an entry is live.
		if id, ok := tbl.Lookup(e.Key, 0, e.Last, nil); !ok || id != e.ID {
			t.Errorf("%v: Lookup = %d, %t, want %d, true", e.Key, id, ok, e.ID)
		}
	}
	if hits.Load() == 0 || tbl.Evictions() == 0 {
		t.Errorf("no hits or no evictions: the test misses a case")
	}
}

// tcpFlags returns random flags for a TCP key, mostly ACKs, and none for
// other keys.
func tcpFlags(k flow.Key, rng *rand.Rand) flow.TCPFlags {
	if k.Proto != pTCP {
		return 0
	}
	return []flow.TCPFlags{flow.ACK, flow.ACK, flow.ACK, flow.SYN, flow.FIN | flow.ACK, flow.RST}[rng.IntN(6)]
}
