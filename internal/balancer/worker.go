package balancer

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/flow"
	"github.com/caplance/caplance/internal/inet"
	"github.com/caplance/caplance/internal/rawio"
)

// dropReason indexes the per-worker drop counters: first one per
// flow.Malformed reason, then the data path's own.
type dropReason int

const (
	dropTruncated dropReason = iota + dropReason(flow.NumMalformed)
	dropNoService
	dropNoBackend
	dropTooBig
	dropSendError
	dropEncapError
	// The kernel counts these two, for the AF_XDP sockets (Stats reads
	// them): frames lost because a socket's RX ring was full, and because
	// it had no free frame (an empty fill ring) or the frame was too long.
	dropXDPRingFull
	dropXDPNoFrame
	numDropReasons
)

func (r dropReason) String() string {
	if r < dropReason(flow.NumMalformed) {
		return "malformed_" + flow.Malformed(r).String()
	}
	return [...]string{"truncated", "no_service", "no_backend", "too_big", "send_error", "encap_error", "xdp_ring_full", "xdp_no_frame"}[r-dropTruncated]
}

// maxFragments bounds how many fragments one datagram may become: enough
// for a maximal datagram at a 576-byte MTU, the least every IPv4 path carries.
const maxFragments = maxPacket/(576-20) + 1

// icmpErrorsPerSecond caps the ICMP "fragmentation needed" and ICMPv6
// Packet Too Big messages a worker sends, as the kernel rate-limits its own
// ICMP errors.
const icmpErrorsPerSecond = 1000

// worker owns its sockets and buffers; only its own goroutine touches them
// while it runs.
type worker struct {
	b      *Balancer
	index  int
	fds    []unix.PollFd // the raw sockets, filtered to the VIPs
	protos []int         // each one's protocol
	// share and share6 keep this worker's share of the TCP and UDP flows
	// over IPv4 and IPv6; nil when it is the only worker.
	share, share6 []bpf.Instruction
	// sendFD and sendFD6 send whole IPv4 and IPv6 packets (IP_HDRINCL);
	// sendFD6 is -1 on a kernel without IPv6.
	sendFD, sendFD6 int

	batch *rawio.Batch
	// queue and queue6 hold the batch's packets with IPv4 and IPv6 outers.
	queue, queue6 *rawio.Queue
	// queued and queued6 are the service of each packet in queue and
	// queue6, whose drops count a send error.
	queued, queued6 [batchSize]*serviceCounters

	// The rare path: fragments and ICMP messages are built in scratch and
	// sent through fragQueue, so it allocates nothing either.
	scratch    []byte
	fragQueue  *rawio.Queue
	fragTarget *target
	fragSvc    *serviceCounters
	fragLost   bool
	fragID     uint16

	icmpBudget int
	icmpSecond int64

	// xq is the worker's AF_XDP socket, nil in raw mode.
	xq *xdpQueue

	received    atomic.Uint64
	xdpReceived atomic.Uint64
	forwarded   atomic.Uint64
	drops       [numDropReasons]atomic.Uint64
	viaRaw      [numViaRawReasons]atomic.Uint64
}

var epoch = time.Now()

func newWorker(b *Balancer, i int) *worker {
	return &worker{
		b:       b,
		index:   i,
		sendFD:  -1,
		sendFD6: -1,
		batch:   rawio.NewBatch(batchSize, encap.MaxHeaderLen, maxPacket),
		queue:   rawio.NewQueue(batchSize),
		queue6:  rawio.NewQueue(batchSize),
		// Room for a maximal datagram cut into maxFragments fragments.
		scratch:   make([]byte, encap.MaxHeaderLen+maxPacket+maxFragments*20),
		fragQueue: rawio.NewQueue(maxFragments),
		// Workers draw IDs from separate ranges so that two workers do not
		// send fragments with the same ID to the same backend at once.
		fragID: uint16(i) << 12,
	}
}

