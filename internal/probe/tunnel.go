package probe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/inet"
)

const (
	ipv4HeaderLen = 20
	ipv6HeaderLen = 40
	tcpHeaderLen  = 20
	icmpHeaderLen = 8

	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58

	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10

	icmpEchoReply   = 0
	icmpUnreachable = 3
	icmpEcho        = 8

	icmp6Unreachable = 1
	icmp6Echo        = 128
	icmp6EchoReply   = 129

	innerTTL = 64
	synMSS   = 1460
	// synMSS6 is synMSS less the 20 bytes an IPv6 header is longer.
	synMSS6 = synMSS - 20
	// echoMagic starts an echo request's data; 8 random bytes follow.
	echoMagic = "caplance"
	// readBuffer holds any reply: an ICMP error quotes at most 576 bytes,
	// an ICMPv6 error at most 1232.
	readBuffer = 2048
)

// unreachableCodes names ICMP destination unreachable codes (RFC 792, 1122,
// 1812).
var unreachableCodes = map[byte]string{
	0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
	3: "port unreachable", 4: "fragmentation needed", 9: "network administratively prohibited",
	10: "host administratively prohibited", 13: "communication administratively prohibited",
}

// unreachableCodes6 names ICMPv6 destination unreachable codes (RFC 4443).
var unreachableCodes6 = map[byte]string{
	0: "no route to destination", 1: "administratively prohibited", 3: "address unreachable",
	4: "port unreachable", 5: "source address failed policy", 6: "reject route",
}

// tunnelProbe is one tunnel probe in flight.
type tunnelProbe struct {
	*probe
	c *checkspec.Tunnel
	// src is the outer source, of the backend's family; innerSrc the inner
	// one, of the VIP's family, to which the backend answers.
	vip, backend, src, innerSrc netip.Addr
	encapPort                   uint16
	outer                       encap.Outer
	flowHash                    uint64 // random: the outer UDP source port is encap.SourcePort(flowHash)
	outerPort                   uint16 // outer UDP source port
	sendFD                      int

	// tcp
	port uint16 // the probe's reserved source port
	isn  uint32
	// icmp
	id   uint16
	data [len(echoMagic) + 8]byte
}

type verdict struct {
	up     bool
	detail string
}

// listener is a raw socket the probe reads and what decides on its packets.
type listener struct {
	conn  *net.IPConn
	match func(from netip.Addr, payload []byte) (verdict, bool)
}

