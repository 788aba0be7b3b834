// Package balancer is the balancer's data path: it reads every packet sent to
// the VIPs from raw IP sockets (IPv6 whole from packet sockets), or on the
// xdp data plane first from AF_XDP sockets (xdp.go), keys it by flow,
// classifies it by (VIP, protocol, destination port) to its service, picks a
// backend of that service (connection tracking first, then the service's own
// Maglev table, with the service's hash), encapsulates it in place and sends
// it to the backend with sendmmsg on an IP_HDRINCL socket of the outer's
// family, or from the AF_XDP socket with the next hop's Ethernet header.
//
// It owns the sockets and their BPF filters, the workers and their
// counters (per backend and per service), the classification, the
// snapshot of services and backends, the cache of the kernel's routes
// to the backends (routes.go), and on the xdp data plane the XDP program's
// attachment and VIP map, the AF_XDP sockets and the next hop table. It must not attach addresses, change nft
// rules or sysctls (the daemon does that before it hands the balancer a VIP),
// and it never logs per packet.
package balancer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
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
	EncapPort uint16
	// Workers is the number of packet workers, each on its own OS thread;
	// 0 means GOMAXPROCS.
	Workers   int
	Conntrack *conntrack.Table
	Logger    *slog.Logger
	// XDP, when not nil, adds the AF_XDP data path (xdp.go); Open fails if
	// it cannot be set up.
	XDP *XDP
	// TableBuilt, when not nil, is told of each build of a service's
	// Maglev table and how long it took (for the metrics); it is called
	// by SetServices, never by a worker.
	TableBuilt func(service string, took time.Duration)
}

// Balancer forwards packets for the services' VIPs. Open it, SetServices,
// then Run.
type Balancer struct {
	cfg     Config
	log     *slog.Logger
	routes  *routeCache
	workers []*worker
	loops   rawio.Loops
	// xdp is the AF_XDP path, nil in raw mode.
	xdp  *xdpPath
	snap atomic.Pointer[snapshot]

	mu       sync.Mutex // serialises SetServices; guards the stats maps and last
	stats    map[uint32]*backendStats
	svcStats map[string]*serviceStats
	last     model.Set // the set SetServices last installed

	// noIPv6 says why the workers have no IPv6 packet socket (nil: they
	// have one); SetServices then refuses IPv6 VIPs.
	noIPv6 error

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
// sockets take nothing until SetServices gives them VIPs; nothing is
// forwarded until Run.
func Open(cfg Config) (*Balancer, error) {
	if cfg.Conntrack == nil {
		return nil, errors.New("balancer: no connection tracking table")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ifindex := 0
	if cfg.XDP != nil {
		var err error
		if ifindex, cfg.Workers, err = rxQueues(cfg.XDP.Interface); err != nil {
			return nil, err
		}
	}
	routes, err := newRouteCache(cfg.Logger)
	if err != nil {
		return nil, err
	}
	b := &Balancer{cfg: cfg, log: cfg.Logger, routes: routes,
		stats: map[uint32]*backendStats{}, svcStats: map[string]*serviceStats{}}
	empty, err := b.buildSnapshot(model.Set{})
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
	}
	if cfg.XDP != nil {
		if err := b.openXDP(cfg.XDP.Interface, ifindex); err != nil {
			b.Close()
			return nil, err
		}
		b.log.Info("AF_XDP data path, one worker per receive queue", "interface", cfg.XDP.Interface,
			"attached", b.xdp.mode.String(), "zero_copy", b.xdp.zeroCopy, "workers", len(b.workers))
	}
	for _, w := range b.workers {
		if w.xq != nil {
			b.loops.AddWith(w.fds, w.batch, w.xq, w.forward)
		} else {
			b.loops.Add(w.fds, w.batch, w.forward)
		}
	}
	return b, nil
}

// openWorker opens worker i's sockets: a raw TCP and a raw UDP socket, and
// on worker 0 an ICMP one, for every local address, and a packet socket
// for IPv6 (see listen). Their BPF filters keep only packets to the VIPs,
// none until SetServices gives VIPs (see filter); only this worker's share
// of the TCP and UDP flows too, so no two workers receive the same packet.
// Worker 0 takes all of ICMP and ICMPv6, which are rare and whose errors
// are keyed by the quoted packet, beyond a simple filter's reach, and every
// IPv6 packet with extension headers (fragments included).
func (b *Balancer) openWorker(i int) (*worker, error) {
	w := newWorker(b, i)
	if b.cfg.Workers > 1 {
		w.share = shareFilter(uint32(i), uint32(b.cfg.Workers))
		w.share6 = shareFilter6(uint32(i), uint32(b.cfg.Workers))
	}
	protos := []int{unix.IPPROTO_TCP, unix.IPPROTO_UDP}
	if i == 0 {
		protos = append(protos, unix.IPPROTO_ICMP)
	}
	for _, proto := range protos {
		if err := w.listen(proto); err != nil {
			w.close()
			return nil, err
		}
	}
	// A unit that does not allow packet sockets (RestrictAddressFamilies
	// without AF_PACKET) still balances IPv4; SetServices then refuses
	// IPv6 VIPs, saying why.
	err := w.listen(ipv6Packets)
	switch {
	case errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EPERM):
		b.noIPv6 = err
	case err != nil:
		w.close()
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		w.close()
		return nil, fmt.Errorf("balancer: raw send socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)
	w.sendFD = fd
	// IPPROTO_RAW implies IPV6_HDRINCL (ipv6(7)). A kernel without IPv6
	// (ipv6.disable=1) has no route to an IPv6 backend either: then there is
	// no such socket, and nothing is ever queued for it.
	fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	switch {
	case errors.Is(err, unix.EAFNOSUPPORT):
	case err != nil:
		w.close()
		return nil, fmt.Errorf("balancer: raw IPv6 send socket: %w", err)
	default:
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)
		// The outers' sources go with each packet (IPV6_PKTINFO), so that
		// the kernel selects none per packet; IPV6_FREEBIND keeps one the
		// host has just lost sendable, as the header's source always was.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
			unix.Close(fd)
			w.close()
			return nil, fmt.Errorf("balancer: raw IPv6 send socket: IPV6_FREEBIND: %w", err)
		}
		w.sendFD6 = fd
	}
	return w, nil
}

