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
// carried each flow, as the backends saw it: a packet socket on each
// backend's eth0 records the tunnelled datagrams for the VIP's echo port,
// whose outer source is the balancer that sent them. The backends see them
// whatever the balancers' data plane: an AF_XDP balancer takes its frames
// before a packet socket on its own links would.
//
// The router's multipath hash cannot be computed instead (`ip route get
// … sport … dport …`): a packet of a local socket carries that socket's
// flow hash through the veths, and with fib_multipath_hash_policy=1 the
// router's kernel uses it as it is, so in this lab a flow's path follows
// its client socket's hash (TCP picks a new one after a retransmission
// timeout), not its ports. A router fed from a wire hashes the 5-tuple.
func (l *Lab) TraceFlows(ports []uint16) ([]Flow, error) {
	fds := make([]int, len(l.Backends))
	defer func() {
		for _, fd := range fds {
			if fd > 0 {
				unix.Close(fd)
			}
		}
	}()
	for i, b := range l.Backends {
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
	byAddr := map[netip.Addr]*Balancer{}
	for _, b := range l.Balancers {
		byAddr[b.Addr] = b
	}
	// Every request reached its backend before its echo came back, and a
	// packet socket queues a packet as it arrives: all are queued now.
	carrier := map[uint16]*Balancer{}
	for i, be := range l.Backends {
		seen, err := tunnelledEchoes(fds[i])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", be.Name, err)
		}
		for port, from := range seen {
			b := byAddr[from]
			if b == nil {
				return nil, fmt.Errorf("the flow from port %d reached %s from %v, no balancer", port, be.Name, from)
			}
			if other := carrier[port]; other != nil && other != b {
				return nil, fmt.Errorf("the flow from port %d crossed both %s and %s", port, other.Name, b.Name)
			}
			carrier[port] = b
		}
	}
	flows := make([]Flow, len(ports))
	for i, port := range ports {
		flows[i] = Flow{Port: port, Balancer: carrier[port], Backend: backends[i]}
		if carrier[port] == nil {
			return nil, fmt.Errorf("the flow from port %d reached no backend through a tunnel", port)
		}
	}
	return flows, nil
}

// tunnelledEchoes reads what the packet socket fd has queued, without
// waiting, and returns, by the client's source port, the outer source of
// each tunnelled datagram from the client to the VIP's echo port that
// arrived: IPv4 in UDP in IPv4.
func tunnelledEchoes(fd int) (map[uint16]netip.Addr, error) {
	from := map[uint16]netip.Addr{}
	buf := make([]byte, 65536)
	for {
		n, sa, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return from, nil
		}
		if err != nil {
			return nil, err
		}
		ll, ok := sa.(*unix.SockaddrLinklayer)
		if !ok || ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		outer := buf[:n]
		ohl, ok := ipv4UDP(outer)
		if !ok {
			continue
		}
		inner := outer[ohl+8:]
		ihl, ok := ipv4UDP(inner)
		if !ok || netip.AddrFrom4([4]byte(inner[16:20])) != testbed.VIP ||
			netip.AddrFrom4([4]byte(inner[12:16])) != testbed.ClientAddr ||
			binary.BigEndian.Uint16(inner[ihl+2:]) != testbed.EchoPort {
			continue
		}
		from[binary.BigEndian.Uint16(inner[ihl:])] = netip.AddrFrom4([4]byte(outer[12:16]))
	}
}

// ipv4UDP says whether pkt is an IPv4 UDP datagram with room for its UDP
// header, and returns its IP header's length.
func ipv4UDP(pkt []byte) (int, bool) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 || pkt[9] != unix.IPPROTO_UDP {
		return 0, false
	}
	hl := int(pkt[0]&0xf) * 4
	return hl, hl >= 20 && len(pkt) >= hl+8
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