func (p *probe) tunnel(c *checkspec.Tunnel, t checkspec.Target) (bool, string) {
	tp := &tunnelProbe{probe: p, c: c, vip: c.VIP, backend: t.Address.Unmap(), src: t.Source.Unmap(),
		encapPort: t.EncapPort, sendFD: -1}
	if !tp.vip.IsValid() {
		tp.vip = t.VIP.Unmap()
	}
	switch {
	case !tp.vip.IsValid() || tp.vip.IsUnspecified():
		return false, "tunnel: no VIP to probe (the target has none and the spec names none)"
	case !tp.backend.IsValid() || tp.backend.IsUnspecified():
		return false, "tunnel: no backend address"
	case t.EncapPort == 0:
		return false, "tunnel: no encap port in the target"
	}
	what := tp.vip.String()
	if !c.ICMP {
		what = netip.AddrPortFrom(tp.vip, c.Port).String()
	}
	prefix := fmt.Sprintf("tunnel: %s via %s", what, tp.backend)
	if !tp.src.IsValid() {
		var err error
		if tp.src, err = sourceFor(tp.backend, t.EncapPort); err != nil {
			return false, prefix + ": no source address towards the backend: " + describe(err)
		}
	}
	var err error
	if tp.outer, err = encap.NewOuter(tp.src, tp.backend, t.EncapPort); err != nil {
		return false, prefix + ": " + err.Error()
	}
	tp.innerSrc = tp.src
	if tp.vip.Is4() != tp.src.Is4() {
		if tp.innerSrc, err = sameInterface(tp.src, tp.vip.Is4()); err != nil {
			return false, prefix + ": " + err.Error()
		}
	}
	tp.flowHash = rand.Uint64()
	tp.outerPort = encap.SourcePort(tp.flowHash)

	// Listen before sending, so no reply can come too early: for the
	// answer from the VIP (of the VIP's family, to the inner source) and
	// for an ICMP error about the outer packet (of the backend's family,
	// to the outer source), on one socket when the families agree.
	var listeners []listener
	defer func() {
		for _, l := range listeners {
			l.conn.Close()
		}
	}()
	listen := func(network string, src netip.Addr, prog []bpf.Instruction, match func(netip.Addr, []byte) (verdict, bool)) error {
		conn, err := p.listenRaw(network, src, prog)
		if err != nil {
			return err
		}
		listeners = append(listeners, listener{conn, match})
		return nil
	}
	if tp.vip.Is4() {
		err = listen("ip4:icmp", tp.innerSrc, icmpFilter(tp.vip), tp.matchICMP)
	} else {
		err = listen("ip6:ipv6-icmp", tp.innerSrc, icmp6Filter(), tp.matchICMP6)
	}
	if err == nil && tp.vip.Is4() != tp.src.Is4() {
		// The inner family's ICMP socket above takes no errors about the outer packet.
		if tp.src.Is4() {
			err = listen("ip4:icmp", tp.src, icmpFilter(netip.IPv4Unspecified()), tp.matchICMP)
		} else {
			err = listen("ip6:ipv6-icmp", tp.src, icmp6Filter(), tp.matchICMP6)
		}
	}
	if err != nil {
		return false, prefix + ": " + rawSocketProblem(err)
	}
	if !c.ICMP {
		reserved, port, err := reservePort(tp.innerSrc)
		if err != nil {
			return false, fmt.Sprintf("%s: reserve a TCP port on %s: %s", prefix, tp.innerSrc, describe(err))
		}
		defer unix.Close(reserved)
		tp.port = port
		if tp.vip.Is4() {
			err = listen("ip4:tcp", tp.innerSrc, tcpFilter(tp.vip, port), tp.matchTCP)
		} else {
			err = listen("ip6:tcp", tp.innerSrc, tcp6Filter(c.Port, port), tp.matchTCP)
		}
		if err != nil {
			return false, prefix + ": " + rawSocketProblem(err)
		}
	}
	family := unix.AF_INET
	if tp.backend.Is6() {
		family = unix.AF_INET6 // IPPROTO_RAW implies IPV6_HDRINCL (ipv6(7))
	}
	if tp.sendFD, err = unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
		return false, prefix + ": " + rawSocketProblem(err)
	}
	defer unix.Close(tp.sendFD)

	var request []byte
	if c.ICMP {
		tp.id = uint16(rand.Uint32())
		copy(tp.data[:], echoMagic)
		binary.BigEndian.PutUint64(tp.data[len(echoMagic):], rand.Uint64())
		request = tp.echoRequest()
	} else {
		tp.isn = rand.Uint32()
		request = tp.segment(tp.isn, tcpSYN)
	}
	if err := tp.send(request); err != nil {
		return false, fmt.Sprintf("%s: send to %s: %s", prefix, tp.backend, describe(err))
	}

	results := make(chan verdict, len(listeners))
	var wg sync.WaitGroup
	for _, l := range listeners {
		wg.Go(func() { tp.read(l, results) })
	}
	var v verdict
	select {
	case v = <-results:
	case <-p.ctx.Done():
		select {
		case v = <-results:
		default:
			v.detail = p.failure(p.ctx.Err())
		}
	}
	for _, l := range listeners {
		l.conn.Close()
	}
	wg.Wait()
	if v.up && !c.ICMP {
		// Best effort: the backend's half-open connection times out anyway.
		_ = tp.send(tp.segment(tp.isn+1, tcpRST))
	}
	return v.up, prefix + ": " + v.detail
}

// sourceFor returns the local address the kernel would use towards backend.
func sourceFor(backend netip.Addr, port uint16) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(backend, port)))
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// sameInterface returns a global address of the other family (IPv4 when
// want4) on the interface that holds src: the inner source of a probe whose
// VIP is not of the backend's family (4-in-6, 6-in-4). The backend answers
// it directly, as it answers clients, so it must be an address the backend
// reaches; the balancer's interface towards the backend is where it is most
// likely to be. Only an address in a subnet counts (prefix shorter than
// /32 or /128): caplanced attaches its VIPs there as /32 and /128, and the
// backend's receiver drops an inner packet from a VIP.
func sameInterface(src netip.Addr, want4 bool) (netip.Addr, error) {
	family := "IPv6"
	if want4 {
		family = "IPv4"
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no %s source address for the answer from the VIP: %w", family, err)
	}
	for _, ifc := range ifaces {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		var found netip.Addr
		holds := false
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			addr, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			addr = addr.Unmap()
			holds = holds || addr == src
			ones, bits := ipn.Mask.Size()
			if addr.Is4() == want4 && addr.IsGlobalUnicast() && ones < bits && !found.IsValid() {
				found = addr
			}
		}
		if holds {
			if !found.IsValid() {
				return netip.Addr{}, fmt.Errorf("no %s source address for the answer from the VIP on %s, the interface of %s", family, ifc.Name, src)
			}
			return found, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no %s source address for the answer from the VIP: no interface holds %s", family, src)
}

// reservePort binds a TCP socket to src and an ephemeral port, so that no
// connection of this host uses the port while the probe does.
func reservePort(src netip.Addr) (int, uint16, error) {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Addr: src.As16()})
	if src.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: src.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		return fd, uint16(b.Port), nil
	case *unix.SockaddrInet6:
		return fd, uint16(b.Port), nil
	}
	unix.Close(fd)
	return -1, 0, fmt.Errorf("getsockname: unexpected %T", bound)
}

