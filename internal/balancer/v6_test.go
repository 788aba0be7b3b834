package balancer

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/model"
)

// TestIPv6ClientToIPv4Backend: IPv6 packets to an IPv6 VIP, read whole from
// the packet socket, reach the backend in an IPv4 tunnel (6-in-4) exactly as
// the client sent them: traffic class, flow label, hop limit and extension
// headers included. Each is read once (the host's own copy of what it sends
// on lo is not), and nothing allocates.
func TestIPv6ClientToIPv4Backend(t *testing.T) {
	h := newHotPath(t)
	pkts := [][]byte{clientUDP6(40000, 64, false), clientUDP6(40001, 200, true)}
	h.send6(t, pkts...)
	got := 0
	for deadline := time.Now().Add(10 * time.Second); got < len(pkts) && time.Now().Before(deadline); {
		got += h.forward6(t)
	}
	buf := make([]byte, 65536)
	for i, want := range pkts {
		h.sink.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := h.sink.Read(buf)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if diff := cmp.Diff(want, buf[:n]); diff != "" {
			t.Errorf("packet %d: the inner packet the backend got (-client's +got):\n%s", i, diff)
		}
	}
	st := h.b.Stats()
	if st.Received != uint64(len(pkts)) || st.Forwarded != uint64(len(pkts)) {
		t.Errorf("%d received, %d forwarded, drops %v; want %d and %d", st.Received, st.Forwarded, st.Drops, len(pkts), len(pkts))
	}
	// Nothing more waits: no second copy of either packet.
	if n := h.forward6(t); n != 0 {
		t.Errorf("%d more packets on the IPv6 socket, want none", n)
	}

	batch := make([][]byte, batchSize)
	for i := range batch {
		batch[i] = clientUDP6(uint16(41000+i), 64, false)
	}
	h.send6(t, batch...)
	h.forward6(t) // warm up: conntrack entries exist from here on
	forwarded := 0
	allocs := testing.AllocsPerRun(50, func() {
		h.send6(t, batch...)
		forwarded += h.forward6(t)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch of IPv6 packets, want 0", allocs)
	}
	if forwarded == 0 {
		t.Error("no IPv6 packet went through the measured path")
	}
}

// TestIPv6VIPsOnlyWhenServed: the IPv6 socket takes nothing before a
// service has the IPv6 VIP, nor after it leaves.
func TestIPv6VIPsOnlyWhenServed(t *testing.T) {
	h := newHotPathWorkers(t, 1)
	be := model.Backend{ID: 1, Name: "lo", Address: benchBackend, Weight: 1}
	h.send6(t, clientUDP6(40000, 8, false))
	v4only := oneService(1009, nil, be)
	v4only.Services[0].VIPs = v4only.Services[0].VIPs[:1]
	if err := h.b.SetServices(v4only); err != nil {
		t.Fatal(err)
	}
	h.send6(t, clientUDP6(40001, 8, false))
	if err := h.b.SetServices(oneService(1009, nil, be)); err != nil {
		t.Fatal(err)
	}
	want := clientUDP6(40002, 8, false)
	h.send6(t, want)
	got := 0
	for deadline := time.Now().Add(10 * time.Second); got == 0 && time.Now().Before(deadline); {
		got += h.forward6(t)
	}
	if got != 1 || h.b.Stats().Forwarded != 1 {
		t.Fatalf("%d packets read, %d forwarded; want only the one sent once the VIP was served", got, h.b.Stats().Forwarded)
	}
	if err := h.b.SetServices(v4only); err != nil {
		t.Fatal(err)
	}
	h.send6(t, clientUDP6(40003, 8, false))
	if n := h.forward6(t); n != 0 {
		t.Errorf("%d packets read after the IPv6 VIP left, want none", n)
	}
}

// TestIPv6FlowsSplitBetweenWorkers: two running workers share the IPv6
// flows through their filters: every packet to the IPv6 VIP is read once
// and forwarded, each worker takes some TCP/UDP flows, and worker 0 the
// ICMPv6 and the packets behind extension headers; a packet to another
// local IPv6 address is never seen.
func TestIPv6FlowsSplitBetweenWorkers(t *testing.T) {
	h := newHotPathWorkers(t, 2)
	other := netip.MustParseAddr("2001:db8::200")
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: other.AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}); err != nil {
		t.Fatal(err)
	}
	if err := h.b.SetServices(oneService(1009, nil, model.Backend{ID: 1, Name: "lo", Address: benchBackend, Weight: 1})); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- h.b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	var pkts [][]byte
	for i := range 16 {
		for range 4 {
			pkts = append(pkts, clientUDP6(uint16(30000+i), 16, i%4 == 3))
		}
	}
	echo := clientUDP6(0, 8, false)
	echo[6], echo[40], echo[41] = unix.IPPROTO_ICMPV6, 128, 0 // echo request
	elsewhere := clientUDP6(30000, 16, false)
	copy(elsewhere[24:40], other.AsSlice())
	pkts = append(pkts, echo, elsewhere)
	for p := range slices.Chunk(pkts, batchSize) {
		h.send6(t, p...)
	}
	want := uint64(len(pkts) - 1)
	deadline := time.Now().Add(20 * time.Second)
	for h.b.Stats().Forwarded < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st := h.b.Stats()
	if st.Received != want || st.Forwarded != want {
		t.Errorf("%d received, %d forwarded, drops %v; want %d and %d", st.Received, st.Forwarded, st.Drops, want, want)
	}
	for i, w := range h.b.workers {
		if w.received.Load() == 0 {
			t.Errorf("worker %d took none of the flows", i)
		}
	}
}

