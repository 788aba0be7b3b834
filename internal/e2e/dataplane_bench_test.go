package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/balancer"
	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/inet"
	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/rawio"
	"github.com/caplance/caplance/internal/testbed"
)

// The data-path benchmark's load: benchFlows UDP flows (source ports
// benchSrcPort…) to benchDstPort, datagrams of benchPayload bytes, sent in
// sendmmsg batches of benchBatch; warm-up traffic that is not counted
// (until the sink has counted a warm-up packet, at most benchWarmupMax, then
// benchWarmup more), benchMeasure that is, then benchDrain for what is in
// flight.
const (
	benchFlows   = 256
	benchPayload = 64
	benchBatch   = 32
	benchSrcPort = 20000
	benchDstPort = 9000
	benchWarmup  = 300 * time.Millisecond
	// benchWarmupMax bounds the wait for the path's first delivery: the
	// first packets wait for ARP or neighbour discovery, and a host sends
	// neighbour solicitations for a forwarded packet from its IPv6
	// link-local address, usable only when that address's duplicate
	// address detection is over, a second or two after the lab is built
	// (until then the kernel sends none, and retries a second later).
	benchWarmupMax = 5 * time.Second
	benchMeasure   = 2 * time.Second
	benchDrain     = 200 * time.Millisecond
	// benchMaxLag bounds how far a paced generator may fall behind its
	// schedule (after a late wake-up) before it gives up catching up, so a
	// hiccup costs rate rather than a long burst.
	benchMaxLag = 5 * time.Millisecond
	// benchSinkNap is how long a sink sleeps when its socket is empty. It
	// sleeps on a timer rather than in poll: a sleeper in poll must be woken
	// by whoever queues the next datagram (the generator's softirq, or
	// caplanced's sendmmsg), an inter-processor wake-up per burst that would
	// be charged to the path being measured. 4 MiB of socket buffer holds
	// far more than a millisecond of traffic.
	benchSinkNap = time.Millisecond
)

// benchFamily is one address family's half of the benchmark: its
// addresses, the generator's socket in the client and the sink's two
// counting sockets. The sink is backend 0's address; for kernel forwarding
// it also holds routed, in routedNet, reached from the client through the
// balancer host.
type benchFamily struct {
	// prefix starts the family's sub-benchmark names: "" for IPv4 (the
	// names from before IPv6), "ipv6/".
	prefix                string
	client, lb, sink, vip netip.Addr
	routedNet             netip.Prefix
	routed                netip.Addr
	// forwarding is the sysctl that turns on the balancer host's
	// forwarding of the family.
	forwarding string
	// The names of the family's counters in snmpCounters.
	inReceives, forwDatagrams, udpRcvbufErrors, udpInCsumErrors string
	genFD, encapFD, routedFD                                    int
	// run numbers the family's runs, so that a sink tells an earlier run's
	// late datagrams from its own.
	run byte
}

// benchFamilies are IPv4 and IPv6, in the order they run; the IPv6
// addresses are the testbed's dual-stack lab's and the documentation prefix.
func benchFamilies() []*benchFamily {
	return []*benchFamily{{
		client: testbed.ClientAddr, lb: testbed.LBAddr, sink: testbed.BackendAddr(0), vip: testbed.VIP,
		routedNet: netip.MustParsePrefix("198.19.0.0/24"), routed: netip.MustParseAddr("198.19.0.1"),
		forwarding: "net/ipv4/ip_forward",
		inReceives: "IpInReceives", forwDatagrams: "IpForwDatagrams",
		udpRcvbufErrors: "UdpRcvbufErrors", udpInCsumErrors: "UdpInCsumErrors",
		genFD: -1, encapFD: -1, routedFD: -1,
	}, {
		prefix: "ipv6/",
		client: testbed.ClientAddr6, lb: testbed.LBAddr6, sink: testbed.BackendAddr6(0), vip: testbed.VIP6,
		routedNet: netip.MustParsePrefix("2001:db8:ff::/64"), routed: netip.MustParseAddr("2001:db8:ff::1"),
		forwarding: "net/ipv6/conf/all/forwarding",
		inReceives: "Ip6InReceives", forwDatagrams: "Ip6OutForwDatagrams",
		udpRcvbufErrors: "Udp6RcvbufErrors", udpInCsumErrors: "Udp6InCsumErrors",
		genFD: -1, encapFD: -1, routedFD: -1,
	}}
}

// benchMagic starts every payload; the next byte is the phase (warm-up or
// measured), the one after the flow's index, then the run's number.
var benchMagic = []byte("caplbnch")

const (
	phaseWarm     = 1
	phaseMeasured = 2
	// phaseStale is what the sink's checks say of a well-formed datagram
	// of an earlier run: one that caplanced, behind, sent after that run's
	// drain.
	phaseStale = 3
)

