package probe_test

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/receiver"
)

// The dual-stack lab: the tunnel lab's hosts with IPv6 addresses too, and
// an IPv6 VIP beside the IPv4 one on the backend's loopback.
var (
	lbAddr6  = netip.MustParseAddr("2001:db8:1::1")
	beAddr6  = netip.MustParseAddr("2001:db8:1::2")
	vipAddr6 = netip.MustParseAddr("2001:db8:100::100")
	// udpPort is where the backend's UDP echo service listens.
	udpPort = 7
)

// dualStackLab builds the lab, starts the backend's TCP, HTTP, HTTPS and
// UDP services on every address of both families, and returns the HTTPS
// server's CA file.
func dualStackLab(t *testing.T) (lb, be *netnstest.Host, ca string, httpPort, httpsPort int) {
	t.Helper()
	lab := netnstest.NewForTest(t, "chk6")
	lb, err := lab.AddHost("lb", netip.PrefixFrom(lbAddr, 24), netip.PrefixFrom(lbAddr6, 64))
	if err != nil {
		t.Fatal(err)
	}
	be, err = lab.AddHost("be", netip.PrefixFrom(beAddr, 24), netip.PrefixFrom(beAddr6, 64))
	if err != nil {
		t.Fatal(err)
	}
	var tcpL, httpL, httpsL net.Listener
	var udpC net.PacketConn
	err = be.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, vip := range []netip.Addr{vipAddr, vipAddr6} {
			a := &netlink.Addr{IPNet: netlink.NewIPNet(vip.AsSlice()), Flags: unix.IFA_F_NODAD}
			if err := netlink.AddrAdd(lo, a); err != nil {
				return fmt.Errorf("VIP %s on lo: %w", vip, err)
			}
		}
		if tcpL, err = net.Listen("tcp", fmt.Sprintf(":%d", servicePort)); err != nil {
			return err
		}
		if httpL, err = net.Listen("tcp", ":0"); err != nil {
			return err
		}
		if httpsL, err = net.Listen("tcp", ":0"); err != nil {
			return err
		}
		udpC, err = net.ListenPacket("udp", fmt.Sprintf(":%d", udpPort))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcpL.Close(); udpC.Close() })
	go func() {
		for {
			c, err := tcpL.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := udpC.ReadFrom(buf)
			if err != nil {
				return
			}
			udpC.WriteTo(append([]byte("pong "), buf[:n]...), from)
		}
	}()
	var rec recorder
	hs := quietServer(httptest.NewUnstartedServer(testHandler(&rec)))
	hs.Listener.Close()
	hs.Listener = httpL
	hs.Start()
	t.Cleanup(hs.Close)
	tlsS := quietServer(httptest.NewUnstartedServer(testHandler(&rec)))
	tlsS.Listener.Close()
	tlsS.Listener = httpsL
	tlsS.TLS = &tls.Config{}
	tlsS.StartTLS()
	t.Cleanup(tlsS.Close)
	ca = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsS.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	// Wait until each host knows the other's link-layer address in both
	// families, as on a running network.
	for _, a := range []netip.Addr{beAddr, beAddr6} {
		if err := lb.Do(func() error {
			d := net.Dialer{Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", netip.AddrPortFrom(a, uint16(servicePort)).String())
			if err == nil {
				c.Close()
			}
			return err
		}); err != nil {
			t.Fatalf("the backend is unreachable at %s: %v", a, err)
		}
	}
	return lb, be, ca, portOf(t, httpL.Addr()), portOf(t, httpsL.Addr())
}

