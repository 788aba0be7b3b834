package nft_test

import (
	"encoding/binary"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/nft"
)

// vipPorts is a second VIP on side A that forwards only some ports.
const vipPorts = "10.99.0.101"

// TestForward: TCP and UDP to what caplanced forwards still reach the raw
// sockets, and the kernel no longer answers them at all (not even with a RST
// or port unreachable for the output hook to drop); to a port that is not
// forwarded, the kernel answers as before (silenced) and a listener works.
func TestForward(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	l := newLink(t, []string{addrA + "/24", vip + "/32", vipPorts + "/32"}, []string{addrB + "/24"})
	rules := nft.Rules{
		SilenceVIPs: addrs(vip, vipPorts),
		Forward: []nft.Forward{
			{VIP: addrs(vip)[0], Protocols: model.TCP | model.UDP},
			{VIP: addrs(vipPorts)[0], Protocols: model.TCP, Ports: []model.PortRange{{First: 81, Last: 81}}},
			// One VIP in two services: another protocol, other ports.
			{VIP: addrs(vipPorts)[0], Protocols: model.UDP, Ports: []model.PortRange{{First: 9, Last: 9}, {First: 81, Last: 81}}},
		},
	}
	if err := nft.Apply(int(l.a), rules); err != nil {
		t.Fatal(err)
	}
	forwardRules := []string{nft.RuleForwardTCP, nft.RuleForwardUDP, nft.RuleForwardTCPPorts, nft.RuleForwardUDPPorts}
	silenceRules := []string{nft.RuleSilenceTCPReset, nft.RuleSilencePortUnreachable}

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
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := mustInNetNS(t, l.a, func() (*net.IPConn, error) {
				return net.ListenIP("ip4:"+tc.proto, &net.IPAddr{IP: net.ParseIP(tc.to)})
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
				c := mustInNetNS(t, l.b, func() (net.Conn, error) { return net.Dial("udp4", dst) })
				if _, err := c.Write([]byte("hello")); err != nil {
					t.Fatal(err)
				}
			}
			if !rawGot(raw, uint16(tc.port)) {
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
}

// rawGot reports whether raw, a raw TCP or UDP socket, receives a segment or
// datagram from B to port within wait.
func rawGot(raw *net.IPConn, port uint16) bool {
	raw.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	for {
		n, from, err := raw.ReadFrom(buf)
		if err != nil {
			return false
		}
		if n >= 8 && from.String() == addrB && binary.BigEndian.Uint16(buf[2:]) == port {
			return true
		}
	}
}