// BenchmarkDataplane sends UDP load from the client through the balancer
// host to a counting sink, once forwarded by the kernel (IP forwarding in the
// balancer's namespace) and then by caplanced (raw sockets, encapsulated to
// the sink's encap port, where a plain UDP socket counts them: no receiver,
// so only the balancer is measured). It does so for IPv4 and then for IPv6
// (6-in-6: an IPv6 VIP, the sink's IPv6 address as the backend), each
// against the kernel's forwarding of its own family. Same lab, generator and
// sink socket code in all, in the same run. It reports delivered packets per
// second, loss, CPU per delivered packet for the whole machine and for
// caplanced alone, and caplanced's rate as a fraction of the kernel's. It
// asserts nothing about speed. Run it with `make bench-dataplane`, or
//
//	go test -run '^$' -bench Dataplane -benchtime 1x ./internal/e2e/
//
// Per family the sub-benchmarks run in order and depend on the first: kernel
// forwarding unpaced; caplanced with its default worker count (one per
// CPU) unpaced, then paced at half the kernel's delivered rate, where
// nothing should be lost; and caplanced with one worker unpaced, which
// leaves the other CPU to the generator on a two-CPU machine. The IPv6
// names start with "ipv6/".
func BenchmarkDataplane(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("the data-path benchmark needs root (network namespaces)")
	}
	dp := newDataplane(b)
	for _, f := range dp.families {
		var kernel *benchResult
		b.Run(f.prefix+"kernel-forwarding/max", func(b *testing.B) {
			// The previous family's caplanced would stand in the way (its
			// nft table's hooks, its idle workers).
			dp.stopBalancer(b)
			if err := dp.tb.LB.SetSysctl(f.forwarding, "1"); err != nil {
				b.Fatal(err)
			}
			defer func() {
				if err := dp.tb.LB.SetSysctl(f.forwarding, "0"); err != nil {
					b.Error(err)
				}
			}()
			r := dp.run(b, f, f.routed, 0)
			r.report(b, "kernel forwarding, unpaced", nil)
			kernel = r
		})
		b.Run(f.prefix+"caplanced/max", func(b *testing.B) {
			dp.startBalancer(b, f, 0)
			dp.run(b, f, f.vip, 0).report(b, "caplanced, default workers, unpaced", kernel)
		})
		b.Run(f.prefix+"caplanced/half-kernel-rate", func(b *testing.B) {
			if kernel == nil {
				b.Skip("paced at half of kernel-forwarding/max's rate, which did not run")
			}
			dp.startBalancer(b, f, 0)
			rate := kernel.pps / 2
			dp.run(b, f, f.vip, rate).report(b, fmt.Sprintf("caplanced, default workers, paced at %.0f pps", rate), kernel)
		})
		b.Run(f.prefix+"caplanced-1-worker/max", func(b *testing.B) {
			dp.startBalancer(b, f, 1)
			dp.run(b, f, f.vip, 0).report(b, "caplanced, 1 worker, unpaced", kernel)
		})
	}
}

// dataplane is the benchmark's lab: the testbed's client and balancer host
// (dual-stack), and a sink host with counting sockets.
type dataplane struct {
	tb       *testbed.Testbed
	families []*benchFamily
	sink     *netnstest.Host
	balancer *testbed.Daemon
	// The running balancer's VIP (its family's) and configured workers.
	balancerVIP netip.Addr
	workers     int
	lbStats     balancer.Stats // the balancer's counters after the last run
	ksoftirqd   []int          // PIDs of the kernel's softirq threads
}

func newDataplane(b *testing.B) *dataplane {
	b.Helper()
	tb, err := testbed.New(testbed.Options{Binary: caplancedBin, Prefix: "dpb", Dir: b.TempDir(), IPv6: true})
	if err != nil {
		b.Fatal(err)
	}
	dp := &dataplane{tb: tb, families: benchFamilies()}
	b.Cleanup(func() {
		for _, f := range dp.families {
			for _, fd := range []int{f.genFD, f.encapFD, f.routedFD} {
				if fd >= 0 {
					unix.Close(fd)
				}
			}
		}
		if dp.balancer != nil {
			if err := dp.balancer.Stop(); err != nil {
				b.Error(err)
			}
		}
		if err := tb.Close(); err != nil {
			b.Error(err)
		}
	})
	if err := dp.setUp(); err != nil {
		b.Fatal(err)
	}
	return dp
}