// startReceiver runs internal/receiver on h, as caplanced's receiver role
// does, for both VIPs and both of the balancer's addresses, until stop is called
// or the test ends.
func startReceiver(t *testing.T, h *netnstest.Host) (stop func()) {
	t.Helper()
	var r *receiver.Receiver
	if err := h.Do(func() (err error) {
		r, err = receiver.Open(receiver.Config{VIPs: []netip.Addr{vipAddr, vipAddr6}, Balancers: []netip.Addr{lbAddr, lbAddr6},
			Port: encapPort, Workers: 1})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
		r.Close()
	}()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// TestIPv6Backend probes a backend at its IPv6 address with every kind, the
// tunnel ones through the real receiver: 6-in-6 to the IPv6 VIP and 4-in-6
// to the IPv4 one; and 6-in-4, an IPv6 VIP through the backend's IPv4
// address.
func TestIPv6Backend(t *testing.T) {
	t.Parallel()
	lb, be, ca, httpPort, httpsPort := dualStackLab(t)
	stop := startReceiver(t, be)
	target := checkspec.Target{Name: "be", Address: beAddr6, VIP: vipAddr6, EncapPort: encapPort, Source: lbAddr6}
	noSource := target
	noSource.Source = netip.Addr{}
	vip4 := target
	vip4.VIP = vipAddr
	other := checkspec.Target{Name: "other", Address: beAddr}
	outer4 := checkspec.Target{Name: "be", Address: beAddr, VIP: vipAddr6, EncapPort: encapPort, Source: lbAddr}

	tests := []struct {
		name, spec string
		target     checkspec.Target
		want       outcome
	}{
		{"tcp", "tcp://:8080", target, outcome{true, "tcp: [2001:db8:1::2]:8080: connected"}},
		{"tcp to an explicit IPv6 host", "tcp://[2001:db8:1::2]:8080", other, outcome{true, "tcp: [2001:db8:1::2]:8080: connected"}},
		{"tcp refused", "tcp://:8081", target, outcome{false, "tcp: [2001:db8:1::2]:8081: connection refused"}},
		{"http", fmt.Sprintf("http://:%d/ok", httpPort), target, outcome{true, "http: status 200"}},
		{"http to an explicit IPv6 host", fmt.Sprintf("http://[2001:db8:1::2]:%d/503", httpPort), other, outcome{false, "http: status 503 (want 200-299)"}},
		{"https", fmt.Sprintf("https://:%d/ok?ca=%s&sni=example.com", httpsPort, ca), target, outcome{true, "https: status 200"}},
		{"https verifies the address", fmt.Sprintf("https://:%d/ok?ca=%s", httpsPort, ca), target, outcome{false, fmt.Sprintf(
			"https: [2001:db8:1::2]:%d: tls: failed to verify certificate: x509: certificate is valid for 127.0.0.1, ::1, not 2001:db8:1::2", httpsPort)}},
		{"udp", "udp://:7?send=text:ping&expect=text:pong", target, outcome{true, "udp: [2001:db8:1::2]:7: reply of 9 bytes"}},
		{"tunnel 6-in-6 SYN", "tunnel://:8080", target, outcome{true, "tunnel: [2001:db8:100::100]:8080 via 2001:db8:1::2: SYN-ACK"}},
		{"tunnel 6-in-6 echo", "tunnel://icmp", target, outcome{true, "tunnel: 2001:db8:100::100 via 2001:db8:1::2: echo reply"}},
		{"tunnel 6-in-6, nothing listens", "tunnel://:8081", target, outcome{false,
			"tunnel: [2001:db8:100::100]:8081 via 2001:db8:1::2: connection refused (RST): the tunnel works, nothing listens on the port"}},
		{"tunnel 6-in-6, source found", "tunnel://:8080", noSource, outcome{true, "tunnel: [2001:db8:100::100]:8080 via 2001:db8:1::2: SYN-ACK"}},
		{"tunnel 6-in-6, vip=", "tunnel://icmp?vip=2001:db8:100::100", vip4, outcome{true, "tunnel: 2001:db8:100::100 via 2001:db8:1::2: echo reply"}},
		{"tunnel 4-in-6 SYN", "tunnel://:8080", vip4, outcome{true, "tunnel: 198.18.0.100:8080 via 2001:db8:1::2: SYN-ACK"}},
		{"tunnel 4-in-6 echo", "tunnel://icmp", vip4, outcome{true, "tunnel: 198.18.0.100 via 2001:db8:1::2: echo reply"}},
		{"tunnel 6-in-4 SYN", "tunnel://:8080", outer4, outcome{true, "tunnel: [2001:db8:100::100]:8080 via 198.18.0.2: SYN-ACK"}},
		{"tunnel 6-in-4 echo", "tunnel://icmp", outer4, outcome{true, "tunnel: 2001:db8:100::100 via 198.18.0.2: echo reply"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, probeIn(t, lb, tt.spec, tt.target)); diff != "" {
				t.Errorf("%s (-want +got):\n%s", tt.spec, diff)
			}
		})
	}

	t.Run("receiver stopped: port unreachable in the outer's family", func(t *testing.T) {
		stop()
		for _, tt := range []struct {
			spec   string
			target checkspec.Target
			want   string
		}{
			{"tunnel://:8080", target, "tunnel: [2001:db8:100::100]:8080 via 2001:db8:1::2: port unreachable from 2001:db8:1::2"},
			// The error comes in the outer's family, not the inner's.
			{"tunnel://icmp", vip4, "tunnel: 198.18.0.100 via 2001:db8:1::2: port unreachable from 2001:db8:1::2"},
			{"tunnel://:8080", outer4, "tunnel: [2001:db8:100::100]:8080 via 198.18.0.2: port unreachable from 198.18.0.2"},
		} {
			want := outcome{false, tt.want + " for UDP port 6080: nothing receives encapsulated packets there"}
			if diff := cmp.Diff(want, probeIn(t, lb, tt.spec, tt.target)); diff != "" {
				t.Errorf("%s (-want +got):\n%s", tt.spec, diff)
			}
		}
	})
}

// TestTunnelLocalVIP6 is TestTunnelLocalVIP for an IPv6 VIP: IPv6 has no
// martian check on a local source address, so the answer from a VIP the
// balancer host has itself arrives without any sysctl.
func TestTunnelLocalVIP6(t *testing.T) {
	t.Parallel()
	lb, be, _, _, _ := dualStackLab(t)
	startReceiver(t, be)
	if err := lb.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(eth0, &netlink.Addr{IPNet: netlink.NewIPNet(vipAddr6.AsSlice()), Flags: unix.IFA_F_NODAD})
	}); err != nil {
		t.Fatal(err)
	}
	target := checkspec.Target{Name: "be", Address: beAddr6, VIP: vipAddr6, EncapPort: encapPort, Source: lbAddr6}
	want := outcome{true, "tunnel: [2001:db8:100::100]:8080 via 2001:db8:1::2: SYN-ACK"}
	if diff := cmp.Diff(want, probeIn(t, lb, "tunnel://:8080", target)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// 6-in-4: the inner source is the host's own IPv6 address on eth0, not
	// the VIP beside it there (the receiver would drop a packet from a VIP).
	outer4 := checkspec.Target{Name: "be", Address: beAddr, VIP: vipAddr6, EncapPort: encapPort, Source: lbAddr}
	want = outcome{true, "tunnel: [2001:db8:100::100]:8080 via 198.18.0.2: SYN-ACK"}
	if diff := cmp.Diff(want, probeIn(t, lb, "tunnel://:8080?timeout=500ms", outer4)); diff != "" {
		t.Errorf("6-in-4 (-want +got):\n%s", diff)
	}
}
