// Package balancer is the balancer's data path: it reads every packet sent to
// the VIPs from raw IP sockets, keys it by flow, picks a backend (connection
// tracking first, then the Maglev table), encapsulates it in place and sends
// it to the backend with sendmmsg on an IP_HDRINCL socket.
//
// It owns the sockets, the workers and their counters, and the cache of the
// kernel's routes to the backends (routes.go). It must not attach
// addresses, change nft rules or sysctls (the daemon does that before it
// opens the balancer), and it never logs per packet.
package balancer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/conntrack"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/rawio"
)

// Config is what a balancer needs; the daemon fills it from config.Balancer.
type Config struct {
	VIPs      []model.VIP
	EncapPort uint16
	TableSize int
	// Workers is the number of packet workers, each on its own OS thread;
	// 0 means GOMAXPROCS.
	Workers   int
	Conntrack *conntrack.Table
	Logger    *slog.Logger
}

// Balancer forwards packets for the VIPs. Open it, SetBackends, then Run.
type Balancer struct {
	cfg     Config
	log     *slog.Logger
	routes  *routeCache
	workers []*worker
	loops   rawio.Loops
	snap    atomic.Pointer[snapshot]

	mu    sync.Mutex // serialises SetBackends; guards stats and last
	stats map[uint32]*backendStats
	last  []model.Backend // the set SetBackends last installed

	// WatchRoutes' goroutine: an eventfd that stops it, closed when done.
	watchStop int
	watchDone chan struct{}

	// flows is the last count of tracked flows per backend (flowCounts).
	flows struct {
		sync.Mutex
		at     time.Time
		counts map[uint32]conntrack.Flows
	}
}

// batchSize is how many packets one recvmmsg or sendmmsg moves at most.
const batchSize = 32

// maxPacket is the largest IPv4 datagram; the kernel hands raw sockets
// reassembled datagrams, so a buffer must hold any of them.
const maxPacket = 65535

// socketBuffer is the receive and send buffer asked of the kernel for every
// socket, to ride out bursts while a worker is busy (capped by rmem_max and
// wmem_max).
const socketBuffer = 4 << 20

// Open creates the workers and their sockets. It needs CAP_NET_RAW. The
// sockets start receiving at once; nothing is forwarded until Run.
func Open(cfg Config) (*Balancer, error) {
	if len(cfg.VIPs) == 0 {
		return nil, errors.New("balancer: no VIPs")
	}
	if cfg.Conntrack == nil {
		return nil, errors.New("balancer: no connection tracking table")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	routes, err := newRouteCache(cfg.Logger)
	if err != nil {
		return nil, err
	}
	b := &Balancer{cfg: cfg, log: cfg.Logger, routes: routes, stats: map[uint32]*backendStats{}}
	empty, err := b.buildSnapshot(nil)
	if err != nil {
		routes.close()
		return nil, err
	}
	b.snap.Store(empty)
	for i := range cfg.Workers {
		w, err := b.openWorker(i)
		if err != nil {
			b.Close()
			return nil, err
		}
		b.workers = append(b.workers, w)
		b.loops.Add(w.fds, w.batch, w.forward)
	}
	return b, nil
}

// openWorker opens worker i's sockets: for each VIP a raw TCP and UDP socket
// whose BPF filter keeps only this worker's share of flows, so no two workers
// receive the same packet; worker 0 also takes ICMP, which is rare and whose
// errors are keyed by the quoted packet, beyond a simple filter's reach.
func (b *Balancer) openWorker(i int) (*worker, error) {
	w := newWorker(b, i)
	var filter []bpf.RawInstruction
	if b.cfg.Workers > 1 {
		var err error
		filter, err = shareFilter(uint32(i), uint32(b.cfg.Workers))
		if err != nil {
			return nil, fmt.Errorf("balancer: BPF filter: %w", err)
		}
	}
	for _, vip := range b.cfg.VIPs {
		protos := []int{unix.IPPROTO_TCP, unix.IPPROTO_UDP}
		if i == 0 {
			protos = append(protos, unix.IPPROTO_ICMP)
		}
		for _, proto := range protos {
			var f []bpf.RawInstruction
			if proto != unix.IPPROTO_ICMP {
				f = filter
			}
			if err := w.listen(proto, vip.Addr, f); err != nil {
				w.close()
				return nil, err
			}
		}
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		w.close()
		return nil, fmt.Errorf("balancer: raw send socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)
	w.sendFD = fd
	return w, nil
}

// listen opens one raw socket of protocol proto bound to vip, attaches
// filter, and adds it to the worker's descriptors.
//
// The socket is a plain descriptor, not a net.IPConn: net.IPConn registers
// its socket with the Go runtime's epoll, and then every arriving packet woke
// an idle runtime thread that found nothing to do (measured with make
// bench-dataplane: ~40,000 wake-ups a second, a third of caplanced's CPU, and
// 0.70× kernel forwarding instead of 0.78–0.88×). The worker reads it in its
// own loop and never needs the runtime's poller.
func (w *worker) listen(proto int, vip netip.Addr, filter []bpf.RawInstruction) error {
	name := protoNames[proto]
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return fmt.Errorf("balancer: raw %s socket: %w", name, err)
	}
	w.fds = append(w.fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: vip.As4()}); err != nil {
		return fmt.Errorf("balancer: bind raw %s socket to %s: %w", name, vip, err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
	if filter != nil {
		if err := attachFilter(fd, filter); err != nil {
			return fmt.Errorf("balancer: raw %s socket on %s: BPF filter: %w", name, vip, err)
		}
	}
	return nil
}

// protoNames names the protocols of the listening sockets in errors.
var protoNames = map[int]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_ICMP: "icmp"}

// shareFilter keeps the TCP and UDP packets whose (source address ^ source
// port ^ destination port) mod n is i: every packet of a flow lands on the
// same worker, and the n workers' filters partition the traffic. Fragments
// never reach raw sockets (the kernel reassembles first), so the ports are
// always there.
func shareFilter(i, n uint32) ([]bpf.RawInstruction, error) {
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadMemShift{Off: 0},                    // X = IP header length
		bpf.LoadIndirect{Off: 0, Size: 2},           // A = source port
		bpf.StoreScratch{Src: bpf.RegA, N: 0},       //
		bpf.LoadIndirect{Off: 2, Size: 2},           // A = destination port
		bpf.LoadScratch{Dst: bpf.RegX, N: 0},        //
		bpf.ALUOpX{Op: bpf.ALUOpXor},                // A ^= source port
		bpf.StoreScratch{Src: bpf.RegA, N: 0},       //
		bpf.LoadAbsolute{Off: 12, Size: 4},          // A = source address
		bpf.LoadScratch{Dst: bpf.RegX, N: 0},        //
		bpf.ALUOpX{Op: bpf.ALUOpXor},                //
		bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: n}, //
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: i, SkipFalse: 1},
		bpf.RetConstant{Val: 1 << 18}, // keep the whole packet
		bpf.RetConstant{Val: 0},
	})
}