// setUp adds the sink, the routes and redirect settings kernel forwarding
// needs, and opens the generators' and the sinks' sockets.
func (dp *dataplane) setUp() error {
	v4, v6 := dp.families[0], dp.families[1]
	var err error
	dp.sink, err = dp.tb.Lab.AddHost("sink",
		netip.PrefixFrom(v4.sink, testbed.Subnet.Bits()), netip.PrefixFrom(v4.routed, 32),
		netip.PrefixFrom(v6.sink, testbed.Subnet6.Bits()), netip.PrefixFrom(v6.routed, 128))
	if err != nil {
		return err
	}
	client, lb := dp.tb.Client, dp.tb.LB
	for _, f := range dp.families {
		if err := client.AddRoute(f.routedNet, f.lb); err != nil {
			return err
		}
		if err := lb.AddRoute(f.routedNet, f.sink); err != nil {
			return err
		}
	}
	// The balancer host forwards out of the interface a packet came in on,
	// towards a neighbour of the client: it would send the client redirects,
	// and the client would then bypass it. IPv6 has no sysctl against sending
	// them (the kernel rate-limits them to one a second per destination).
	for _, s := range []struct {
		host       *netnstest.Host
		path, want string
	}{
		{lb, "net/ipv4/conf/all/send_redirects", "0"},
		{lb, "net/ipv4/conf/eth0/send_redirects", "0"},
		{client, "net/ipv4/conf/all/accept_redirects", "0"},
		{client, "net/ipv4/conf/eth0/accept_redirects", "0"},
		{client, "net/ipv6/conf/all/accept_redirects", "0"},
		{client, "net/ipv6/conf/eth0/accept_redirects", "0"},
	} {
		if err := s.host.SetSysctl(s.path, s.want); err != nil {
			return err
		}
	}
	for _, f := range dp.families {
		err = client.Do(func() (err error) {
			f.genFD, err = unix.Socket(socketFamily(f.client), unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
			if err != nil {
				return err
			}
			// Bound to the packets' source: for an unbound IPv6 socket the
			// kernel selects a source address for every packet it sends
			// (then keeps the header's): 1.2% of the machine's samples in a
			// profile of the IPv6 kernel-forwarding run.
			return unix.Bind(f.genFD, sockaddr(netip.AddrPortFrom(f.client, 0)))
		})
		if err != nil {
			return fmt.Errorf("client: generator socket: %w", err)
		}
		err = dp.sink.Do(func() error {
			var err error
			if f.encapFD, err = countingSocket(netip.AddrPortFrom(f.sink, config.DefaultEncapPort)); err != nil {
				return err
			}
			f.routedFD, err = countingSocket(netip.AddrPortFrom(f.routed, benchDstPort))
			return err
		})
		if err != nil {
			return fmt.Errorf("sink: %w", err)
		}
	}
	dp.ksoftirqd, err = kernelThreads("ksoftirqd/")
	return err
}

// socketFamily is AF_INET or AF_INET6, by a's family.
func socketFamily(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// sockaddr is addr as a socket address of its family.
func sockaddr(addr netip.AddrPort) unix.Sockaddr {
	if a := addr.Addr(); a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4(), Port: int(addr.Port())}
	}
	return &unix.SockaddrInet6{Addr: addr.Addr().As16(), Port: int(addr.Port())}
}

// countingSocket opens a UDP socket bound to addr with a 4 MiB receive
// buffer (forced, so whatever the namespace's rmem_max).
func countingSocket(addr netip.AddrPort) (int, error) {
	fd, err := unix.Socket(socketFamily(addr.Addr()), unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	if err == nil {
		err = unix.Bind(fd, sockaddr(addr))
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("counting socket on %v: %w", addr, err)
	}
	return fd, nil
}

// startBalancer makes caplanced run on the balancer host with workers
// workers (0: its default), f's VIP and the sink's address of f as its one
// backend, restarting it if it runs with another VIP or count.
func (dp *dataplane) startBalancer(b *testing.B, f *benchFamily, workers int) {
	b.Helper()
	if dp.balancer != nil && dp.workers == workers && dp.balancerVIP == f.vip {
		return
	}
	dp.stopBalancer(b)
	cfg := fmt.Sprintf("[balancer]\nvips = [%q]\n", f.vip)
	if workers > 0 {
		cfg += fmt.Sprintf("workers = %d\n", workers)
	}
	cfg += fmt.Sprintf("\n[[backend]]\nname = \"sink\"\naddress = %q\n", f.sink)
	name := fmt.Sprintf("lb-w%d", workers)
	if f.vip.Is6() {
		name += "-ipv6"
	}
	d, err := dp.tb.StartDaemon(dp.tb.LB, name, cfg, "none")
	if err != nil {
		b.Fatal(err)
	}
	dp.balancer, dp.balancerVIP, dp.workers = d, f.vip, workers
	// The CPU figures read /proc/<pid>: make sure it is caplanced's.
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", d.PID())); err != nil || string(comm) != "caplanced\n" {
		b.Fatalf("process %d is %q (%v), not caplanced", d.PID(), comm, err)
	}
}