func rawSocketProblem(err error) string {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return "raw socket: " + describe(err) + " (tunnel checks need CAP_NET_RAW)"
	}
	return "raw socket: " + describe(err)
}

// listenRaw opens a raw socket for network ("ip4:tcp", "ip4:icmp",
// "ip6:tcp", "ip6:ipv6-icmp") bound to src, with the socket filter prog
// attached.
func (p *probe) listenRaw(network string, src netip.Addr, prog []bpf.Instruction) (*net.IPConn, error) {
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, err
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
				&unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]})
		})
		return errors.Join(err, serr)
	}}
	c, err := lc.ListenPacket(context.Background(), network, src.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.IPConn), nil
}

// tcpFilter keeps TCP segments from vip to port; the socket sees IPv4
// packets from the header on.
func tcpFilter(vip netip.Addr, port uint16) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: 12, Size: 4}, // source address
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: be32(vip), SkipTrue: 3},
		bpf.LoadMemShift{Off: 0},          // X = header length
		bpf.LoadIndirect{Off: 2, Size: 2}, // TCP destination port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port), SkipFalse: 1},
		bpf.RetConstant{Val: readBuffer},
		bpf.RetConstant{Val: 0},
	}
}

// tcp6Filter keeps TCP segments from vipPort to port; an IPv6 raw socket
// sees packets from the transport header on (the source address is checked
// on reading).
func tcp6Filter(vipPort, port uint16) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: 0, Size: 4}, // source and destination ports
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(vipPort)<<16 | uint32(port), SkipFalse: 1},
		bpf.RetConstant{Val: readBuffer},
		bpf.RetConstant{Val: 0},
	}
}

// icmpFilter keeps echo replies from vip and every destination unreachable.
func icmpFilter(vip netip.Addr) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadMemShift{Off: 0},          // X = header length
		bpf.LoadIndirect{Off: 0, Size: 1}, // ICMP type
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: icmpUnreachable, SkipTrue: 3},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: icmpEchoReply, SkipTrue: 3},
		bpf.LoadAbsolute{Off: 12, Size: 4}, // source address
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: be32(vip), SkipFalse: 1},
		bpf.RetConstant{Val: readBuffer},
		bpf.RetConstant{Val: 0},
	}
}

// icmp6Filter keeps ICMPv6 echo replies and destination unreachables (the
// source is checked on reading).
func icmp6Filter() []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: 0, Size: 1}, // ICMPv6 type
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: icmp6Unreachable, SkipTrue: 1},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: icmp6EchoReply, SkipTrue: 1},
		bpf.RetConstant{Val: readBuffer},
		bpf.RetConstant{Val: 0},
	}
}

func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// read reads l's socket until its match decides or the socket fails
// (closed, or past its deadline). Reading from a raw socket gives the
// transport header on, for either family, and the sender's address.
func (tp *tunnelProbe) read(l listener, out chan<- verdict) {
	stop := tp.deadline(l.conn)
	defer stop()
	buf := make([]byte, readBuffer)
	for {
		n, from, err := l.conn.ReadFromIP(buf)
		if err != nil {
			return
		}
		addr, ok := netip.AddrFromSlice(from.IP)
		if !ok {
			continue
		}
		if v, ok := l.match(addr.Unmap(), buf[:n]); ok {
			out <- v
			return
		}
	}
}