func attachFilter(fd int, filter []bpf.RawInstruction) error {
	prog := make([]unix.SockFilter, len(filter))
	for i, ins := range filter {
		prog[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
}

// Run forwards packets until ctx is done, then lets every worker finish the
// batch it holds (so nothing received is lost) and returns.
func (b *Balancer) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() { b.loops.Run(ctx); close(done) }()
	sweep := time.NewTicker(time.Second)
	defer sweep.Stop()
	for {
		select {
		case <-sweep.C:
			b.cfg.Conntrack.Sweep(int64(time.Since(epoch)))
		case <-done:
			return nil
		}
	}
}

// Alive reports whether every worker has gone round its loop since the last
// call, for the watchdog: a wedged worker stops answering.
func (b *Balancer) Alive() bool { return b.loops.Alive() }

// Wedge is a test hook for the watchdog (CAPLANCE_TEST_WEDGE in
// caplanced(8)): the first worker leaves its loop as if it hung, reads and
// sends nothing more and stops answering Alive, until Run returns.
func (b *Balancer) Wedge() { b.loops.Wedge() }

// Close closes every socket. Call it after Run returns.
func (b *Balancer) Close() {
	b.stopWatchingRoutes()
	for _, w := range b.workers {
		w.close()
	}
	b.routes.close()
}

// Stats is a point-in-time copy of the counters.
type Stats struct {
	Backends []BackendStats
	// Received counts packets read from the VIP sockets.
	Received uint64
	// Forwarded counts packets (or whole fragmented datagrams) sent to a backend.
	Forwarded uint64
	// Drops counts dropped packets by reason (see DropReasons).
	Drops              map[string]uint64
	ConntrackSize      int
	ConntrackEvictions uint64
}

// BackendStats are one backend's counters.
type BackendStats struct {
	Name     string
	State    string
	Packets  uint64
	Bytes    uint64
	NewFlows uint64
	// ActiveFlows is how many tracked flows point at the backend, except
	// InactiveFlows: TCP connections the client has closed (FIN or RST),
	// tracked for the short closing timeout only.
	ActiveFlows, InactiveFlows uint64
}

// Stats sums the per-worker counters.
func (b *Balancer) Stats() Stats {
	st := Stats{Drops: map[string]uint64{}}
	for _, w := range b.workers {
		st.Received += w.received.Load()
		st.Forwarded += w.forwarded.Load()
		for r := range w.drops {
			st.Drops[dropReason(r).String()] += w.drops[r].Load()
		}
	}
	flows := b.flowCounts()
	for _, t := range b.snap.Load().byIndex {
		f := flows[t.ID]
		bs := BackendStats{Name: t.Name, State: t.State.String(),
			ActiveFlows: uint64(f.Active), InactiveFlows: uint64(f.Inactive)}
		for i := range t.stats.perWorker {
			c := &t.stats.perWorker[i]
			bs.Packets += c.packets.Load()
			bs.Bytes += c.bytes.Load()
			bs.NewFlows += c.newFlows.Load()
		}
		st.Backends = append(st.Backends, bs)
	}
	st.ConntrackSize = b.cfg.Conntrack.Len()
	st.ConntrackEvictions = b.cfg.Conntrack.Evictions()
	return st
}

// flowCountsMaxAge is how old a count of the tracked flows may be when
// Stats returns it. A variable for the tests.
var flowCountsMaxAge = 250 * time.Millisecond

// flowCounts counts the tracked flows of each backend: a walk over every
// entry, about 40 ms at a million flows. Everyone may read ActiveFlows and
// call ListBackends over D-Bus, each call on a goroutine of its own, so a
// local user could keep both cores walking; instead there is one walk at a
// time and at most one per flowCountsMaxAge, whoever asks. The map returned
// is shared: callers only read it.
func (b *Balancer) flowCounts() map[uint32]conntrack.Flows {
	b.flows.Lock()
	defer b.flows.Unlock()
	if b.flows.counts == nil || time.Since(b.flows.at) >= flowCountsMaxAge {
		b.flows.counts = b.cfg.Conntrack.CountByBackend()
		b.flows.at = time.Now()
	}
	return b.flows.counts
}

// DropReasons lists every drop counter name, for documentation and tests.
func DropReasons() []string {
	names := make([]string, numDropReasons)
	for r := range names {
		names[r] = dropReason(r).String()
	}
	return names
}