// stopBalancer stops caplanced if it runs.
func (dp *dataplane) stopBalancer(b *testing.B) {
	b.Helper()
	if dp.balancer == nil {
		return
	}
	err := dp.balancer.Stop()
	dp.balancer, dp.lbStats = nil, balancer.Stats{}
	if err != nil {
		b.Fatal(err)
	}
}

// benchResult is one run's numbers.
type benchResult struct {
	sent, delivered   uint64 // measured phase only
	offered, pps      float64
	lossPct           float64
	machineNsPerPkt   float64
	caplancedNsPerPkt float64 // 0 for kernel forwarding
	split             string  // where the machine's CPU went
	losses            string  // where packets were lost, from counters
}

// run sends f's load to dst (f.routed or f.vip), paced at rate packets per
// second (0: as fast as the generator goes), and counts what reaches the
// sink.
func (dp *dataplane) run(b *testing.B, f *benchFamily, dst netip.Addr, rate float64) *benchResult {
	b.Helper()
	viaBalancer := dst == f.vip
	sinkFD, check := f.routedFD, f.checkRouted
	lbPID := 0
	if viaBalancer {
		sinkFD, check = f.encapFD, f.checkEncapsulated
		lbPID = dp.balancer.PID()
	}
	before, err := dp.counters(f)
	if err != nil {
		b.Fatal(err)
	}

	f.run++
	var stop, warmed atomic.Bool
	sinkTID := make(chan int, 1)
	sunk := make(chan sinkCounts, 1)
	go func() { sunk <- benchSink(sinkFD, check, &stop, &warmed, sinkTID) }()
	probe := cpuProbe{sinkTID: <-sinkTID, lbPID: lbPID, ksoftirqd: dp.ksoftirqd}
	runStart := probe.sample()
	gen := benchGenerate(f.genFD, f.client, dst, f.run, rate, &probe, &warmed)
	time.Sleep(benchDrain)
	stop.Store(true)
	counts := <-sunk
	runEnd := probe.sample()
	if gen.err != nil {
		b.Fatalf("generator: %v", gen.err)
	}
	after, err := dp.counters(f)
	if err != nil {
		b.Fatal(err)
	}
	delta := after.minus(before)

	r := &benchResult{
		sent:      gen.sent,
		delivered: counts.measured,
		offered:   float64(gen.sent) / gen.elapsed.Seconds(),
		pps:       float64(counts.measured) / gen.elapsed.Seconds(),
	}
	if counts.measured > gen.sent {
		b.Errorf("the sink counted %d packets of the measured phase, %d were sent: duplicates", counts.measured, gen.sent)
	}
	if gen.sent > 0 {
		r.lossPct = 100 * (float64(gen.sent) - float64(counts.measured)) / float64(gen.sent)
	}
	cpu := gen.end.minus(gen.start)
	if counts.measured > 0 {
		r.machineNsPerPkt = float64(cpu.busy) / float64(counts.measured)
	}
	r.split = cpu.split(gen.elapsed, counts.measured)
	totalSent, totalSunk := gen.warmSent+gen.sent, counts.warm+counts.measured
	losses := []string{
		fmt.Sprintf("sent %d (send errors %d), sink got %d well-formed (malformed %d, of earlier runs %d)", totalSent, gen.sendErrors, totalSunk, counts.malformed, counts.stale),
		delta.String(),
	}
	if viaBalancer {
		st, err := dp.balancer.Stats(time.Now())
		if err != nil {
			b.Fatal(err)
		}
		if st.Balancer == nil {
			b.Fatal("the balancer's stats file has no balancer section")
		}
		prev := dp.lbStats
		dp.lbStats = *st.Balancer
		received, forwarded := st.Balancer.Received-prev.Received, st.Balancer.Forwarded-prev.Forwarded
		if forwarded > 0 {
			r.caplancedNsPerPkt = float64(runEnd.lb-runStart.lb) / float64(forwarded)
		}
		// The balancer host's IP input that caplanced did not read: its
		// sockets' drops (for IPv6 no other counter shows them), and a few
		// packets of neighbour discovery.
		unread := int64(delta.lbIn) - int64(received)
		losses = append(losses, fmt.Sprintf("caplanced received %d (IP input not read %d) forwarded %d", received, unread, forwarded))
		for reason, n := range st.Balancer.Drops {
			if d := n - prev.Drops[reason]; d > 0 {
				losses = append(losses, fmt.Sprintf("caplanced drop %s %d", reason, d))
			}
		}
	}
	r.losses = strings.Join(losses, "; ")
	return r
}

