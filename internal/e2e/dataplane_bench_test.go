package e2e

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/balancer"
	"github.com/caplance/caplance/internal/benchnet"
	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/rawio"
	"github.com/caplance/caplance/internal/testbed"
)

// benchTiming is a measured run's: warm-up until the sink has counted a
// warm-up packet (at most 5 s: the first packets wait for ARP or neighbour
// discovery, and a host sends neighbour solicitations for a forwarded
// packet from its IPv6 link-local address, usable only when that address's
// duplicate address detection is over, a second or two after the lab is
// built; until then the kernel sends none, and retries a second later),
// then 300 ms more, 2 s measured, 200 ms for what is in flight.
var benchTiming = benchnet.Timing{Warmup: 300 * time.Millisecond, WarmupMax: 5 * time.Second, Measure: 2 * time.Second, Drain: 200 * time.Millisecond}

// searchTiming is a trial's of the search for the highest lossless rate: 1 s
// measured. At the rates searched (tens to hundreds of thousands of packets
// a second) a trial sends at least tens of thousands of packets, so the
// 0.01% threshold is a handful of packets; it catches a forwarder that
// cannot keep up (its queues overflow within milliseconds), not stalls
// rarer than a second, which on a shared machine are other jobs' anyway.
// searchSteps rates at most per search (a few more trials if the generator
// fell short) keep `make bench-dataplane` within about two minutes.
var searchTiming = benchnet.Timing{Warmup: 200 * time.Millisecond, WarmupMax: 5 * time.Second, Measure: time.Second, Drain: 200 * time.Millisecond}

const searchSteps = 7

// benchFamily is one address family's half of the benchmark: its
// addresses and the sink's two counting sockets. The sink is backend 0's
// address; for kernel forwarding it also holds routed, in routedNet,
// reached from the client through the balancer host.
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
	// The names of the family's counters in benchnet.SNMPCounters.
	inReceives, forwDatagrams, udpRcvbufErrors, udpInCsumErrors string
	encapFD, routedFD                                           int
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
		encapFD: -1, routedFD: -1,
	}, {
		prefix: "ipv6/",
		client: testbed.ClientAddr6, lb: testbed.LBAddr6, sink: testbed.BackendAddr6(0), vip: testbed.VIP6,
		routedNet: netip.MustParsePrefix("2001:db8:ff::/64"), routed: netip.MustParseAddr("2001:db8:ff::1"),
		forwarding: "net/ipv6/conf/all/forwarding",
		inReceives: "Ip6InReceives", forwDatagrams: "Ip6OutForwDatagrams",
		udpRcvbufErrors: "Udp6RcvbufErrors", udpInCsumErrors: "Udp6InCsumErrors",
		encapFD: -1, routedFD: -1,
	}}
}

// forwarder is one way of getting the load from the client to the sink
// through the balancer host, set up by start and torn down by the function
// it returns. Each is measured the same ways (its sub-benchmarks are named
// after it); a new data path (xdp mode) is one more.
type forwarder struct {
	name, what string
	// viaBalancer: the load goes to the VIP and caplanced encapsulates it
	// to the sink's encap port; otherwise to f.routed.
	viaBalancer bool
	start       func(b *testing.B, dp *dataplane, f *benchFamily) (stop func())
}

var (
	kernelForwarding = forwarder{name: "kernel-forwarding", what: "kernel forwarding", start: func(b *testing.B, dp *dataplane, f *benchFamily) func() {
		// The previous family's caplanced would stand in the way (its nft
		// table's hooks, its idle workers).
		dp.stopBalancer(b)
		if err := dp.tb.LB.SetSysctl(f.forwarding, "1"); err != nil {
			b.Fatal(err)
		}
		return func() {
			if err := dp.tb.LB.SetSysctl(f.forwarding, "0"); err != nil {
				b.Error(err)
			}
		}
	}}
	caplancedRaw = forwarder{name: "caplanced", what: "caplanced (raw sockets), default workers", viaBalancer: true,
		start: func(b *testing.B, dp *dataplane, f *benchFamily) func() {
			dp.startBalancer(b, f, 0, "raw")
			return func() {}
		}}
	caplancedXDP = forwarder{name: "caplanced-xdp", what: "caplanced (AF_XDP), a worker per receive queue", viaBalancer: true,
		start: func(b *testing.B, dp *dataplane, f *benchFamily) func() {
			dp.startBalancer(b, f, 0, "xdp")
			return func() {}
		}}
	// forwarders are the paths the search for the highest lossless rate
	// compares, the kernel's first.
	forwarders = []forwarder{kernelForwarding, caplancedRaw, caplancedXDP}
)

