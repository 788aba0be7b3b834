package balancer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/conntrack"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/rawio"
	"github.com/caplance/caplance/internal/xdp"
)

// The XDP lab's addresses: a client, the balancer and a backend on one
// bridge; localBackend lives on the balancer's lo (its route leaves by
// another interface than the XDP one), and absentBackend is on the link
// but answers no ARP.
var (
	xlabVIP       = netip.MustParseAddr("10.7.0.100")
	xlabClient    = netip.MustParseAddr("10.7.0.10")
	xlabLB        = netip.MustParseAddr("10.7.0.2")
	xlabBackend   = netip.MustParseAddr("10.7.0.11")
	localBackend  = netip.MustParseAddr("10.7.1.1")
	absentBackend = netip.MustParseAddr("10.7.0.77")
)

// xdpLab is a balancer in AF_XDP mode on the eth0 (a veth) of host lb,
// with its VIP on that eth0, a client host cl and a backend host be whose
// encap port is read by sink.
type xdpLab struct {
	b      *Balancer
	lb, cl *netnstest.Host
	sink   *net.UDPConn // on be, at xlabBackend:5555
	// local reads what reaches localBackend:5555 on lb.
	local *net.UDPConn
}

func newXDPLab(t *testing.T) *xdpLab {
	t.Helper()
	lab := netnstest.NewForTest(t, "balx")
	l := &xdpLab{}
	pfx := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 24) }
	var err error
	if l.cl, err = lab.AddHost("cl", pfx(xlabClient)); err != nil {
		t.Fatal(err)
	}
	if l.lb, err = lab.AddHost("lb", pfx(xlabLB)); err != nil {
		t.Fatal(err)
	}
	be, err := lab.AddHost("be", pfx(xlabBackend))
	if err != nil {
		t.Fatal(err)
	}
	err = be.Do(func() error {
		l.sink, err = net.ListenUDP("udp4", &net.UDPAddr{IP: xlabBackend.AsSlice(), Port: 5555})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.sink.Close() })
	err = l.lb.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: xlabVIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return err
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: localBackend.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return err
		}
		if l.local, err = net.ListenUDP("udp4", &net.UDPAddr{IP: localBackend.AsSlice(), Port: 5555}); err != nil {
			return err
		}
		ct, err := conntrack.New(1<<16, conntrack.DefaultTimeouts)
		if err != nil {
			return err
		}
		l.b, err = Open(Config{EncapPort: 5555, Conntrack: ct, XDP: &XDP{Interface: "eth0"}})
		return err
	})
	if l.local != nil {
		t.Cleanup(func() { l.local.Close() })
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.b.Close)
	return l
}

// install gives the balancer one UDP service on the VIP with backend addr.
func (l *xdpLab) install(t *testing.T, addr netip.Addr) {
	t.Helper()
	set := model.Set{
		Services: []model.Service{{Name: "web", VIPs: []model.VIP{{Addr: xlabVIP}}, Protocols: model.UDP, TableSize: 1009}},
		Backends: []model.Backend{{ID: 1, Name: "be", Service: "web", Address: addr, Weight: 1}},
	}
	if err := l.lb.Do(func() error { return l.b.SetServices(set) }); err != nil {
		t.Fatal(err)
	}
}

// rawSender opens a raw IPv4 socket on the client, which sends whole
// packets without allocating; it is closed when the test ends.
func (l *xdpLab) rawSender(t *testing.T) int {
	t.Helper()
	var sender int
	err := l.cl.Do(func() (err error) {
		sender, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(sender) })
	return sender
}

