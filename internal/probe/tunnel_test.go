package probe_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/probe"
)

// The tunnel lab: a balancer host and a backend host on one bridge, the VIP
// on the backend's loopback.
var (
	lbAddr    = netip.MustParseAddr("198.18.0.1")
	beAddr    = netip.MustParseAddr("198.18.0.2")
	vipAddr   = netip.MustParseAddr("198.18.0.100")
	encapPort = uint16(6080)
	// servicePort is where the backend listens, on every address.
	servicePort = 8080
)

// decapsulator is a minimal user-space receiver, as internal/receiver is:
// foo-over-UDP datagrams on the encap port go through encap.Decapsulator and
// the inner packets are injected into the backend's stack on a raw
// IP_HDRINCL socket. It records the TCP segments it delivers.
type decapsulator struct {
	conn   *net.UDPConn
	fd     int
	done   chan struct{}
	stopMu sync.Once

	mu       sync.Mutex
	segments []segment
}

// segment is a delivered TCP segment: ports and flags.
type segment struct {
	SrcPort, DstPort uint16
	Flags            byte
}

func startDecapsulator(t *testing.T, h *netnstest.Host, balancers ...netip.Addr) *decapsulator {
	t.Helper()
	dec, err := encap.NewDecapsulator(encapPort, balancers, []netip.Addr{vipAddr})
	if err != nil {
		t.Fatal(err)
	}
	d := &decapsulator{fd: -1, done: make(chan struct{})}
	err = h.Do(func() error {
		var err error
		if d.conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: int(encapPort)}); err != nil {
			return err
		}
		d.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		if d.conn != nil {
			d.conn.Close()
		}
		t.Fatal(err)
	}
	go d.loop(dec)
	t.Cleanup(d.stop)
	return d
}

func (d *decapsulator) loop(dec *encap.Decapsulator) {
	defer close(d.done)
	buf := make([]byte, 65536)
	for {
		n, from, err := d.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		inner, reject := dec.Payload(from.Addr(), buf[:n], nil)
		if reject != encap.Accept {
			continue
		}
		if ihl := int(inner[0]&0x0f) * 4; inner[9] == unix.IPPROTO_TCP && len(inner) >= ihl+14 {
			tcp := inner[ihl:]
			d.mu.Lock()
			d.segments = append(d.segments, segment{binary.BigEndian.Uint16(tcp[0:2]), binary.BigEndian.Uint16(tcp[2:4]), tcp[13]})
			d.mu.Unlock()
		}
		_ = unix.Sendto(d.fd, inner, 0, &unix.SockaddrInet4{Addr: [4]byte(inner[16:20])})
	}
}

// stop closes the encap port, so the backend's kernel answers further
// tunnelled packets with ICMP port unreachable.
func (d *decapsulator) stop() {
	d.stopMu.Do(func() {
		d.conn.Close()
		<-d.done
		unix.Close(d.fd)
	})
}

func (d *decapsulator) delivered() []segment {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]segment(nil), d.segments...)
}

// tunnelLab builds the lab and starts the backend's service.
func tunnelLab(t *testing.T) (lb, be *netnstest.Host) {
	t.Helper()
	lab := netnstest.NewForTest(t, "chk")
	lb, err := lab.AddHost("lb", netip.PrefixFrom(lbAddr, 24))
	if err != nil {
		t.Fatal(err)
	}
	be, err = lab.AddHost("be", netip.PrefixFrom(beAddr, 24))
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	err = be.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: netlink.NewIPNet(vipAddr.AsSlice())}); err != nil {
			return fmt.Errorf("VIP on lo: %w", err)
		}
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", servicePort))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// Wait until the links carry traffic and each host knows the other's
	// MAC address, as on a running network: a lost first ARP request would
	// otherwise cost a probe its one-second retransmission.
	if err := lb.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err := d.Dial("tcp4", netip.AddrPortFrom(beAddr, uint16(servicePort)).String())
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("the backend is unreachable: %v", err)
	}
	return lb, be
}

