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
	tcpHeaderLen  = 20
	icmpHeaderLen = 8

	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17

	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10

	icmpEchoReply   = 0
	icmpUnreachable = 3
	icmpEcho        = 8

	innerTTL = 64
	synMSS   = 1460
	// echoMagic starts an echo request's data; 8 random bytes follow.
	echoMagic = "caplance"
	// readBuffer holds any reply: an ICMP error quotes at most 576 bytes.
	readBuffer = 2048
)

// unreachableCodes names ICMP destination unreachable codes (RFC 792, 1122,
// 1812).
var unreachableCodes = map[byte]string{
	0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
	3: "port unreachable", 4: "fragmentation needed", 9: "network administratively prohibited",
	10: "host administratively prohibited", 13: "communication administratively prohibited",
}

// tunnelProbe is one tunnel probe in flight.
type tunnelProbe struct {
	*probe
	c                 *checkspec.Tunnel
	vip, backend, src netip.Addr
	encapPort         uint16
	outer             encap.Outer
	flowHash          uint64 // random: the outer UDP source port is encap.SourcePort(flowHash)
	outerPort         uint16 // outer UDP source port
	sendFD            int

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

func (p *probe) tunnel(c *checkspec.Tunnel, t checkspec.Target) (bool, string) {
	tp := &tunnelProbe{probe: p, c: c, vip: c.VIP, backend: t.Address.Unmap(), src: t.Source.Unmap(),
		encapPort: t.EncapPort, sendFD: -1}
	if !tp.vip.IsValid() {
		tp.vip = t.VIP.Unmap()
	}
	what := tp.vip.String()
	if !c.ICMP {
		what = netip.AddrPortFrom(tp.vip, c.Port).String()
	}
	switch {
	case !tp.vip.IsValid() || !tp.vip.Is4():
		return false, fmt.Sprintf("tunnel: no IPv4 VIP to probe (the target has %v and the spec names none)", checkspec.AddrString(tp.vip))
	case !tp.backend.IsValid() || !tp.backend.Is4():
		return false, fmt.Sprintf("tunnel: backend address %q: not IPv4", checkspec.AddrString(tp.backend))
	case t.EncapPort == 0:
		return false, "tunnel: no encap port in the target"
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
	tp.flowHash = rand.Uint64()
	tp.outerPort = encap.SourcePort(tp.flowHash)

	// Listen before sending, so no reply can come too early.
	icmpConn, err := p.listenRaw("ip4:icmp", tp.src, icmpFilter(tp.vip))
	if err != nil {
		return false, prefix + ": " + rawSocketProblem(err)
	}
	defer icmpConn.Close()
	var tcpConn *net.IPConn
	if !c.ICMP {
		reserved, port, err := reservePort(tp.src)
		if err != nil {
			return false, fmt.Sprintf("%s: reserve a TCP port on %s: %s", prefix, tp.src, describe(err))
		}
		defer unix.Close(reserved)
		tp.port = port
		if tcpConn, err = p.listenRaw("ip4:tcp", tp.src, tcpFilter(tp.vip, port)); err != nil {
			return false, prefix + ": " + rawSocketProblem(err)
		}
		defer tcpConn.Close()
	}
	if tp.sendFD, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
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

	results := make(chan verdict, 2)
	var wg sync.WaitGroup
	wg.Go(func() { tp.read(icmpConn, tp.matchICMP, results) })
	if tcpConn != nil {
		wg.Go(func() { tp.read(tcpConn, tp.matchTCP, results) })
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
	icmpConn.Close()
	if tcpConn != nil {
		tcpConn.Close()
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
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(backend, port)))
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// reservePort binds a TCP socket to src and an ephemeral port, so that no
// connection of this host uses the port while the probe does.
func reservePort(src netip.Addr) (int, uint16, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	return fd, uint16(sa.(*unix.SockaddrInet4).Port), nil
}

func rawSocketProblem(err error) string {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return "raw socket: " + describe(err) + " (tunnel checks need CAP_NET_RAW)"
	}
	return "raw socket: " + describe(err)
}

// listenRaw opens a raw IPv4 socket for network ("ip4:tcp", "ip4:icmp")
// bound to src, with the socket filter prog attached.
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

func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// read reads c until match decides or c fails (closed, or past its deadline).
func (tp *tunnelProbe) read(c *net.IPConn, match func([]byte) (verdict, bool), out chan<- verdict) {
	stop := tp.deadline(c)
	defer stop()
	buf := make([]byte, readBuffer)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if v, ok := match(buf[:n]); ok {
			out <- v
			return
		}
	}
}

// header returns pkt's IPv4 header length and payload if pkt is a complete
// IPv4 packet of protocol proto from src.
func header(pkt []byte, proto byte, src netip.Addr) ([]byte, bool) {
	if len(pkt) < ipv4HeaderLen || pkt[0]>>4 != 4 || pkt[9] != proto {
		return nil, false
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < ipv4HeaderLen || len(pkt) < ihl {
		return nil, false
	}
	if src.IsValid() && netip.AddrFrom4([4]byte(pkt[12:16])) != src {
		return nil, false
	}
	return pkt[ihl:], true
}

func (tp *tunnelProbe) matchTCP(pkt []byte) (verdict, bool) {
	tcp, ok := header(pkt, protoTCP, tp.vip)
	if !ok || len(tcp) < tcpHeaderLen ||
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

func (tp *tunnelProbe) matchICMP(pkt []byte) (verdict, bool) {
	icmp, ok := header(pkt, protoICMP, netip.Addr{})
	if !ok || len(icmp) < icmpHeaderLen {
		return verdict{}, false
	}
	from := netip.AddrFrom4([4]byte(pkt[12:16]))
	switch icmp[0] {
	case icmpEchoReply:
		if tp.c.ICMP && from == tp.vip && binary.BigEndian.Uint16(icmp[4:6]) == tp.id &&
			binary.BigEndian.Uint16(icmp[6:8]) == 1 && bytes.Equal(icmp[icmpHeaderLen:], tp.data[:]) {
			return verdict{up: true, detail: "echo reply"}, true
		}
	case icmpUnreachable:
		// It must quote our outer packet: UDP from src to the backend's
		// encap port, from our outer source port.
		udp, ok := header(icmp[icmpHeaderLen:], protoUDP, tp.src)
		q := icmp[icmpHeaderLen:]
		if !ok || len(udp) < 4 || netip.AddrFrom4([4]byte(q[16:20])) != tp.backend ||
			binary.BigEndian.Uint16(udp[0:2]) != tp.outerPort || binary.BigEndian.Uint16(udp[2:4]) != tp.encapPort {
			return verdict{}, false
		}
		code, ok := unreachableCodes[icmp[1]]
		if !ok {
			code = fmt.Sprintf("destination unreachable (code %d)", icmp[1])
		}
		detail := fmt.Sprintf("%s from %s for UDP port %d", code, from, tp.encapPort)
		if icmp[1] == 3 {
			detail += ": nothing receives encapsulated packets there"
		}
		return verdict{detail: detail}, true
	}
	return verdict{}, false
}

// send encapsulates the inner packet (built behind encap.HeaderLen4 bytes of
// headroom) and sends it to the backend.
func (tp *tunnelProbe) send(pkt []byte) error {
	if err := tp.outer.Encapsulate(pkt, tp.flowHash); err != nil {
		return err
	}
	return unix.Sendto(tp.sendFD, pkt, 0, &unix.SockaddrInet4{Addr: tp.backend.As4()})
}

// ipv4 returns a packet with encap.HeaderLen4 bytes of headroom, then an IPv4
// header from the probe's source to the VIP, then room for l4Len bytes of
// protocol proto, which the caller fills in.
func (tp *tunnelProbe) ipv4(proto byte, l4Len int) (pkt, l4 []byte) {
	pkt = make([]byte, encap.HeaderLen4+ipv4HeaderLen+l4Len)
	ip := pkt[encap.HeaderLen4:]
	ip[0] = 4<<4 | ipv4HeaderLen/4
	binary.BigEndian.PutUint16(ip[2:4], uint16(ipv4HeaderLen+l4Len))
	binary.BigEndian.PutUint16(ip[4:6], uint16(rand.Uint32()))
	binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF
	ip[8] = innerTTL
	ip[9] = proto
	src, dst := tp.src.As4(), tp.vip.As4()
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:12], inet.Checksum(ip[:ipv4HeaderLen]))
	return pkt, ip[ipv4HeaderLen:]
}

// segment builds a TCP segment from the probe's port to the VIP's: a SYN
// with an MSS option, or a bare RST.
func (tp *tunnelProbe) segment(seq uint32, flags byte) []byte {
	n := tcpHeaderLen
	if flags == tcpSYN {
		n += 4
	}
	pkt, tcp := tp.ipv4(protoTCP, n)
	binary.BigEndian.PutUint16(tcp[0:2], tp.port)
	binary.BigEndian.PutUint16(tcp[2:4], tp.c.Port)
	binary.BigEndian.PutUint32(tcp[4:8], seq)
	tcp[12] = byte(n/4) << 4
	tcp[13] = flags
	if flags == tcpSYN {
		binary.BigEndian.PutUint16(tcp[14:16], 65535)
		tcp[20], tcp[21] = 2, 4 // MSS
		binary.BigEndian.PutUint16(tcp[22:24], synMSS)
	}
	src, dst := tp.src.As4(), tp.vip.As4()
	var pseudo [12]byte
	copy(pseudo[0:4], src[:])
	copy(pseudo[4:8], dst[:])
	pseudo[9] = protoTCP
	binary.BigEndian.PutUint16(pseudo[10:12], uint16(n))
	binary.BigEndian.PutUint16(tcp[16:18], ^inet.Fold(inet.Sum(tcp, inet.Sum(pseudo[:], 0))))
	return pkt
}

// echoRequest builds the ICMP echo request to the VIP.
func (tp *tunnelProbe) echoRequest() []byte {
	pkt, icmp := tp.ipv4(protoICMP, icmpHeaderLen+len(tp.data))
	icmp[0] = icmpEcho
	binary.BigEndian.PutUint16(icmp[4:6], tp.id)
	binary.BigEndian.PutUint16(icmp[6:8], 1)
	copy(icmp[icmpHeaderLen:], tp.data[:])
	binary.BigEndian.PutUint16(icmp[2:4], inet.Checksum(icmp))
	return pkt
}