// BenchmarkDataplane sends UDP load from the client through the balancer
// host to a counting sink, once forwarded by the kernel (IP forwarding in the
// balancer's namespace) and then by caplanced (raw sockets, encapsulated to
// the sink's encap port, where a plain UDP socket counts them: no receiver,
// so only the balancer is measured). It does so for IPv4 and then for IPv6
// (6-in-6: an IPv6 VIP, the sink's IPv6 address as the backend), each
// against the kernel's forwarding of its own family. The load leaves the
// client from a TX ring (package benchnet) as Ethernet frames to the
// balancer host's MAC; same lab, generator and sink code in all, in the same
// run. It asserts nothing about speed. Run it with `make bench-dataplane`, or
//
//	go test -run '^$' -bench Dataplane -benchtime 1x ./internal/e2e/
//
// Per family (the IPv6 names start with "ipv6/"), in order:
//   - generator/max: the generator alone, unpaced, straight to the sink's
//     MAC: what it can offer, the upper bound of the searches;
//   - kernel-forwarding/max, caplanced/max (default workers, one per CPU),
//     unpaced: delivered rate, loss, CPU per delivered packet, and
//     caplanced's rate as a fraction of the kernel's (x-kernel);
//   - caplanced/half-kernel-rate: paced at half the kernel's delivered rate,
//     where nothing should be lost;
//   - caplanced-1-worker/max: one worker, which leaves the other CPU to the
//     generator on a two-CPU machine;
//   - caplanced-xdp/max: the AF_XDP data path (dataplane = "xdp"), unpaced;
//     every caplanced sub-benchmark names its data plane, never auto;
//   - kernel-forwarding/lossless, caplanced/lossless, caplanced-xdp/lossless: the highest rate
//     with at most 0.01% loss (benchnet.SearchLossless, 1 s trials), the CPU
//     per delivered packet at that rate, and each as a ratio to the
//     kernel's.
func BenchmarkDataplane(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("the data-path benchmark needs root (network namespaces)")
	}
	dp := newDataplane(b)
	for _, f := range dp.families {
		var genMax, kernel *benchnet.Result
		b.Run(f.prefix+"generator/max", func(b *testing.B) {
			dp.stopBalancer(b)
			genMax = dp.run(b, f, f.routed, dp.sinkMAC, 0, benchTiming)
			genMax.Report(b, "the generator alone, unpaced, to the sink", nil)
		})
		b.Run(f.prefix+"kernel-forwarding/max", func(b *testing.B) {
			defer kernelForwarding.start(b, dp, f)()
			kernel = dp.run(b, f, f.routed, dp.lbMAC, 0, benchTiming)
			kernel.Report(b, "kernel forwarding, unpaced", nil)
		})
		b.Run(f.prefix+"caplanced/max", func(b *testing.B) {
			dp.startBalancer(b, f, 0, "raw")
			dp.run(b, f, f.vip, dp.lbMAC, 0, benchTiming).Report(b, "caplanced, default workers, unpaced", kernel)
		})
		b.Run(f.prefix+"caplanced/half-kernel-rate", func(b *testing.B) {
			if kernel == nil {
				b.Skip("paced at half of kernel-forwarding/max's rate, which did not run")
			}
			dp.startBalancer(b, f, 0, "raw")
			rate := kernel.PPS / 2
			dp.run(b, f, f.vip, dp.lbMAC, rate, benchTiming).Report(b, fmt.Sprintf("caplanced, default workers, paced at %.0f pps", rate), kernel)
		})
		b.Run(f.prefix+"caplanced-1-worker/max", func(b *testing.B) {
			dp.startBalancer(b, f, 1, "raw")
			dp.run(b, f, f.vip, dp.lbMAC, 0, benchTiming).Report(b, "caplanced, 1 worker, unpaced", kernel)
		})
		b.Run(f.prefix+"caplanced-xdp/max", func(b *testing.B) {
			dp.startBalancer(b, f, 0, "xdp")
			dp.run(b, f, f.vip, dp.lbMAC, 0, benchTiming).Report(b, "caplanced, AF_XDP, unpaced", kernel)
		})
		var kernelLossless *benchnet.Result
		for _, fw := range forwarders {
			b.Run(f.prefix+fw.name+"/lossless", func(b *testing.B) {
				if genMax == nil {
					b.Skip("searches up to generator/max's rate, which did not run")
				}
				defer fw.start(b, dp, f)()
				dst := f.routed
				if fw.viaBalancer {
					dst = f.vip
				}
				r := dp.searchLossless(b, f, dst, genMax.Offered)
				r.ReportLossless(b, fw.what, kernelLossless)
				if kernelLossless == nil {
					kernelLossless = r
				}
			})
		}
	}
}

