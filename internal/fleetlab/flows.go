package fleetlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/caplance/caplance/internal/testbed"
)

// EchoFlows sends one datagram to the VIP's UDP echo port from each of the
// client's ports (one flow each, from testbed.ClientAddr), through the
// client's current route (see Via), and returns the backend that answered
// each, in order.
func (l *Lab) EchoFlows(ports []uint16) ([]string, error) {
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(testbed.VIP, testbed.EchoPort))
	names := make([]string, len(ports))
	err := l.Client.Do(func() error {
		for i, port := range ports {
			from := net.UDPAddrFromAddrPort(netip.AddrPortFrom(testbed.ClientAddr, port))
			c, err := net.DialUDP("udp", from, to)
			if err != nil {
				return err
			}
			names[i], err = testbed.Echo(c, []byte("flow "+strconv.Itoa(int(port))))
			c.Close()
			if err != nil {
				return fmt.Errorf("flow from port %d: %w", port, err)
			}
		}
		return nil
	})
	return names, err
}

// RouterPick returns the balancer the router sends the client's UDP flow
// from port to the VIP's echo port to, as the kernel's multipath hash
// picks it (`ip route get … ipproto udp sport … dport …`).
func (l *Lab) RouterPick(port uint16) (*Balancer, error) {
	out, err := l.Router.Command(context.Background(), "ip", "-o", "route", "get", testbed.VIP.String(),
		"from", testbed.ClientAddr.String(), "iif", "eth0", "ipproto", "udp",
		"sport", strconv.Itoa(int(port)), "dport", strconv.Itoa(testbed.EchoPort)).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ip route get on the router: %w: %s", err, strings.TrimSpace(string(out)))
	}
	f := strings.Fields(string(out))
	for i := range len(f) - 1 {
		if f[i] != "via" {
			continue
		}
		for _, b := range l.Balancers {
			if b.Addr.String() == f[i+1] {
				return b, nil
			}
		}
	}
	return nil, fmt.Errorf("ip route get on the router: no balancer in %q", strings.TrimSpace(string(out)))
}