// ipv6Packets stands, among the listening sockets' protocols, for the
// packet socket that takes IPv6 (its EtherType; no IP protocol has it).
const ipv6Packets = unix.ETH_P_IPV6

// listen opens one raw socket of protocol proto, attaches the filter that
// keeps nothing, empties what it received before that, and adds it to the
// worker's descriptors. It is not bound: it receives for every local
// address, and its filter picks the VIPs', so that VIPs come and go without
// opening or closing a socket.
//
// IPv6 (proto ipv6Packets) is read from a packet socket (AF_PACKET,
// SOCK_DGRAM: from the IPv6 header on, on every interface): a raw IPv6
// socket hands over the transport header only, and the client's IPv6
// header, extension headers and flow label would have to be rebuilt from
// ancillary data, never quite as sent (docs/architecture.md, "IPv6
// ingestion"). Its filter keeps the packets addressed to this host
// (PACKET_HOST) and to an IPv6 VIP.
//
// The socket is a plain descriptor, not a net.IPConn: net.IPConn registers
// its socket with the Go runtime's epoll, and then every arriving packet woke
// an idle runtime thread that found nothing to do (measured with make
// bench-dataplane: ~40,000 wake-ups a second, a third of caplanced's CPU, and
// 0.70× kernel forwarding instead of 0.78–0.88×). The worker reads it in its
// own loop and never needs the runtime's poller.
func (w *worker) listen(proto int) error {
	name := protoNames[proto]
	family, typ, num := unix.AF_INET, unix.SOCK_RAW, proto
	if proto == ipv6Packets {
		family, typ, num = unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_IPV6))
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, num)
	if err != nil {
		return fmt.Errorf("balancer: %s socket: %w", name, err)
	}
	w.fds = append(w.fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	w.protos = append(w.protos, proto)
	if err := w.attach(fd, proto, nil); err != nil {
		return fmt.Errorf("balancer: %s socket: BPF filter: %w", name, err)
	}
	// Whatever arrived before the filter (any local packet of the protocol).
	var buf [1]byte
	for {
		_, _, err := unix.Recvfrom(fd, buf[:], unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("balancer: %s socket: emptying it: %w", name, err)
		}
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
	return nil
}

// protoNames names the listening sockets in errors.
var protoNames = map[int]string{unix.IPPROTO_TCP: "raw tcp", unix.IPPROTO_UDP: "raw udp", unix.IPPROTO_ICMP: "raw icmp", ipv6Packets: "ipv6 packet"}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// attach gives socket fd, of protocol proto, the filter that keeps the
// packets to vips of its family: all of them on the ICMP socket, this
// worker's share on the others.
func (w *worker) attach(fd, proto int, vips []netip.Addr) error {
	v4, v6 := splitFamilies(vips)
	accept := []bpf.Instruction{keepPacket}
	if proto == ipv6Packets {
		if w.share6 != nil {
			accept = w.share6
		}
		return attachFilter(fd, vipFilter6(v6, accept))
	}
	if proto != unix.IPPROTO_ICMP && w.share != nil {
		accept = w.share
	}
	return attachFilter(fd, vipFilter(v4, accept))
}

// splitFamilies splits vips, sorted (IPv4 before IPv6), by family.
func splitFamilies(vips []netip.Addr) (v4, v6 []netip.Addr) {
	i := 0
	for i < len(vips) && vips[i].Is4() {
		i++
	}
	return vips[:i], vips[i:]
}

// filter gives every socket the filter for vips, instead of old's. It is
// all or nothing: on a failure it puts old's back where it had changed it.
// SO_ATTACH_FILTER replaces a socket's filter atomically, so no packet slips
// through between the two.
func (b *Balancer) filter(vips, old []netip.Addr) error {
	type sock struct {
		w         *worker
		fd, proto int
	}
	var done []sock
	for _, w := range b.workers {
		for j, p := range w.fds {
			s := sock{w, int(p.Fd), w.protos[j]}
			if err := w.attach(s.fd, s.proto, vips); err != nil {
				for _, d := range done {
					_ = d.w.attach(d.fd, d.proto, old)
				}
				if errors.Is(err, unix.ENOMEM) {
					err = fmt.Errorf("%w (a socket's filter counts against net.core.optmem_max)", err)
				}
				return fmt.Errorf("balancer: BPF filter for %d VIPs on the %s socket: %w", len(vips), protoNames[s.proto], err)
			}
			done = append(done, s)
		}
	}
	return nil
}

// keepPacket ends a filter keeping the whole packet.
var keepPacket = bpf.RetConstant{Val: 1 << 18}

// maxSkip is the farthest a conditional jump of classic BPF reaches.
const maxSkip = 255

// vipFilter keeps the packets whose destination is one of vips and that
// accept keeps. It compares the destination with each VIP in turn; a
// conditional jump reaches at most maxSkip instructions ahead, so the
// comparisons come in runs of maxSkip, each followed by an unconditional
// jump to accept.
func vipFilter(vips []netip.Addr, accept []bpf.Instruction) []bpf.Instruction {
	prog := []bpf.Instruction{bpf.LoadAbsolute{Off: 16, Size: 4}} // A = destination address
	var jumps []int                                               // the jumps to accept
	for run := range slices.Chunk(vips, maxSkip) {
		for i, v := range run {
			a := v.As4()
			j := bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(a[:]), SkipTrue: uint8(len(run) - 1 - i)}
			if i == len(run)-1 {
				j.SkipFalse = 1 // on to the next run
			}
			prog = append(prog, j)
		}
		jumps = append(jumps, len(prog))
		prog = append(prog, bpf.Jump{})
	}
	prog = append(prog, bpf.RetConstant{Val: 0})
	for _, j := range jumps {
		prog[j] = bpf.Jump{Skip: uint32(len(prog) - j - 1)}
	}
	return append(prog, accept...)
}