// pacedRate is BenchmarkPacedForwarding's rate, in packets a second:
// below every forwarder's highest lossless rate on the machines measured
// so far, so that each does the same work.
var pacedRate = flag.Float64("paced-rate", 50000, "BenchmarkPacedForwarding: packets a second")

// pacedTiming is BenchmarkPacedForwarding's: 10 s measured, long enough
// for a profiler (perf record -a) started a few seconds into a run.
var pacedTiming = benchnet.Timing{Warmup: 300 * time.Millisecond, WarmupMax: 5 * time.Second, Measure: 10 * time.Second, Drain: 200 * time.Millisecond}

// BenchmarkPacedForwarding sends the same IPv4 load, paced at -paced-rate
// (default 50,000 pps), through each forwarder of BenchmarkDataplane in
// turn (kernel forwarding, caplanced raw, caplanced xdp), 10 s each, and
// reports the CPU per delivered packet of each at that same rate, with
// caplanced's as ratios to the kernel's: the cost of the same work, where
// BenchmarkDataplane's lossless figures compare each path at its own
// limit. It is also the run to profile:
//
//	go test -run '^$' -bench PacedForwarding -benchtime 1x ./internal/e2e/ &
//	sleep 8; perf record -a -g -- sleep 5   # the first forwarder's run
func BenchmarkPacedForwarding(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("the data-path benchmark needs root (network namespaces)")
	}
	dp := newDataplane(b)
	f := dp.families[0]
	var kernel *benchnet.Result
	for _, fw := range forwarders {
		b.Run(fw.name, func(b *testing.B) {
			defer fw.start(b, dp, f)()
			dst := f.routed
			if fw.viaBalancer {
				dst = f.vip
			}
			r := dp.run(b, f, dst, dp.lbMAC, *pacedRate, pacedTiming)
			r.Report(b, fmt.Sprintf("%s, paced at %.0f pps", fw.what, *pacedRate), kernel)
			if kernel == nil {
				kernel = r
			} else if kernel.MachineNsPerPkt > 0 {
				b.ReportMetric(r.MachineNsPerPkt/kernel.MachineNsPerPkt, "x-kernel-cpu")
			}
		})
	}
}

// idleTime is how long BenchmarkIdleCPU watches an idle caplanced.
const idleTime = 10 * time.Second