// serve installs one UDP service on the VIP with backend addr and runs
// the balancer until the test ends.
func (l *xdpLab) serve(t *testing.T, addr netip.Addr) {
	t.Helper()
	l.install(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// send sends one UDP datagram per payload from the client to the VIP,
// port 80, from source ports 40000 up.
func (l *xdpLab) send(t *testing.T, payloads ...[]byte) {
	t.Helper()
	err := l.cl.Do(func() error {
		for i, p := range payloads {
			c, err := net.DialUDP("udp4", &net.UDPAddr{Port: 40000 + i}, &net.UDPAddr{IP: xlabVIP.AsSlice(), Port: 80})
			if err != nil {
				return err
			}
			_, err = c.Write(p)
			c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// receive reads n tunnelled packets from c and returns their inner
// payloads (after the inner IPv4 and UDP headers), then checks for 200 ms
// that no more arrive.
func receive(t *testing.T, c *net.UDPConn, n int) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, 65536)
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < n {
		if err := c.SetReadDeadline(deadline); err != nil {
			t.Fatal(err)
		}
		m, err := c.Read(buf)
		if err != nil {
			t.Fatalf("after %d of %d tunnelled packets: %v", len(got), n, err)
		}
		inner := buf[:m]
		if len(inner) < 28 || netip.AddrFrom4([4]byte(inner[16:20])) != xlabVIP {
			t.Fatalf("tunnelled packet %x: not an IPv4 packet to the VIP", inner[:min(m, 40)])
		}
		got = append(got, bytes.Clone(inner[28:]))
	}
	if err := c.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if m, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("one more tunnelled packet (%d bytes, %v) than the %d sent", m, err, n)
	}
	return got
}

// waitResolved waits until the next hop table resolves addr.
func (l *xdpLab) waitResolved(t *testing.T, addr netip.Addr) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := l.b.xdp.hops.Lookup(addr); ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the next hop of %v is not resolved after 10s", addr)
		}
	}
}

func payloads(n, size int) [][]byte {
	var out [][]byte
	for i := range n {
		out = append(out, bytes.Repeat([]byte{byte('a' + i)}, size))
	}
	return out
}

// TestXDPForwards: packets to the VIP are taken by the AF_XDP socket
// (never by the stack), encapsulated and sent to the backend's MAC, which
// is what makes the backend's kernel take them.
func TestXDPForwards(t *testing.T) {
	l := newXDPLab(t)
	if got := l.b.Dataplane(); got != "xdp (native)" {
		t.Errorf("Dataplane() = %q, want xdp (native) on a veth", got)
	}
	l.serve(t, xlabBackend)
	l.waitResolved(t, xlabBackend)
	sent := payloads(8, 100)
	l.send(t, sent...)
	if diff := cmp.Diff(sent, receive(t, l.sink, len(sent))); diff != "" {
		t.Errorf("payloads at the backend (-want +got):\n%s", diff)
	}
	st := l.b.Stats()
	want := Stats{Received: 8, XDPReceived: 8, Forwarded: 8, ViaRaw: map[string]uint64{"no_next_hop": 0, "too_big": 0}}
	got := Stats{Received: st.Received, XDPReceived: st.XDPReceived, Forwarded: st.Forwarded, ViaRaw: st.ViaRaw}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
}

// TestXDPViaRaw: a backend whose next hop is not on the XDP interface (its
// address is local to the balancer), or not resolved, gets its packets
// through the raw path, counted as no_next_hop.
func TestXDPViaRaw(t *testing.T) {
	t.Run("other interface", func(t *testing.T) {
		l := newXDPLab(t)
		l.serve(t, localBackend)
		sent := payloads(4, 100)
		l.send(t, sent...)
		if diff := cmp.Diff(sent, receive(t, l.local, len(sent))); diff != "" {
			t.Errorf("payloads at the backend (-want +got):\n%s", diff)
		}
		if st := l.b.Stats(); st.ViaRaw["no_next_hop"] != 4 || st.Forwarded != 4 || st.XDPReceived != 4 {
			t.Errorf("%d received by XDP, %d forwarded, via raw %v; want 4, 4 and no_next_hop 4", st.XDPReceived, st.Forwarded, st.ViaRaw)
		}
	})
	t.Run("unresolved", func(t *testing.T) {
		l := newXDPLab(t)
		l.serve(t, absentBackend)
		l.send(t, payloads(4, 100)...)
		for deadline := time.Now().Add(10 * time.Second); l.b.Stats().ViaRaw["no_next_hop"] < 4; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("after 10s: %+v; want 4 packets via raw as no_next_hop", l.b.Stats())
			}
		}
	})
}

