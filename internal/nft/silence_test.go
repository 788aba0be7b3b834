package nft_test

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/nft"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// wait is how long a probe waits for an answer that the table should stop.
const wait = 300 * time.Millisecond

const (
	addrA  = "10.99.0.1"   // side A's own address: never silenced
	vip    = "10.99.0.100" // the VIP, on side A
	addrB  = "10.99.0.2"   // the client, side B
	closed = 81            // a port with no listener on A
	open   = 80            // a port with a listener on A
)

// side is one family's addresses on the link and how its ICMP is spoken.
type side struct {
	own, vip, client string // A's own address, the VIP on A, B's address
	ip               string // "4" or "6", as in "tcp4", "udp6"
	icmpNet          string // the network of icmp.ListenPacket and net.ListenIP
	icmpProto        int    // for icmp.ParseMessage
	echo, echoReply  icmp.Type
	unreach          icmp.Type
	// portUnreachable and tooBig are the codes and types of ICMP errors
	// from the VIP: the kernel's own answer, silenced, and caplanced's,
	// which passes.
	portUnreachable int
	tooBig          icmp.Type
	tooBigCode      int
}

var (
	side4 = side{own: addrA, vip: vip, client: addrB, ip: "4", icmpNet: "ip4:icmp", icmpProto: 1,
		echo: ipv4.ICMPTypeEcho, echoReply: ipv4.ICMPTypeEchoReply, unreach: ipv4.ICMPTypeDestinationUnreachable,
		portUnreachable: 3, tooBig: ipv4.ICMPTypeDestinationUnreachable, tooBigCode: 4}
	side6 = side{own: "fd99::1", vip: "fd99::100", client: "fd99::2", ip: "6", icmpNet: "ip6:ipv6-icmp", icmpProto: 58,
		echo: ipv6.ICMPTypeEchoRequest, echoReply: ipv6.ICMPTypeEchoReply, unreach: ipv6.ICMPTypeDestinationUnreachable,
		portUnreachable: 4, tooBig: ipv6.ICMPTypePacketTooBig, tooBigCode: 0}
)

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestSilence sends the kernel's favourite questions from B to the VIPs on
// A, IPv4 and IPv6, first without the table, then with it, then after
// Remove.
func TestSilence(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	l := newLink(t, []string{addrA + "/24", vip + "/32", side6.own + "/64", side6.vip + "/128"}, []string{addrB + "/24", side6.client + "/64"})
	l.waitReady(t, side6.own) // and each side knows the other's link address
	rules := nft.Rules{SilenceVIPs: addrs(vip, side6.vip)}

	probes := []struct {
		name string
		fn   func(t *testing.T, l link, s side, silenced bool)
	}{
		{"tcp closed port", probeTCPClosed},
		{"tcp closed port on own address", probeTCPOwnAddress},
		{"tcp open port", probeTCPOpen},
		{"udp closed port", probeUDPClosed},
		{"icmp echo", probeEcho},
		{"raw icmp from vip", probeRawICMP},
	}
	sides := []struct {
		name string
		side
	}{{"ipv4", side4}, {"ipv6", side6}}
	for _, phase := range []struct {
		name     string
		setup    func() error
		silenced bool
	}{
		{"without table", func() error { return nil }, false},
		{"with table", func() error { return nft.Apply(int(l.a), rules) }, true},
		{"after Remove", func() error { _, err := nft.Remove(int(l.a)); return err }, false},
	} {
		if err := phase.setup(); err != nil {
			t.Fatalf("%s: %v", phase.name, err)
		}
		t.Run(phase.name, func(t *testing.T) {
			for _, sd := range sides {
				for _, p := range probes {
					t.Run(sd.name+" "+p.name, func(t *testing.T) {
						t.Parallel()
						p.fn(t, l, sd.side, phase.silenced)
					})
				}
			}
		})
		if phase.silenced {
			ctrs, err := nft.Counters(int(l.a))
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{nft.RuleSilenceTCPReset, nft.RuleSilencePortUnreachable, nft.RuleSilenceEchoReply,
				nft.RuleSilenceTCPReset6, nft.RuleSilencePortUnreachable6, nft.RuleSilenceEchoReply6} {
				if ctrs[name].Packets == 0 {
					t.Errorf("counter %s = 0, want > 0 (all: %v)", name, ctrs)
				}
			}
		}
	}
}

