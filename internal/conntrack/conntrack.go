// Package conntrack remembers which backend each established flow was sent
// to, so that adding or removing other backends does not move it.
//
// It owns the flow → backend memory: a bounded table with a least recently
// used (LRU) eviction order and idle timeouts by protocol, shared by every
// data-path worker, since packets of one flow may reach any of them. It must
// not touch sockets, the Maglev table or backends' health: whether a backend
// may still receive a flow is the caller's knowledge, which the table only
// asks for through the valid function given to Lookup. Backend IDs are opaque
// uint32 values to it.
//
// # Shards and memory
//
// The table is split into Shards shards, each with its own mutex, so workers
// rarely wait for one another. A flow's shard and its place in the shard's
// index come from a hash of its key with a random per-table seed, not from
// the flow hash: that one has no secret (every balancer must compute it
// alike), so senders could pick flows that all pile into one probe chain.
//
// A shard keeps its entries in an arena of 64-byte entries, an index of
// 8-byte slots (open addressing with linear probing, at most half full, with
// backward-shift deletion so it never fills with tombstones) and four LRU
// lists, one per timeout class (TCP, UDP, other, closing TCP), linked
// through the arena by uint32 indices. New allocates all of it, 80 bytes per entry when the
// capacity per shard is a power of two as it is for DefaultCapacity; Lookup,
// Insert and Sweep never allocate. (A Go map as the index took about 100
// bytes per entry instead of 16 and, under the steady churn of evictions,
// grew now and then to shed its tombstones, which allocates.)
//
// Because every entry of a list has the same idle timeout and the list is in
// order of last use, the expired entries of a list are exactly a run at its
// tail: Sweep removes them without looking at live ones, and a full shard
// reclaims an expired tail before it evicts a live entry. Entries last used
// at the same nanosecond may be evicted in either order. Workers that read
// the clock at slightly different moments may leave a list out of order by
// that skew; the effect is to expire such an entry up to one Sweep later.
//
// # Rules
//
// An entry is reused only while it is live and its backend is valid (present
// and not down, as in the Maglev paper): Lookup deletes an expired entry
// or one whose backend is no longer valid and reports a miss, so that the
// caller picks a backend afresh and records it with Insert. A draining
// backend stays valid for its established flows; the caller simply never
// inserts new flows for it.
//
// # Closing TCP connections
//
// The balancer sees only the client's half of a TCP connection (replies go
// straight from the backend to the client), so, like IPVS in its
// direct-routing mode, it follows a connection's end by the client's flags
// alone. A FIN or RST moves the flow's entry to the closing class, with its
// own short idle timeout (Timeouts.TCPClosing): the ACKs that end the
// connection still find their backend, and the entry no longer counts as an
// active flow (CountByBackend). A SYN without ACK on a closing entry is a new
// connection reusing the port pair: Lookup drops the entry and reports a
// miss, so the new connection is placed afresh like any other new flow (and
// never on a draining backend). A connection whose client never sends a FIN
// or RST (it crashed or vanished) keeps its entry for the TCP timeout.
package conntrack

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sync"
	"time"
	"unsafe"

	"github.com/caplance/caplance/internal/flow"
)

// Shards is the number of shards of a table made by New, and so its smallest
// capacity. With 64 workers, a table operation finds its shard locked by
// another worker at most 63/256 of the time even if the workers did nothing
// else, and in practice far less; the shards' headers take 32 KiB.
const Shards = 256

// DefaultCapacity is the number of flows a default table holds: 1<<20, in
// 80 MiB (EntryBytes of arena plus 16 bytes of index per entry). At TCP's
// 15-minute idle timeout that is the flows of about 1,100 new connections per
// second. A full table evicts its idlest flows, which is harmless while the
// backend set is stable (Maglev sends such a flow to the same backend again),
// so the capacity needs to cover the flows that must survive a change of the
// backend set, not every flow ever seen.
const DefaultCapacity = 1 << 20

