// Package rawio moves batches of IPv4 and IPv6 datagrams between reusable buffers and
// file descriptors with recvmmsg(2) and sendmmsg(2), and waits for several
// descriptors with poll(2). Once built, a batch is reused for every call, so
// moving packets allocates nothing.
//
// It owns the syscall plumbing only: it must not parse, count or decide
// anything about the packets it moves, and it never opens or closes sockets.
package rawio

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batch is a set of receive buffers, each with headroom bytes reserved in
// front of the packet so that a header can be written there without a copy.
type Batch struct {
	headroom int
	bufs     [][]byte
	hdrs     []unix.Mmsghdr
	iovs     []unix.Iovec
	// addrs holds each sender's address, IPv4 or IPv6 by the socket's
	// family: a sockaddr_in6 has room for either.
	addrs []unix.RawSockaddrInet6
	n     int
}

// NewBatch allocates n buffers able to hold a packet of up to size bytes
// behind headroom bytes.
func NewBatch(n, headroom, size int) *Batch {
	b := &Batch{
		headroom: headroom,
		bufs:     make([][]byte, n),
		hdrs:     make([]unix.Mmsghdr, n),
		iovs:     make([]unix.Iovec, n),
		addrs:    make([]unix.RawSockaddrInet6, n),
	}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, headroom+size)
		b.iovs[i].Base = &b.bufs[i][headroom]
		b.iovs[i].SetLen(size)
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.Iovlen = 1
		b.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.addrs[i]))
	}
	return b
}

// Recv reads up to Cap datagrams from fd without blocking and returns how
// many arrived; 0 with a nil error means none was waiting.
//
// Because recvmmsg here never blocks, it is made without telling the Go
// scheduler (RawSyscall). An ordinary system call lets the runtime's sysmon
// take the worker's P away after 20 µs and hand it back afterwards; with a
// worker per P that happened around nearly every call (measured with make
// bench-dataplane: sysmon woke ~7,000 times a second and used 6% of the
// machine; the raw calls, with Flush's, forward 4-14% more).
func (b *Batch) Recv(fd int) (int, error) {
	for i := range b.hdrs {
		b.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		b.hdrs[i].Hdr.Flags = 0
	}
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd),
			uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			b.n = int(r)
			return b.n, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			b.n = 0
			return 0, nil
		default:
			b.n = 0
			return 0, errno
		}
	}
}

// Cap is the number of buffers.
func (b *Batch) Cap() int { return len(b.bufs) }

// Packet is the i-th datagram of the last Recv.
func (b *Batch) Packet(i int) []byte {
	return b.bufs[i][b.headroom : b.headroom+int(b.hdrs[i].Len)]
}

// Framed is the i-th datagram with the headroom in front of it.
func (b *Batch) Framed(i int) []byte {
	return b.bufs[i][:b.headroom+int(b.hdrs[i].Len)]
}

// Truncated reports whether the i-th datagram was longer than its buffer.
func (b *Batch) Truncated(i int) bool {
	return b.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0
}

// Source is the sender of the i-th datagram (for raw sockets, the source
// address of the IP header; the port is zero), an IPv4 or IPv6 address by
// the socket's family. An IPv6 address's zone is left out.
func (b *Batch) Source(i int) netip.AddrPort {
	a := &b.addrs[i]
	port := uint16(a.Port>>8) | uint16(a.Port<<8) // the same place in both
	if a.Family == unix.AF_INET6 {
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), port)
	}
	a4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(a))
	return netip.AddrPortFrom(netip.AddrFrom4(a4.Addr), port)
}

// Queue collects outgoing datagrams and sends them with sendmmsg. It keeps
// pointers to the packets it is given until Flush.
type Queue struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	addrs []unix.RawSockaddrInet6 // room for either family
	// ctrls holds each datagram's IPV6_PKTINFO control message (Add6From),
	// its header written once.
	ctrls [][]byte
	n     int
}

// NewQueue makes a queue of up to n datagrams.
func NewQueue(n int) *Queue {
	q := &Queue{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		addrs: make([]unix.RawSockaddrInet6, n),
		ctrls: make([][]byte, n),
	}
	space := unix.CmsgSpace(unix.SizeofInet6Pktinfo)
	ctrl := make([]byte, n*space)
	for i := range q.hdrs {
		q.hdrs[i].Hdr.Iov = &q.iovs[i]
		q.hdrs[i].Hdr.Iovlen = 1
		q.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&q.addrs[i]))
		q.ctrls[i] = ctrl[i*space : (i+1)*space]
		c := (*unix.Cmsghdr)(unsafe.Pointer(&q.ctrls[i][0]))
		c.Level, c.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
		c.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	}
	return q
}

// Cap is the most datagrams the queue holds.
func (q *Queue) Cap() int { return len(q.hdrs) }

// Full reports whether Add would fail.
func (q *Queue) Full() bool { return q.n == len(q.hdrs) }

// Len is the number of queued datagrams.
func (q *Queue) Len() int { return q.n }