// shareFilter keeps the TCP and UDP packets whose (source address ^ source
// port ^ destination port) mod n is i: every packet of a flow lands on the
// same worker, and the n workers' filters partition the traffic. Fragments
// never reach raw sockets (the kernel reassembles first), so the ports are
// always there.
func shareFilter(i, n uint32) []bpf.Instruction {
	return []bpf.Instruction{
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
		keepPacket,
		bpf.RetConstant{Val: 0},
	}
}

// vipFilter6 keeps, of what a packet socket reads from the IPv6 header on,
// the packets addressed to this host (PACKET_HOST: not one a promiscuous
// interface or the host itself sends) whose destination is one of vips and
// that accept keeps; never a neighbour discovery message (ICMPv6 133-137
// right after the fixed header), which the host's kernel answers.
//
// The destination's four words are loaded once into scratch memory: the
// kernel charges a filter for its translation to eBPF, where every load
// from the packet takes several instructions and a load from scratch one
// (comparing each VIP's four words from the packet, 32 VIPs did not fit
// twice in Debian 12's 20480 bytes of optmem_max). The comparisons are a
// tree, word by word (vipTree6): VIPs that share their first 96 bits cost
// one instruction each, as IPv4 VIPs do.
func vipFilter6(vips []netip.Addr, accept []bpf.Instruction) []bpf.Instruction {
	prog := []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtType},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_HOST, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.LoadAbsolute{Off: 6, Size: 1}, // next header
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_ICMPV6, SkipTrue: 4},
		bpf.LoadAbsolute{Off: 40, Size: 1}, // ICMPv6 type
		bpf.JumpIf{Cond: bpf.JumpLessThan, Val: 133, SkipTrue: 2},
		bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: 137, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
	}
	words := make([][4]uint32, len(vips)) // sorted, as vips are
	for i, v := range vips {
		a := v.As16()
		for w := range 4 {
			words[i][w] = binary.BigEndian.Uint32(a[4*w:])
		}
	}
	t := vipTree6{prog: prog}
	if len(words) > 0 {
		for w := range 4 { // the destination address into M[0..3]
			t.prog = append(t.prog, bpf.LoadAbsolute{Off: uint32(24 + 4*w), Size: 4}, bpf.StoreScratch{Src: bpf.RegA, N: w})
		}
		t.node(words, 0)
	}
	drop := len(t.prog)
	t.prog = append(t.prog, bpf.RetConstant{Val: 0})
	for _, j := range t.toDrop {
		t.prog[j] = bpf.Jump{Skip: uint32(drop - j - 1)}
	}
	for _, j := range t.toAccept {
		t.prog[j] = bpf.Jump{Skip: uint32(len(t.prog) - j - 1)}
	}
	return append(t.prog, accept...)
}