// TestXDPFragments: the fragments of a datagram to the VIP pass the XDP
// program, the stack reassembles them and the raw path forwards the
// datagram, once.
func TestXDPFragments(t *testing.T) {
	l := newXDPLab(t)
	l.serve(t, xlabBackend)
	l.waitResolved(t, xlabBackend)
	sent := payloads(1, 3000) // fragmented by the client's kernel (MTU 1500)
	l.send(t, sent...)
	if diff := cmp.Diff(sent, receive(t, l.sink, 1)); diff != "" {
		t.Errorf("payload at the backend (-want +got):\n%s", diff)
	}
	if st := l.b.Stats(); st.XDPReceived != 0 || st.Received != 1 || st.Forwarded != 1 {
		t.Errorf("%d received by XDP, %d in all, %d forwarded; want 0, 1 and 1", st.XDPReceived, st.Received, st.Forwarded)
	}
}

// TestXDPAllocatesNothing: the AF_XDP path (receive, the shared decision,
// encapsulation, Ethernet header, transmit, completion, refill) allocates
// nothing per packet.
func TestXDPAllocatesNothing(t *testing.T) {
	l := newXDPLab(t)
	l.install(t, xlabBackend)
	l.waitResolved(t, xlabBackend)
	// A raw socket on the client sends the batch without allocating.
	sender := l.rawSender(t)
	out := rawio.NewQueue(batchSize)
	var pkts [][]byte
	for i := range batchSize {
		p := clientUDP(uint16(40000+i), 64)
		copy(p[12:16], xlabClient.AsSlice())
		copy(p[16:20], xlabVIP.AsSlice())
		binary.BigEndian.PutUint16(p[10:12], 0) // the kernel fills it (IP_HDRINCL)
		pkts = append(pkts, p)
	}
	q := l.b.workers[0].xq
	round := func() {
		for _, p := range pkts {
			out.Add(p, xlabVIP.As4(), 0)
		}
		out.Flush(sender, func(int, error) {})
		before := l.b.workers[0].received.Load()
		for deadline := time.Now().Add(10 * time.Second); l.b.workers[0].received.Load()-before < batchSize && time.Now().Before(deadline); {
			q.Handle()
		}
	}
	round() // warm up: conntrack entries exist from here on
	// AllocsPerRun runs round once more than asked, as a warm-up: 22 in all.
	allocs := testing.AllocsPerRun(20, round)
	if allocs != 0 {
		t.Errorf("%v allocations per batch of %d packets, want 0", allocs, batchSize)
	}
	if st := l.b.Stats(); st.XDPReceived != 22*batchSize || st.Forwarded == 0 || st.ViaRaw["no_next_hop"] != 0 {
		t.Errorf("not the measured path: %+v", st)
	}
}

// TestXDPFollowsServices: the program takes the packets of the services'
// VIPs only, as SetServices changes them: once no service has the VIP, its
// packets pass to the stack (no AF_XDP socket reads them).
func TestXDPFollowsServices(t *testing.T) {
	l := newXDPLab(t)
	l.serve(t, xlabBackend)
	l.waitResolved(t, xlabBackend)
	l.send(t, payloads(2, 10)...)
	receive(t, l.sink, 2)
	if err := l.lb.Do(func() error { return l.b.SetServices(model.Set{}) }); err != nil {
		t.Fatal(err)
	}
	// The stack gets them: nothing listens on the port, which its UDP
	// NoPorts counter says.
	before := l.udpNoPorts(t)
	l.send(t, payloads(2, 10)...)
	for deadline := time.Now().Add(10 * time.Second); l.udpNoPorts(t)-before < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s the balancer's stack counted %d datagrams to no port, want 2", l.udpNoPorts(t)-before)
		}
	}
	if st := l.b.Stats(); st.XDPReceived != 2 || st.Received != 2 {
		t.Errorf("after the VIP's service went: %d received by XDP, %d in all; want 2 and 2 (the first two)", st.XDPReceived, st.Received)
	}
}