// Add queues pkt for the IPv4 address dst (port 0 for raw sockets), to be
// sent on an IPv4 socket. The caller checks Full.
func (q *Queue) Add(pkt []byte, dst [4]byte, port uint16) {
	a := (*unix.RawSockaddrInet4)(unsafe.Pointer(&q.addrs[q.n]))
	*a = unix.RawSockaddrInet4{Family: unix.AF_INET, Port: port>>8 | port<<8, Addr: dst}
	q.add(pkt, unix.SizeofSockaddrInet4)
}

// Add6 queues pkt for the IPv6 address dst (port 0 for raw sockets), to be
// sent on an IPv6 socket. The caller checks Full.
func (q *Queue) Add6(pkt []byte, dst [16]byte, port uint16) {
	q.addrs[q.n] = unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: port>>8 | port<<8, Addr: dst}
	q.add(pkt, unix.SizeofSockaddrInet6)
}

// Add6From is Add6 with src, a local address, given to the kernel as the
// datagram's source (IPV6_PKTINFO). On an IPv6 raw socket that includes the
// header (IPV6_HDRINCL) the header's source is sent as it is either way,
// but without src the kernel selects a source address for every datagram,
// which costs a pass over the addresses of the outgoing interface (a
// balancer's IPv6 VIPs are there: at 1000 of them, 100-300 µs a datagram).
// A source that is not local is refused (EINVAL) unless the socket has
// IPV6_FREEBIND.
func (q *Queue) Add6From(pkt []byte, src, dst [16]byte, port uint16) {
	i := q.n
	q.Add6(pkt, dst, port)
	ctrl := q.ctrls[i]
	info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&ctrl[unix.CmsgLen(0)]))
	*info = unix.Inet6Pktinfo{Addr: src}
	q.hdrs[i].Hdr.Control = &ctrl[0]
	q.hdrs[i].Hdr.SetControllen(len(ctrl))
}

func (q *Queue) add(pkt []byte, namelen uint32) {
	i := q.n
	q.hdrs[i].Hdr.Namelen = namelen
	q.hdrs[i].Hdr.Control, q.hdrs[i].Hdr.Controllen = nil, 0
	q.iovs[i].Base = &pkt[0]
	q.iovs[i].SetLen(len(pkt))
	q.n++
}

// Flush sends every queued datagram on fd. A full socket buffer waits rather
// than drops: Flush first sends without blocking and without telling the Go
// scheduler (see Recv), and only when the buffer is full (EAGAIN) does it
// block, as an ordinary system call that frees its P meanwhile. sendmmsg stops
// at the first datagram that fails; Flush reports it through onError (its
// index in the order of Add and the error), skips it and sends the rest, so
// one bad datagram costs only itself. It returns how many were sent.
func (q *Queue) Flush(fd int, onError func(i int, err error)) int {
	sent := 0
	for start := 0; start < q.n; {
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd),
			uintptr(unsafe.Pointer(&q.hdrs[start])), uintptr(q.n-start), unix.MSG_DONTWAIT, 0, 0)
		if errno == unix.EAGAIN {
			r, _, errno = unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd),
				uintptr(unsafe.Pointer(&q.hdrs[start])), uintptr(q.n-start), 0, 0, 0)
		}
		switch {
		case errno == unix.EINTR:
			continue
		case errno != 0:
			onError(start, errno)
			start++
			continue
		}
		sent += int(r)
		start += int(r)
		if start < q.n && r == 0 {
			onError(start, errors.New("sendmmsg sent nothing"))
			start++
		}
	}
	q.n = 0
	return sent
}

// Wait blocks in poll(2) until one of fds is ready or timeoutMs passes
// (-1: forever). Readiness is left in fds[i].Revents.
func Wait(fds []unix.PollFd, timeoutMs int) error {
	for {
		_, err := unix.Poll(fds, timeoutMs)
		if err != unix.EINTR {
			return err
		}
	}
}

// idlePoll is how long an idle Loop blocks in poll before it looks at its
// stop flag again; it bounds how long stopping waits for an idle loop. A
// variable only so that tests can tell a wake-up by a datagram from the
// timeout without timing it; Loop reads it once, when it starts.
var idlePoll = 100 * time.Millisecond

// Under load, a loop that finds its sockets empty sleeps briefly instead of
// blocking in poll: the next read then finds a batch rather than one or two
// packets, and a wake-up from poll (which costs several µs on a VM) is
// saved. Measured with make bench-dataplane on 2 vCPUs: blocking in poll at
// once handled 1.3-2.5 packets per wake-up; the short sleeps raised the
// forwarding rate by a fifth. After busyRounds empty rounds in a row the
// loop blocks in poll, so an idle worker costs nothing and the first packet
// after a pause is handled at once.
//
// Under light load the sleeps only add latency and empty rounds: a round
// that finds one datagram means they arrive more slowly than the loop wakes
// up, and a packet then waits up to busySleep (plus the thread's timer
// slack) for nothing. So the loop sleeps only while its last busy round
// read at least busyBatch datagrams, and otherwise blocks in poll at once.
// Measured in alternating pairs (docs/benchmarks.md, "Raw mode: where the
// time goes"): the lossless rate is kept, idle CPU stays under 1% of a CPU,
// and the HTTP rate did not change beyond the shared machine's noise.
const (
	busySleep  = 100 * time.Microsecond
	busyRounds = 20
	busyBatch  = 2
)