func (w *worker) close() {
	w.closeXDP()
	for _, p := range w.fds {
		unix.Close(int(p.Fd))
	}
	w.fds = nil
	for _, fd := range []*int{&w.sendFD, &w.sendFD6} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// forward handles the n packets of the last Recv and flushes them.
func (w *worker) forward(n int) {
	s := w.b.snap.Load()
	now := int64(time.Since(epoch))
	w.received.Add(uint64(n))
	for i := range n {
		if w.batch.Truncated(i) {
			w.drop(dropTruncated)
			continue
		}
		frame, t, sc := w.process(s, w.batch.Framed(i), encap.MaxHeaderLen, now)
		if frame == nil {
			continue
		}
		if len(frame) > t.mtu {
			w.tooBig(frame, t, sc)
			continue
		}
		w.queueRaw(frame, t, sc)
	}
	w.flush()
}

// process is the per-packet decision every data path shares. framed holds
// room bytes of headroom, then the IP packet: process parses it, classifies
// it to its service, picks its backend (connection tracking first, then the
// service's Maglev table), encapsulates it in place at the end of the
// headroom and counts it. It returns the encapsulated frame (the outer
// header and the packet) with its target and service counters, or a nil
// frame for a packet it dropped (counted). A frame longer than t.mtu is the
// caller's to hand to tooBig.
func (w *worker) process(s *snapshot, framed []byte, room int, now int64) ([]byte, *target, *serviceCounters) {
	pkt := framed[room:]
	key, flags, err := flow.Parse(pkt)
	if err != nil {
		w.drop(dropReason(err.(flow.Malformed))) // Parse's only error type
		return nil, nil, nil
	}
	svc := s.classes.classify(&key)
	if svc == nil {
		w.drop(dropNoService)
		return nil, nil, nil
	}
	sc := &svc.stats.perWorker[w.index]
	h := key.Hash()
	var t *target
	// A SYN without ACK opens a new connection, whatever the table
	// remembers of an earlier one on the same ports (a client that
	// reuses its port before the entry expires): it follows an entry
	// only to a backend that takes new flows, so that a drained or
	// weight-0 backend never gets a new connection.
	valid := svc.valid
	if flags&(flow.SYN|flow.ACK) == flow.SYN {
		valid = svc.takesNew
	}
	ct := w.b.cfg.Conntrack
	if id, ok := ct.Lookup(key, flags, now, valid); ok {
		t = svc.byID[id]
	} else {
		idx := svc.table.Lookup(svc.pick(&key, h))
		if idx < 0 {
			w.dropIn(sc, dropNoBackend)
			return nil, nil, nil
		}
		t = svc.byIndex[idx]
		ct.Insert(key, t.ID, flags, now)
		t.stats.perWorker[w.index].newFlows.Add(1)
		sc.newFlows.Add(1)
	}
	refreshOptionsChecksum(pkt)
	// The outer header's room: the end of the headroom.
	frame := framed[room-t.outer.Len():]
	if err := t.outer.Encapsulate(frame, h); err != nil {
		w.dropIn(sc, dropEncapError)
		return nil, nil, nil
	}
	c := &t.stats.perWorker[w.index]
	c.packets.Add(1)
	c.bytes.Add(uint64(len(pkt)))
	sc.packets.Add(1)
	sc.bytes.Add(uint64(len(pkt)))
	return frame, t, sc
}

// queueRaw queues an encapsulated frame of at most t.mtu bytes on the raw
// send socket of its outer's family, for the next flush; a full queue (an
// AF_XDP batch is larger than the raw path's) is flushed first.
func (w *worker) queueRaw(frame []byte, t *target, sc *serviceCounters) {
	if w.queue.Len() == w.queue.Cap() || w.queue6.Len() == w.queue6.Cap() {
		w.flush()
	}
	if t.v6 {
		w.queued6[w.queue6.Len()] = sc
		w.queue6.Add6From(frame, t.src6, t.dst6, 0)
		return
	}
	w.queued[w.queue.Len()] = sc
	w.queue.Add(frame, t.dst, 0)
}

// refreshOptionsChecksum rewrites the header checksum of an IPv4 packet
// that carries options (IHL > 5), which flow.Parse has checked lies within
// pkt. On local delivery this host's kernel fills some options in (Record
// Route, Timestamp: ip_options_compile) without fixing the checksum, which
// it has already verified, and the raw socket hands over that header; sent
// on as it is, the backend (the receiver's checks, or its kernel) would drop
// the packet as corrupt. It is the one exception to forwarding the client's
// packet byte-identical; a packet without options is left untouched.
func refreshOptionsChecksum(pkt []byte) {
	if pkt[0]>>4 != 4 || pkt[0]&0x0f <= 5 {
		return
	}
	hdr := pkt[:int(pkt[0]&0x0f)*4]
	hdr[10], hdr[11] = 0, 0
	binary.BigEndian.PutUint16(hdr[10:12], inet.Checksum(hdr))
}

func (w *worker) flush() {
	sent := w.queue.Flush(w.sendFD, w.sendFailed)
	sent += w.queue6.Flush(w.sendFD6, w.sendFailed6)
	w.forwarded.Add(uint64(sent))
}

func (w *worker) sendFailed(i int, _ error)  { w.dropIn(w.queued[i], dropSendError) }
func (w *worker) sendFailed6(i int, _ error) { w.dropIn(w.queued6[i], dropSendError) }

func (w *worker) drop(r dropReason) { w.drops[r].Add(1) }

// dropIn counts a drop of a packet classified to the service of sc.
func (w *worker) dropIn(sc *serviceCounters, r dropReason) {
	w.drops[r].Add(1)
	sc.drops.Add(1)
}

// tooBig handles an encapsulated packet larger than the path MTU: see the
// policy in package encap (mtu.go). frame holds the outer header and the
// inner packet.
func (w *worker) tooBig(frame []byte, t *target, sc *serviceCounters) {
	n := t.outer.Len()
	inner := frame[n:]
	switch {
	case inner[0]>>4 == 6:
		// IPv6 routers never fragment: the client learns the tunnel's MTU.
		w.dropIn(sc, dropTooBig)
		w.packetTooBig(inner, t.mtu-n)
		return
	case binary.BigEndian.Uint16(inner[6:8])&0x4000 != 0:
		w.dropIn(sc, dropTooBig)
		w.fragNeeded(inner, t.mtu-n)
		return
	case t.v6:
		// An IPv4 datagram without DF: encap fragments IPv4 outers only.
		w.dropIn(sc, dropTooBig)
		return
	}
	w.fragID++
	if w.fragID == 0 {
		w.fragID++
	}
	if encap.FragmentCount(len(frame), t.mtu) > w.fragQueue.Cap() {
		w.dropIn(sc, dropTooBig)
		return
	}
	w.fragTarget, w.fragSvc = t, sc
	if err := encap.Fragment(frame, t.mtu, w.fragID, w.scratch, w.queueFragment); err != nil {
		w.dropIn(sc, dropTooBig)
		return
	}
	if w.fragQueue.Flush(w.sendFD, w.fragFailed) > 0 && !w.fragLost {
		w.forwarded.Add(1)
	}
	w.fragLost = false
}

func (w *worker) queueFragment(frag []byte) { w.fragQueue.Add(frag, w.fragTarget.dst, 0) }

// fragFailed counts a datagram once however many of its fragments failed.
func (w *worker) fragFailed(int, error) {
	if !w.fragLost {
		w.dropIn(w.fragSvc, dropSendError)
	}
	w.fragLost = true
}

// icmpAllowed reports whether the worker may send one more ICMP error this
// second, and counts it.
func (w *worker) icmpAllowed() bool {
	if sec := int64(time.Since(epoch) / time.Second); sec != w.icmpSecond {
		w.icmpSecond, w.icmpBudget = sec, icmpErrorsPerSecond
	}
	if w.icmpBudget == 0 {
		return false
	}
	w.icmpBudget--
	return true
}

// packetTooBig tells the client of the IPv6 packet inner to send packets of
// at most mtu bytes.
func (w *worker) packetTooBig(inner []byte, mtu int) {
	if w.sendFD6 < 0 || !w.icmpAllowed() {
		return
	}
	client := netip.AddrFrom16([16]byte(inner[8:24]))
	msg := encap.PacketTooBig(w.scratch, netip.AddrFrom16([16]byte(inner[24:40])), client, inner, uint32(mtu))
	if msg == nil {
		return
	}
	w.fragQueue.Add6(msg, client.As16(), 0)
	w.fragQueue.Flush(w.sendFD6, func(int, error) {})
}

// fragNeeded tells the client of inner to send packets of at most mtu bytes.
func (w *worker) fragNeeded(inner []byte, mtu int) {
	ihl := int(inner[0]&0x0f) * 4
	if len(inner) < ihl+8 || !w.icmpAllowed() {
		return
	}
	var vip, client [4]byte
	copy(vip[:], inner[16:20])
	copy(client[:], inner[12:16])
	msg := encap.FragNeeded(w.scratch, vip, inner, uint16(mtu))
	w.fragQueue.Add(msg, client, 0)
	w.fragQueue.Flush(w.sendFD, func(int, error) {})
}
