package balancer

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/conntrack"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/nft"
)

// TestIPv6VIPOnALink: over a real link, an IPv6 client reaches an IPv6 VIP
// on the balancer's interface (the balancer's kernel answers neighbour
// discovery for it) and its packets reach an IPv4 backend 6-in-4, exactly
// as sent; with the nft table the balancer's host stays silent: no TCP
// reset for a SYN, no ICMPv6 port unreachable for a datagram.
func TestIPv6VIPOnALink(t *testing.T) {
	lab := netnstest.NewForTest(t, "bal6")
	client6 := netip.MustParseAddr("2001:db8:1::1")
	vip6 := netip.MustParseAddr("2001:db8:1::100")
	beAddr := netip.MustParseAddr("10.77.0.3")
	client, err := lab.AddHost("client", netip.MustParsePrefix("2001:db8:1::1/64"))
	if err != nil {
		t.Fatal(err)
	}
	lb, err := lab.AddHost("lb", netip.MustParsePrefix("2001:db8:1::2/64"), netip.MustParsePrefix("10.77.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	be, err := lab.AddHost("be", netip.PrefixFrom(beAddr, 24))
	if err != nil {
		t.Fatal(err)
	}

	var sink *net.UDPConn
	if err := be.Do(func() (err error) {
		sink, err = net.ListenUDP("udp4", &net.UDPAddr{IP: beAddr.AsSlice(), Port: 5555})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })

	var b *Balancer
	err = lb.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := nft.Apply(nft.CurrentNetNS, nft.Rules{SilenceVIPs: []netip.Addr{vip6},
			Forward: []nft.Forward{{VIP: vip6, Protocols: model.TCP | model.UDP}}}); err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: vip6.AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}); err != nil {
			return err
		}
		ct, err := conntrack.New(1<<10, conntrack.DefaultTimeouts)
		if err != nil {
			return err
		}
		if b, err = Open(Config{EncapPort: 5555, Workers: 1, Conntrack: ct}); err != nil {
			return err
		}
		return b.SetServices(model.Set{
			Services: []model.Service{{Name: "web", VIPs: []model.VIP{{Addr: vip6}}, Protocols: model.TCP | model.UDP, TableSize: 1009}},
			Backends: []model.Backend{{ID: 1, Name: "be", Service: "web", Address: beAddr, Weight: 1}},
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	// inner reads the next encapsulated packet the backend gets.
	buf := make([]byte, 65536)
	inner := func() []byte {
		t.Helper()
		sink.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := sink.Read(buf)
		if err != nil {
			t.Fatalf("the backend got nothing: %v", err)
		}
		return buf[:n]
	}

	// A packet with a destination options header and a flow label, sent
	// whole: the backend gets it byte for byte.
	want := clientUDP6(40000, 100, true)
	copy(want[8:24], client6.AsSlice())
	copy(want[24:40], vip6.AsSlice())
	if err := client.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, want, 0, &unix.SockaddrInet6{Addr: vip6.As16()})
	}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, inner()); diff != "" {
		t.Errorf("the inner packet (-client's +backend's):\n%s", diff)
	}

	// A SYN from the client's stack reaches the backend, and the balancer's
	// host sends no reset: the connection times out.
	var dialErr error
	if err := client.Do(func() error {
		_, dialErr = net.DialTimeout("tcp6", netip.AddrPortFrom(vip6, 81).String(), 500*time.Millisecond)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var ne net.Error
	if !errors.As(dialErr, &ne) || !ne.Timeout() {
		t.Errorf("connect to [%s]:81 = %v, want a timeout (no reset from the balancer's host)", vip6, dialErr)
	}
	if syn := inner(); len(syn) < 54 || syn[6] != unix.IPPROTO_TCP || syn[53]&0x02 == 0 {
		t.Errorf("the backend got %x, want the client's SYN", syn)
	}

	// A datagram to a port with no listener on the balancer: no ICMPv6
	// port unreachable comes back (it would fail the read at once).
	var readErr error
	if err := client.Do(func() error {
		c, err := net.DialUDP("udp6", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(vip6, 9)))
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("hello")); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, readErr = c.Read(make([]byte, 16))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if errors.Is(readErr, syscall.ECONNREFUSED) || !errors.As(readErr, &ne) || !ne.Timeout() {
		t.Errorf("read after a datagram to [%s]:9 = %v, want a timeout (no port unreachable from the balancer's host)", vip6, readErr)
	}
	if dg := inner(); len(dg) < 48 || dg[6] != unix.IPPROTO_UDP {
		t.Errorf("the backend got %x, want the client's datagram", dg)
	}
}