// report reports r's metrics and logs a summary; kernel, when known, is the
// kernel-forwarding result it is compared with.
func (r *benchResult) report(b *testing.B, what string, kernel *benchResult) {
	b.ReportMetric(r.pps, "pps")
	b.ReportMetric(r.lossPct, "loss-%")
	b.ReportMetric(r.machineNsPerPkt, "machine-cpu-ns/pkt")
	var ratio, own string
	if kernel != nil && kernel.pps > 0 {
		b.ReportMetric(r.pps/kernel.pps, "x-kernel")
		ratio = fmt.Sprintf(" = %.2f× kernel forwarding", r.pps/kernel.pps)
	}
	if r.caplancedNsPerPkt > 0 {
		b.ReportMetric(r.caplancedNsPerPkt, "caplanced-cpu-ns/pkt")
		own = fmt.Sprintf(", caplanced %.0f", r.caplancedNsPerPkt)
	}
	b.Logf("%s: offered %.0f pps, delivered %.0f pps%s, loss %.2f%%; CPU per packet: machine %.0f ns%s",
		what, r.offered, r.pps, ratio, r.lossPct, r.machineNsPerPkt, own)
	b.Logf("  cpu: %s", r.split)
	b.Logf("  counters: %s", r.losses)
}

// genResult is what the generator did.
type genResult struct {
	warmSent, sent uint64 // packets of the warm-up and of the measured phase
	sendErrors     uint64
	elapsed        time.Duration // of the measured phase
	start, end     cpuSample     // around the measured phase
	err            error
}

// benchGenerate sends warm-up packets until warmed is set (the sink counted
// one) and for benchWarmup more, then benchMeasure of measured ones, from src
// to dst, marked with run, on fd, an IPPROTO_RAW socket of their family in
// the client (the header included), on a locked OS thread; it samples the
// CPU around the measured phase.
func benchGenerate(fd int, src, dst netip.Addr, run byte, rate float64, probe *cpuProbe, warmed *atomic.Bool) genResult {
	done := make(chan genResult, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		probe.genTID = unix.Gettid()
		var g genResult
		warm, measured := benchPackets(src, dst, phaseWarm, run), benchPackets(src, dst, phaseMeasured, run)
		q := rawio.NewQueue(benchBatch)
		add := func(p []byte) { q.Add(p, dst.As4(), 0) }
		if dst.Is6() {
			add = func(p []byte) { q.Add6(p, dst.As16(), 0) }
		}
		onError := func(int, error) { g.sendErrors++ }
		next := 0
		// send sends pkts for d, paced at rate, and returns how many went.
		send := func(pkts [][]byte, d time.Duration) uint64 {
			var sent uint64
			start := time.Now()
			end := start.Add(d)
			due := start
			interval := time.Duration(0)
			if rate > 0 {
				interval = time.Duration(float64(benchBatch) / rate * float64(time.Second))
			}
			for {
				now := time.Now()
				if !now.Before(end) {
					return sent
				}
				if interval > 0 {
					if wait := due.Sub(now); wait > 0 {
						nap(wait)
					} else if -wait > benchMaxLag {
						due = now
					}
					due = due.Add(interval)
				}
				for range benchBatch {
					add(pkts[next])
					next = (next + 1) % len(pkts)
				}
				sent += uint64(q.Flush(fd, onError))
			}
		}
		for deadline := time.Now().Add(benchWarmupMax); !warmed.Load(); {
			if time.Now().After(deadline) {
				g.err = fmt.Errorf("no warm-up packet reached the sink within %v", benchWarmupMax)
				done <- g
				return
			}
			g.warmSent += send(warm, benchWarmup/10)
		}
		g.warmSent += send(warm, benchWarmup)
		g.start = probe.sample()
		t0 := time.Now()
		g.sent = send(measured, benchMeasure)
		g.elapsed = time.Since(t0)
		g.end = probe.sample()
		done <- g
	}()
	return <-done
}

// benchPackets builds one UDP packet per flow from src to dst, IPv4 or
// IPv6, with correct header and UDP checksums (the raw socket sends them as
// they are; for IPv4 the kernel only fills in the IP ID and header
// checksum; IPv6 has neither).
func benchPackets(src, dst netip.Addr, phase, run byte) [][]byte {
	hl := ipHeaderLen(dst)
	pkts := make([][]byte, benchFlows)
	for f := range pkts {
		p := make([]byte, hl+8+benchPayload)
		if dst.Is4() {
			p[0] = 0x45
			binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
			p[8] = 64
			p[9] = unix.IPPROTO_UDP
			copy(p[12:16], src.AsSlice())
			copy(p[16:20], dst.AsSlice())
			binary.BigEndian.PutUint16(p[10:], inet.Checksum(p[:20]))
		} else {
			p[0] = 0x60 // traffic class and flow label 0
			binary.BigEndian.PutUint16(p[4:], uint16(len(p)-hl))
			p[6] = unix.IPPROTO_UDP
			p[7] = 64
			copy(p[8:24], src.AsSlice())
			copy(p[24:40], dst.AsSlice())
		}
		u := p[hl:]
		binary.BigEndian.PutUint16(u[0:], uint16(benchSrcPort+f))
		binary.BigEndian.PutUint16(u[2:], benchDstPort)
		binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
		copy(u[8:], benchMagic)
		u[8+len(benchMagic)] = phase
		u[9+len(benchMagic)] = byte(f)
		u[10+len(benchMagic)] = run
		binary.BigEndian.PutUint16(u[6:], ^inet.Fold(inet.Sum(u, benchPseudoHeader(p))))
		pkts[f] = p
	}
	return pkts
}