// Timeouts are the idle timeouts after which an entry expires, by the flow
// key's protocol.
type Timeouts struct {
	// TCP applies to protocol 6.
	TCP time.Duration
	// UDP applies to UDP (17) and UDP-Lite (136).
	UDP time.Duration
	// Other applies to every other protocol: ICMP, SCTP, fragments' 3-tuples, …
	Other time.Duration
	// TCPClosing applies to a TCP flow once the client sent a FIN or RST.
	TCPClosing time.Duration
}

// DefaultTimeouts are the idle timeouts of a default table. TCP and UDP match
// the IPVS defaults for an established TCP connection (900 s) and for UDP
// (300 s), which operators of an L4 balancer already know and which outlast
// common keepalive intervals. Other protocols get one minute:
// ICMP echo and the 3-tuple flows of other protocols are short or stateless,
// and a shorter timeout frees their memory sooner. A closing TCP flow keeps
// its entry for 10 s, IPVS's timeout for its CLOSE state: long enough for
// the last ACKs of the close and a retransmitted FIN.
var DefaultTimeouts = Timeouts{TCP: 15 * time.Minute, UDP: 5 * time.Minute, Other: 1 * time.Minute, TCPClosing: 10 * time.Second}

// Timeout classes: each has its own idle timeout and LRU list in every shard.
const (
	classTCP = iota
	classUDP
	classOther
	classClosing // TCP after the client's FIN or RST
	numClasses
)

// class returns the timeout class of a packet of protocol proto with TCP
// flags flags.
func class(proto uint8, flags flow.TCPFlags) uint8 {
	switch {
	case proto == 6 && flags&(flow.FIN|flow.RST) != 0:
		return classClosing
	case proto == 6:
		return classTCP
	case proto == 17, proto == 136:
		return classUDP
	}
	return classOther
}

// none ends the free list.
const none = ^uint32(0)

// sweepBatch bounds how many entries Sweep removes per lock of a shard, so a
// worker waits for it at most a few microseconds.
const sweepBatch = 128

// entry is one flow in a shard's arena: 64 bytes, one cache line. The first
// numClasses slots of the arena are the sentinels of the LRU lists: circular
// lists, so linking and unlinking need no branches.
type entry struct {
	// last is the monotonic time of the entry's last use, in nanoseconds.
	last int64
	// prev and next link the entry into its class's LRU list (next runs from
	// the most recently used towards the least), or next into the free list.
	prev, next uint32
	// id is the backend.
	id uint32
	// tag is the low 32 bits of the key's hash.
	tag uint32
	key flow.Key
	// class is the timeout class, whose LRU list holds the entry.
	class uint8
}

// EntryBytes is the arena's size of one entry. The index adds 16 to 32 bytes
// per entry: two to four 8-byte slots, as the slot count of a shard is the
// power of two at least twice its capacity.
const EntryBytes = int(unsafe.Sizeof(entry{}))

// shardState is a shard's data; shard pads it so that two shards' locks never
// share a cache line.
type shardState struct {
	mu sync.Mutex
	// slots index entries by key hash, with linear probing: a slot is 0
	// (empty) or an entry's tag<<32 | its arena index (never 0, which is a
	// sentinel's). A slot's probe starts at tag&mask. Removal shifts the
	// following entries back (no tombstones), so the index never degrades
	// and never needs rebuilding. At most half the slots are in use.
	slots     []uint64
	mask      uint32
	entries   []entry // numClasses sentinels, then the capacity
	free      uint32  // head of the free list, linked by next
	n         int
	evictions uint64
}

type shard struct {
	shardState
	_ [128 - unsafe.Sizeof(shardState{})%128]byte
}

// Table maps flows to backend IDs. It is safe for concurrent use.
type Table struct {
	shards   []shard
	shift    uint              // shard index = hash >> shift
	timeout  [numClasses]int64 // nanoseconds
	seed     [4]uint64         // of keyHash
	capacity int
}

// New returns a table that holds up to capacity flows, which must be at least
// Shards, with idle timeouts t, each of which must be positive.
func New(capacity int, t Timeouts) (*Table, error) {
	return newTable(capacity, Shards, t)
}

// maxShardCapacity keeps a shard's slot count within the 32 bits of a tag.
const maxShardCapacity = 1<<31 - 1

