// Package receiver is the backend side's user-space data path: it reads
// foo-over-UDP datagrams on the encap port (over IPv4, and over IPv6 when a
// balancer address is IPv6), lets encap.Decapsulator decide whether each may
// pass (only from the balancers, only to the VIPs, only well-formed, only
// from a source a client can have), and injects the inner packet, unchanged,
// into the local stack through a raw socket of the inner packet's family
// that takes whole packets (IP_HDRINCL, IPV6_HDRINCL), which routes it to
// the VIP on lo. That injection takes the output path,
// where the kernel checks no source address (no martian or rp_filter check),
// so the receiver follows the host's own addresses (netlink address events)
// and hands them to the decapsulator, which refuses them as inner sources.
//
// It owns its sockets, workers and counters. It must not attach the VIPs or
// change sysctls (the daemon does that through package vip first), and it
// never logs per packet.
package receiver

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/rawio"
)

// Config is what a receiver needs; the daemon fills it from config.Receiver.
type Config struct {
	// VIPs and Balancers may hold both families: an IPv6 balancer opens
	// the IPv6 encap sockets, an IPv6 VIP the IPv6 injection sockets.
	VIPs      []netip.Addr
	Balancers []netip.Addr
	Port      uint16
	// Workers is the number of workers, each with its own SO_REUSEPORT
	// socket; 0 means GOMAXPROCS.
	Workers int
}

const (
	batchSize     = 32
	maxDatagram   = 65535
	socketBuffer  = 4 << 20
	injectFailure = encap.NumRejects // counter index after the reject reasons
)

// Receiver decapsulates and delivers. Open it, then Run.
type Receiver struct {
	dec     *encap.Decapsulator
	addrs   *hostAddrs
	workers []*worker
	loops   rawio.Loops
}

type worker struct {
	r *Receiver
	// The encap sockets, IPv4 and (-1 without an IPv6 balancer) IPv6, and
	// the injection sockets, IPv4 and (-1 without an IPv6 VIP) IPv6.
	encapFD, encap6FD   int
	fds                 []unix.PollFd // the encap sockets, for the loop
	injectFD, inject6FD int
	batch               *rawio.Batch
	queue, queue6       *rawio.Queue

	received  atomic.Uint64
	delivered atomic.Uint64
	// counts[reason] for every encap.Reject (Accept unused) plus inject failures.
	counts [encap.NumRejects + 1]atomic.Uint64
}

// Open binds the encap port (one SO_REUSEPORT socket per worker, so the
// kernel spreads datagrams by flow without copies) and the raw injection
// sockets, and reads the host's addresses, all in the calling thread's
// network namespace. It needs CAP_NET_RAW.
func Open(cfg Config) (*Receiver, error) {
	dec, err := encap.NewDecapsulator(cfg.Port, cfg.Balancers, cfg.VIPs)
	if err != nil {
		return nil, fmt.Errorf("receiver: %w", err)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	addrs, err := openHostAddrs()
	if err != nil {
		return nil, err
	}
	r := &Receiver{dec: dec, addrs: addrs}
	v6 := func(addrs []netip.Addr) bool {
		return slices.ContainsFunc(addrs, func(a netip.Addr) bool { return a.Unmap().Is6() })
	}
	encap6, inject6 := v6(cfg.Balancers), v6(cfg.VIPs)
	for range cfg.Workers {
		w, err := r.openWorker(cfg.Port, encap6, inject6)
		if err != nil {
			r.Close()
			return nil, err
		}
		r.workers = append(r.workers, w)
		r.loops.Add(w.fds, w.batch, w.deliver)
	}
	return r, nil
}

// openWorker opens a worker's sockets: the IPv6 encap socket only with
// encap6 (an IPv6 balancer), the IPv6 injection socket only with inject6 (an
// IPv6 VIP), so a host without IPv6 needs none. The encap sockets are plain
// descriptors rather than net.UDPConns for the reason the balancer's are
// (package balancer, listen): a socket in the Go runtime's epoll wakes an
// idle runtime thread for every datagram, and the worker reads it itself.
func (r *Receiver) openWorker(port uint16, encap6, inject6 bool) (*worker, error) {
	w := &worker{
		r:         r,
		encapFD:   -1,
		encap6FD:  -1,
		injectFD:  -1,
		inject6FD: -1,
		batch:     rawio.NewBatch(batchSize, 0, maxDatagram),
		queue:     rawio.NewQueue(batchSize),
		queue6:    rawio.NewQueue(batchSize),
	}
	var err error
	if w.encapFD, err = listenEncap(unix.AF_INET, port); err != nil {
		return nil, err
	}
	w.fds = []unix.PollFd{{Fd: int32(w.encapFD), Events: unix.POLLIN}}
	if encap6 {
		if w.encap6FD, err = listenEncap(unix.AF_INET6, port); err != nil {
			w.close()
			return nil, err
		}
		w.fds = append(w.fds, unix.PollFd{Fd: int32(w.encap6FD), Events: unix.POLLIN})
	}
	if w.injectFD, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
		w.close()
		return nil, fmt.Errorf("receiver: raw injection socket: %w", err)
	}
	if inject6 {
		if w.inject6FD, err = injectSocket6(); err != nil {
			w.close()
			return nil, err
		}
	}
	return w, nil
}

