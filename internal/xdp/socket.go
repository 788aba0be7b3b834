package xdp

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// AF_XDP sockets are written here on golang.org/x/sys/unix rather than with
// a third-party library: asavie/xdp and its fork atoonk/go-afxdp (pre-1.0,
// its API still settling) come with their own XDP program management, where
// caplanced needs its VIP map and the fallback to the stack, and another
// dependency on the data path; what remains is a few hundred lines of ring
// arithmetic the kernel documents (Documentation/networking/af_xdp.rst).

// Sizes. A socket's UMEM is Frames frames of FrameSize bytes, one per
// packet (aligned mode). The kernel leaves XDP_PACKET_HEADROOM (256) bytes
// before every received packet in its frame, which is where a worker
// prepends its outer headers (Headroom tells how much a descriptor has); so
// a 2048-byte frame holds Ethernet frames up to 1792 bytes (MTU 1778) and a
// 4096-byte one up to 3840; longer ones are dropped by the kernel and
// counted in rx_dropped.
const (
	// DefaultFrameSize fits a 1500-byte MTU with room to encapsulate.
	DefaultFrameSize = 2048
	// DefaultRingSize is the entry count of each of the four rings: 2048
	// descriptors hold ~10 ms of a 200k pps queue, enough to ride out a
	// worker's scheduling delay without the kernel dropping.
	DefaultRingSize = 2048
	// DefaultFrames is twice the ring size: one ring's worth sits in the
	// fill and RX rings, the rest is in flight on TX or in the worker.
	DefaultFrames = 2 * DefaultRingSize
	// DefaultBatch is the descriptor count a worker should pass to Receive
	// and friends: 64, the kernel's NAPI budget, so a batch is what one
	// driver poll delivers.
	DefaultBatch = 64
)

// SocketConfig says where a socket binds and how big it is; zero sizes take
// the defaults.
type SocketConfig struct {
	Ifindex int
	Queue   int
	// FrameSize is 2048 or 4096.
	FrameSize int
	// Frames is the UMEM's frame count, at least RingSize.
	Frames int
	// RingSize is each ring's entry count, a power of two.
	RingSize int
}

// Desc is a frame descriptor, laid out as the kernel's struct xdp_desc:
// Len bytes at UMEM offset Addr.
type Desc struct {
	Addr    uint64
	Len     uint32
	Options uint32
}

// Socket is an AF_XDP socket bound to one receive queue, with its own UMEM.
// Frames belong to one owner at a time: the fill and RX rings (the kernel,
// until Receive hands them out), the caller, the TX ring (until Complete
// hands them back). NewSocket gives the first RingSize frames to the fill
// ring; the remaining ones (FrameAddr(i) for i from RingSize to Frames-1)
// start with the caller. A Socket is used by one goroutine at a time; none
// of its per-packet methods allocates.
type Socket struct {
	fd        int
	queue     int
	umem      []byte
	frameSize uint64
	frames    int
	zeroCopy  bool

	fill, completion addrRing
	rx, tx           descRing
	poll             [1]unix.PollFd
}

// ring is the shared part of the four rings: the producer and consumer
// indexes and the flags word in the mmap'd memory. Each side writes one
// index and reads the other's; the indexes run freely and wrap, mask picks
// the slot.
type ring struct {
	mem      []byte
	producer *uint32
	consumer *uint32
	flags    *uint32
	mask     uint32
	size     uint32
}

type addrRing struct {
	ring
	addrs []uint64
}

type descRing struct {
	ring
	descs []Desc
}

// NewSocket creates an AF_XDP socket with its UMEM and rings and binds it to
// the interface's queue, zero-copy if the driver supports it, copy mode
// otherwise (veth: copy). Its packets arrive once it is registered with the
// Program attached to that interface.
func NewSocket(c SocketConfig) (*Socket, error) {
	if c.FrameSize == 0 {
		c.FrameSize = DefaultFrameSize
	}
	if c.RingSize == 0 {
		c.RingSize = DefaultRingSize
	}
	if c.Frames == 0 {
		c.Frames = max(DefaultFrames, c.RingSize)
	}
	switch {
	case c.FrameSize != 2048 && c.FrameSize != 4096:
		return nil, fmt.Errorf("xdp: socket: frame size %d: want 2048 or 4096", c.FrameSize)
	case c.RingSize < 1 || c.RingSize&(c.RingSize-1) != 0 || c.RingSize > 1<<16:
		return nil, fmt.Errorf("xdp: socket: ring size %d: want a power of two up to 65536", c.RingSize)
	case c.Frames < c.RingSize || c.Frames > 1<<20:
		return nil, fmt.Errorf("xdp: socket: %d frames: want from the ring size (%d) to 1048576", c.Frames, c.RingSize)
	case c.Ifindex < 1 || c.Queue < 0:
		return nil, fmt.Errorf("xdp: socket: interface %d queue %d: want a positive index and a queue from 0", c.Ifindex, c.Queue)
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, unsupported(fmt.Errorf("xdp: socket: %w", err))
	}
	s := &Socket{fd: fd, queue: c.Queue, frameSize: uint64(c.FrameSize), frames: c.Frames}
	if err := s.setup(c); err != nil {
		return nil, errors.Join(fmt.Errorf("xdp: socket on interface %d queue %d: %w", c.Ifindex, c.Queue, err), s.Close())
	}
	return s, nil
}