// udpNoPorts reads the UDP NoPorts counter of lb's stack
// (/proc/thread-self/net/snmp: the namespace of the thread, not the
// process's).
func (l *xdpLab) udpNoPorts(t *testing.T) uint64 {
	t.Helper()
	var n uint64
	err := l.lb.Do(func() error {
		data, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for line := range strings.Lines(string(data)) {
			fields := strings.Fields(line)
			if len(fields) == 0 || fields[0] != "Udp:" {
				continue
			}
			if names == nil {
				names = fields
				continue
			}
			i := slices.Index(names, "NoPorts")
			if i < 0 || i >= len(fields) {
				return errors.New("no NoPorts in the Udp line of /proc/net/snmp")
			}
			n, err = strconv.ParseUint(fields[i], 10, 64)
			return err
		}
		return errors.New("no Udp lines in /proc/net/snmp")
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestXDPBurst: a batch larger than what the kernel sends per kick (32
// frames in copy mode) all reaches the backend, with no later packet to
// push the rest out. The worker's queue is driven by hand, so that the 64
// datagrams sent at once are in the RX ring together when it first looks.
func TestXDPBurst(t *testing.T) {
	l := newXDPLab(t)
	l.install(t, xlabBackend)
	l.waitResolved(t, xlabBackend)
	sender := l.rawSender(t)
	const burst = 64
	out := rawio.NewQueue(burst)
	for i := range burst {
		p := clientUDP(uint16(40000+i), 64)
		copy(p[12:16], xlabClient.AsSlice())
		copy(p[16:20], xlabVIP.AsSlice())
		out.Add(p, xlabVIP.As4(), 0)
	}
	if n := out.Flush(sender, func(_ int, err error) { t.Error(err) }); n != burst {
		t.Fatalf("sent %d of %d", n, burst)
	}
	q := l.b.workers[0].xq
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				q.Handle()
			}
		}
	}()
	defer func() { close(stop); <-done }()
	receive(t, l.sink, burst)
}

// TestXDPKernelDropsAreCounted: what the kernel drops because a worker fell
// behind (its socket had no free frame, or its RX ring was full) shows in
// Stats' drops, where an operator looks, not only in the socket's own
// counters. The worker is not run, so its socket fills up.
func TestXDPKernelDropsAreCounted(t *testing.T) {
	l := newXDPLab(t)
	l.install(t, xlabBackend)
	sender := l.rawSender(t)
	// The fill ring holds DefaultRingSize frames: the rest has no room.
	const excess = 256
	const n = xdp.DefaultRingSize + excess
	out := rawio.NewQueue(64)
	p := clientUDP(40000, 64)
	copy(p[12:16], xlabClient.AsSlice())
	copy(p[16:20], xlabVIP.AsSlice())
	for sent := 0; sent < n; {
		for range min(64, n-sent) {
			out.Add(p, xlabVIP.As4(), 0)
		}
		sent += out.Flush(sender, func(_ int, err error) { t.Fatal(err) })
	}
	var dropped uint64
	for deadline := time.Now().Add(10 * time.Second); dropped == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		st := l.b.Stats()
		dropped = st.Drops["xdp_no_frame"] + st.Drops["xdp_ring_full"]
	}
	if dropped == 0 || dropped > excess {
		t.Errorf("xdp_no_frame + xdp_ring_full = %d after %d datagrams to a socket with room for %d; want 1 to %d", dropped, n, xdp.DefaultRingSize, excess)
	}
	if got := l.b.Stats().Received; got != 0 {
		t.Errorf("received %d; the worker was not run", got)
	}
}