func (tp *tunnelProbe) matchTCP(from netip.Addr, tcp []byte) (verdict, bool) {
	if from != tp.vip || len(tcp) < tcpHeaderLen ||
		binary.BigEndian.Uint16(tcp[0:2]) != tp.c.Port || binary.BigEndian.Uint16(tcp[2:4]) != tp.port ||
		binary.BigEndian.Uint32(tcp[8:12]) != tp.isn+1 {
		return verdict{}, false
	}
	switch flags := tcp[13]; {
	case flags&tcpRST != 0:
		return verdict{detail: "connection refused (RST): the tunnel works, nothing listens on the port"}, true
	case flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK:
		return verdict{up: true, detail: "SYN-ACK"}, true
	}
	return verdict{}, false
}

// matchEcho matches an echo reply's identifier, sequence and data.
func (tp *tunnelProbe) matchEcho(from netip.Addr, icmp []byte) (verdict, bool) {
	if tp.c.ICMP && from == tp.vip && binary.BigEndian.Uint16(icmp[4:6]) == tp.id &&
		binary.BigEndian.Uint16(icmp[6:8]) == 1 && bytes.Equal(icmp[icmpHeaderLen:], tp.data[:]) {
		return verdict{up: true, detail: "echo reply"}, true
	}
	return verdict{}, false
}

func (tp *tunnelProbe) matchICMP(from netip.Addr, icmp []byte) (verdict, bool) {
	if len(icmp) < icmpHeaderLen {
		return verdict{}, false
	}
	switch icmp[0] {
	case icmpEchoReply:
		return tp.matchEcho(from, icmp)
	case icmpUnreachable:
		code, ok := unreachableCodes[icmp[1]]
		if !ok {
			code = fmt.Sprintf("destination unreachable (code %d)", icmp[1])
		}
		return tp.unreachable(from, icmp[icmpHeaderLen:], code, icmp[1] == 3)
	}
	return verdict{}, false
}

func (tp *tunnelProbe) matchICMP6(from netip.Addr, icmp []byte) (verdict, bool) {
	if len(icmp) < icmpHeaderLen {
		return verdict{}, false
	}
	switch icmp[0] {
	case icmp6EchoReply:
		return tp.matchEcho(from, icmp)
	case icmp6Unreachable:
		code, ok := unreachableCodes6[icmp[1]]
		if !ok {
			code = fmt.Sprintf("destination unreachable (code %d)", icmp[1])
		}
		return tp.unreachable(from, icmp[icmpHeaderLen:], code, icmp[1] == 4)
	}
	return verdict{}, false
}

// unreachable decides on a destination unreachable from "from" quoting
// quoted: it counts only when it quotes our outer packet, UDP from our
// outer source and port to the backend's encap port.
func (tp *tunnelProbe) unreachable(from netip.Addr, quoted []byte, code string, portUnreachable bool) (verdict, bool) {
	var src, dst netip.Addr
	var udp []byte
	switch {
	case tp.src.Is4() && len(quoted) >= ipv4HeaderLen && quoted[0]>>4 == 4 && quoted[9] == protoUDP:
		ihl := int(quoted[0]&0x0f) * 4
		if ihl < ipv4HeaderLen || len(quoted) < ihl {
			return verdict{}, false
		}
		src, dst, udp = netip.AddrFrom4([4]byte(quoted[12:16])), netip.AddrFrom4([4]byte(quoted[16:20])), quoted[ihl:]
	case tp.src.Is6() && len(quoted) >= ipv6HeaderLen && quoted[0]>>4 == 6 && quoted[6] == protoUDP:
		src, dst, udp = netip.AddrFrom16([16]byte(quoted[8:24])), netip.AddrFrom16([16]byte(quoted[24:40])), quoted[ipv6HeaderLen:]
	default:
		return verdict{}, false
	}
	if src != tp.src || dst != tp.backend || len(udp) < 4 ||
		binary.BigEndian.Uint16(udp[0:2]) != tp.outerPort || binary.BigEndian.Uint16(udp[2:4]) != tp.encapPort {
		return verdict{}, false
	}
	detail := fmt.Sprintf("%s from %s for UDP port %d", code, from, tp.encapPort)
	if portUnreachable {
		detail += ": nothing receives encapsulated packets there"
	}
	return verdict{detail: detail}, true
}

// send encapsulates the inner packet (built behind tp.outer.Len() bytes of
// headroom) and sends it to the backend.
func (tp *tunnelProbe) send(pkt []byte) error {
	if err := tp.outer.Encapsulate(pkt, tp.flowHash); err != nil {
		return err
	}
	if tp.backend.Is4() {
		return unix.Sendto(tp.sendFD, pkt, 0, &unix.SockaddrInet4{Addr: tp.backend.As4()})
	}
	return unix.Sendto(tp.sendFD, pkt, 0, &unix.SockaddrInet6{Addr: tp.backend.As16()})
}