// injectSocket6 opens the raw socket that injects whole IPv6 packets. An
// IPPROTO_RAW socket takes the IPv6 header from the caller already; setting
// IPV6_HDRINCL says so, and fails on a kernel too old to know it (before
// 4.5) rather than sending a second header.
func injectSocket6() (int, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return -1, fmt.Errorf("receiver: raw IPv6 injection socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_HDRINCL, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("receiver: raw IPv6 injection socket: IPV6_HDRINCL: %w", err)
	}
	return fd, nil
}

// listenEncap opens a UDP socket of family (AF_INET or AF_INET6, the latter
// IPv6 only, so that IPv4 datagrams stay on the IPv4 sockets) on port, all
// addresses, that shares the port with the other workers' through
// SO_REUSEPORT.
func listenEncap(family int, port uint16) (int, error) {
	what, sa := "UDP", unix.Sockaddr(&unix.SockaddrInet4{Port: int(port)})
	if family == unix.AF_INET6 {
		what, sa = "UDP over IPv6", &unix.SockaddrInet6{Port: int(port)}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("receiver: %s socket: %w", what, err)
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("receiver: %s socket: IPV6_V6ONLY: %w", what, err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("receiver: %s socket: SO_REUSEPORT: %w", what, err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("receiver: listen on %s port %d: %w", what, port, err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
	return fd, nil
}

func (w *worker) close() {
	for _, fd := range []int{w.encapFD, w.encap6FD, w.injectFD, w.inject6FD} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// Run delivers packets, and follows the host's addresses, until ctx is
// done; every worker finishes the batch it holds before Run returns.
func (r *Receiver) Run(ctx context.Context) error {
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		r.addrs.follow(ctx)
	}()
	r.loops.Run(ctx)
	<-followed
	return nil
}

func (w *worker) deliver(n int) {
	w.received.Add(uint64(n))
	local := w.r.addrs.cur.Load()
	for i := range n {
		if w.batch.Truncated(i) {
			w.counts[encap.RejectMalformedOuter].Add(1)
			continue
		}
		inner, reject := w.r.dec.Payload(w.batch.Source(i).Addr(), w.batch.Packet(i), local)
		if reject != encap.Accept {
			w.counts[reject].Add(1)
			continue
		}
		// The decapsulator accepts only inner packets to a VIP, so an IPv6
		// one only when there is an IPv6 VIP, and with it inject6FD.
		if inner[0]>>4 == 6 {
			w.queue6.Add6(inner, [16]byte(inner[24:40]), 0)
		} else {
			w.queue.Add(inner, [4]byte(inner[16:20]), 0)
		}
	}
	w.delivered.Add(uint64(w.queue.Flush(w.injectFD, w.injectFailed)))
	if w.queue6.Len() > 0 {
		w.delivered.Add(uint64(w.queue6.Flush(w.inject6FD, w.injectFailed)))
	}
}

func (w *worker) injectFailed(int, error) { w.counts[injectFailure].Add(1) }

// Alive reports whether every worker has gone round its loop since the last
// call, for the watchdog: a wedged worker stops answering.
func (r *Receiver) Alive() bool { return r.loops.Alive() }

// Wedge is a test hook for the watchdog (CAPLANCE_TEST_WEDGE in
// caplanced(8)): the first worker leaves its loop as if it hung, delivers
// nothing more and stops answering Alive, until Run returns.
func (r *Receiver) Wedge() { r.loops.Wedge() }

// Close closes every socket; call it after Run returns.
func (r *Receiver) Close() {
	for _, w := range r.workers {
		w.close()
	}
	r.addrs.close()
}

// Stats is a point-in-time copy of the counters.
type Stats struct {
	Received  uint64 `json:"received"`
	Delivered uint64 `json:"delivered"`
	// Drops by reason: the encap.Reject names and "inject_error".
	Drops map[string]uint64 `json:"drops"`
}

// Stats sums the per-worker counters.
func (r *Receiver) Stats() Stats {
	names := DropReasons()
	st := Stats{Drops: make(map[string]uint64, len(names))}
	for _, name := range names {
		st.Drops[name] = 0
	}
	for _, w := range r.workers {
		st.Received += w.received.Load()
		st.Delivered += w.delivered.Load()
		for i, name := range names {
			st.Drops[name] += w.counts[i+1].Load() // counts[0] is Accept
		}
	}
	return st
}

// DropReasons lists every drop counter name: the encap.Reject reasons, then
// inject_error.
func DropReasons() []string {
	var names []string
	for reason := 1; reason < encap.NumRejects; reason++ {
		names = append(names, encap.Reject(reason).String())
	}
	return append(names, "inject_error")
}
