package conntrack

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/flow"
)

// op is one call on a table in a scripted test.
type op struct {
	do  string // "insert", "lookup" or "sweep"
	key flow.Key
	id  uint32 // of insert
	now int64
}

func ins(k flow.Key, id uint32, now int64) op { return op{"insert", k, id, now} }
func look(k flow.Key, now int64) op           { return op{"lookup", k, 0, now} }
func sweep(now int64) op                      { return op{"sweep", flow.Key{}, 0, now} }

// outcome is what a call returned, and the table's Len after it.
type outcome struct {
	ID      uint32
	OK      bool
	Removed int
	Len     int
}

func hit(id uint32, n int) outcome { return outcome{ID: id, OK: true, Len: n} }
func miss(n int) outcome           { return outcome{Len: n} }
func swept(removed, n int) outcome { return outcome{Removed: removed, Len: n} }
func inserted(n int) outcome       { return outcome{Len: n} }
func validExcept(ids ...uint32) func(uint32) bool {
	return func(id uint32) bool { return !slices.Contains(ids, id) }
}

// run applies ops to tbl, checking its structure after each, and returns
// the outcomes.
func run(t *testing.T, tbl *Table, valid func(uint32) bool, ops []op) []outcome {
	t.Helper()
	var got []outcome
	for _, o := range ops {
		var r outcome
		switch o.do {
		case "insert":
			tbl.Insert(o.key, o.id, 0, o.now)
		case "lookup":
			r.ID, r.OK = tbl.Lookup(o.key, 0, o.now, valid)
		case "sweep":
			r.Removed = tbl.Sweep(o.now)
		}
		r.Len = tbl.Len()
		got = append(got, r)
		check(t, tbl)
	}
	return got
}

