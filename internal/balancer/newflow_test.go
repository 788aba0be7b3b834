package balancer

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/flow"
	"github.com/caplance/caplance/internal/model"
)

// clientTCP is a TCP segment from 10.0.0.1:sport to the VIP, port 80, with
// flags.
func clientTCP(sport uint16, flags flow.TCPFlags) []byte {
	pkt := clientPacket(unix.IPPROTO_TCP, sport, 20)
	pkt[32], pkt[33] = 5<<4, byte(flags)
	return pkt
}

// TestNewConnectionsSkipBackendsThatTakeNone: a SYN without ACK opens a new
// connection even when connection tracking still holds an entry for its
// ports (a client reusing a port before the entry expired): it goes to a
// backend that takes new flows, never to a drained or weight-0 one, while
// the established connection's other segments still reach its backend.
func TestNewConnectionsSkipBackendsThatTakeNone(t *testing.T) {
	h := newHotPath(t)
	tcpFD := int(h.w.fds[0].Fd) // tcp, udp, icmp
	one, two := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	set := func(first model.Backend) {
		t.Helper()
		if err := h.b.SetServices(oneService(65537, nil, first, model.Backend{ID: 2, Name: "two", Address: two, Weight: 1})); err != nil {
			t.Fatal(err)
		}
	}
	// send sends one segment and returns the backend it went to.
	send := func(sport uint16, flags flow.TCPFlags) string {
		t.Helper()
		before := h.b.Stats().Backends
		h.out.Add(clientTCP(sport, flags), benchVIP.As4(), 0)
		h.out.Flush(h.sender, func(_ int, err error) { t.Fatal(err) })
		n, err := h.w.batch.Recv(tcpFD)
		if err != nil || n != 1 {
			t.Fatalf("received %d segments (%v), want 1", n, err)
		}
		h.w.forward(n)
		after := h.b.Stats().Backends
		for i := range after {
			if after[i].Packets > before[i].Packets {
				return after[i].Name
			}
		}
		t.Fatalf("segment from port %d (flags %#x) went to no backend", sport, flags)
		return ""
	}
	port := uint16(20000) // each connection on ports of its own
	for _, tt := range []struct {
		name       string
		notTakeNew model.Backend
	}{
		{name: "drained", notTakeNew: model.Backend{ID: 1, Name: "one", Address: one, Weight: 1, State: model.Draining}},
		{name: "weight 0", notTakeNew: model.Backend{ID: 1, Name: "one", Address: one, Weight: 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			set(model.Backend{ID: 1, Name: "one", Address: one, Weight: 1})
			// A connection that lands on "one".
			for first := port; send(port, flow.SYN) != "one"; port++ {
				if port == first+100 {
					t.Fatal("no port of 100 hashes to backend one")
				}
			}
			if got := send(port, flow.ACK); got != "one" {
				t.Fatalf("the established connection went to %s", got)
			}
			set(tt.notTakeNew)
			if got := send(port, flow.ACK); got != "one" {
				t.Errorf("the established connection moved to %s", got)
			}
			if got := send(port, flow.SYN); got != "two" {
				t.Errorf("a new connection on the same ports went to %s, want two", got)
			}
			if got := send(port, flow.ACK); got != "two" {
				t.Errorf("the new connection's next segment went to %s, want two", got)
			}
			port++
		})
	}
}

// TestFlowCountsAreShared: Stats walks connection tracking at most once per
// flowCountsMaxAge, whoever asks, so that callers of ListBackends or
// ActiveFlows (anyone on the bus) cannot keep the CPUs walking it.
func TestFlowCountsAreShared(t *testing.T) {
	h := newHotPath(t)
	active := func() uint64 {
		t.Helper()
		st := h.b.Stats()
		if len(st.Backends) != 1 {
			t.Fatalf("Stats has %d backends, want 1", len(st.Backends))
		}
		return st.Backends[0].ActiveFlows
	}
	defer func(age time.Duration) { flowCountsMaxAge = age }(flowCountsMaxAge)
	flowCountsMaxAge = time.Hour
	if n := active(); n != 0 {
		t.Fatalf("%d active flows before any packet", n)
	}
	h.sendBatch(t)
	for forwarded := 0; forwarded < len(h.pkts); {
		forwarded += h.forwardBatch(t)
	}
	if n := active(); n != 0 {
		t.Errorf("%d active flows within flowCountsMaxAge of the last count, want the last count, 0", n)
	}
	flowCountsMaxAge = 0
	if n, want := active(), uint64(len(h.pkts)); n != want {
		t.Errorf("%d active flows once the count is old, want %d", n, want)
	}
}
