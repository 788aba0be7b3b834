package benchnet

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The TX ring's geometry: RingFrames slots of ringFrameSize bytes (the
// TPACKET_V2 header, then the frame), ringBlockSize bytes a block. 16,384
// slots hold 50 ms of traffic at 300k pps: a slot is free again only when
// the kernel has freed the packet, after it crossed the veth.
const (
	RingFrames    = 16384
	ringFrameSize = 256
	ringBlockSize = 1 << 16
	// ringDataOff is where a TPACKET_V2 TX frame's data starts in its slot
	// (without PACKET_TX_HAS_OFF): TPACKET2_HDRLEN minus the struct
	// sockaddr_ll that the RX layout has there, i.e. the header aligned.
	ringDataOff = (unix.SizeofTpacket2Hdr + unix.TPACKET_ALIGNMENT - 1) &^ (unix.TPACKET_ALIGNMENT - 1)
	// MaxFrameLen is the longest frame a slot takes.
	MaxFrameLen = ringFrameSize - ringDataOff
)

// Ring is an AF_PACKET socket with a TPACKET_V2 TX ring on one interface,
// with the qdisc bypassed (PACKET_QDISC_BYPASS): a frame goes straight to
// the driver, with no copy from user space (the kernel sends the ring's
// pages) and one system call for every batch. It is not safe for concurrent
// use.
type Ring struct {
	fd   int
	mem  []byte
	next int // the slot the next frame goes to
	// Queued counts frames handed to the kernel; WrongFormat those it
	// refused (TP_STATUS_WRONG_FORMAT, counted when their slot comes round
	// again).
	Queued, WrongFormat uint64
}

// NewRing opens a TX ring on the interface ifname of the calling thread's
// network namespace. The socket's protocol is 0, so it receives nothing.
func NewRing(ifname string) (*Ring, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("tx ring: %w", err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tx ring: packet socket: %w", err)
	}
	r := &Ring{fd: fd}
	req := unix.TpacketReq{
		Block_size: ringBlockSize, Block_nr: RingFrames * ringFrameSize / ringBlockSize,
		Frame_size: ringFrameSize, Frame_nr: RingFrames,
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"PACKET_VERSION", func() error {
			return unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2)
		}},
		{"PACKET_QDISC_BYPASS", func() error {
			return unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
		}},
		{"PACKET_TX_RING", func() error { return unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_TX_RING, &req) }},
		{"mmap", func() (err error) {
			r.mem, err = unix.Mmap(fd, 0, RingFrames*ringFrameSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			return err
		}},
		{"bind to " + ifname, func() error { return unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			r.Close()
			return nil, fmt.Errorf("tx ring: %s: %w", s.what, err)
		}
	}
	return r, nil
}

// Close unmaps the ring and closes the socket.
func (r *Ring) Close() error {
	var errs []error
	if r.mem != nil {
		errs = append(errs, unix.Munmap(r.mem))
		r.mem = nil
	}
	if r.fd >= 0 {
		errs = append(errs, unix.Close(r.fd))
		r.fd = -1
	}
	return errors.Join(errs...)
}

// status is slot i's tp_status, which the kernel and user space hand back
// and forth (hence the atomics: the kernel reads the frame after it sees
// TP_STATUS_SEND_REQUEST).
func (r *Ring) status(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&r.mem[i*ringFrameSize]))
}

// Queue puts frames into free slots, in order, and returns how many it put:
// fewer when the ring is full (the kernel has not freed enough of the
// frames it sent). Nothing leaves before Flush.
func (r *Ring) Queue(frames [][]byte) int {
	for n, f := range frames {
		st := r.status(r.next)
		switch atomic.LoadUint32(st) {
		case unix.TP_STATUS_AVAILABLE:
		case unix.TP_STATUS_WRONG_FORMAT:
			r.WrongFormat++
		default:
			return n
		}
		slot := r.mem[r.next*ringFrameSize : (r.next+1)*ringFrameSize]
		copy(slot[ringDataOff:], f)
		// tp_len, after tp_status: struct tpacket2_hdr.
		*(*uint32)(unsafe.Pointer(&slot[4])) = uint32(len(f))
		atomic.StoreUint32(st, unix.TP_STATUS_SEND_REQUEST)
		r.next = (r.next + 1) % RingFrames
		r.Queued++
	}
	return len(frames)
}

// Flush has the kernel send every queued frame, without waiting for their
// slots to come free.
func (r *Ring) Flush() error {
	for {
		_, err := unix.SendmsgN(r.fd, nil, nil, nil, unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == nil, err == unix.EAGAIN, err == unix.ENOBUFS:
			return nil
		}
		return fmt.Errorf("tx ring: send: %w", err)
	}
}