// probeIn runs one probe from inside host's namespace.
func probeIn(t *testing.T, h *netnstest.Host, spec string, target checkspec.Target) outcome {
	t.Helper()
	s := mustParse(t, spec)
	var r probe.Result
	if err := h.Do(func() error {
		r = probe.Run(context.Background(), s, target)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if r.Latency > s.Timeout+200*time.Millisecond {
		t.Errorf("%s: latency %v, timeout %v", spec, r.Latency, s.Timeout)
	}
	return outcome{r.Up, r.Detail}
}

func TestTunnel(t *testing.T) {
	t.Parallel()
	lb, be := tunnelLab(t)
	target := checkspec.Target{Name: "be", Address: beAddr, VIP: vipAddr, EncapPort: encapPort, Source: lbAddr}
	d := startDecapsulator(t, be, lbAddr)

	synACK := outcome{true, "tunnel: 198.18.0.100:8080 via 198.18.0.2: SYN-ACK"}
	t.Run("SYN through the tunnel", func(t *testing.T) {
		if diff := cmp.Diff(synACK, probeIn(t, lb, "tunnel://:8080", target)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		// The decapsulator delivered the SYN and then the probe's RST, from
		// the same port, so the backend keeps no half-open connection.
		var got []segment
		for deadline := time.Now().Add(time.Second); len(got) < 2 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			got = d.delivered()
		}
		if len(got) != 2 {
			t.Fatalf("delivered %+v, want a SYN and a RST", got)
		}
		want := []segment{{got[0].SrcPort, uint16(servicePort), 0x02}, {got[0].SrcPort, uint16(servicePort), 0x04}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("TCP segments delivered to the VIP (-want +got):\n%s", diff)
		}
	})
	t.Run("the source address is found when not given", func(t *testing.T) {
		noSource := target
		noSource.Source = netip.Addr{}
		if diff := cmp.Diff(synACK, probeIn(t, lb, "tunnel://:8080", noSource)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("vip= overrides the target's VIP", func(t *testing.T) {
		other := target
		other.VIP = netip.MustParseAddr("198.18.0.222")
		if diff := cmp.Diff(synACK, probeIn(t, lb, "tunnel://:8080?vip=198.18.0.100", other)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("an IPv6 VIP needs an IPv6 source for the answer", func(t *testing.T) {
		v6 := target
		v6.VIP = netip.MustParseAddr("2001:db8:100::100")
		want := outcome{false, "tunnel: 2001:db8:100::100 via 198.18.0.2: no IPv6 source address for the answer from the VIP on eth0, the interface of 198.18.0.1"}
		if diff := cmp.Diff(want, probeIn(t, lb, "tunnel://icmp", v6)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("echo through the tunnel", func(t *testing.T) {
		want := outcome{true, "tunnel: 198.18.0.100 via 198.18.0.2: echo reply"}
		if diff := cmp.Diff(want, probeIn(t, lb, "tunnel://icmp", target)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("nothing listens on the VIP's port", func(t *testing.T) {
		want := outcome{false, "tunnel: 198.18.0.100:8081 via 198.18.0.2: connection refused (RST): the tunnel works, nothing listens on the port"}
		if diff := cmp.Diff(want, probeIn(t, lb, "tunnel://:8081", target)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("the receiver drops packets from this balancer", func(t *testing.T) {
		stranger := target
		stranger.EncapPort = encapPort + 1
		strict, err := encap.NewDecapsulator(encapPort+1, []netip.Addr{netip.MustParseAddr("198.18.0.9")}, []netip.Addr{vipAddr})
		if err != nil {
			t.Fatal(err)
		}
		var c *net.UDPConn
		if err := be.Do(func() (err error) {
			c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: int(encapPort + 1)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() { // reads and drops, as a receiver does with strangers
			buf := make([]byte, 65536)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				strict.Payload(from.Addr(), buf[:n], nil)
			}
		}()
		want := outcome{false, "tunnel: 198.18.0.100:8080 via 198.18.0.2: timeout after 300ms"}
		if diff := cmp.Diff(want, probeIn(t, lb, "tunnel://:8080?timeout=300ms", stranger)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("receiver stopped: tunnel down, tcp to the backend still up", func(t *testing.T) {
		d.stop()
		want := outcome{false, "tunnel: 198.18.0.100:8080 via 198.18.0.2: port unreachable from 198.18.0.2 for UDP port 6080: nothing receives encapsulated packets there"}
		if diff := cmp.Diff(want, probeIn(t, lb, "tunnel://:8080", target)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		want = outcome{false, "tunnel: 198.18.0.100 via 198.18.0.2: port unreachable from 198.18.0.2 for UDP port 6080: nothing receives encapsulated packets there"}
		if diff := cmp.Diff(want, probeIn(t, lb, "tunnel://icmp", target)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		want = outcome{true, "tcp: 198.18.0.2:8080: connected"}
		if diff := cmp.Diff(want, probeIn(t, lb, "tcp://:8080", target)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
}

// TestTunnelLocalVIP shows what the package comment warns about: on a
// balancer that has the VIP as a local address, the reply from the VIP is a
// martian until accept_local is set on the interface it arrives on.
func TestTunnelLocalVIP(t *testing.T) {
	t.Parallel()
	lb, be := tunnelLab(t)
	startDecapsulator(t, be, lbAddr)
	if err := lb.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: netlink.NewIPNet(vipAddr.AsSlice())})
	}); err != nil {
		t.Fatal(err)
	}
	target := checkspec.Target{Name: "be", Address: beAddr, VIP: vipAddr, EncapPort: encapPort, Source: lbAddr}
	want := outcome{false, "tunnel: 198.18.0.100:8080 via 198.18.0.2: timeout after 300ms"}
	if diff := cmp.Diff(want, probeIn(t, lb, "tunnel://:8080?timeout=300ms", target)); diff != "" {
		t.Errorf("without accept_local (-want +got):\n%s", diff)
	}
	if err := lb.SetSysctl("net/ipv4/conf/eth0/accept_local", "1"); err != nil {
		t.Fatal(err)
	}
	want = outcome{true, "tunnel: 198.18.0.100:8080 via 198.18.0.2: SYN-ACK"}
	if diff := cmp.Diff(want, probeIn(t, lb, "tunnel://:8080", target)); diff != "" {
		t.Errorf("with accept_local (-want +got):\n%s", diff)
	}
}

// TestTunnelTargetProblems needs no privileges: the probe refuses before it
// opens a socket.
func TestTunnelTargetProblems(t *testing.T) {
	t.Parallel()
	good := checkspec.Target{Name: "be", Address: beAddr, VIP: vipAddr, EncapPort: encapPort}
	tests := []struct {
		name   string
		spec   string
		target func(checkspec.Target) checkspec.Target
		want   string
	}{
		{"no VIP", "tunnel://:80", func(t checkspec.Target) checkspec.Target { t.VIP = netip.Addr{}; return t },
			"tunnel: no VIP to probe (the target has none and the spec names none)"},
		{"no backend address", "tunnel://:80", func(t checkspec.Target) checkspec.Target { t.Address = netip.Addr{}; return t },
			"tunnel: no backend address"},
		{"source of another family than the backend", "tunnel://:80", func(t checkspec.Target) checkspec.Target {
			t.Source = netip.MustParseAddr("2001:db8::1")
			return t
		}, "tunnel: 198.18.0.100:80 via 198.18.0.2: encap: outer 2001:db8::1 → 198.18.0.2: outer source and destination are of different address families"},
		{"no encap port", "tunnel://:80", func(t checkspec.Target) checkspec.Target { t.EncapPort = 0; return t },
			"tunnel: no encap port in the target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			want := outcome{false, tt.want}
			if diff := cmp.Diff(want, runProbe(t, tt.spec, tt.target(good))); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