func (s *Socket) setup(c SocketConfig) error {
	var err error
	s.umem, err = unix.Mmap(-1, 0, c.Frames*c.FrameSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("map the UMEM: %w", err)
	}
	reg := unix.XDPUmemReg{
		Addr: uint64(uintptr(unsafe.Pointer(&s.umem[0]))),
		Len:  uint64(len(s.umem)),
		Size: uint32(c.FrameSize),
	}
	if err := setsockopt(s.fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
		if errors.Is(err, unix.ENOBUFS) {
			// Without CAP_IPC_LOCK the kernel counts every UMEM of the user
			// against its RLIMIT_MEMLOCK.
			return fmt.Errorf("register the UMEM (%d bytes; raise the memory-lock limit, e.g. LimitMEMLOCK=): %w", len(s.umem), err)
		}
		return fmt.Errorf("register the UMEM: %w", err)
	}
	for _, opt := range []int{unix.XDP_UMEM_FILL_RING, unix.XDP_UMEM_COMPLETION_RING, unix.XDP_RX_RING, unix.XDP_TX_RING} {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, opt, c.RingSize); err != nil {
			return fmt.Errorf("size ring %d: %w", opt, err)
		}
	}
	var off unix.XDPMmapOffsets
	if err := getsockopt(s.fd, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), unsafe.Sizeof(off)); err != nil {
		return fmt.Errorf("read the ring offsets: %w", err)
	}
	n := uint32(c.RingSize)
	if s.fill.ring, err = s.mmapRing(off.Fr, n, 8, unix.XDP_UMEM_PGOFF_FILL_RING); err != nil {
		return fmt.Errorf("map the fill ring: %w", err)
	}
	s.fill.addrs = unsafe.Slice((*uint64)(unsafe.Pointer(&s.fill.mem[off.Fr.Desc])), n)
	if s.completion.ring, err = s.mmapRing(off.Cr, n, 8, unix.XDP_UMEM_PGOFF_COMPLETION_RING); err != nil {
		return fmt.Errorf("map the completion ring: %w", err)
	}
	s.completion.addrs = unsafe.Slice((*uint64)(unsafe.Pointer(&s.completion.mem[off.Cr.Desc])), n)
	if s.rx.ring, err = s.mmapRing(off.Rx, n, 16, unix.XDP_PGOFF_RX_RING); err != nil {
		return fmt.Errorf("map the RX ring: %w", err)
	}
	s.rx.descs = unsafe.Slice((*Desc)(unsafe.Pointer(&s.rx.mem[off.Rx.Desc])), n)
	if s.tx.ring, err = s.mmapRing(off.Tx, n, 16, unix.XDP_PGOFF_TX_RING); err != nil {
		return fmt.Errorf("map the TX ring: %w", err)
	}
	s.tx.descs = unsafe.Slice((*Desc)(unsafe.Pointer(&s.tx.mem[off.Tx.Desc])), n)

	// The first ring's worth of frames goes to the fill ring before bind,
	// so the queue can receive at once.
	for i := range n {
		s.fill.addrs[i] = uint64(i) * s.frameSize
	}
	atomic.StoreUint32(s.fill.producer, n)

	// No XDP_ZEROCOPY nor XDP_COPY flag: the kernel tries zero-copy and
	// falls back to copy mode when the driver cannot.
	sa := &unix.SockaddrXDP{Flags: unix.XDP_USE_NEED_WAKEUP, Ifindex: uint32(c.Ifindex), QueueID: uint32(c.Queue)}
	if err := unix.Bind(s.fd, sa); err != nil {
		return unsupported(fmt.Errorf("bind: %w", err))
	}
	var opts uint32
	if err := getsockopt(s.fd, unix.XDP_OPTIONS, unsafe.Pointer(&opts), unsafe.Sizeof(opts)); err != nil {
		return fmt.Errorf("read the socket options: %w", err)
	}
	s.zeroCopy = opts&unix.XDP_OPTIONS_ZEROCOPY != 0
	s.poll[0] = unix.PollFd{Fd: int32(s.fd), Events: unix.POLLIN}
	return nil
}