func TestTable(t *testing.T) {
	tcpA, tcpB, tcpC, tcpD := key(1, pTCP), key(2, pTCP), key(3, pTCP), key(4, pTCP)
	udpB, icmpC, icmpD := key(2, pUDP), key(3, pICMP), key(4, pICMP)
	cases := []struct {
		name          string
		capacity      int
		valid         func(uint32) bool
		ops           []op
		want          []outcome
		wantEvictions uint64
	}{{
		name:     "hit and miss",
		capacity: 4,
		ops:      []op{ins(tcpA, 1, 0), look(tcpA, 5), look(tcpB, 5), look(udpB, 6)},
		want:     []outcome{inserted(1), hit(1, 1), miss(1), miss(1)},
	}, {
		name:     "same addresses and ports, other protocol: other flow",
		capacity: 4,
		ops:      []op{ins(tcpB, 1, 0), ins(udpB, 2, 0), look(tcpB, 1), look(udpB, 1)},
		want:     []outcome{inserted(1), inserted(2), hit(1, 2), hit(2, 2)},
	}, {
		name:     "overwrite",
		capacity: 4,
		ops:      []op{ins(tcpA, 1, 0), ins(tcpA, 2, 10), look(tcpA, 20)},
		want:     []outcome{inserted(1), inserted(1), hit(2, 1)},
	}, {
		name:     "insert over an expired entry",
		capacity: 4,
		ops:      []op{ins(udpB, 1, 0), ins(udpB, 2, 100), look(udpB, 120)},
		want:     []outcome{inserted(1), inserted(1), hit(2, 1)},
	}, {
		name:     "lookup refreshes the idle time",
		capacity: 4,
		ops:      []op{ins(tcpA, 1, 0), look(tcpA, 90), look(tcpA, 190), look(tcpA, 291), look(tcpA, 292)},
		want:     []outcome{inserted(1), hit(1, 1), hit(1, 1), miss(0), miss(0)},
	}, {
		name:     "invalid backend: miss, entry removed",
		capacity: 4,
		valid:    validExcept(2),
		ops:      []op{ins(tcpA, 1, 0), ins(tcpB, 2, 0), look(tcpB, 1), look(tcpA, 1)},
		want:     []outcome{inserted(1), inserted(2), miss(1), hit(1, 1)},
	}, {
		name:     "nil valid accepts every backend",
		capacity: 4,
		ops:      []op{ins(tcpA, 7, 0), look(tcpA, 1)},
		want:     []outcome{inserted(1), hit(7, 1)},
	}, {
		name:     "full: the least recently used goes, not the least recently inserted",
		capacity: 3,
		ops: []op{ins(tcpA, 1, 1), ins(tcpB, 2, 2), ins(tcpC, 3, 3), look(tcpA, 4), ins(tcpD, 4, 5),
			look(tcpB, 6), look(tcpA, 7), look(tcpC, 8), look(tcpD, 9)},
		want: []outcome{inserted(1), inserted(2), inserted(3), hit(1, 3), inserted(3),
			miss(3), hit(1, 3), hit(3, 3), hit(4, 3)},
		wantEvictions: 1,
	}, {
		name:     "full: the least recently used of all protocols goes",
		capacity: 3,
		ops: []op{ins(tcpA, 1, 1), ins(udpB, 2, 2), ins(icmpC, 3, 3), look(tcpA, 4), ins(tcpD, 4, 5),
			look(udpB, 6), ins(icmpD, 5, 7), look(icmpC, 8), look(tcpA, 9), look(tcpD, 10), look(icmpD, 11)},
		want: []outcome{inserted(1), inserted(2), inserted(3), hit(1, 3), inserted(3),
			miss(3), inserted(3), miss(3), hit(1, 3), hit(4, 3), hit(5, 3)},
		wantEvictions: 2,
	}, {
		name:     "full: an expired entry makes room before a live one is evicted",
		capacity: 2,
		ops:      []op{ins(tcpA, 1, 0), ins(udpB, 2, 10), ins(tcpC, 3, 70), look(tcpA, 71), look(udpB, 72), look(tcpC, 73)},
		want:     []outcome{inserted(1), inserted(2), inserted(2), hit(1, 2), miss(2), hit(3, 2)},
	}, {
		name:     "capacity 1",
		capacity: 1,
		ops:      []op{ins(tcpA, 1, 0), ins(tcpB, 2, 1), look(tcpA, 2), look(tcpB, 3)},
		want:     []outcome{inserted(1), inserted(1), miss(1), hit(2, 1)},
		// tcpA is evicted by tcpB.
		wantEvictions: 1,
	}, {
		name:     "sweep removes exactly the expired",
		capacity: 8,
		ops: []op{ins(tcpA, 1, 0), ins(udpB, 2, 0), ins(icmpC, 3, 0), ins(icmpD, 4, 15),
			sweep(20), sweep(21), sweep(35), sweep(36), sweep(51), sweep(100), sweep(101), sweep(1000)},
		want: []outcome{inserted(1), inserted(2), inserted(3), inserted(4),
			swept(0, 4), swept(1, 3), swept(0, 3), swept(1, 2), swept(1, 1), swept(0, 1), swept(1, 0), swept(0, 0)},
	}, {
		name:     "sweep keeps what lookups refreshed",
		capacity: 8,
		ops:      []op{ins(icmpC, 3, 0), ins(icmpD, 4, 0), look(icmpD, 15), sweep(30), look(icmpD, 31)},
		want:     []outcome{inserted(1), inserted(2), hit(4, 2), swept(1, 1), hit(4, 1)},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tbl := mustNew(t, c.capacity, 1, testTimeouts)
			got := run(t, tbl, c.valid, c.ops)
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			if got := tbl.Evictions(); got != c.wantEvictions {
				t.Errorf("Evictions() = %d, want %d", got, c.wantEvictions)
			}
		})
	}
}