// vipTree6 builds vipFilter6's comparisons. A jump of classic BPF reaches
// any distance only unconditionally, so a comparison that leads far away
// leads to a Jump, patched once the target is known.
type vipTree6 struct {
	prog []bpf.Instruction
	// toDrop and toAccept are the Jumps to the end's drop and accept.
	toDrop, toAccept []int
}

// node compares word w of the destination with those of vips, which agree
// on the words before w and are sorted: a match goes on to the next word's
// node of the VIPs with that word, a mismatch drops the packet, since no
// other VIP can match.
func (t *vipTree6) node(vips [][4]uint32, w int) {
	t.prog = append(t.prog, bpf.LoadScratch{Dst: bpf.RegA, N: w})
	if w == 3 {
		// The last word: runs of comparisons as in vipFilter.
		for run := range slices.Chunk(vips, maxSkip) {
			for i, v := range run {
				j := bpf.JumpIf{Cond: bpf.JumpEqual, Val: v[3], SkipTrue: uint8(len(run) - 1 - i)}
				if i == len(run)-1 {
					j.SkipFalse = 1 // on to the next run
				}
				t.prog = append(t.prog, j)
			}
			t.toAccept = append(t.toAccept, len(t.prog))
			t.prog = append(t.prog, bpf.Jump{})
		}
		t.toDrop = append(t.toDrop, len(t.prog))
		t.prog = append(t.prog, bpf.Jump{})
		return
	}
	var groups [][][4]uint32 // vips by word w
	for i := 0; i < len(vips); {
		j := i + 1
		for j < len(vips) && vips[j][w] == vips[i][w] {
			j++
		}
		groups = append(groups, vips[i:j])
		i = j
	}
	jumps := make([]int, len(groups))
	for g, group := range groups {
		t.prog = append(t.prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: group[0][w], SkipFalse: 1})
		jumps[g] = len(t.prog)
		t.prog = append(t.prog, bpf.Jump{})
	}
	t.toDrop = append(t.toDrop, len(t.prog))
	t.prog = append(t.prog, bpf.Jump{})
	for g, group := range groups {
		t.prog[jumps[g]] = bpf.Jump{Skip: uint32(len(t.prog) - jumps[g] - 1)}
		t.node(group, w+1)
	}
}

