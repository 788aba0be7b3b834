// Package e2e runs Caplance end to end, as root, in network namespaces: a
// client, a balancer and three backends on one bridge, every caplanced a
// real process (package testbed). CI is root, so these tests run there;
// elsewhere they skip.
package e2e

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/cmdtest"
	"github.com/caplance/caplance/internal/testbed"
)

// The commands under test, built once by TestMain.
var caplancedBin, caplancectlBin, healthdBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // every test skips
	}
	defer cmdtest.Cleanup()
	for _, b := range []struct {
		path *string
		name string
	}{{&caplancedBin, "caplanced"}, {&caplancectlBin, "caplancectl"}, {&healthdBin, "caplance-healthd"}} {
		path, err := cmdtest.Build(b.name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		*b.path = path
	}
	return m.Run()
}

// newTestbed builds a testbed with three backends and a running balancer.
func newTestbed(t *testing.T) *testbed.Testbed {
	t.Helper()
	return newTestbedOn(t, "")
}

// newTestbedOn is newTestbed with the balancer's dataplane ("": the
// default).
func newTestbedOn(t *testing.T, dataplane string) *testbed.Testbed {
	t.Helper()
	tb := openTestbed(t, testbed.Options{Prefix: "e2e", Backends: 3, Workers: 2, Dataplane: dataplane})
	if err := tb.StartBalancer(); err != nil {
		t.Fatal(err)
	}
	return tb
}

// openTestbed builds a testbed of caplancedBin in opts.Dir (a new temporary
// directory if empty), closed when the test ends; nothing runs in it yet.
func openTestbed(t *testing.T, opts testbed.Options) *testbed.Testbed {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces)")
	}
	opts.Binary = caplancedBin
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	tb, err := testbed.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Error(err)
		}
	})
	return tb
}

// capture records, on the balancer's eth0, every IPv4 packet to or from the
// VIP, so tests can tell what the balancer host itself sent and what
// crossed its interface.
type capture struct {
	fd   int
	mu   sync.Mutex
	pkts []seenPacket
	done chan struct{}
}

type seenPacket struct {
	outgoing bool // sent by the balancer host
	src, dst netip.Addr
	proto    uint8
	tcpFlags uint8
	icmpType uint8
	icmpCode uint8
}

func (p seenPacket) String() string {
	dir := "in "
	if p.outgoing {
		dir = "out"
	}
	return fmt.Sprintf("%s %s -> %s proto %d tcpflags %#x icmp %d/%d", dir, p.src, p.dst, p.proto, p.tcpFlags, p.icmpType, p.icmpCode)
}

func startCapture(t *testing.T, tb *testbed.Testbed) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{})}
	err := tb.LB.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
		if err != nil {
			return err
		}
		c.fd = fd
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	})
	if err != nil {
		t.Fatalf("packet socket on the balancer: %v", err)
	}
	go c.read()
	t.Cleanup(c.stop)
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *capture) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || n < 14+20 {
			continue
		}
		ip := buf[14:n]
		p := seenPacket{
			outgoing: ll.Pkttype == unix.PACKET_OUTGOING,
			src:      netip.AddrFrom4([4]byte(ip[12:16])),
			dst:      netip.AddrFrom4([4]byte(ip[16:20])),
			proto:    ip[9],
		}
		if p.src != testbed.VIP && p.dst != testbed.VIP {
			continue
		}
		l4 := ip[int(ip[0]&0xf)*4:]
		switch {
		case p.proto == unix.IPPROTO_TCP && len(l4) >= 14:
			p.tcpFlags = l4[13]
		case p.proto == unix.IPPROTO_ICMP && len(l4) >= 2:
			p.icmpType, p.icmpCode = l4[0], l4[1]
		}
		c.mu.Lock()
		c.pkts = append(c.pkts, p)
		c.mu.Unlock()
	}
}

func (c *capture) stop() {
	unix.Close(c.fd)
	<-c.done
}

func (c *capture) packets() []seenPacket {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]seenPacket(nil), c.pkts...)
}

// rawSend sends a hand-made IPv4 packet from the client (IP_HDRINCL).
func rawSend(tb *testbed.Testbed, pkt []byte) error {
	return tb.Client.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: [4]byte(pkt[16:20])})
	})
}

// ipv4 builds an IPv4 packet from src to dst with payload (header checksum
// left to the kernel).
func ipv4(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	pkt := make([]byte, 20+len(payload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	pkt[8] = 64
	pkt[9] = proto
	s, d := src.As4(), dst.As4()
	copy(pkt[12:16], s[:])
	copy(pkt[16:20], d[:])
	copy(pkt[20:], payload)
	return pkt
}

// eventually retries check until it passes or 5 s pass.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	within(t, 5*time.Second, what, check)
}

// within polls check until it succeeds, and fails the test if it has not
// after d.
func within(t *testing.T, d time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