// BenchmarkIdleCPU starts caplanced (one IPv4 VIP, one backend, default
// workers) on each data plane, raw and xdp, sends it nothing, and reports
// the CPU its threads used over 10 s (idle-cpu-%, of one CPU) and how
// often they were scheduled in (wakeups/s): what the workers' wake-up
// policy costs when there is no traffic.
func BenchmarkIdleCPU(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("the data-path benchmark needs root (network namespaces)")
	}
	dp := newDataplane(b)
	for _, dataplane := range []string{"raw", "xdp"} {
		b.Run(dataplane, func(b *testing.B) {
			dp.startBalancer(b, dp.families[0], 0, dataplane)
			time.Sleep(2 * time.Second) // past the start's own work
			probe := benchnet.CPUProbe{LBPID: dp.balancer.PID()}
			before := probe.Sample()
			time.Sleep(idleTime)
			used := probe.Sample().Minus(before)
			pct := 100 * used.LB.Seconds() / idleTime.Seconds()
			wakeups := float64(used.LBRuns) / idleTime.Seconds()
			b.ReportMetric(pct, "idle-cpu-%")
			b.ReportMetric(wakeups, "wakeups/s")
			b.Logf("caplanced (%s), idle for %v: %.2f%% of a CPU, %.0f wake-ups a second", dataplane, idleTime, pct, wakeups)
		})
	}
}