// ipHeaderLen is the length of a benchmark packet's IP header to or from a:
// no options, no extension headers.
func ipHeaderLen(a netip.Addr) int {
	if a.Is4() {
		return 20
	}
	return 40
}

// benchPseudoHeader is the partial sum of the UDP pseudo-header of p, an
// IPv4 or IPv6 packet of ipHeaderLen whose transport protocol is UDP: the
// addresses, the protocol and the UDP length (IPv6's 32-bit length and
// IPv4's 16-bit one sum alike).
func benchPseudoHeader(p []byte) uint32 {
	addrs, hl := p[12:20], 20
	if p[0]>>4 == 6 {
		addrs, hl = p[8:40], 40
	}
	return inet.Sum(addrs, 0) + unix.IPPROTO_UDP + uint32(len(p)-hl)
}

// sinkCounts is what a sink counted.
type sinkCounts struct {
	warm, measured uint64 // well-formed datagrams of each phase
	stale          uint64 // of earlier runs
	malformed      uint64
}

// benchSink counts the datagrams on fd, on a locked OS thread whose thread id
// it sends on tid, until stop is set and the socket is empty; it sets warmed
// when it has counted a warm-up datagram. check returns a well-formed
// datagram's phase, or 0.
func benchSink(fd int, check func(b *rawio.Batch, i int) byte, stop, warmed *atomic.Bool, tid chan<- int) sinkCounts {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid <- unix.Gettid()
	var c sinkCounts
	batch := rawio.NewBatch(64, 0, 2048)
	for {
		n, err := batch.Recv(fd)
		if err != nil || n == 0 {
			if stop.Load() {
				return c
			}
			nap(benchSinkNap)
			continue
		}
		for i := range n {
			switch check(batch, i) {
			case phaseWarm:
				c.warm++
				warmed.Store(true)
			case phaseMeasured:
				c.measured++
			case phaseStale:
				c.stale++
			default:
				c.malformed++
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

// checkRouted checks a datagram that kernel forwarding delivered (the
// kernel has verified its checksums) and returns its phase.
func (f *benchFamily) checkRouted(b *rawio.Batch, i int) byte {
	if b.Truncated(i) || b.Source(i).Addr() != f.client {
		return 0
	}
	return checkPayload(b.Packet(i), b.Source(i).Port(), f.run)
}

// checkEncapsulated checks a datagram caplanced sent to the encap port: it
// comes from the balancer (the outer header, IPv4 or IPv6 with the UDP
// header after it, encap.HeaderLen4 or HeaderLen6 bytes, is the sink's
// kernel's to check) and carries the client's packet, whose IP and UDP
// checksums nobody has verified yet, so they are verified here.
func (f *benchFamily) checkEncapsulated(b *rawio.Batch, i int) byte {
	p := b.Packet(i)
	hl := ipHeaderLen(f.vip)
	if b.Truncated(i) || b.Source(i).Addr() != f.lb || len(p) != hl+8+benchPayload {
		return 0
	}
	var src, dst netip.Addr
	if f.vip.Is4() {
		if p[0] != 0x45 || int(binary.BigEndian.Uint16(p[2:])) != len(p) || p[9] != unix.IPPROTO_UDP ||
			binary.BigEndian.Uint16(p[6:])&0x3fff != 0 || !inet.Valid(p[:20]) {
			return 0
		}
		src, dst = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
	} else {
		if p[0]>>4 != 6 || int(binary.BigEndian.Uint16(p[4:])) != len(p)-hl || p[6] != unix.IPPROTO_UDP {
			return 0
		}
		src, dst = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
	}
	u := p[hl:]
	if src != f.client || dst != f.vip || binary.BigEndian.Uint16(u[2:]) != benchDstPort ||
		int(binary.BigEndian.Uint16(u[4:])) != len(u) || binary.BigEndian.Uint16(u[6:]) == 0 ||
		inet.Fold(inet.Sum(u, benchPseudoHeader(p))) != 0xffff {
		return 0
	}
	return checkPayload(u[8:], binary.BigEndian.Uint16(u[0:]), f.run)
}

// checkPayload checks the payload of a datagram from source port sport,
// sent in run run.
func checkPayload(p []byte, sport uint16, run byte) byte {
	m := len(benchMagic)
	switch {
	case len(p) != benchPayload || !bytes.Equal(p[:m], benchMagic) || int(sport)-benchSrcPort != int(p[m+1]):
		return 0
	case p[m+2] != run:
		return phaseStale
	}
	return p[m]
}

// cpuProbe samples where CPU time goes: the whole machine, the generator's
// and the sink's threads, caplanced and the kernel's softirq threads.
type cpuProbe struct {
	genTID, sinkTID int
	lbPID           int // 0: no caplanced
	ksoftirqd       []int
}

// cpuSample is a cpuProbe's reading; the machine's figures are all CPUs'.
type cpuSample struct {
	busy, softirq            time.Duration // /proc/stat: busy excludes idle, iowait and steal
	gen, sink, lb, ksoftirqd time.Duration
	// caplanced's user and system time (/proc/<pid>/stat, all threads) and
	// how many times its threads were scheduled in.
	lbUser, lbSys time.Duration
	lbRuns        uint64
}

func (s cpuSample) minus(o cpuSample) cpuSample {
	return cpuSample{
		busy: s.busy - o.busy, softirq: s.softirq - o.softirq,
		gen: s.gen - o.gen, sink: s.sink - o.sink, lb: s.lb - o.lb, ksoftirqd: s.ksoftirqd - o.ksoftirqd,
		lbUser: s.lbUser - o.lbUser, lbSys: s.lbSys - o.lbSys, lbRuns: s.lbRuns - o.lbRuns,
	}
}

// split describes a difference of samples over wall time d, which moved
// pkts packets, in shares of one CPU.
func (s cpuSample) split(d time.Duration, pkts uint64) string {
	pct := func(t time.Duration) string { return fmt.Sprintf("%.0f%%", 100*t.Seconds()/d.Seconds()) }
	other := s.busy - s.gen - s.sink - s.lb - s.ksoftirqd
	out := fmt.Sprintf("machine busy %s of %d00%% (softirq %s): generator %s, sink %s, caplanced %s, ksoftirqd %s, rest %s",
		pct(s.busy), runtime.NumCPU(), pct(s.softirq), pct(s.gen), pct(s.sink), pct(s.lb), pct(s.ksoftirqd), pct(other))
	if s.lbRuns > 0 {
		out += fmt.Sprintf("; caplanced user %s system %s, %.1f packets per time scheduled", pct(s.lbUser), pct(s.lbSys), float64(pkts)/float64(s.lbRuns))
	}
	return out
}

// sample reads the counters; a figure it cannot read stays 0.
func (p *cpuProbe) sample() cpuSample {
	var s cpuSample
	if data, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(data), "\n")
		// cpu user nice system idle iowait irq softirq steal guest guest_nice,
		// in USER_HZ (1/100 s); guest time is already in user.
		f := strings.Fields(line)
		tick := func(i int) time.Duration {
			if i >= len(f) {
				return 0
			}
			v, _ := strconv.ParseUint(f[i], 10, 64)
			return time.Duration(v) * 10 * time.Millisecond
		}
		s.busy = tick(1) + tick(2) + tick(3) + tick(6) + tick(7)
		s.softirq = tick(7)
	}
	s.gen, _ = readSchedstat(fmt.Sprintf("/proc/self/task/%d/schedstat", p.genTID))
	s.sink, _ = readSchedstat(fmt.Sprintf("/proc/self/task/%d/schedstat", p.sinkTID))
	if p.lbPID != 0 {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", p.lbPID))
		for _, t := range tasks {
			run, runs := readSchedstat(t)
			s.lb += run
			s.lbRuns += runs
		}
		if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.lbPID)); err == nil {
			// Fields 14 and 15, utime and stime in USER_HZ, counted from
			// the one after the state (field 3), which follows the name.
			st := string(data)
			f := strings.Fields(st[strings.LastIndexByte(st, ')')+1:])
			if len(f) > 12 {
				u, _ := strconv.ParseUint(f[11], 10, 64)
				k, _ := strconv.ParseUint(f[12], 10, 64)
				s.lbUser, s.lbSys = time.Duration(u)*10*time.Millisecond, time.Duration(k)*10*time.Millisecond
			}
		}
	}
	for _, pid := range p.ksoftirqd {
		run, _ := readSchedstat(fmt.Sprintf("/proc/%d/schedstat", pid))
		s.ksoftirqd += run
	}
	return s
}