// shareFilter6 is shareFilter for IPv6 packets read from their IPv6
// header: TCP and UDP right after the fixed header are split by (last word
// of the source address ^ source port ^ destination port) mod n; everything
// else (ICMPv6, extension headers, fragments, whose ports a classic filter
// cannot find) goes to worker 0, so the fragments of a datagram stay
// together.
func shareFilter6(i, n uint32) []bpf.Instruction {
	rest := bpf.Instruction(bpf.RetConstant{Val: 0})
	if i == 0 {
		rest = keepPacket
	}
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: 6, Size: 1}, // next header
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_TCP, SkipTrue: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_UDP, SkipTrue: 1},
		rest,
		bpf.LoadAbsolute{Off: 40, Size: 2},    // source port
		bpf.StoreScratch{Src: bpf.RegA, N: 0}, //
		bpf.LoadAbsolute{Off: 42, Size: 2},    // destination port
		bpf.LoadScratch{Dst: bpf.RegX, N: 0},  //
		bpf.ALUOpX{Op: bpf.ALUOpXor},          // A ^= source port
		bpf.StoreScratch{Src: bpf.RegA, N: 0}, //
		bpf.LoadAbsolute{Off: 20, Size: 4},    // A = last word of the source address
		bpf.LoadScratch{Dst: bpf.RegX, N: 0},  //
		bpf.ALUOpX{Op: bpf.ALUOpXor},          //
		bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: n},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: i, SkipFalse: 1},
		keepPacket,
		bpf.RetConstant{Val: 0},
	}
}

func attachFilter(fd int, filter []bpf.Instruction) error {
	raw, err := bpf.Assemble(filter)
	if err != nil {
		return err
	}
	prog := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
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
	if b.xdp != nil {
		b.xdp.close()
	}
	b.routes.close()
}

// Stats is a point-in-time copy of the counters.
type Stats struct {
	// Services are sorted by name.
	Services []ServiceStats `json:"services"`
	// Backends are in the order SetServices got them.
	Backends []BackendStats `json:"backends"`
	// Received counts packets read from the VIP sockets, AF_XDP ones
	// included.
	Received uint64 `json:"received"`
	// XDPReceived counts the packets of Received read from the AF_XDP
	// sockets.
	XDPReceived uint64 `json:"xdp_received"`
	// Forwarded counts packets (or whole fragmented datagrams) sent to a backend.
	Forwarded uint64 `json:"forwarded"`
	// Drops counts dropped packets by reason (see DropReasons).
	Drops map[string]uint64 `json:"drops"`
	// ViaRaw counts the packets the AF_XDP path handed to the raw path,
	// by reason (see ViaRawReasons); empty in raw mode.
	ViaRaw             map[string]uint64 `json:"xdp_via_raw"`
	ConntrackSize      int               `json:"conntrack_size"`
	ConntrackEvictions uint64            `json:"conntrack_evictions"`
}