// newTable is New with a number of shards, a power of two; tests use one.
func newTable(capacity, shards int, t Timeouts) (*Table, error) {
	if shards < 1 || shards&(shards-1) != 0 {
		return nil, fmt.Errorf("conntrack: %d shards: not a power of two", shards)
	}
	if capacity < shards {
		return nil, fmt.Errorf("conntrack: capacity %d: less than the %d shards", capacity, shards)
	}
	if per := (capacity + shards - 1) / shards; per > maxShardCapacity {
		return nil, fmt.Errorf("conntrack: capacity %d: more than %d per shard", capacity, maxShardCapacity)
	}
	for _, c := range []struct {
		name string
		d    time.Duration
	}{{"TCP", t.TCP}, {"UDP", t.UDP}, {"other", t.Other}, {"closing TCP", t.TCPClosing}} {
		if c.d <= 0 {
			return nil, fmt.Errorf("conntrack: %s timeout %v: not positive", c.name, c.d)
		}
	}
	tbl := &Table{
		shards: make([]shard, shards),
		shift:  uint(64 - bits.TrailingZeros(uint(shards))),
		timeout: [numClasses]int64{classTCP: int64(t.TCP), classUDP: int64(t.UDP), classOther: int64(t.Other),
			classClosing: int64(t.TCPClosing)},
		seed:     [4]uint64{rand.Uint64(), rand.Uint64(), rand.Uint64(), rand.Uint64()},
		capacity: capacity,
	}
	// Split evenly: the first capacity%shards shards hold one more. All
	// shards' slots, and all their entries, are one allocation each, which
	// saves page rounding and TLB misses.
	perShard := func(i int) int {
		if i < capacity%shards {
			return capacity/shards + 1
		}
		return capacity / shards
	}
	nslots := 0
	for i := range shards {
		nslots += slotCount(perShard(i))
	}
	slots := make([]uint64, nslots)
	entries := make([]entry, shards*numClasses+capacity)
	for i := range tbl.shards {
		n := slotCount(perShard(i))
		m := numClasses + perShard(i)
		tbl.shards[i].init(slots[:n:n], entries[:m:m])
		slots, entries = slots[n:], entries[m:]
	}
	return tbl, nil
}

// slotCount returns the size of the index of a shard of the given capacity:
// the power of two at least twice as large.
func slotCount(capacity int) int {
	return 1 << bits.Len(uint(2*capacity-1))
}

func (s *shardState) init(slots []uint64, entries []entry) {
	s.slots = slots
	s.mask = uint32(len(s.slots) - 1)
	s.entries = entries
	for c := uint32(0); c < numClasses; c++ {
		s.entries[c].prev, s.entries[c].next = c, c
	}
	for j := numClasses; j < len(s.entries); j++ {
		s.entries[j].next = uint32(j + 1)
	}
	s.entries[len(s.entries)-1].next = none
	s.free = numClasses
}

// m5 is the final multiplier of the Go runtime's wyhash-style fallback hash.
const m5 = 0x1d8e4e27c47d124f

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// keyHash hashes k with the table's random seed, in the manner of the Go
// runtime's hash for maps on machines without AES instructions. It, and not
// the flow hash, places flows in the table: the flow hash has no secret
// (every balancer must compute it alike), so whoever sends packets could
// choose flows that all land in one probe chain.
func (t *Table) keyHash(k *flow.Key) uint64 {
	le := binary.LittleEndian
	h := mix(le.Uint64(k.Src[0:8])^t.seed[1], le.Uint64(k.Src[8:16])^t.seed[0])
	h = mix(le.Uint64(k.Dst[0:8])^t.seed[2], le.Uint64(k.Dst[8:16])^h)
	rest := uint64(k.SrcPort) | uint64(k.DstPort)<<16 | uint64(k.Proto)<<32
	return mix(m5, mix(rest^t.seed[3], h))
}

// locate returns k's shard and the low 32 bits of its hash, its tag.
func (t *Table) locate(k *flow.Key) (*shardState, uint32) {
	h := t.keyHash(k)
	// A shift by 64 (one shard) gives 0.
	return &t.shards[h>>t.shift].shardState, uint32(h)
}

