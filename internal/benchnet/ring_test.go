package benchnet

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/rawio"
)

// TestRingDelivers sends IPv4 and IPv6 loads from a TX ring in one host of a
// lab to counting sockets in another, through the lab's bridge: every
// measured frame arrives and passes the sink's check (the receiving kernel
// has verified the checksums), and the generator says it sent them all.
func TestRingDelivers(t *testing.T) {
	lab := netnstest.NewForTest(t, "bnr")
	srcs := []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("2001:db8:18::1/64")}
	dsts := []netip.Prefix{netip.MustParsePrefix("198.18.0.2/24"), netip.MustParsePrefix("2001:db8:18::2/64")}
	gen, err := lab.AddHost("gen", srcs...)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := lab.AddHost("sink", dsts...)
	if err != nil {
		t.Fatal(err)
	}
	var ring *Ring
	var genMAC, sinkMAC net.HardwareAddr
	err = gen.Do(func() (err error) {
		genMAC, err = macOf("eth0")
		if err == nil {
			ring, err = NewRing("eth0")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ring.Close()
	for i := range srcs {
		src, dst := srcs[i].Addr(), dsts[i].Addr()
		var fd int
		err := sink.Do(func() (err error) {
			sinkMAC, err = macOf("eth0")
			if err == nil {
				fd, err = CountingSocket(netip.AddrPortFrom(dst, DstPort))
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		l, err := NewLoad(genMAC, sinkMAC, src, dst, 1)
		if err != nil {
			t.Fatal(err)
		}
		var stop, warmed atomic.Bool
		var measured atomic.Uint64
		tid := make(chan int, 1)
		sunk := make(chan SinkCounts, 1)
		go func() {
			sunk <- Sink(fd, func(b *rawio.Batch, i int) Phase {
				if b.Source(i).Addr() != src {
					return 0
				}
				ph := l.CheckPayload(b.Packet(i), b.Source(i).Port())
				if ph == Measured {
					measured.Add(1)
				}
				return ph
			}, &stop, &warmed, tid)
		}()
		probe := CPUProbe{SinkTID: <-tid}
		// Paced well below what any machine forwards, so that nothing may
		// be lost on the way.
		g := Generate(ring, l, 20_000, Timing{Warmup: 50 * time.Millisecond, WarmupMax: 5 * time.Second, Measure: 200 * time.Millisecond}, &probe, &warmed)
		if g.Err != nil {
			t.Fatal(g.Err)
		}
		for deadline := time.Now().Add(10 * time.Second); measured.Load() < g.Sent && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		stop.Store(true)
		c := <-sunk
		if g.Sent == 0 || c.Measured != g.Sent || c.Malformed != 0 || c.Stale != 0 {
			t.Errorf("%v: sent %d measured frames; the sink counted %+v", dst, g.Sent, c)
		}
	}
}

// macOf is the named interface's MAC in the calling thread's namespace.
func macOf(name string) (net.HardwareAddr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	return ifi.HardwareAddr, nil
}