// probeTCPClosed: a SYN to a closed VIP port is answered with RST, unless
// silenced. Either way a raw socket on A gets its copy of the SYN: the
// output hook does not starve caplanced's ingest.
func probeTCPClosed(t *testing.T, l link, s side, silenced bool) {
	raw := mustInNetNS(t, l.a, func() (*net.IPConn, error) {
		return net.ListenIP("ip"+s.ip+":tcp", &net.IPAddr{IP: net.ParseIP(s.vip)})
	})

	_, err := inNetNS(t, l.b, func() (net.Conn, error) {
		return net.DialTimeout("tcp"+s.ip, net.JoinHostPort(s.vip, "81"), wait)
	})
	switch {
	case silenced && !isTimeout(err):
		t.Errorf("connect to %s:%d with the table: %v, want a timeout", s.vip, closed, err)
	case !silenced && !errors.Is(err, syscall.ECONNREFUSED):
		t.Errorf("connect to %s:%d without the table: %v, want connection refused", s.vip, closed, err)
	}

	raw.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	for {
		n, from, err := raw.ReadFrom(buf)
		if err != nil {
			t.Fatalf("raw socket on %s got no SYN to port %d: %v", s.vip, closed, err)
		}
		tcp := buf[:n]
		if n >= 20 && from.String() == s.client && binary.BigEndian.Uint16(tcp[2:]) == closed && tcp[13]&0x02 != 0 {
			return
		}
	}
}

// probeTCPOwnAddress: A's own address is not a VIP, so its RST always goes
// out.
func probeTCPOwnAddress(t *testing.T, l link, s side, _ bool) {
	_, err := inNetNS(t, l.b, func() (net.Conn, error) {
		return net.DialTimeout("tcp", net.JoinHostPort(s.own, "81"), wait)
	})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connect to %s:%d: %v, want connection refused", s.own, closed, err)
	}
}

// probeTCPOpen: a connection to a VIP port with a listener works with or
// without the table (for IPv6, the neighbour advertisements for the VIP
// pass too).
func probeTCPOpen(t *testing.T, l link, s side, _ bool) { probeTCPOpenOn(t, l, s.vip) }

// probeTCPOpenOn: a connection to port 80 of addr on A, with a listener,
// works.
func probeTCPOpenOn(t *testing.T, l link, addr string) {
	ln := mustInNetNS(t, l.a, func() (net.Listener, error) {
		return net.Listen("tcp", net.JoinHostPort(addr, "80"))
	})
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 4)
		if _, err := c.Read(buf); err != nil {
			served <- err
			return
		}
		_, err = c.Write(append([]byte("re:"), buf...))
		served <- err
	}()

	c, err := inNetNS(t, l.b, func() (net.Conn, error) {
		return net.DialTimeout("tcp", net.JoinHostPort(addr, "80"), time.Second)
	})
	if err != nil {
		t.Fatalf("connect to %s:%d: %v", addr, open, err)
	}
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "re:ping" {
		t.Errorf("read from %s:%d = %q, %v; want \"re:ping\"", addr, open, buf[:n], err)
	}
	if err := <-served; err != nil {
		t.Errorf("server: %v", err)
	}
}

// probeUDPClosed: a datagram to a closed VIP port is answered with ICMP port
// unreachable (ECONNREFUSED on a connected socket), unless silenced.
func probeUDPClosed(t *testing.T, l link, s side, silenced bool) {
	c := mustInNetNS(t, l.b, func() (*net.UDPConn, error) {
		return net.DialUDP("udp"+s.ip, nil, udpAddr(s.vip, 9))
	})
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 16))
	switch {
	case silenced && !isTimeout(err):
		t.Errorf("read after a datagram to %s:9 with the table: %v, want a timeout", s.vip, err)
	case !silenced && !errors.Is(err, syscall.ECONNREFUSED):
		t.Errorf("read after a datagram to %s:9 without the table: %v, want connection refused", s.vip, err)
	}
}