// Lookup returns the backend ID recorded for flow k if the entry is live at
// monotonic time now, in nanoseconds (idle for no longer than the timeout of
// its class), and valid(id) reports true; the entry then counts as used at
// now, and flags, the packet's TCP flags (0 for any other packet), a FIN or
// RST among them, move it to the closing class. An entry that has expired or
// whose backend is no longer valid is deleted, and Lookup reports a miss; so
// is a closing entry that a SYN without ACK reopens (see the package
// comment). A nil valid accepts every backend.
//
// valid is called with a shard locked: it must be quick and must not call
// the table. Build it once; calling it does not allocate.
func (t *Table) Lookup(k flow.Key, flags flow.TCPFlags, now int64, valid func(id uint32) bool) (id uint32, ok bool) {
	s, tag := t.locate(&k)
	s.mu.Lock()
	defer s.mu.Unlock()
	pos, i := s.find(&k, tag)
	if i == none {
		return 0, false
	}
	e := &s.entries[i]
	if now-e.last > t.timeout[e.class] || (valid != nil && !valid(e.id)) ||
		(e.class == classClosing && flags&(flow.SYN|flow.ACK) == flow.SYN) {
		s.remove(pos, i)
		return 0, false
	}
	if class(k.Proto, flags) == classClosing {
		e.class = classClosing
	}
	e.last = max(e.last, now)
	s.moveToFront(i, uint32(e.class))
	return e.id, true
}

// Insert records that flow k goes to backend id, used at monotonic time now
// by a packet with TCP flags flags (0 for any other packet; with a FIN or
// RST the entry is closing from the start); it replaces any entry of k. When
// k's shard is full, an expired entry makes room if there is one (the least
// recently used of them), else the least recently used entry of the shard is
// evicted and counted.
func (t *Table) Insert(k flow.Key, id uint32, flags flow.TCPFlags, now int64) {
	s, tag := t.locate(&k)
	s.mu.Lock()
	defer s.mu.Unlock()
	c := class(k.Proto, flags)
	pos, i := s.find(&k, tag)
	if i != none {
		e := &s.entries[i]
		e.id = id
		e.class = c
		e.last = max(e.last, now)
		s.moveToFront(i, uint32(c))
		return
	}
	if s.free == none {
		v := s.victim(t, now)
		s.remove(s.slotOf(v), v)
		// The removal may have emptied a slot on k's probe path
		// before the one find stopped at: probe again.
		for pos = tag & s.mask; s.slots[pos] != 0; pos = (pos + 1) & s.mask {
		}
	}
	i = s.free
	s.free = s.entries[i].next
	s.entries[i] = entry{last: now, id: id, tag: tag, key: k, class: c}
	s.pushFront(i, uint32(c))
	s.slots[pos] = uint64(tag)<<32 | uint64(i)
	s.n++
}

// victim picks the entry to replace in a full shard: the least recently used
// of the expired tails, else the least recently used tail, which it counts
// as an eviction.
func (s *shardState) victim(t *Table, now int64) uint32 {
	victim, expired := none, false
	for c := range uint32(numClasses) {
		i := s.entries[c].prev
		if i == c {
			continue // empty list
		}
		e := &s.entries[i]
		exp := now-e.last > t.timeout[c]
		switch {
		case victim == none, exp && !expired, exp == expired && e.last < s.entries[victim].last:
			victim, expired = i, exp
		}
	}
	if !expired {
		s.evictions++
	}
	return victim
}

// Sweep removes the entries that have expired at monotonic time now and
// returns how many. The daemon calls it about once a second; its work is
// proportional to what it removes, and it releases each shard's lock every
// few dozen entries.
func (t *Table) Sweep(now int64) (removed int) {
	for si := range t.shards {
		s := &t.shards[si].shardState
		for more := true; more; {
			var n int
			n, more = s.sweep(t, now, sweepBatch)
			removed += n
		}
	}
	return removed
}

