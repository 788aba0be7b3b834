package fleetlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/testbed"
)

// EchoFlows sends one datagram to the UDP echo port of vip (testbed.VIP or
// testbed.VIP6) from each of the client's ports (one flow each, from
// testbed.ClientAddr or ClientAddr6), through the client's current route
// (see Via), and returns the backend that answered each, in order.
func (l *Lab) EchoFlows(vip netip.Addr, ports []uint16) ([]string, error) {
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(vip, testbed.EchoPort))
	src := testbed.ClientAddr
	if vip.Is6() {
		src = testbed.ClientAddr6
	}
	names := make([]string, len(ports))
	err := l.Client.Do(func() error {
		for i, port := range ports {
			from := net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, port))
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

// Flow is one UDP flow of TraceFlows: the client's source port, the
// balancer that carried it and the backend that answered.
type Flow struct {
	Port     uint16
	Balancer *Balancer
	Backend  string
}

// TraceFlows is EchoFlows to testbed.VIP that also tells which balancer
// carried each flow, as seen on the balancers' links: a packet socket on each one's
// eth0 records the datagrams arriving for the VIP's echo port.
//
// The router's multipath hash cannot be computed instead (`ip route get
// … sport … dport …`): a packet of a local socket carries that socket's
// flow hash through the veths, and with fib_multipath_hash_policy=1 the
// router's kernel uses it as it is, so in this lab a flow's path follows
// its client socket's hash (TCP picks a new one after a retransmission
// timeout), not its ports. A router fed from a wire hashes the 5-tuple.
func (l *Lab) TraceFlows(ports []uint16) ([]Flow, error) {
	fds := make([]int, len(l.Balancers))
	defer func() {
		for _, fd := range fds {
			if fd > 0 {
				unix.Close(fd)
			}
		}
	}()
	for i, b := range l.Balancers {
		err := b.Host.Do(func() error {
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
			if err != nil {
				return err
			}
			fds[i] = fd
			// Room for every datagram of the run, read only at its end.
			return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
		})
		if err != nil {
			return nil, fmt.Errorf("%s: packet socket: %w", b.Name, err)
		}
	}
	backends, err := l.EchoFlows(testbed.VIP, ports)
	if err != nil {
		return nil, err
	}
	// Every request crossed its balancer's link before its echo came back,
	// and a packet socket queues a packet as it arrives: all are queued now.
	carrier := map[uint16]*Balancer{}
	for i, b := range l.Balancers {
		seen, err := echoSources(fds[i])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", b.Name, err)
		}
		for _, port := range seen {
			if other := carrier[port]; other != nil {
				return nil, fmt.Errorf("the flow from port %d crossed both %s and %s", port, other.Name, b.Name)
			}
			carrier[port] = b
		}
	}
	flows := make([]Flow, len(ports))
	for i, port := range ports {
		flows[i] = Flow{Port: port, Balancer: carrier[port], Backend: backends[i]}
		if carrier[port] == nil {
			return nil, fmt.Errorf("the flow from port %d crossed no balancer's link", port)
		}
	}
	return flows, nil
}

// echoSources reads what the packet socket fd has queued, without
// waiting, and returns the source ports of the client's datagrams to the
// VIP's echo port that arrived (not those the host sent).
func echoSources(fd int) ([]uint16, error) {
	var ports []uint16
	buf := make([]byte, 65536)
	for {
		n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return ports, nil
		}
		if err != nil {
			return nil, err
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Pkttype == unix.PACKET_OUTGOING || n < 28 {
			continue
		}
		ip := buf[:n]
		hl := int(ip[0]&0xf) * 4
		if ip[9] != unix.IPPROTO_UDP || netip.AddrFrom4([4]byte(ip[16:20])) != testbed.VIP ||
			netip.AddrFrom4([4]byte(ip[12:16])) != testbed.ClientAddr || n < hl+8 ||
			binary.BigEndian.Uint16(ip[hl+2:]) != testbed.EchoPort {
			continue
		}
		ports = append(ports, binary.BigEndian.Uint16(ip[hl:]))
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
