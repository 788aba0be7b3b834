package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/testbed"
)

// ipv6Config is the dual-stack lab's balancer configuration: one service
// for each combination of client and backend families. web6 (VIP6, TCP
// HTTPPort and UDP EchoPort) over the IPv6 addresses of backends (6-in-6);
// web4 (VIP, HTTP) over be1's and be2's IPv6 addresses (4-in-6); mixed
// (VIP6B, HTTP and UDP DNSPort) over be2's and be3's IPv4 addresses
// (6-in-4).
func ipv6Config(tb *testbed.Testbed, dataplane string, web6 []*testbed.Backend) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[balancer]\nworkers = 2\ndataplane = %q\n", dataplane)
	service := func(name string, vip netip.Addr, ports string, backends []string) {
		fmt.Fprintf(&b, "\n[[service]]\nname = %q\nvips = [%q]\nports = [%s]\n", name, vip, ports)
		for i, a := range backends {
			fmt.Fprintf(&b, "\n[[service.backend]]\nname = \"%s-%d\"\naddress = %q\n", name, i+1, a)
		}
	}
	var addrs []string
	for _, be := range web6 {
		addrs = append(addrs, be.Addr6.String())
	}
	be := tb.Backends
	service("web6", testbed.VIP6, fmt.Sprintf("%d, %d", testbed.HTTPPort, testbed.EchoPort), addrs)
	service("web4", testbed.VIP, fmt.Sprint(testbed.HTTPPort), []string{be[0].Addr6.String(), be[1].Addr6.String()})
	service("mixed", testbed.VIP6B, fmt.Sprintf("%d, %d", testbed.HTTPPort, testbed.DNSPort), []string{be[1].Addr.String(), be[2].Addr.String()})
	return b.String()
}

// TestIPv6 runs a dual-stack lab: IPv6 clients to IPv6 VIPs over IPv6
// backends (6-in-6) and over IPv4 ones (6-in-4), and IPv4 clients over IPv6
// backends (4-in-6), once per data plane.
func TestIPv6(t *testing.T) {
	for _, dataplane := range []string{"raw", "xdp"} {
		t.Run(dataplane, func(t *testing.T) { testIPv6(t, dataplane) })
	}
}