// sweep removes up to limit expired entries from the tails of s's lists, and
// reports whether it stopped at the limit.
func (s *shardState) sweep(t *Table, now int64, limit int) (removed int, more bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range uint32(numClasses) {
		for {
			i := s.entries[c].prev
			if i == c || now-s.entries[i].last <= t.timeout[c] {
				break
			}
			if removed == limit {
				return removed, true
			}
			s.remove(s.slotOf(i), i)
			removed++
		}
	}
	return removed, false
}

// Len returns the number of entries, expired ones not yet swept included.
func (t *Table) Len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i].shardState
		s.mu.Lock()
		n += s.n
		s.mu.Unlock()
	}
	return n
}

// Cap returns the number of entries the table holds at most.
func (t *Table) Cap() int { return t.capacity }

// Evictions returns how many live entries Insert has evicted to make room.
func (t *Table) Evictions() uint64 {
	var n uint64
	for i := range t.shards {
		s := &t.shards[i].shardState
		s.mu.Lock()
		n += s.evictions
		s.mu.Unlock()
	}
	return n
}

// Flows counts one backend's entries: Inactive are closing TCP flows,
// Active all others (as IPVS's ActiveConn and InActConn, but counting UDP
// and other flows as active).
type Flows struct {
	Active, Inactive int
}

// CountByBackend returns the number of entries of each backend ID, expired
// ones not yet swept included. It locks one shard at a time and allocates:
// it is for statistics, not for the data path, which only moves an entry
// from one list to another; the lists tell active from inactive here.
func (t *Table) CountByBackend() map[uint32]Flows {
	counts := make(map[uint32]Flows)
	for si := range t.shards {
		s := &t.shards[si].shardState
		s.mu.Lock()
		for c := range uint32(numClasses) {
			for i := s.entries[c].next; i != c; i = s.entries[i].next {
				f := counts[s.entries[i].id]
				if c == classClosing {
					f.Inactive++
				} else {
					f.Active++
				}
				counts[s.entries[i].id] = f
			}
		}
		s.mu.Unlock()
	}
	return counts
}

// find returns the slot and index of k's entry, whose tag is tag, or none.
func (s *shardState) find(k *flow.Key, tag uint32) (pos, i uint32) {
	for pos = tag & s.mask; ; pos = (pos + 1) & s.mask {
		v := s.slots[pos]
		if v == 0 {
			return pos, none
		}
		if uint32(v>>32) == tag && s.entries[uint32(v)].key == *k {
			return pos, uint32(v)
		}
	}
}

// slotOf returns the slot of entry i.
func (s *shardState) slotOf(i uint32) uint32 {
	pos := s.entries[i].tag & s.mask
	for uint32(s.slots[pos]) != i {
		pos = (pos + 1) & s.mask
	}
	return pos
}

// remove deletes entry i, in slot pos, from its list and the index, and
// frees it.
func (s *shardState) remove(pos, i uint32) {
	s.unlink(i)
	s.n--
	s.entries[i].next = s.free
	s.free = i
	// Backward-shift deletion: move each following entry of the cluster
	// into the hole when the hole lies on its probe path (between its home
	// slot and its slot), until an empty slot ends the cluster.
	for j := (pos + 1) & s.mask; s.slots[j] != 0; j = (j + 1) & s.mask {
		home := uint32(s.slots[j]>>32) & s.mask
		if (j-home)&s.mask >= (j-pos)&s.mask {
			s.slots[pos] = s.slots[j]
			pos = j
		}
	}
	s.slots[pos] = 0
}

func (s *shardState) unlink(i uint32) {
	e := &s.entries[i]
	s.entries[e.prev].next = e.next
	s.entries[e.next].prev = e.prev
}

// pushFront links entry i at the head of list c (most recently used).
func (s *shardState) pushFront(i, c uint32) {
	head := &s.entries[c]
	e := &s.entries[i]
	e.prev, e.next = c, head.next
	s.entries[head.next].prev = i
	head.next = i
}

func (s *shardState) moveToFront(i, c uint32) {
	if s.entries[c].next == i {
		return
	}
	s.unlink(i)
	s.pushFront(i, c)
}