// A Source is work a Loop polls besides its datagram sockets: an AF_XDP
// socket's rings, say.
type Source interface {
	// Handle handles what is ready and reports whether there was any.
	Handle() bool
	// FD is polled for input together with the sockets when the loop is
	// idle.
	FD() int
}

// sleepWhenEmpty decides what a Loop does after a round that read nothing:
// sleep busySleep and look again (true), or block in poll (false). empty is
// how many empty rounds came before this one since the last busy round,
// last how many datagrams that busy round read (0 after poll found none).
func sleepWhenEmpty(empty, last int) bool {
	return empty < busyRounds && last >= busyBatch
}

// Loop reads batches from fds into batch and calls handle with the number of
// datagrams after each non-empty read, and src's Handle on every round when
// src is not nil, until stop is set; it sets alive on every round so a
// watchdog can tell a wedged loop. It runs on a locked OS
// thread and polls its own descriptors: measured ~24% cheaper per packet
// here than parking goroutines on the Go netpoller. The descriptors must not
// be in the runtime's epoll at all (no net.Conn), or every arriving packet
// wakes an idle runtime thread for nothing.
func Loop(fds []unix.PollFd, batch *Batch, src Source, stop, alive *atomic.Bool, handle func(n int)) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sleep := unix.NsecToTimespec(int64(busySleep))
	idleMs := int(idlePoll / time.Millisecond)
	polled := fds
	if src != nil {
		polled = append(slices.Clone(fds), unix.PollFd{Fd: int32(src.FD()), Events: unix.POLLIN})
	}
	empty, last := 0, 0
	for !stop.Load() {
		alive.Store(true)
		got := 0
		if src != nil {
			// Next to a Source the sockets are mostly idle (an AF_XDP
			// worker's raw sockets get only what its program passes to
			// the stack): one poll that does not wait says which to read,
			// rather than a recvmmsg on each of them every round (an
			// AF_XDP worker spent a tenth of its time in those). If it
			// fails, every socket is read.
			if _, err := unix.Poll(polled, 0); err != nil {
				for i := range polled {
					polled[i].Revents = unix.POLLIN
				}
			}
			if src.Handle() {
				// A Source reports no count: what it handled counts as a
				// batch, as the sleeps after it pay off the same way.
				got = busyBatch
			}
		}
		for i := range fds {
			if src != nil && polled[i].Revents == 0 {
				continue
			}
			n, err := batch.Recv(int(fds[i].Fd))
			if err != nil || n == 0 {
				continue
			}
			got += n
			handle(n)
		}
		switch {
		case got > 0:
			empty, last = 0, got
		case sleepWhenEmpty(empty, last):
			empty++
			_ = unix.Nanosleep(&sleep, nil)
		default:
			empty, last = 0, 0
			_ = Wait(polled, idleMs)
		}
	}
}

// Loops runs a role's worker loops (one Loop each) and answers for them:
// whether every one went round since the last look, and, as a test hook for
// the watchdog, making the first one hang.
type Loops struct {
	loops []*loopState
}

type loopState struct {
	fds    []unix.PollFd
	batch  *Batch
	src    Source
	handle func(n int)
	// halt ends the loop: Run sets it to stop, Wedge to hang.
	halt, wedged, alive atomic.Bool
}

// Add registers a loop reading fds into batch and handing batches to handle.
func (l *Loops) Add(fds []unix.PollFd, batch *Batch, handle func(n int)) {
	l.AddWith(fds, batch, nil, handle)
}

// AddWith is Add for a loop that handles src too.
func (l *Loops) AddWith(fds []unix.PollFd, batch *Batch, src Source, handle func(n int)) {
	l.loops = append(l.loops, &loopState{fds: fds, batch: batch, src: src, handle: handle})
}

// Run runs every loop until ctx is done, then halts them, each after the
// batch it holds, and returns when all have ended; a wedged loop ends only
// then.
func (l *Loops) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, s := range l.loops {
		wg.Go(func() {
			Loop(s.fds, s.batch, s.src, &s.halt, &s.alive, s.handle)
			if s.wedged.Load() {
				<-ctx.Done()
			}
		})
	}
	<-ctx.Done()
	for _, s := range l.loops {
		s.halt.Store(true)
	}
	wg.Wait()
}

// Alive reports whether every loop has gone round since the last call, for
// the watchdog: a loop goes round at least every idlePoll when idle.
func (l *Loops) Alive() bool {
	alive := true
	for _, s := range l.loops {
		if !s.alive.Swap(false) {
			alive = false
		}
	}
	return alive
}

// Wedge is a test hook for the watchdog (CAPLANCE_TEST_WEDGE in
// caplanced(8)): the first loop leaves as if it hung, handles nothing more
// and stops answering Alive, until Run's ctx is done.
func (l *Loops) Wedge() {
	if len(l.loops) > 0 {
		l.loops[0].wedged.Store(true)
		l.loops[0].halt.Store(true)
	}
}
