package nft_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/nft"
)

// vipPorts is a second VIP on side A that forwards only some ports;
// vipPorts6 is its IPv6 twin.
const (
	vipPorts  = "10.99.0.101"
	vipPorts6 = "fd99::101"
)

// TestForward: TCP and UDP, over IPv4 and IPv6, to what caplanced forwards
// still reach the raw sockets, and the kernel no longer answers them at all
// (not even with a RST or port unreachable for the output hook to drop); to
// a port that is not forwarded, the kernel answers as before (silenced) and
// a listener works.
func TestForward(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	l := newLink(t, []string{addrA + "/24", vip + "/32", vipPorts + "/32", side6.own + "/64", side6.vip + "/128", vipPorts6 + "/128"},
		[]string{addrB + "/24", side6.client + "/64"})
	l.waitReady(t, side6.own) // and each side knows the other's link address
	rules := nft.Rules{
		SilenceVIPs: addrs(vip, vipPorts, side6.vip, vipPorts6),
		Forward: []nft.Forward{
			{VIP: addrs(vip)[0], Protocols: model.TCP | model.UDP},
			{VIP: addrs(vipPorts)[0], Protocols: model.TCP, Ports: []model.PortRange{{First: 81, Last: 81}}},
			// One VIP in two services: another protocol, other ports.
			{VIP: addrs(vipPorts)[0], Protocols: model.UDP, Ports: []model.PortRange{{First: 9, Last: 9}, {First: 81, Last: 81}}},
			{VIP: addrs(side6.vip)[0], Protocols: model.TCP | model.UDP},
			{VIP: addrs(vipPorts6)[0], Protocols: model.TCP, Ports: []model.PortRange{{First: 81, Last: 81}}},
			{VIP: addrs(vipPorts6)[0], Protocols: model.UDP, Ports: []model.PortRange{{First: 9, Last: 9}}},
		},
	}
	if err := nft.Apply(int(l.a), rules); err != nil {
		t.Fatal(err)
	}
	forwardRules := []string{nft.RuleForwardTCP, nft.RuleForwardUDP, nft.RuleForwardTCPPorts, nft.RuleForwardUDPPorts,
		nft.RuleForwardTCP6, nft.RuleForwardUDP6, nft.RuleForwardTCPPorts6, nft.RuleForwardUDPPorts6}
	silenceRules := []string{nft.RuleSilenceTCPReset, nft.RuleSilencePortUnreachable, nft.RuleSilenceTCPReset6, nft.RuleSilencePortUnreachable6}

	// Sequential: each case reads the table's counters before and after.
	for _, tc := range []struct {
		name, proto, to string
		port            int
		marked          string // the forward rule that counts the packet, or ""
		silenced        string // the silence rule that drops the kernel's answer, or ""
	}{
		{"tcp, every port forwarded", "tcp", vip, closed, nft.RuleForwardTCP, ""},
		{"udp, every port forwarded", "udp", vip, 9, nft.RuleForwardUDP, ""},
		{"tcp to a forwarded port", "tcp", vipPorts, closed, nft.RuleForwardTCPPorts, ""},
		{"udp to a forwarded port", "udp", vipPorts, 9, nft.RuleForwardUDPPorts, ""},
		{"tcp to a port not forwarded", "tcp", vipPorts, 82, "", nft.RuleSilenceTCPReset},
		{"tcp to a port forwarded for udp only", "tcp", vipPorts, 9, "", nft.RuleSilenceTCPReset},
		{"udp to a port not forwarded", "udp", vipPorts, 10, "", nft.RuleSilencePortUnreachable},
		{"ipv6 tcp, every port forwarded", "tcp", side6.vip, closed, nft.RuleForwardTCP6, ""},
		{"ipv6 udp, every port forwarded", "udp", side6.vip, 9, nft.RuleForwardUDP6, ""},
		{"ipv6 tcp to a forwarded port", "tcp", vipPorts6, closed, nft.RuleForwardTCPPorts6, ""},
		{"ipv6 udp to a forwarded port", "udp", vipPorts6, 9, nft.RuleForwardUDPPorts6, ""},
		{"ipv6 tcp to a port not forwarded", "tcp", vipPorts6, 82, "", nft.RuleSilenceTCPReset6},
		{"ipv6 udp to a port not forwarded", "udp", vipPorts6, 10, "", nft.RuleSilencePortUnreachable6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := side4
			if netip.MustParseAddr(tc.to).Is6() {
				s = side6
			}
			raw := mustInNetNS(t, l.a, func() (*net.IPConn, error) {
				return net.ListenIP("ip"+s.ip+":"+tc.proto, &net.IPAddr{IP: net.ParseIP(tc.to)})
			})
			before, err := nft.Counters(int(l.a))
			if err != nil {
				t.Fatal(err)
			}
			dst := net.JoinHostPort(tc.to, strconv.Itoa(tc.port))
			if tc.proto == "tcp" {
				_, err = inNetNS(t, l.b, func() (net.Conn, error) { return net.DialTimeout("tcp", dst, wait) })
				if !isTimeout(err) {
					t.Errorf("connect to %s: %v, want a timeout (no answer gets out)", dst, err)
				}
			} else {
				c := mustInNetNS(t, l.b, func() (net.Conn, error) { return net.Dial("udp"+s.ip, dst) })
				if _, err := c.Write([]byte("hello")); err != nil {
					t.Fatal(err)
				}
			}
			if !rawGot(raw, s.client, uint16(tc.port)) {
				t.Errorf("the raw %s socket on %s got nothing for port %d", tc.proto, tc.to, tc.port)
			}
			time.Sleep(50 * time.Millisecond) // for the kernel's answer, if any, to pass the output hook
			after, err := nft.Counters(int(l.a))
			if err != nil {
				t.Fatal(err)
			}
			for _, rule := range append(forwardRules, silenceRules...) {
				counted := after[rule].Packets > before[rule].Packets
				if want := rule == tc.marked || rule == tc.silenced; counted != want {
					t.Errorf("rule %s counted %d packets, want them counted: %v", rule, after[rule].Packets-before[rule].Packets, want)
				}
			}
		})
	}
	t.Run("tcp listener on a port not forwarded", func(t *testing.T) {
		probeTCPOpenOn(t, l, vipPorts)
	})
	t.Run("ipv6 tcp listener on a port not forwarded", func(t *testing.T) {
		probeTCPOpenOn(t, l, vipPorts6)
	})
}

// rawGot reports whether raw, a raw TCP or UDP socket, receives a segment or
// datagram from client to port within wait.
func rawGot(raw *net.IPConn, client string, port uint16) bool {
	raw.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	for {
		n, from, err := raw.ReadFrom(buf)
		if err != nil {
			return false
		}
		if n >= 8 && from.String() == client && binary.BigEndian.Uint16(buf[2:]) == port {
			return true
		}
	}
}