// TestIdleTimeouts: each protocol expires after its own timeout, and an entry
// idle for exactly its timeout is still live.
func TestIdleTimeouts(t *testing.T) {
	cases := []struct {
		name    string
		proto   uint8
		timeout int64
	}{
		{"tcp", pTCP, 100},
		{"udp", pUDP, 50},
		{"udplite", pUDPLite, 50},
		{"icmp", pICMP, 20},
		{"icmpv6", pICMPv6, 20},
		{"sctp", pSCTP, 20},
		{"proto-0", 0, 20},
		{"proto-255", 255, 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k := key(1, c.proto)
			const t0 = 1_000_000
			tbl := mustNew(t, 2, 1, testTimeouts)
			got := run(t, tbl, nil, []op{
				ins(k, 9, t0), look(k, t0+c.timeout), look(k, t0+2*c.timeout+1),
				ins(k, 9, t0), sweep(t0 + c.timeout), sweep(t0 + c.timeout + 1),
			})
			want := []outcome{inserted(1), hit(9, 1), miss(0), inserted(1), swept(0, 1), swept(1, 0)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDefaultTimeouts(t *testing.T) {
	tbl, err := New(Shards, DefaultTimeouts)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		proto uint8
		idle  time.Duration
		flags flow.TCPFlags
	}{{pTCP, 15 * time.Minute, 0}, {pUDP, 5 * time.Minute, 0}, {pUDPLite, 5 * time.Minute, 0}, {pICMP, time.Minute, 0},
		{pTCP, 10 * time.Second, flow.FIN | flow.ACK}}
	for i, c := range cases {
		k := key(i, c.proto)
		tbl.Insert(k, 1, c.flags, 0)
		if _, ok := tbl.Lookup(k, 0, int64(c.idle), nil); !ok {
			t.Errorf("proto %d: expired after %v", c.proto, c.idle)
		}
		if _, ok := tbl.Lookup(k, 0, 2*int64(c.idle)+1, nil); ok {
			t.Errorf("proto %d: live after %v", c.proto, c.idle+1)
		}
	}
}

func TestNew(t *testing.T) {
	cases := []struct {
		name     string
		capacity int
		shards   int
		timeouts Timeouts
		wantErr  bool
	}{
		{"default", DefaultCapacity, Shards, DefaultTimeouts, false},
		{"one per shard", Shards, Shards, DefaultTimeouts, false},
		{"uneven split", 3*Shards + 5, Shards, DefaultTimeouts, false},
		{"one shard", 1, 1, testTimeouts, false},
		{"capacity below shards", Shards - 1, Shards, DefaultTimeouts, true},
		{"capacity 0", 0, Shards, DefaultTimeouts, true},
		{"negative capacity", -1, Shards, DefaultTimeouts, true},
		{"shards not a power of two", 300, 3, DefaultTimeouts, true},
		{"no tcp timeout", 256, Shards, Timeouts{UDP: 1, Other: 1}, true},
		{"no udp timeout", 256, Shards, Timeouts{TCP: 1, Other: 1}, true},
		{"negative other timeout", 256, Shards, Timeouts{TCP: 1, UDP: 1, Other: -1}, true},
		{"no closing tcp timeout", 256, Shards, Timeouts{TCP: 1, UDP: 1, Other: 1}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tbl, err := newTable(c.capacity, c.shards, c.timeouts)
			if gotErr := err != nil; gotErr != c.wantErr {
				t.Fatalf("newTable(%d, %d, %+v) error = %v, want error %t", c.capacity, c.shards, c.timeouts, err, c.wantErr)
			}
			if err != nil {
				return
			}
			if tbl.Cap() != c.capacity || tbl.Len() != 0 || tbl.Evictions() != 0 {
				t.Errorf("Cap, Len, Evictions = %d, %d, %d, want %d, 0, 0", tbl.Cap(), tbl.Len(), tbl.Evictions(), c.capacity)
			}
			check(t, tbl)
		})
	}
	if _, err := New(Shards-1, DefaultTimeouts); err == nil {
		t.Errorf("New(%d) with %d shards: no error", Shards-1, Shards)
	}
}

// TestManyShards fills a default-shaped table past its capacity: every shard
// stays within its share, and what remains is found.
func TestManyShards(t *testing.T) {
	const capacity = 4 * Shards
	tbl, err := New(capacity, DefaultTimeouts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * capacity {
		tbl.Insert(key(i, pTCP), uint32(i), 0, int64(i))
	}
	check(t, tbl)
	if got := tbl.Len(); got > capacity || got < capacity*9/10 {
		t.Errorf("Len() = %d after %d inserts, want at most and close to %d", got, 3*capacity, capacity)
	}
	if got, want := tbl.Evictions(), uint64(3*capacity-tbl.Len()); got != want {
		t.Errorf("Evictions() = %d, want %d", got, want)
	}
	n := 0
	for i := range 3 * capacity {
		if id, ok := tbl.Lookup(key(i, pTCP), 0, 3*capacity, nil); ok {
			n++
			if id != uint32(i) {
				t.Errorf("flow %d: backend %d", i, id)
			}
		}
	}
	if n != tbl.Len() {
		t.Errorf("found %d flows, Len() = %d", n, tbl.Len())
	}
	if removed := tbl.Sweep(1 << 40); removed != n || tbl.Len() != 0 {
		t.Errorf("Sweep removed %d, Len() = %d, want %d, 0", removed, tbl.Len(), n)
	}
	check(t, tbl)
}

// TestTCPClosing: the client's FIN or RST moves a TCP flow to the closing
// timeout and out of the active count; a new SYN on a closing flow places it
// afresh; nothing else brings a closing flow back.
func TestTCPClosing(t *testing.T) {
	const (
		fin    = flow.FIN | flow.ACK
		ack    = flow.ACK
		t0     = 1_000
		closed = 30 // testTimeouts.TCPClosing
	)
	type step struct {
		insert bool // else Lookup
		flags  flow.TCPFlags
		now    int64
		want   bool // Lookup's ok
		counts Flows
	}
	active, inactive, gone := Flows{Active: 1}, Flows{Inactive: 1}, Flows{}
	cases := []struct {
		name  string
		steps []step
	}{
		{"FIN: closing, live for the closing timeout only", []step{
			{true, flow.SYN, t0, false, active},
			{false, ack, t0 + 1, true, active},
			{false, fin, t0 + 2, true, inactive},
			{false, ack, t0 + 2 + closed, true, inactive}, // idle exactly the timeout: live
			{false, ack, t0 + 3 + 2*closed, false, gone},
		}},
		{"RST alone", []step{
			{true, ack, t0, false, active},
			{false, flow.RST, t0 + 1, true, inactive},
			{false, ack, t0 + 2 + closed, false, gone},
		}},
		{"a FIN on the flow's first packet", []step{
			{true, fin, t0, false, inactive},
			{false, ack, t0 + 1, true, inactive},
		}},
		{"a new SYN on a closing flow is a miss", []step{
			{true, flow.SYN, t0, false, active},
			{false, fin, t0 + 1, true, inactive},
			{false, flow.SYN, t0 + 2, false, gone},
			{true, flow.SYN, t0 + 2, false, active},
		}},
		{"SYN ACK, data and a retransmitted SYN change nothing", []step{
			{true, flow.SYN, t0, false, active},
			{false, flow.SYN, t0 + 1, true, active},
			{false, fin, t0 + 2, true, inactive},
			{false, flow.SYN | flow.ACK, t0 + 3, true, inactive},
			{false, ack | 0x08, t0 + 4, true, inactive},
		}},
		{"an Insert over a closing flow sets its class again", []step{
			{true, fin, t0, false, inactive},
			{true, ack, t0 + 1, false, active},
			{false, ack, t0 + 2 + closed, true, active},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tbl := mustNew(t, 4, 1, testTimeouts)
			k := key(1, pTCP)
			for i, s := range c.steps {
				if s.insert {
					tbl.Insert(k, 7, s.flags, s.now)
				} else if _, ok := tbl.Lookup(k, s.flags, s.now, nil); ok != s.want {
					t.Errorf("step %d: Lookup(%#x, %d) ok = %t, want %t", i, s.flags, s.now, ok, s.want)
				}
				want := map[uint32]Flows{}
				if s.counts != gone {
					want[7] = s.counts
				}
				if diff := cmp.Diff(want, tbl.CountByBackend()); diff != "" {
					t.Errorf("step %d: CountByBackend (-want +got):\n%s", i, diff)
				}
				check(t, tbl)
			}
		})
	}
	t.Run("Sweep removes a closing flow after the closing timeout", func(t *testing.T) {
		tbl := mustNew(t, 4, 1, testTimeouts)
		tbl.Insert(key(1, pTCP), 7, flow.RST, t0)
		tbl.Insert(key(2, pTCP), 7, ack, t0)
		if n := tbl.Sweep(t0 + closed); n != 0 {
			t.Errorf("Sweep at the closing timeout removed %d", n)
		}
		if n := tbl.Sweep(t0 + closed + 1); n != 1 || tbl.Len() != 1 {
			t.Errorf("Sweep after the closing timeout removed %d, left %d; want 1, 1", n, tbl.Len())
		}
	})
}

// TestSweepBatches: a sweep that must release the lock several times within
// one shard still removes exactly the expired entries.
func TestSweepBatches(t *testing.T) {
	const n = 5*sweepBatch + 3
	tbl := mustNew(t, 2*n, 1, testTimeouts)
	for i := range n {
		tbl.Insert(key(i, pICMP), 1, 0, 0) // expires after 20
		tbl.Insert(key(i, pTCP), 2, 0, 50) // lives until 150
	}
	if got := tbl.Sweep(100); got != n {
		t.Errorf("Sweep(100) = %d, want %d", got, n)
	}
	check(t, tbl)
	if diff := cmp.Diff(map[uint32]Flows{2: {Active: n}}, tbl.CountByBackend()); diff != "" {
		t.Errorf("CountByBackend (-want +got):\n%s", diff)
	}
}

func TestCountByBackend(t *testing.T) {
	tbl, err := New(64*Shards, testTimeouts)
	if err != nil {
		t.Fatal(err)
	}
	if got := tbl.CountByBackend(); len(got) != 0 {
		t.Errorf("empty table: CountByBackend() = %v", got)
	}
	want := map[uint32]Flows{}
	for i := range 100 {
		id := uint32(i % 7)
		k := key(i, []uint8{pTCP, pUDP, pICMP}[i%3])
		tbl.Insert(k, id, 0, 0)
		f := want[id]
		if i%5 == 0 && k.Proto == pTCP {
			tbl.Lookup(k, flow.FIN|flow.ACK, 1, nil)
			f.Inactive++
		} else {
			f.Active++
		}
		want[id] = f
	}
	if diff := cmp.Diff(want, tbl.CountByBackend()); diff != "" {
		t.Errorf("CountByBackend (-want +got):\n%s", diff)
	}
}

func ExampleTable() {
	tbl, err := New(DefaultCapacity, DefaultTimeouts)
	if err != nil {
		panic(err)
	}
	up := map[uint32]bool{1: true, 2: true} // the caller's view of backends
	valid := func(id uint32) bool { return up[id] }

	k := flow.Key{Proto: 6, SrcPort: 40000, DstPort: 80}
	now := int64(time.Second)
	if _, ok := tbl.Lookup(k, 0, now, valid); !ok {
		tbl.Insert(k, 2, 0, now) // a new flow: the backend Maglev chose
	}
	id, ok := tbl.Lookup(k, 0, now+int64(time.Minute), valid)
	fmt.Println(id, ok)
	up[2] = false // backend 2 is down: its flows move
	_, ok = tbl.Lookup(k, 0, now+int64(2*time.Minute), valid)
	fmt.Println(ok, tbl.Len())
	// Output:
	// 2 true
	// false 0
}