// dataplane is the benchmark's lab: the testbed's client and balancer host
// (dual-stack), a sink host with counting sockets, and the generator's TX
// ring on the client's eth0.
type dataplane struct {
	tb       *testbed.Testbed
	families []*benchFamily
	sink     *netnstest.Host
	ring     *benchnet.Ring
	// The frames' source (the client's) and their destinations.
	clientMAC, lbMAC, sinkMAC net.HardwareAddr
	balancer                  *testbed.Daemon
	// The running balancer's VIP (its family's), configured workers and
	// data plane.
	balancerVIP netip.Addr
	workers     int
	dataplane   string
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
			for _, fd := range []int{f.encapFD, f.routedFD} {
				if fd >= 0 {
					unix.Close(fd)
				}
			}
		}
		if dp.ring != nil {
			if err := dp.ring.Close(); err != nil {
				b.Error(err)
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

// setUp adds the sink and the routes and redirect settings kernel
// forwarding needs, steers the processing of the generator's frames off its
// CPU, opens the generator's ring and the sinks' sockets, and learns the
// MACs.
func (dp *dataplane) setUp() error {
	v4, v6 := dp.families[0], dp.families[1]
	var err error
	dp.sink, err = dp.tb.Lab.AddHost("sink",
		netip.PrefixFrom(v4.sink, testbed.Subnet.Bits()), netip.PrefixFrom(v4.routed, 32),
		netip.PrefixFrom(v6.sink, testbed.Subnet6.Bits()), netip.PrefixFrom(v6.routed, 128))
	if err != nil {
		return err
	}
	lb := dp.tb.LB
	for _, f := range dp.families {
		if err := lb.AddRoute(f.routedNet, f.sink); err != nil {
			return err
		}
	}
	// The balancer host forwards out of the interface a packet came in on,
	// towards a neighbour of the client: it would send the client
	// redirects. IPv6 has no sysctl against sending them (the kernel
	// rate-limits them to one a second per destination); the client's
	// stack does not send the load, so it would not heed them anyway.
	for _, path := range []string{"net/ipv4/conf/all/send_redirects", "net/ipv4/conf/eth0/send_redirects"} {
		if err := lb.SetSysctl(path, "0"); err != nil {
			return err
		}
	}
	for _, m := range []struct {
		host *netnstest.Host
		mac  *net.HardwareAddr
	}{{dp.tb.Client, &dp.clientMAC}, {lb, &dp.lbMAC}, {dp.sink, &dp.sinkMAC}} {
		err := m.host.Do(func() error {
			ifi, err := net.InterfaceByName("eth0")
			if err == nil {
				*m.mac = ifi.HardwareAddr
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: %w", m.host.Name(), err)
		}
	}
	// The client's link on the switch is named after its host, "client".
	if err := benchnet.SteerReceive(context.Background(), dp.tb.Lab.Switch(), "client"); err != nil {
		return err
	}
	err = dp.tb.Client.Do(func() (err error) {
		dp.ring, err = benchnet.NewRing("eth0")
		return err
	})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	for _, f := range dp.families {
		err = dp.sink.Do(func() error {
			var err error
			if f.encapFD, err = benchnet.CountingSocket(netip.AddrPortFrom(f.sink, config.DefaultEncapPort)); err != nil {
				return err
			}
			f.routedFD, err = benchnet.CountingSocket(netip.AddrPortFrom(f.routed, benchnet.DstPort))
			return err
		})
		if err != nil {
			return fmt.Errorf("sink: %w", err)
		}
	}
	dp.ksoftirqd, err = benchnet.KernelThreads("ksoftirqd/")
	return err
}

// startBalancer makes caplanced run on the balancer host with workers
// workers (0: its default; xdp mode has one per receive queue), the data
// plane dataplane ("raw" or "xdp": never auto, so that each sub-benchmark
// measures the path it names), f's VIP and the sink's address of f as its
// one backend, restarting it if it runs otherwise.
func (dp *dataplane) startBalancer(b *testing.B, f *benchFamily, workers int, dataplane string) {
	b.Helper()
	if dp.balancer != nil && dp.workers == workers && dp.balancerVIP == f.vip && dp.dataplane == dataplane {
		return
	}
	dp.stopBalancer(b)
	cfg := fmt.Sprintf("[balancer]\nvips = [%q]\ndataplane = %q\n", f.vip, dataplane)
	if workers > 0 {
		cfg += fmt.Sprintf("workers = %d\n", workers)
	}
	cfg += fmt.Sprintf("\n[[backend]]\nname = \"sink\"\naddress = %q\n", f.sink)
	name := fmt.Sprintf("lb-%s-w%d", dataplane, workers)
	if f.vip.Is6() {
		name += "-ipv6"
	}
	d, err := dp.tb.StartDaemon(dp.tb.LB, name, cfg, "none")
	if err != nil {
		b.Fatal(err)
	}
	dp.balancer, dp.balancerVIP, dp.workers, dp.dataplane = d, f.vip, workers, dataplane
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

// searchLossless searches f's highest lossless rate to dst, up to max, and
// returns the result of the trial at that rate (nil if there was none).
func (dp *dataplane) searchLossless(b *testing.B, f *benchFamily, dst netip.Addr, max float64) *benchnet.Result {
	b.Helper()
	var best *benchnet.Result
	rate, trials, err := benchnet.SearchLossless(max, searchSteps, func(rate float64) (float64, float64, error) {
		r := dp.run(b, f, dst, dp.lbMAC, rate, searchTiming)
		b.Logf("  trial at %.0f pps: offered %.0f, delivered %.0f, loss %.3f%%", rate, r.Offered, r.PPS, r.LossPct)
		if r.LossPct <= benchnet.MaxLossPct && (best == nil || r.PPS > best.PPS) {
			best = r
		}
		return r.Offered, r.LossPct, nil
	})
	if err != nil {
		b.Fatal(err)
	}
	if best == nil {
		b.Fatalf("no rate up to %.0f pps was lossless", max)
	}
	b.Logf("highest lossless rate %.0f pps, %d rates tried", rate, trials)
	best.RatesTried = trials
	return best
}

// run sends f's load to dst (f.routed or f.vip) in frames to dstMAC, paced
// at rate packets per second (0: as fast as the generator goes), and counts
// what reaches the sink.
func (dp *dataplane) run(b *testing.B, f *benchFamily, dst netip.Addr, dstMAC net.HardwareAddr, rate float64, t benchnet.Timing) *benchnet.Result {
	b.Helper()
	f.run++
	load, err := benchnet.NewLoad(dp.clientMAC, dstMAC, f.client, dst, f.run)
	if err != nil {
		b.Fatal(err)
	}
	viaBalancer := dst == f.vip
	sinkFD := f.routedFD
	check := func(batch *rawio.Batch, i int) benchnet.Phase {
		if batch.Truncated(i) || batch.Source(i).Addr() != f.client {
			return 0
		}
		return load.CheckPayload(batch.Packet(i), batch.Source(i).Port())
	}
	lbPID := 0
	if viaBalancer {
		// The sink's kernel checked the outer headers; the inner packet
		// must be the one sent, byte for byte.
		sinkFD = f.encapFD
		check = func(batch *rawio.Batch, i int) benchnet.Phase {
			if batch.Truncated(i) || batch.Source(i).Addr() != f.lb {
				return 0
			}
			return load.CheckPacket(batch.Packet(i))
		}
		lbPID = dp.balancer.PID()
	}
	before, err := dp.counters(f)
	if err != nil {
		b.Fatal(err)
	}

	var stop, warmed atomic.Bool
	sinkTID := make(chan int, 1)
	sunk := make(chan benchnet.SinkCounts, 1)
	go func() { sunk <- benchnet.Sink(sinkFD, check, &stop, &warmed, sinkTID) }()
	probe := benchnet.CPUProbe{SinkTID: <-sinkTID, LBPID: lbPID, Ksoftirqd: dp.ksoftirqd}
	runStart := probe.Sample()
	queuedBefore, wrongBefore := dp.ring.Queued, dp.ring.WrongFormat
	gen := benchnet.Generate(dp.ring, load, rate, t, &probe, &warmed)
	time.Sleep(t.Drain)
	stop.Store(true)
	counts := <-sunk
	runEnd := probe.Sample()
	if gen.Err != nil {
		b.Fatalf("generator: %v", gen.Err)
	}
	after, err := dp.counters(f)
	if err != nil {
		b.Fatal(err)
	}
	delta := after.Minus(before)

	if counts.Measured > gen.Sent {
		b.Errorf("the sink counted %d packets of the measured phase, %d were sent: duplicates", counts.Measured, gen.Sent)
	}
	r := benchnet.NewResult(gen, counts)
	losses := []string{
		fmt.Sprintf("sent %d (ring: queued %d, refused %d), sink got %d well-formed (malformed %d, of earlier runs %d)",
			gen.WarmSent+gen.Sent, dp.ring.Queued-queuedBefore, dp.ring.WrongFormat-wrongBefore,
			counts.Warm+counts.Measured, counts.Malformed, counts.Stale),
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
			r.CaplancedNsPerPkt = float64(runEnd.LB-runStart.LB) / float64(forwarded)
		}
		// The balancer host's IP input that caplanced did not read: its
		// sockets' drops (for IPv6 no other counter shows them), and a few
		// packets of neighbour discovery. What AF_XDP took never was IP
		// input; its drops are the kernel's, in xdp_no_frame and
		// xdp_ring_full.
		viaStack := received - (st.Balancer.XDPReceived - prev.XDPReceived)
		unread := int64(delta.LBIn) - int64(viaStack)
		losses = append(losses, fmt.Sprintf("caplanced received %d (via the stack %d, IP input not read %d) forwarded %d", received, viaStack, unread, forwarded))
		for reason, n := range st.Balancer.Drops {
			if d := n - prev.Drops[reason]; d > 0 {
				losses = append(losses, fmt.Sprintf("caplanced drop %s %d", reason, d))
			}
		}
	}
	r.Losses = strings.Join(losses, "; ")
	return r
}

// counters reads f's drop counters (each host's /proc/net inside its
// namespace).
func (dp *dataplane) counters(f *benchFamily) (benchnet.DropCounters, error) {
	var c benchnet.DropCounters
	err := dp.tb.LB.Do(func() error {
		var err error
		if c.LBRawDrops, err = benchnet.RawDrops(); err != nil {
			return err
		}
		v, err := benchnet.SNMPCounters(f.inReceives, f.forwDatagrams)
		if err == nil {
			c.LBIn, c.LBForwarded = v[0], v[1]
		}
		return err
	})
	if err != nil {
		return c, fmt.Errorf("balancer host counters: %w", err)
	}
	err = dp.sink.Do(func() error {
		v, err := benchnet.SNMPCounters(f.udpRcvbufErrors, f.udpInCsumErrors)
		if err == nil {
			c.SinkRcvbufErrors, c.SinkCsumErrors = v[0], v[1]
		}
		return err
	})
	if err != nil {
		return c, fmt.Errorf("sink counters: %w", err)
	}
	c.BacklogDrops, err = benchnet.BacklogDrops()
	return c, err
}