// ServiceStats are one service's counters. They last as long as the
// service: a SetServices that keeps it keeps them.
type ServiceStats struct {
	Name string `json:"name"`
	// Packets and Bytes are what was sent to its backends, NewFlows the
	// flows given a backend by its table.
	Packets  uint64 `json:"packets"`
	Bytes    uint64 `json:"bytes"`
	NewFlows uint64 `json:"new_flows"`
	// ActiveFlows and InactiveFlows sum its backends' (BackendStats).
	ActiveFlows   uint64 `json:"active_flows"`
	InactiveFlows uint64 `json:"inactive_flows"`
	// Drops counts the packets classified to the service and then dropped
	// (no_backend, too_big, send_error, encap_error).
	Drops uint64 `json:"drops"`
}

// BackendStats are one backend's counters.
type BackendStats struct {
	Name string `json:"name"`
	// Service is the name of its service.
	Service  string `json:"service"`
	State    string `json:"state"`
	Packets  uint64 `json:"packets"`
	Bytes    uint64 `json:"bytes"`
	NewFlows uint64 `json:"new_flows"`
	// ActiveFlows is how many tracked flows point at the backend, except
	// InactiveFlows: TCP connections the client has closed (FIN or RST),
	// tracked for the short closing timeout only.
	ActiveFlows   uint64 `json:"active_flows"`
	InactiveFlows uint64 `json:"inactive_flows"`
}

// Stats sums the per-worker counters.
func (b *Balancer) Stats() Stats {
	st := Stats{Drops: map[string]uint64{}, ViaRaw: map[string]uint64{}}
	for _, w := range b.workers {
		st.Received += w.received.Load()
		st.Forwarded += w.forwarded.Load()
		for r := range w.drops {
			st.Drops[dropReason(r).String()] += w.drops[r].Load()
		}
		st.XDPReceived += w.xdpReceived.Load()
		if b.xdp != nil {
			for r := range w.viaRaw {
				st.ViaRaw[viaRawReason(r).String()] += w.viaRaw[r].Load()
			}
			// A socket whose counters cannot be read (or one closed by
			// Close) counts nothing rather than failing every other counter.
			if ks, err := w.xdpStats(); err == nil {
				st.Drops[dropXDPRingFull.String()] += ks.RxRingFull
				st.Drops[dropXDPNoFrame.String()] += ks.RxDropped
			}
		}
	}
	flows := b.flowCounts()
	s := b.snap.Load()
	for _, t := range s.backends {
		f := flows[t.ID]
		bs := BackendStats{Name: t.Name, Service: t.Service, State: t.State.String(),
			ActiveFlows: uint64(f.Active), InactiveFlows: uint64(f.Inactive)}
		for i := range t.stats.perWorker {
			c := &t.stats.perWorker[i]
			bs.Packets += c.packets.Load()
			bs.Bytes += c.bytes.Load()
			bs.NewFlows += c.newFlows.Load()
		}
		st.Backends = append(st.Backends, bs)
	}
	for _, svc := range s.services {
		ss := ServiceStats{Name: svc.Name}
		for i := range svc.stats.perWorker {
			c := &svc.stats.perWorker[i]
			ss.Packets += c.packets.Load()
			ss.Bytes += c.bytes.Load()
			ss.NewFlows += c.newFlows.Load()
			ss.Drops += c.drops.Load()
		}
		for _, t := range svc.byIndex {
			ss.ActiveFlows += uint64(flows[t.ID].Active)
			ss.InactiveFlows += uint64(flows[t.ID].Inactive)
		}
		st.Services = append(st.Services, ss)
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

// ViaRawReasons lists every name of Stats.ViaRaw, for documentation and
// tests.
func ViaRawReasons() []string {
	names := make([]string, numViaRawReasons)
	for r := range names {
		names[r] = viaRawReason(r).String()
	}
	return names
}
