package benchnet

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/rawio"
)

// sinkNap is how long a sink sleeps when its socket is empty. It sleeps on
// a timer rather than in poll: a sleeper in poll must be woken by whoever
// queues the next datagram (the forwarding softirq, or caplanced's
// sendmmsg), an inter-processor wake-up per burst that would be charged to
// the path being measured. 4 MiB of socket buffer holds far more than a
// millisecond of traffic.
const sinkNap = time.Millisecond

// SinkCounts is what a sink counted.
type SinkCounts struct {
	Warm, Measured uint64 // well-formed datagrams of each phase
	Stale          uint64 // of earlier runs
	Malformed      uint64
}

// CountingSocket opens a UDP socket bound to addr with a 4 MiB receive
// buffer (forced, so whatever the namespace's rmem_max).
func CountingSocket(addr netip.AddrPort) (int, error) {
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: addr.Addr().As16(), Port: int(addr.Port())}
	if addr.Addr().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: addr.Addr().As4(), Port: int(addr.Port())}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("counting socket on %v: %w", addr, err)
	}
	err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	if err == nil {
		err = unix.Bind(fd, sa)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("counting socket on %v: %w", addr, err)
	}
	return fd, nil
}

// Sink counts the datagrams on fd, on a locked OS thread whose thread id it
// sends on tid, until stop is set and the socket is empty; it sets warmed
// when it has counted a warm-up datagram. check returns a datagram's phase,
// or 0 if it is malformed.
func Sink(fd int, check func(b *rawio.Batch, i int) Phase, stop, warmed *atomic.Bool, tid chan<- int) SinkCounts {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid <- unix.Gettid()
	var c SinkCounts
	batch := rawio.NewBatch(64, 0, 2048)
	for {
		n, err := batch.Recv(fd)
		if err != nil || n == 0 {
			if stop.Load() {
				return c
			}
			nap(sinkNap)
			continue
		}
		for i := range n {
			switch check(batch, i) {
			case Warm:
				c.Warm++
				warmed.Store(true)
			case Measured:
				c.Measured++
			case Stale:
				c.Stale++
			default:
				c.Malformed++
			}
		}
	}
}

// nap sleeps d on the calling thread, in nanosleep: its own timer wakes it,
// with no help from the Go scheduler's.
func nap(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}