// readSchedstat returns the CPU time a task has run and how many times it
// was scheduled in, from its schedstat file (softirq work done on the
// task's time is included: this kernel does not account IRQ time apart).
func readSchedstat(path string) (time.Duration, uint64) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return 0, 0
	}
	run, _ := strconv.ParseInt(f[0], 10, 64)
	runs, _ := strconv.ParseUint(f[2], 10, 64)
	return time.Duration(run), runs
}

// kernelThreads returns the PIDs of the kernel threads whose name starts
// with prefix.
func kernelThreads(prefix string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.HasPrefix(string(comm), prefix) {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		return nil, errors.New("no " + prefix + " kernel threads found")
	}
	return pids, nil
}

// dropCounters are the kernel's counters along one family's path: the
// balancer host's input, raw sockets and forwarding, the sink's UDP receive
// errors, and the machine's per-CPU input backlogs (veth delivers into
// them). caplanced reads IPv6 from packet sockets, whose drops only their
// owner can read: the balancer host's input minus what caplanced received
// is their upper bound.
type dropCounters struct {
	lbIn, lbRawDrops, lbForwarded    uint64
	sinkRcvbufErrors, sinkCsumErrors uint64
	backlogDrops                     uint64
}

func (c dropCounters) minus(o dropCounters) dropCounters {
	return dropCounters{
		lbIn: c.lbIn - o.lbIn, lbRawDrops: c.lbRawDrops - o.lbRawDrops, lbForwarded: c.lbForwarded - o.lbForwarded,
		sinkRcvbufErrors: c.sinkRcvbufErrors - o.sinkRcvbufErrors, sinkCsumErrors: c.sinkCsumErrors - o.sinkCsumErrors,
		backlogDrops: c.backlogDrops - o.backlogDrops,
	}
}