// getsockopt and setsockopt are the SOL_XDP options whose values are
// structs, which x/sys/unix has no helper for.
func getsockopt(fd, opt int, val unsafe.Pointer, size uintptr) error {
	n := uint32(size)
	if _, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(val), uintptr(unsafe.Pointer(&n)), 0); errno != 0 {
		return errno
	}
	return nil
}

func setsockopt(fd, opt int, val unsafe.Pointer, size uintptr) error {
	if _, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(val), size, 0); errno != 0 {
		return errno
	}
	return nil
}

func (s *Socket) mmapRing(off unix.XDPRingOffset, n uint32, descSize uint64, pgoff int64) (ring, error) {
	mem, err := unix.Mmap(s.fd, pgoff, int(off.Desc+uint64(n)*descSize), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return ring{}, err
	}
	return ring{
		mem:      mem,
		producer: (*uint32)(unsafe.Pointer(&mem[off.Producer])),
		consumer: (*uint32)(unsafe.Pointer(&mem[off.Consumer])),
		flags:    (*uint32)(unsafe.Pointer(&mem[off.Flags])),
		mask:     n - 1,
		size:     n,
	}, nil
}

// Close closes the socket (the kernel removes it from the socket map) and
// unmaps its rings and UMEM. Descriptors and frame slices die with it.
// Later calls do nothing.
func (s *Socket) Close() error {
	if s.fd < 0 {
		return nil
	}
	var errs []error
	for _, m := range [][]byte{s.fill.mem, s.completion.mem, s.rx.mem, s.tx.mem, s.umem} {
		if m != nil {
			errs = append(errs, unix.Munmap(m))
		}
	}
	errs = append(errs, unix.Close(s.fd))
	s.fd = -1
	s.fill, s.completion, s.rx, s.tx, s.umem = addrRing{}, addrRing{}, descRing{}, descRing{}, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("xdp: close socket: %w", err)
	}
	return nil
}

// Stats are the kernel's counters of a socket (struct xdp_statistics).
type Stats struct {
	// RxDropped counts frames dropped for want of room: too long for a
	// frame, or no frame in the fill ring (copy mode).
	RxDropped uint64
	// RxInvalid and TxInvalid count descriptors the kernel refused.
	RxInvalid, TxInvalid uint64
	// RxRingFull counts frames dropped because the RX ring was full.
	RxRingFull uint64
	// FillRingEmpty counts times the kernel found the fill ring empty.
	FillRingEmpty uint64
	// TxRingEmpty counts times the kernel found the TX ring empty.
	TxRingEmpty uint64
}

// Stats reads the socket's counters from the kernel.
func (s *Socket) Stats() (Stats, error) {
	var st unix.XDPStatistics
	if err := getsockopt(s.fd, unix.XDP_STATISTICS, unsafe.Pointer(&st), unsafe.Sizeof(st)); err != nil {
		return Stats{}, fmt.Errorf("xdp: read the socket's statistics: %w", err)
	}
	return Stats{RxDropped: st.Rx_dropped, RxInvalid: st.Rx_invalid_descs, TxInvalid: st.Tx_invalid_descs,
		RxRingFull: st.Rx_ring_full, FillRingEmpty: st.Rx_fill_ring_empty_descs, TxRingEmpty: st.Tx_ring_empty_descs}, nil
}

// FD is the socket's descriptor, for a caller that polls it together with
// others (Wait polls it alone).
func (s *Socket) FD() int { return s.fd }

// ZeroCopy reports whether the driver runs the socket in zero-copy mode
// (frames DMA'd into the UMEM) rather than copy mode.
func (s *Socket) ZeroCopy() bool { return s.zeroCopy }

// Frames returns the UMEM's frame count.
func (s *Socket) Frames() int { return s.frames }

// FrameAddr returns the UMEM offset of frame i.
func (s *Socket) FrameAddr(i int) uint64 { return uint64(i) * s.frameSize }

// Data returns the bytes d describes, in place in the UMEM: valid until the
// frame goes back to the kernel (Fill or Transmit).
func (s *Socket) Data(d Desc) []byte {
	return s.umem[d.Addr : d.Addr+uint64(d.Len) : d.Addr+uint64(d.Len)]
}

// Headroom returns how many bytes of its frame lie before d's data: a
// worker may move d.Addr back by up to that much (and grow d.Len by as
// much) to prepend headers.
func (s *Socket) Headroom(d Desc) int { return int(d.Addr % s.frameSize) }