// TestIPv6TooBig: an IPv6 packet that does not fit the tunnel is not sent
// (IPv6 routers never fragment) but counted as too_big, where the client
// gets a Packet Too Big (encap6.go); one that fits goes through.
func TestIPv6TooBig(t *testing.T) {
	h := newHotPathWorkers(t, 1)
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetMTU(lo, 1280) // the least IPv6 allows
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := h.b.SetServices(oneService(1009, nil, model.Backend{ID: 1, Name: "lo", Address: benchBackend, Weight: 1})); err != nil {
		t.Fatal(err)
	}
	// The backend's outer is IPv4, 28 bytes; the IPv6 and UDP headers
	// take 48.
	fits := clientUDP6(40000, 1280-28-48, false) // 1280 bytes in the tunnel
	big := clientUDP6(40001, 1280-48, false)     // 1280 bytes, 1308 in the tunnel
	h.send6(t, big, fits)
	got := 0
	for deadline := time.Now().Add(10 * time.Second); got < 2 && time.Now().Before(deadline); {
		got += h.forward6(t)
	}
	st := h.b.Stats()
	if st.Drops["too_big"] != 1 || st.Forwarded != 1 {
		t.Errorf("%d forwarded, drops %v; want the packet that fits forwarded, the other dropped as too_big", st.Forwarded, st.Drops)
	}
}

// TestNoPacketSocket: a balancer whose workers could not open the IPv6
// packet socket (a unit without AF_PACKET) serves IPv4 VIPs and refuses an
// IPv6 one, saying why, changing nothing.
func TestNoPacketSocket(t *testing.T) {
	h := newHotPathWorkers(t, 1)
	h.b.noIPv6 = fmt.Errorf("balancer: ipv6 packet socket: %w", unix.EAFNOSUPPORT)
	be := model.Backend{ID: 1, Name: "lo", Address: benchBackend, Weight: 1}
	v4only := oneService(1009, nil, be)
	v4only.Services[0].VIPs = v4only.Services[0].VIPs[:1]
	if err := h.b.SetServices(v4only); err != nil {
		t.Fatal(err)
	}
	before := h.b.snap.Load()
	err := h.b.SetServices(oneService(1009, nil, be))
	want := "balancer: IPv6 VIP 2001:db8::100: no IPv6 packets can be read (balancer: ipv6 packet socket: address family not supported by protocol): " +
		"a systemd unit must allow AF_PACKET in RestrictAddressFamilies"
	if errText(err) != want {
		t.Errorf("error %q, want %q", errText(err), want)
	}
	if h.b.snap.Load() != before {
		t.Error("the refused set was installed")
	}
}