func (c dropCounters) String() string {
	return fmt.Sprintf("balancer host: IP input %d, kernel forwarded %d, raw socket drops %d; sink: rcvbuf errors %d, checksum errors %d; input backlog drops %d",
		c.lbIn, c.lbForwarded, c.lbRawDrops, c.sinkRcvbufErrors, c.sinkCsumErrors, c.backlogDrops)
}

// counters reads f's dropCounters (each host's /proc/net inside its
// namespace: /proc/thread-self/net is the calling thread's).
func (dp *dataplane) counters(f *benchFamily) (dropCounters, error) {
	var c dropCounters
	err := dp.tb.LB.Do(func() error {
		for _, name := range []string{"raw", "raw6"} {
			raw, err := os.ReadFile("/proc/thread-self/net/" + name)
			if err != nil {
				return err
			}
			// The last column of each socket's line is its drops.
			for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n")[1:] {
				fields := strings.Fields(line)
				v, _ := strconv.ParseUint(fields[len(fields)-1], 10, 64)
				c.lbRawDrops += v
			}
		}
		v, err := snmpCounters(f.inReceives, f.forwDatagrams)
		if err == nil {
			c.lbIn, c.lbForwarded = v[0], v[1]
		}
		return err
	})
	if err != nil {
		return c, fmt.Errorf("balancer host counters: %w", err)
	}
	err = dp.sink.Do(func() error {
		v, err := snmpCounters(f.udpRcvbufErrors, f.udpInCsumErrors)
		if err == nil {
			c.sinkRcvbufErrors, c.sinkCsumErrors = v[0], v[1]
		}
		return err
	})
	if err != nil {
		return c, fmt.Errorf("sink counters: %w", err)
	}
	// Second column of each CPU's line, in hex.
	data, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return c, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			v, _ := strconv.ParseUint(f[1], 16, 64)
			c.backlogDrops += v
		}
	}
	return c, nil
}

// snmpCounters returns the named counters of the calling thread's
// namespace, from /proc/net/snmp, whose sections are a line of names then a
// line of values (a counter is named section+name: "IpInReceives"), or
// /proc/net/snmp6, a line per counter ("Ip6InReceives").
func snmpCounters(names ...string) ([]uint64, error) {
	counters := map[string]uint64{}
	data, err := os.ReadFile("/proc/thread-self/net/snmp")
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(data), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(keys) == 0 || len(vals) != len(keys) || vals[0] != keys[0] {
			return nil, fmt.Errorf("/proc/net/snmp: line %d: not a section's names then values", i+1)
		}
		section := strings.TrimSuffix(keys[0], ":")
		for j := 1; j < len(keys); j++ {
			counters[section+keys[j]], _ = strconv.ParseUint(vals[j], 10, 64)
		}
	}
	data, err = os.ReadFile("/proc/thread-self/net/snmp6")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if kv := strings.Fields(line); len(kv) == 2 {
			counters[kv[0]], _ = strconv.ParseUint(kv[1], 10, 64)
		}
	}
	values := make([]uint64, len(names))
	for i, n := range names {
		v, ok := counters[n]
		if !ok {
			return nil, fmt.Errorf("/proc/net/snmp, snmp6: no counter %s", n)
		}
		values[i] = v
	}
	return values, nil
}