// Room returns how many bytes of its frame lie after d's data.
func (s *Socket) Room(d Desc) int { return int(s.frameSize - d.Addr%s.frameSize - uint64(d.Len)) }

// Receive moves up to len(descs) received frames from the RX ring into
// descs and returns how many; they are the caller's until it passes them to
// Fill or Transmit. It never blocks: Wait does.
func (s *Socket) Receive(descs []Desc) int {
	cons := *s.rx.consumer // only this side writes it
	n := min(atomic.LoadUint32(s.rx.producer)-cons, uint32(len(descs)))
	for i := range n {
		descs[i] = s.rx.descs[(cons+i)&s.rx.mask]
	}
	atomic.StoreUint32(s.rx.consumer, cons+n)
	return int(n)
}

// Fill gives frames back to the kernel for receiving (any address inside a
// frame names the frame) and returns how many the fill ring took. When the
// driver asks for it (need_wakeup), it wakes the driver.
func (s *Socket) Fill(addrs []uint64) int {
	prod := *s.fill.producer
	n := min(s.fill.size-(prod-atomic.LoadUint32(s.fill.consumer)), uint32(len(addrs)))
	for i := range n {
		s.fill.addrs[(prod+i)&s.fill.mask] = addrs[i] - addrs[i]%s.frameSize
	}
	atomic.StoreUint32(s.fill.producer, prod+n)
	if n > 0 && atomic.LoadUint32(s.fill.flags)&unix.XDP_RING_NEED_WAKEUP != 0 {
		// A non-blocking recvfrom is the wake-up; its result says nothing.
		_, _, _ = unix.Syscall6(unix.SYS_RECVFROM, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	}
	return int(n)
}

// Transmit queues up to len(descs) frames on the TX ring and returns how
// many it queued; they are the kernel's until Complete returns them. Each
// descriptor must lie within one frame. It kicks the kernel with sendto only
// when the ring asks for it (need_wakeup; always so in copy mode). The
// error is that of the kick; EAGAIN, EBUSY and ENOBUFS are not errors (the
// kernel sends what it can and the next kick retries).
func (s *Socket) Transmit(descs []Desc) (int, error) {
	prod := *s.tx.producer
	n := min(s.tx.size-(prod-atomic.LoadUint32(s.tx.consumer)), uint32(len(descs)))
	for i := range n {
		s.tx.descs[(prod+i)&s.tx.mask] = descs[i]
	}
	atomic.StoreUint32(s.tx.producer, prod+n)
	if n == 0 || atomic.LoadUint32(s.tx.flags)&unix.XDP_RING_NEED_WAKEUP == 0 {
		return int(n), nil
	}
	return int(n), s.Kick()
}

// Kick asks the kernel to send what the TX ring holds. Transmit calls it
// when needed; a worker calls it again when Complete returns less than it
// has in flight and the ring still asks for a wake-up. In copy mode one
// system call sends at most the kernel's TX budget (32 frames) and says
// EAGAIN when more wait, so Kick calls again while the kernel takes
// frames: a batch of DefaultBatch frames would otherwise leave half of it
// on the ring each round, and under steady load the ring would fill up.
// It stops when the ring is empty or a call took nothing (the device is
// busy; the next kick retries).
func (s *Socket) Kick() error {
	for {
		before := atomic.LoadUint32(s.tx.consumer)
		_, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case unix.EAGAIN:
			after := atomic.LoadUint32(s.tx.consumer)
			if after == before || after == *s.tx.producer {
				return nil
			}
		case 0, unix.EBUSY, unix.ENOBUFS:
			return nil
		default:
			return fmt.Errorf("xdp: kick TX: %w", errno)
		}
	}
}

// Complete moves up to len(addrs) addresses of sent frames from the
// completion ring into addrs and returns how many; the frames are the
// caller's again (the addresses are the transmitted descriptors' Addr).
func (s *Socket) Complete(addrs []uint64) int {
	cons := *s.completion.consumer
	n := min(atomic.LoadUint32(s.completion.producer)-cons, uint32(len(addrs)))
	for i := range n {
		addrs[i] = s.completion.addrs[(cons+i)&s.completion.mask]
	}
	atomic.StoreUint32(s.completion.consumer, cons+n)
	return int(n)
}

// Wait blocks until the RX ring has frames, or for timeoutMs milliseconds
// (-1: no limit), and reports whether frames are there. EINTR counts as a
// timeout.
func (s *Socket) Wait(timeoutMs int) (bool, error) {
	n, err := unix.Poll(s.poll[:], timeoutMs)
	if err != nil && err != unix.EINTR {
		return false, fmt.Errorf("xdp: wait: %w", err)
	}
	return n > 0 && s.poll[0].Revents&unix.POLLIN != 0, nil
}
