package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/inet"
	"github.com/caplance/caplance/internal/testbed"
)

// TestForwarding drives traffic through one deployment per data plane and
// checks what reaches whom; the subtests share it and run in order. The
// lab's interfaces are veths, which take XDP natively (AF_XDP in copy
// mode).
func TestForwarding(t *testing.T) {
	for _, dataplane := range []string{"raw", "xdp"} {
		t.Run("dataplane "+dataplane, func(t *testing.T) { testForwarding(t, dataplane) })
	}
}

func testForwarding(t *testing.T, dataplane string) {
	tb := newTestbedOn(t, dataplane)
	capt := startCapture(t, tb)
	start := time.Now()

	t.Run("the data plane is the one asked for", func(t *testing.T) {
		want := map[string]string{"raw": "STATUS=balancing 1 service(s) on 1 VIP(s) over 3 backend(s); dataplane raw",
			"xdp": "STATUS=balancing 1 service(s) on 1 VIP(s) over 3 backend(s); dataplane xdp (native)"}[dataplane]
		if msgs := strings.Join(tb.Balancer.Messages(), "\n"); !strings.Contains(msgs, want) {
			t.Errorf("the balancer never sent %q; sent %q", want, tb.Balancer.Messages())
		}
	})

	t.Run("http through the VIP", func(t *testing.T) {
		client := tb.HTTPClient(false)
		for i := range 30 {
			if _, err := testbed.Get(client, "/"); err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
		}
	})

	t.Run("the packets took the data plane asked for", func(t *testing.T) {
		st, err := tb.Balancer.Stats(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if xdp := st.Balancer.XDPReceived; (dataplane == "xdp") != (xdp > 0) {
			t.Errorf("%d of %d packets read from AF_XDP sockets on dataplane %s", xdp, st.Balancer.Received, dataplane)
		}
	})

	t.Run("the client's ARP entry for the VIP is the balancer", func(t *testing.T) {
		var lbMAC, vipMAC net.HardwareAddr
		err := tb.LB.Do(func() error {
			l, err := netlink.LinkByName("eth0")
			lbMAC = l.Attrs().HardwareAddr
			return err
		})
		if err == nil {
			err = tb.Client.Do(func() error {
				neighs, err := netlink.NeighList(0, unix.AF_INET)
				for _, n := range neighs {
					if n.IP.Equal(testbed.VIP.AsSlice()) {
						vipMAC = n.HardwareAddr
					}
				}
				return err
			})
		}
		if err != nil || !bytes.Equal(lbMAC, vipMAC) {
			t.Errorf("client resolves the VIP to %v, the balancer is %v (err %v): a backend answered ARP", vipMAC, lbMAC, err)
		}
	})

	t.Run("a flow sticks to one backend", func(t *testing.T) {
		client := tb.HTTPClient(true)
		first := ""
		for i := range 120 {
			name, err := testbed.Get(client, "/")
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			if first == "" {
				first = name
			}
			if name != first {
				t.Fatalf("request %d of one TCP connection served by %s, the first by %s", i, name, first)
			}
		}
		c, err := tb.DialEcho()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		first = ""
		for i := range 120 {
			name, err := testbed.Echo(c, []byte(fmt.Sprintf("datagram %d", i)))
			if err != nil {
				t.Fatalf("datagram %d: %v", i, err)
			}
			if first == "" {
				first = name
			}
			if name != first {
				t.Fatalf("datagram %d of one UDP flow echoed by %s, the first by %s", i, name, first)
			}
		}
	})

	t.Run("each packet is read by exactly one worker", func(t *testing.T) {
		before, err := tb.Balancer.Stats(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		const flows, each = 20, 5
		for range flows {
			c, err := tb.DialEcho()
			if err != nil {
				t.Fatal(err)
			}
			for i := range each {
				if _, err := testbed.Echo(c, []byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
			}
			c.Close()
		}
		eventually(t, "balancer counters", func() error {
			st, err := tb.Balancer.Stats(time.Now())
			if err != nil {
				return err
			}
			if got := st.Balancer.Received - before.Balancer.Received; got != flows*each {
				return fmt.Errorf("%d datagrams sent, the workers read %d", flows*each, got)
			}
			return nil
		})
	})

	t.Run("300 connections spread evenly", func(t *testing.T) {
		client := tb.HTTPClient(false)
		count := map[string]int{}
		for i := range 300 {
			name, err := testbed.Get(client, "/")
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			count[name]++
		}
		for _, b := range tb.Backends {
			if n := count[b.Name]; n < 75 || n > 125 {
				t.Errorf("backend %s served %d of 300 connections, want 100 ± 25%% (all: %v)", b.Name, n, count)
			}
		}
	})

	t.Run("full-size packets: frag-needed for DF, fragments otherwise", func(t *testing.T) {
		// TCP sets DF: 1500-byte segments do not fit the tunnel; the
		// balancer's ICMP frag-needed makes the client send smaller ones.
		body := bytes.Repeat([]byte("0123456789abcdef"), 16384) // 256 KiB
		if _, err := testbed.Post(tb.HTTPClient(false), body); err != nil {
			t.Fatalf("256 KiB upload: %v", err)
		}
		// A 4000-byte datagram is fragmented by the client, reassembled by
		// the balancer's kernel and sent on in outer fragments.
		c, err := tb.DialEcho()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := testbed.Echo(c, bytes.Repeat([]byte{'x'}, 4000)); err != nil {
			t.Fatalf("4000-byte datagram: %v", err)
		}
		st, err := tb.Balancer.Stats(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if st.Balancer.Drops["too_big"] == 0 {
			t.Errorf("no ICMP frag-needed was sent for full-size DF segments: %v", st.Balancer.Drops)
		}
	})

	t.Run("malformed packets are counted and dropped", func(t *testing.T) {
		before, err := tb.Balancer.Stats(start)
		if err != nil {
			t.Fatal(err)
		}
		// A TCP header cut to 10 bytes, and an ICMP error quoting garbage.
		truncated := ipv4(testbed.ClientAddr, testbed.VIP, unix.IPPROTO_TCP, make([]byte, 10))
		icmpErr := ipv4(testbed.ClientAddr, testbed.VIP, unix.IPPROTO_ICMP, append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, 0x45, 0, 0))
		for range 5 {
			if err := errors.Join(rawSend(tb, truncated), rawSend(tb, icmpErr)); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "malformed counters", func() error {
			st, err := tb.Balancer.Stats(time.Now())
			if err != nil {
				return err
			}
			tr := st.Balancer.Drops["malformed_truncated_transport"] - before.Balancer.Drops["malformed_truncated_transport"]
			ic := st.Balancer.Drops["malformed_icmp_embedded"] - before.Balancer.Drops["malformed_icmp_embedded"]
			if tr != 5 || ic != 5 {
				return fmt.Errorf("truncated_transport +%d, icmp_embedded +%d, want +5 each", tr, ic)
			}
			return nil
		})
		if _, err := testbed.Get(tb.HTTPClient(false), "/"); err != nil {
			t.Errorf("traffic after malformed packets: %v", err)
		}
	})

	t.Run("a receiver is not an open relay", func(t *testing.T) {
		be := tb.Backends[0]
		before, err := be.Receiver.Stats(start)
		if err != nil {
			t.Fatal(err)
		}
		inner := func(src netip.AddrPort, dst netip.Addr) []byte {
			udp := make([]byte, 8+4)
			binary.BigEndian.PutUint16(udp[0:2], src.Port())
			binary.BigEndian.PutUint16(udp[2:4], testbed.EchoPort)
			binary.BigEndian.PutUint16(udp[4:6], uint16(len(udp)))
			pkt := ipv4(src.Addr(), dst, unix.IPPROTO_UDP, udp)
			binary.BigEndian.PutUint16(pkt[10:12], inet.Checksum(pkt[:20]))
			return pkt
		}
		client := netip.AddrPortFrom(testbed.ClientAddr, 40000)
		send := func(from testbedHost, payload []byte) error {
			return from.Do(func() error {
				c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: be.Addr.AsSlice(), Port: 5555})
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write(payload)
				return err
			})
		}
		// From the client (not a balancer), to a VIP; from the balancer, to
		// a destination that is not a VIP; from the balancer, from the VIP's
		// echo port to itself, which would loop through the echo server.
		if err := errors.Join(
			send(tb.Client, inner(client, testbed.VIP)),
			send(tb.LB, inner(client, testbed.ClientAddr)),
			send(tb.LB, inner(netip.AddrPortFrom(testbed.VIP, testbed.EchoPort), testbed.VIP)),
		); err != nil {
			t.Fatal(err)
		}
		want := map[string]uint64{"source_not_allowed": 1, "inner_not_vip": 1, "inner_source_is_destination": 1}
		eventually(t, "receiver reject counters", func() error {
			st, err := be.Receiver.Stats(time.Now())
			if err != nil {
				return err
			}
			got := map[string]uint64{}
			for reason := range want {
				got[reason] = st.Receiver.Drops[reason] - before.Receiver.Drops[reason]
			}
			if diff := cmp.Diff(want, got); diff != "" {
				return fmt.Errorf("drops (-want +got):\n%s", diff)
			}
			return nil
		})
	})

	t.Run("a datagram with IP options reaches the backend valid", func(t *testing.T) {
		// The balancer's kernel fills in a Record Route option on local
		// delivery without fixing the header checksum; the raw socket
		// hands caplanced that header.
		before := map[string]uint64{}
		for _, be := range tb.Backends {
			st, err := be.Receiver.Stats(start)
			if err != nil {
				t.Fatal(err)
			}
			before[be.Name] = st.Receiver.Drops["inner_checksum"]
		}
		c, err := tb.DialEcho()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// Record Route (type 7) with room for three addresses, then End of
		// Options (0).
		rr := []byte{7, 3 + 3*4, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		if err := setIPOptions(c, rr); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if _, err := testbed.Echo(c, []byte(fmt.Sprintf("recorded route %d", i))); err != nil {
				t.Fatalf("datagram %d with a Record Route option: %v", i, err)
			}
		}
		now := time.Now()
		for _, be := range tb.Backends {
			st, err := be.Receiver.Stats(now)
			if err != nil {
				t.Fatal(err)
			}
			if n := st.Receiver.Drops["inner_checksum"] - before[be.Name]; n != 0 {
				t.Errorf("%s dropped %d packets as inner_checksum", be.Name, n)
			}
		}
	})

	t.Run("removing a backend moves only its flows", func(t *testing.T) {
		const flows = 60
		conns := make([]*net.UDPConn, flows)
		before := make([]string, flows)
		for i := range conns {
			c, err := tb.DialEcho()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conns[i] = c
			if before[i], err = testbed.Echo(c, []byte("hello")); err != nil {
				t.Fatal(err)
			}
		}
		removed := tb.Backends[2]
		if err := tb.Balancer.Reload(tb.BalancerConfig(tb.Backends[:2])); err != nil {
			t.Fatal(err)
		}
		moved := 0
		for i, c := range conns {
			after, err := testbed.Echo(c, []byte("again"))
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case before[i] == removed.Name && after == removed.Name:
				t.Errorf("flow %d still reaches the removed backend", i)
			case before[i] == removed.Name:
				moved++
			case after != before[i]:
				t.Errorf("flow %d moved from %s to %s though its backend stayed", i, before[i], after)
			}
		}
		if moved == 0 {
			t.Errorf("none of %d flows was on %s: the test proves nothing", flows, removed.Name)
		}
	})

	t.Run("the balancer's raw sockets are visible to ss", func(t *testing.T) {
		out, err := exec.Command("ip", "netns", "exec", tb.LB.Name(), "ss", "-w", "-a", "-n").CombinedOutput()
		if err != nil {
			t.Fatalf("ss: %v\n%s", err, out)
		}
		// The sockets take every local address; their BPF filters keep
		// the VIPs' packets (package balancer).
		for _, proto := range []string{":6 ", ":17 ", ":1 "} {
			if !strings.Contains(string(out), "0.0.0.0"+proto) {
				t.Errorf("ss -w shows no raw socket for protocol %s:\n%s", proto, out)
			}
		}
	})

	t.Run("the balancer host stays silent and replies go direct", func(t *testing.T) {
		// Provoke the host's stack: a port nobody listens on, over TCP and
		// UDP, and a ping.
		for _, port := range []string{"81", "9"} {
			_ = tb.Client.Do(func() error {
				d := net.Dialer{Timeout: 500 * time.Millisecond}
				c, err := d.Dial("tcp", testbed.VIP.String()+":"+port)
				if err == nil {
					c.Close()
				}
				u, err := net.Dial("udp", testbed.VIP.String()+":"+port)
				if err == nil {
					u.Write([]byte("anyone?"))
					u.Close()
				}
				return nil
			})
		}
		time.Sleep(500 * time.Millisecond)
		pkts := capt.packets()
		sawIn := false
		for _, p := range pkts {
			sawIn = sawIn || (!p.outgoing && p.dst == testbed.VIP)
			switch {
			case p.outgoing && p.proto == unix.IPPROTO_ICMP && p.icmpType == 3 && p.icmpCode == 4:
				// Our own frag-needed: expected.
			case p.outgoing:
				t.Errorf("the balancer host sent %v", p)
			case p.src == testbed.VIP:
				t.Errorf("a backend's reply crossed the balancer's interface: %v", p)
			}
		}
		if !sawIn {
			t.Errorf("the capture saw no client packet to the VIP: it proves nothing")
		}
	})
}

// setIPOptions sets the IPv4 options every datagram c sends carries.
func setIPOptions(c *net.UDPConn, opts []byte) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IP, unix.IP_OPTIONS, string(opts))
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("IP_OPTIONS: %w", serr)
	}
	return nil
}

// testbedHost is the part of a netnstest host these tests use.
type testbedHost interface{ Do(func() error) error }