// inner returns a packet with tp.outer.Len() bytes of headroom, then an
// IPv4 or IPv6 header (the VIP's family) from the inner source to the VIP,
// then room for l4Len bytes of protocol proto, which the caller fills in
// before it sums them into the returned pseudo-header sum (for a checksum
// that covers one: TCP, ICMPv6).
func (tp *tunnelProbe) inner(proto byte, l4Len int) (pkt, l4 []byte, pseudo uint32) {
	room := tp.outer.Len()
	if tp.vip.Is6() {
		pkt = make([]byte, room+ipv6HeaderLen+l4Len)
		ip := pkt[room:]
		ip[0] = 6 << 4
		binary.BigEndian.PutUint16(ip[4:6], uint16(l4Len))
		ip[6] = proto
		ip[7] = innerTTL
		src, dst := tp.innerSrc.As16(), tp.vip.As16()
		copy(ip[8:24], src[:])
		copy(ip[24:40], dst[:])
		// RFC 8200 section 8.1: addresses, upper-layer length, next header.
		return pkt, ip[ipv6HeaderLen:], inet.Sum(ip[8:40], uint32(l4Len)+uint32(proto))
	}
	pkt = make([]byte, room+ipv4HeaderLen+l4Len)
	ip := pkt[room:]
	ip[0] = 4<<4 | ipv4HeaderLen/4
	binary.BigEndian.PutUint16(ip[2:4], uint16(ipv4HeaderLen+l4Len))
	binary.BigEndian.PutUint16(ip[4:6], uint16(rand.Uint32()))
	binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF
	ip[8] = innerTTL
	ip[9] = proto
	src, dst := tp.innerSrc.As4(), tp.vip.As4()
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:12], inet.Checksum(ip[:ipv4HeaderLen]))
	return pkt, ip[ipv4HeaderLen:], inet.Sum(ip[12:20], uint32(l4Len)+uint32(proto))
}

// segment builds a TCP segment from the probe's port to the VIP's: a SYN
// with an MSS option, or a bare RST.
func (tp *tunnelProbe) segment(seq uint32, flags byte) []byte {
	n := tcpHeaderLen
	if flags == tcpSYN {
		n += 4
	}
	pkt, tcp, pseudo := tp.inner(protoTCP, n)
	binary.BigEndian.PutUint16(tcp[0:2], tp.port)
	binary.BigEndian.PutUint16(tcp[2:4], tp.c.Port)
	binary.BigEndian.PutUint32(tcp[4:8], seq)
	tcp[12] = byte(n/4) << 4
	tcp[13] = flags
	if flags == tcpSYN {
		mss := uint16(synMSS)
		if tp.vip.Is6() {
			mss = synMSS6
		}
		binary.BigEndian.PutUint16(tcp[14:16], 65535)
		tcp[20], tcp[21] = 2, 4 // MSS
		binary.BigEndian.PutUint16(tcp[22:24], mss)
	}
	binary.BigEndian.PutUint16(tcp[16:18], ^inet.Fold(inet.Sum(tcp, pseudo)))
	return pkt
}

// echoRequest builds the ICMP or ICMPv6 echo request to the VIP (an
// ICMPv6 checksum covers the pseudo-header, an ICMP one does not).
func (tp *tunnelProbe) echoRequest() []byte {
	if tp.vip.Is6() {
		pkt, icmp, pseudo := tp.inner(protoICMPv6, icmpHeaderLen+len(tp.data))
		icmp[0] = icmp6Echo
		binary.BigEndian.PutUint16(icmp[4:6], tp.id)
		binary.BigEndian.PutUint16(icmp[6:8], 1)
		copy(icmp[icmpHeaderLen:], tp.data[:])
		binary.BigEndian.PutUint16(icmp[2:4], ^inet.Fold(inet.Sum(icmp, pseudo)))
		return pkt
	}
	pkt, icmp, _ := tp.inner(protoICMP, icmpHeaderLen+len(tp.data))
	icmp[0] = icmpEcho
	binary.BigEndian.PutUint16(icmp[4:6], tp.id)
	binary.BigEndian.PutUint16(icmp[6:8], 1)
	copy(icmp[icmpHeaderLen:], tp.data[:])
	binary.BigEndian.PutUint16(icmp[2:4], inet.Checksum(icmp))
	return pkt
}