func testIPv6(t *testing.T, dataplane string) {
	bus := dbustest.Start(t)
	tb := openTestbed(t, testbed.Options{Prefix: "v6", Backends: 3, Workers: 2, IPv6: true, BalancerBus: bus.Address})
	be := tb.Backends
	d, err := tb.StartDaemon(tb.LB, "lb", ipv6Config(tb, dataplane, be[:2]), bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	tb.Balancer = d
	// The backend's name in each service is "<service>-<n>"; who answers
	// says which host (be1, be2, be3) served.
	spread := func(t *testing.T, vip netip.Addr, n int, names []string) {
		t.Helper()
		client := tb.HTTPClient(false)
		counts := map[string]int{}
		for i := range n {
			name, err := testbed.GetFrom(client, vip, "/")
			if err != nil {
				t.Fatalf("connection %d to %s: %v", i, vip, err)
			}
			counts[name]++
		}
		if err := spreadWithin(counts, names, n); err != nil {
			t.Errorf("%s: %v (%v)", vip, err, counts)
		}
	}

	t.Run("caplancectl list brackets IPv6 VIPs", func(t *testing.T) {
		out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "list").CombinedOutput()
		if err != nil {
			t.Fatalf("caplancectl list: %v\n%s", err, out)
		}
		for _, want := range []string{
			`web6 .* \[2001:db8:18::100\]:7,80\n`, `mixed .* \[2001:db8:18::101\]:53,80\n`, `web4 .* 198\.18\.0\.100:80\n`,
			`-> web6-1 +2001:db8:18::11 `, `-> mixed-1 +198\.18\.0\.12 `,
		} {
			if !regexp.MustCompile(want).Match(out) {
				t.Errorf("caplancectl list has no match for %s:\n%s", want, out)
			}
		}
	})

	t.Run("6-in-6: spread, stickiness across a backend add, UDP", func(t *testing.T) {
		spread(t, testbed.VIP6, spreadFlows, []string{"be1", "be2"})
		c, err := tb.DialUDP(netip.AddrPortFrom(testbed.VIP6, testbed.EchoPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if name, err := testbed.Echo(c, []byte("over IPv6")); err != nil || (name != "be1" && name != "be2") {
			t.Errorf("UDP echo over VIP6: %q, %v", name, err)
		}

		long := dialHTTPTo(t, tb, testbed.VIP6)
		if err := tb.Balancer.Reload(ipv6Config(tb, dataplane, be)); err != nil {
			t.Fatal(err)
		}
		// The new backend takes new connections...
		client := tb.HTTPClient(false)
		eventually(t, "be3 serving VIP6 after the add", func() error {
			for range 30 {
				if name, err := testbed.GetFrom(client, testbed.VIP6, "/"); err == nil && name == "be3" {
					return nil
				}
			}
			return errors.New("30 new connections and none to be3")
		})
		// ...and the established one stays where it was.
		for i := range 10 {
			if got := long.get(t); got != long.backend {
				t.Fatalf("request %d on the long-lived connection served by %s, first by %s", i, got, long.backend)
			}
		}
	})

	t.Run("6-in-6: a drained backend keeps its connection and gets no new one", func(t *testing.T) {
		// web6 has be1, be2 and be3 (after the add above).
		long := dialHTTPTo(t, tb, testbed.VIP6)
		drained := map[string]string{"be1": "web6-1", "be2": "web6-2", "be3": "web6-3"}[long.backend]
		out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "drain", drained).CombinedOutput()
		if err != nil {
			t.Fatalf("caplancectl drain %s: %v\n%s", drained, err, out)
		}
		client := tb.HTTPClient(false)
		for i := range 60 {
			name, err := testbed.GetFrom(client, testbed.VIP6, "/")
			if err != nil {
				t.Fatalf("new connection %d: %v", i, err)
			}
			if name == long.backend {
				t.Fatalf("new connection %d went to %s, drained", i, name)
			}
		}
		for i := range 5 {
			if got := long.get(t); got != long.backend {
				t.Fatalf("request %d on the drained backend's connection served by %s, not %s", i, got, long.backend)
			}
		}
		if out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "undrain", drained).CombinedOutput(); err != nil {
			t.Fatalf("caplancectl undrain %s: %v\n%s", drained, err, out)
		}
	})

	t.Run("4-in-6: IPv4 clients over IPv6 backends", func(t *testing.T) {
		spread(t, testbed.VIP, spreadFlows, []string{"be1", "be2"})
	})

	t.Run("6-in-4: IPv6 clients over IPv4 backends", func(t *testing.T) {
		spread(t, testbed.VIP6B, spreadFlows, []string{"be2", "be3"})
		c, err := tb.DialUDP(netip.AddrPortFrom(testbed.VIP6B, testbed.DNSPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if name, err := testbed.Echo(c, []byte("query")); err != nil || (name != "be2" && name != "be3") {
			t.Errorf("UDP over VIP6B: %q, %v", name, err)
		}
	})

	t.Run("large uploads: Packet Too Big", func(t *testing.T) {
		// The lab's links are 1500 bytes: a full-size IPv6 segment does
		// not fit an IPv6 (48 bytes) or IPv4 (28) tunnel, and IPv6 routers
		// never fragment, so only the balancer's Packet Too Big lets the
		// client send smaller ones.
		before, err := tb.Balancer.Stats(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		body := bytes.Repeat([]byte("0123456789abcdef"), 65536) // 1 MiB
		for _, vip := range []netip.Addr{testbed.VIP6, testbed.VIP6B} {
			req, err := http.NewRequest(http.MethodPost, "http://"+netip.AddrPortFrom(vip, testbed.HTTPPort).String()+"/upload", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := testbed.Do(tb.HTTPClient(false), req); err != nil {
				t.Errorf("1 MiB upload to %s: %v", vip, err)
			}
		}
		st, err := tb.Balancer.Stats(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if st.Balancer.Drops["too_big"] == before.Balancer.Drops["too_big"] {
			t.Errorf("no Packet Too Big was sent for full-size IPv6 segments: %v", st.Balancer.Drops)
		}
	})

	t.Run("spoofed IPv6 inner sources are dropped and counted", func(t *testing.T) {
		be := tb.Backends[0]
		before, err := be.Receiver.Stats(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		// A listener on the VIP that no service uses: only what the
		// receiver delivers reaches it.
		sink := netip.AddrPortFrom(testbed.VIP6, 9)
		arrivals := listenUDP(t, be.Host, sink)
		// One socket per outer family, from the balancer's address as the
		// balancer sends: one receiver worker reads each, in order.
		via6 := dialEncap(t, tb.LB, testbed.LBAddr6, be.Addr6)
		via4 := dialEncap(t, tb.LB, testbed.LBAddr, be.Addr)
		client := netip.AddrPortFrom(testbed.ClientAddr6, 40000)
		spoofed := []struct {
			via  *net.UDPConn
			src  netip.AddrPort
			dst  netip.AddrPort
			want string
		}{
			{via6, netip.AddrPortFrom(netip.IPv6Unspecified(), 40000), sink, "inner_source_unspecified"},
			{via6, netip.AddrPortFrom(netip.IPv6Loopback(), 40000), sink, "inner_source_loopback"},
			{via6, netip.AddrPortFrom(netip.MustParseAddr("ff02::1"), 40000), sink, "inner_source_multicast"},
			{via6, netip.AddrPortFrom(netip.MustParseAddr("fe80::1"), 40000), sink, "inner_source_link_local"},
			{via6, netip.AddrPortFrom(netip.AddrFrom16(testbed.ClientAddr.As16()), 40000), sink, "inner_source_v4_mapped"},
			{via6, netip.AddrPortFrom(netip.AddrFrom16(be.Addr.As16()), 40000), sink, "inner_source_v4_mapped"},
			{via6, netip.AddrPortFrom(be.Addr6, 40000), sink, "inner_source_local"},
			{via6, netip.AddrPortFrom(testbed.VIP6B, 40000), sink, "inner_source_local"},
			{via6, sink, sink, "inner_source_is_destination"},
			// Not a relay: the inner destination must be a VIP.
			{via6, client, netip.AddrPortFrom(be.Addr6, sink.Port()), "inner_not_vip"},
			// 6-in-4: the same rules under an IPv4 outer.
			{via4, netip.AddrPortFrom(netip.IPv6Loopback(), 40000), sink, "inner_source_loopback"},
			{via4, netip.AddrPortFrom(netip.MustParseAddr("fe80::1"), 40000), sink, "inner_source_link_local"},
			{via4, sink, sink, "inner_source_is_destination"},
		}
		want := map[string]uint64{}
		for reason := range before.Receiver.Drops {
			want[reason] = 0
		}
		for i, s := range spoofed {
			if _, err := s.via.Write(ipv6Packet(t, s.src, s.dst, &layers.UDP{}, []byte(fmt.Sprintf("spoofed %d", i)))); err != nil {
				t.Fatal(err)
			}
			want[s.want]++
		}
		// A stranger's tunnel: the client's IPv6 address is no balancer.
		stranger := dialEncap(t, tb.Client, testbed.ClientAddr6, be.Addr6)
		if _, err := stranger.Write(ipv6Packet(t, client, sink, &layers.UDP{}, []byte("from a stranger"))); err != nil {
			t.Fatal(err)
		}
		want["source_not_allowed"]++
		// After them, a client's datagram through each tunnel.
		legit := map[string]netip.AddrPort{"6-in-6": client, "6-in-4": netip.AddrPortFrom(testbed.ClientAddr6, 40001)}
		for name, via := range map[string]*net.UDPConn{"6-in-6": via6, "6-in-4": via4} {
			if _, err := via.Write(ipv6Packet(t, legit[name], sink, &layers.UDP{}, []byte(name))); err != nil {
				t.Fatal(err)
			}
		}

		// By payload, the source each datagram arrived from.
		wantFrom, got := map[string]string{}, map[string]string{}
		for name, src := range legit {
			wantFrom[name] = src.String()
		}
		for len(got) < len(legit) {
			select {
			case a := <-arrivals:
				got[a.payload] = a.from.String()
			case <-time.After(10 * time.Second):
				t.Fatalf("datagrams at %v: %v, want the client's through each tunnel, %v", sink, got, wantFrom)
			}
		}
		if diff := cmp.Diff(wantFrom, got); diff != "" {
			t.Errorf("datagrams at %v (-want +got):\n%s", sink, diff)
		}
		eventually(t, "receiver drop counters", func() error {
			st, err := be.Receiver.Stats(time.Now())
			if err != nil {
				return err
			}
			delta := map[string]uint64{}
			for reason, n := range st.Receiver.Drops {
				delta[reason] = n - before.Receiver.Drops[reason]
			}
			if diff := cmp.Diff(want, delta); diff != "" {
				return fmt.Errorf("drops (-want +got):\n%s", diff)
			}
			return nil
		})
		// Every spoofed datagram is counted as dropped, so none is on its
		// way to the listener; one that had been delivered would be there.
		select {
		case a := <-arrivals:
			t.Errorf("a spoofed datagram reached %v: %q from %v", sink, a.payload, a.from)
		default:
		}
		// And the service still answers through the balancer.
		c, err := tb.DialUDP(netip.AddrPortFrom(testbed.VIP6, testbed.EchoPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := testbed.Echo(c, []byte("after the spoofed ones")); err != nil {
			t.Errorf("UDP echo over VIP6: %v", err)
		}
	})

	t.Run("an ICMPv6 error about a flow reaches that flow's backend", func(t *testing.T) {
		// Every backend watches the Packet Too Big messages it gets.
		ptbs := map[string]<-chan []byte{}
		for _, be := range tb.Backends {
			ptbs[be.Name] = listenPacketTooBig(t, be.Host)
		}
		// web6 over IPv6 backends (6-in-6), mixed over IPv4 ones (6-in-4).
		for _, vip := range []netip.Addr{testbed.VIP6, testbed.VIP6B} {
			long := dialHTTPTo(t, tb, vip)
			client := netip.MustParseAddrPort(long.LocalAddr().String())
			// What a router on the way back to the client sends (here the
			// client itself): a Packet Too Big to the VIP about one of the
			// backend's segments, VIP:80 -> client, quoted up to 1280
			// bytes.
			segment := ipv6Packet(t, netip.AddrPortFrom(vip, testbed.HTTPPort), client,
				&layers.TCP{ACK: true, PSH: true, Seq: 1, Ack: 1, Window: 512}, bytes.Repeat([]byte{'x'}, 1400))
			ptb := encap.PacketTooBig(make([]byte, encap.PacketTooBigMaxLen), testbed.ClientAddr6, vip, segment, 1280)
			if err := tb.Client.SendIPv6(ptb); err != nil {
				t.Fatal(err)
			}
			want := ptb[40:] // the ICMPv6 message, byte for byte
			select {
			case got := <-ptbs[long.backend]:
				if !bytes.Equal(got, want) {
					t.Errorf("%s: %s, the flow's backend, got a Packet Too Big that is not the one sent:\n got %x\nwant %x", vip, long.backend, got, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: the Packet Too Big about %s's flow did not reach it within 10s", vip, long.backend)
			}
			// The balancer sends each packet to one backend: a second
			// after the flow's backend had it, no other has a copy.
			time.Sleep(time.Second)
			for _, be := range tb.Backends {
				select {
				case <-ptbs[be.Name]:
					t.Errorf("%s: %s got the Packet Too Big about %s's flow too", vip, be.Name, long.backend)
				default:
				}
			}
			// The connection is unharmed.
			if got := long.get(t); got != long.backend {
				t.Errorf("%s: the connection is served by %s after the error, by %s before", vip, got, long.backend)
			}
		}
	})

	t.Run("the balancer host stays silent for IPv6 VIPs", func(t *testing.T) {
		// TCP to a port no service takes: no RST (a refused dial), the
		// SYN is dropped and the dial times out.
		err := tb.Client.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(testbed.VIP6, 81).String(), 2*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("TCP to [VIP6]:81: %v, want a timeout (no RST, no unreachable)", err)
		}
		// UDP likewise: an ICMPv6 port unreachable would make the
		// connected socket's read fail with ECONNREFUSED.
		c, err := tb.DialUDP(netip.AddrPortFrom(testbed.VIP6, 81))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write([]byte("anyone?")); err != nil {
				t.Fatalf("UDP to [VIP6]:81: write %v, want no answer at all", err)
			}
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 100))
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("UDP to [VIP6]:81: read %v, want a timeout (no port unreachable)", err)
		}
	})
}

// arrival is a datagram a listener got.
type arrival struct {
	from    netip.AddrPort
	payload string
}

// listenUDP listens on at in host's namespace until the test ends, and
// sends each datagram it gets on the channel it returns.
func listenUDP(t *testing.T, host testbedHost, at netip.AddrPort) <-chan arrival {
	t.Helper()
	var c *net.UDPConn
	if err := host.Do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(at))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	arrivals := make(chan arrival, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			arrivals <- arrival{from, string(buf[:n])}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return arrivals
}

// dialEncap opens, in host's namespace, a UDP socket from src to the encap
// port of backend, closed when the test ends: a tunnel into backend's
// receiver, of src's family.
func dialEncap(t *testing.T, host testbedHost, src, backend netip.Addr) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := host.Do(func() (err error) {
		c, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(backend, config.DefaultEncapPort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// transport6 is a transport layer whose checksum covers an IPv6
// pseudo-header.
type transport6 interface {
	gopacket.SerializableLayer
	SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
}

// ipv6Packet is an IPv6 packet from src to dst carrying l4 (TCP or UDP;
// its ports are set here) and payload, lengths and checksums valid.
func ipv6Packet(t *testing.T, src, dst netip.AddrPort, l4 transport6, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	switch l := l4.(type) {
	case *layers.UDP:
		ip.NextHeader = layers.IPProtocolUDP
		l.SrcPort, l.DstPort = layers.UDPPort(src.Port()), layers.UDPPort(dst.Port())
	case *layers.TCP:
		ip.NextHeader = layers.IPProtocolTCP
		l.SrcPort, l.DstPort = layers.TCPPort(src.Port()), layers.TCPPort(dst.Port())
	default:
		t.Fatalf("ipv6Packet: no case for %T", l4)
	}
	if err := l4.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ip, l4, gopacket.Payload(payload)); err != nil {
		t.Fatalf("ipv6Packet: %v", err)
	}
	return buf.Bytes()
}

// listenPacketTooBig watches, in host's namespace until the test ends, the
// ICMPv6 messages the host receives, and sends each Packet Too Big (type 2)
// on the channel it returns, from its ICMPv6 header on.
func listenPacketTooBig(t *testing.T, host testbedHost) <-chan []byte {
	t.Helper()
	var c net.PacketConn
	if err := host.Do(func() (err error) {
		c, err = net.ListenPacket("ip6:ipv6-icmp", "::")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	msgs := make(chan []byte, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if n > 0 && buf[0] == 2 {
				msgs <- bytes.Clone(buf[:n])
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return msgs
}