// probeEcho: a ping to the VIP is answered, unless silenced.
func probeEcho(t *testing.T, l link, s side, silenced bool) {
	c := mustInNetNS(t, l.b, func() (*icmp.PacketConn, error) { return icmp.ListenPacket(s.icmpNet, s.client) })
	const id = 0xcafe
	req := icmp.Message{Type: s.echo, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("caplance")}}
	b, err := req.Marshal(nil) // ICMPv6: the kernel fills the checksum in
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: net.ParseIP(s.vip)}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			if !silenced || !isTimeout(err) {
				t.Errorf("echo reply from %s: %v (silenced: %v)", s.vip, err, silenced)
			}
			return
		}
		m, err := icmp.ParseMessage(s.icmpProto, buf[:n])
		if err != nil || m.Type != s.echoReply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id {
			if silenced {
				t.Errorf("echo reply from %s with the table", s.vip)
			}
			return
		}
	}
}

// probeRawICMP: caplanced's own ICMP from the VIP (fragmentation needed,
// type 3 code 4; ICMPv6 Packet Too Big, type 2) always passes; a port
// unreachable (type 3 code 3; ICMPv6 type 1 code 4) sent the same way is
// dropped by the table, which the sender sees as EPERM.
func probeRawICMP(t *testing.T, l link, s side, silenced bool) {
	recv := mustInNetNS(t, l.b, func() (*icmp.PacketConn, error) { return icmp.ListenPacket(s.icmpNet, s.client) })
	send := mustInNetNS(t, l.a, func() (*net.IPConn, error) {
		return net.ListenIP(s.icmpNet, &net.IPAddr{IP: net.ParseIP(s.vip)})
	})
	to := &net.IPAddr{IP: net.ParseIP(s.client)}

	// The body: unused or MTU, then the "original" header: UDP from B to A
	// whose source port marks the message.
	message := func(typ icmp.Type, code int, mark uint16) []byte {
		var orig []byte
		if s.ip == "4" {
			orig = []byte{0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0}
		} else {
			orig = []byte{0x60, 0, 0, 0, 0, 8, 17, 64}
		}
		orig = append(orig, netip.MustParseAddr(s.client).AsSlice()...)
		orig = append(orig, netip.MustParseAddr(s.own).AsSlice()...)
		orig = binary.BigEndian.AppendUint16(orig, mark)
		orig = append(orig, 0, 9, 0, 8, 0, 0)
		body := append([]byte{0, 0, 0x05, 0x78}, orig...) // MTU 1400
		m := icmp.Message{Type: typ, Code: code, Body: &icmp.RawBody{Data: body}}
		b, err := m.Marshal(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	const tooBig, portUnreachable = 44444, 33333
	if _, err := send.WriteTo(message(s.tooBig, s.tooBigCode, tooBig), to); err != nil {
		t.Fatalf("send %v from %s: %v", s.tooBig, s.vip, err)
	}
	want := map[uint16]bool{tooBig: true}
	_, err := send.WriteTo(message(s.unreach, s.portUnreachable, portUnreachable), to)
	switch {
	case silenced && !errors.Is(err, syscall.EPERM):
		t.Errorf("send port-unreachable from %s with the table: %v, want EPERM (dropped in output)", s.vip, err)
	case !silenced && err != nil:
		t.Errorf("send port-unreachable from %s: %v", s.vip, err)
	case !silenced:
		want[portUnreachable] = true
	}

	// Where the quoted source port is: after the 4 bytes of the body and
	// the quoted IP header.
	markAt := 4 + 20
	if s.ip == "6" {
		markAt = 4 + 40
	}
	recv.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1500)
	for len(want) > 0 {
		n, from, err := recv.ReadFrom(buf)
		if err != nil {
			t.Fatalf("B did not get ICMP from %s marked %v: %v", s.vip, want, err)
		}
		m, err := icmp.ParseMessage(s.icmpProto, buf[:n])
		if err != nil || from.String() != s.vip || (m.Type != s.unreach && m.Type != s.tooBig) || n < 4+markAt+2 {
			continue
		}
		delete(want, binary.BigEndian.Uint16(buf[4+markAt:]))
	}
}
