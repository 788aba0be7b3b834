// Package flow turns a raw IP packet into the key of the flow it belongs to,
// and that key into the 64-bit hash the balancer uses to pick a backend.
//
// It owns the packet → key rules (which header fields identify a flow, how
// fragments and ICMP errors are keyed, which packets are malformed and why)
// and the key → hash function that every balancer instance must compute alike.
// It must not touch anything else: it is pure, imports only the standard
// library, does no I/O and knows nothing of sockets, netlink, D-Bus or systemd.
// Parse also returns a TCP segment's flags, with which connection tracking
// follows a connection's end; it does not interpret them. Parse and Hash do
// not allocate, so the data path calls them once per packet.
//
// # Keys
//
// Parse reads the packet from its IP header on; the version nibble selects
// IPv4 or IPv6. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d), so the
// key of an IPv4 packet is always of that form and one Key type serves both
// families. Proto is the transport protocol: for IPv6, the header that ends
// the extension-header chain.
//
//   - TCP, UDP, UDP-Lite, SCTP and DCCP get a 5-tuple: all five carry the
//     source and destination ports in their first four bytes, so the extra
//     protocols cost one case each.
//   - Fragments get a 3-tuple (ports 0), so that every fragment of a datagram,
//     including the first one that carries the ports, lands on the same
//     backend. IPv4: the MF flag or a non-zero offset. IPv6: a Fragment header
//     with the M flag or a non-zero offset; Proto is that header's Next Header,
//     which every fragment repeats. An IPv6 "atomic fragment" (offset 0, M
//     clear, RFC 6946) is a whole datagram and is keyed like an unfragmented
//     one, so it stays with the rest of its flow. A fragmented datagram and
//     unfragmented packets of the same 5-tuple get different keys and may
//     reach different backends; that is accepted because the kernel reassembles
//     fragments before a raw IP socket sees them, so the balancer meets
//     fragments only in the quotes of ICMP errors or when reading below IP.
//   - ICMP echo request and reply (ICMPv4 8 and 0, ICMPv6 128 and 129) are
//     keyed on the identifier, stored in both SrcPort and DstPort. Only the
//     client → VIP direction reaches the balancer (backends answer directly),
//     so no pairing of request and reply is needed; storing the identifier in
//     both ports makes the key symmetric, so an ICMP error quoting a backend's
//     echo reply, reversed, gives the key of the client's echo request.
//   - ICMP errors (ICMPv4 3 destination unreachable, including code 4
//     fragmentation needed, 11 time exceeded, 12 parameter problem; ICMPv6 1
//     destination unreachable, 2 packet too big, 3 time exceeded, 4 parameter
//     problem) are keyed on the packet they quote, reversed (source and
//     destination swapped, ports too): the quoted packet went from the VIP to
//     the client, so the reversed key is the key of the client's flow, and the
//     error reaches the backend that owns it. The quote may be cut short, as
//     routers need send only the IP header and 8 bytes of transport: the IP
//     length fields of the quote may exceed it, and 8 bytes are enough for the
//     ports. A quoted fragment gives its 3-tuple, reversed. ICMPv4 must quote
//     IPv4 and ICMPv6 must quote IPv6. ICMP is recognised only in its own
//     family (protocol 1 in IPv4, 58 in IPv6), so a key always has the family
//     of the packet it came from.
//   - Every other protocol and every other ICMP type (redirects, neighbour
//     discovery, timestamps, …) gets a 3-tuple. An unknown protocol is not an
//     error: the balancer forwards it like anything else, pinned to a backend
//     by its address pair.
//
// Parse checks only what the key depends on: the IP header and length fields,
// the IPv6 extension-header chain and the fixed size of the transport header
// it reads. It does not verify checksums. A packet it cannot key is rejected
// with a Malformed reason, which the caller counts.
package flow

import (
	"encoding/binary"
	"net/netip"
	"strconv"
)

// Key identifies a flow. It is a flat value without pointers, so it is
// comparable (connection tracking uses it as a map key) and cheap to copy.
type Key struct {
	// Src and Dst are the addresses, IPv4 as IPv4-mapped IPv6.
	Src, Dst [16]byte
	// SrcPort and DstPort are the transport ports, both the identifier for
	// ICMP echo, and 0 for a 3-tuple key.
	SrcPort, DstPort uint16
	// Proto is the IANA protocol number of the transport.
	Proto uint8
}

// IANA protocol numbers the parser tells apart.
const (
	protoHopByHop = 0
	protoICMP     = 1
	protoTCP      = 6
	protoUDP      = 17
	protoDCCP     = 33
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoICMPv6   = 58
	protoDestOpts = 60
	protoSCTP     = 132
	protoUDPLite  = 136
)

const (
	ipv4HeaderLen = 20
	ipv6HeaderLen = 40
	icmpHeaderLen = 8
	// quotedTransportLen is what RFC 792 guarantees an ICMP error quotes of
	// the original transport header; it covers the ports and the ICMP header.
	quotedTransportLen = 8
	// maxExtHeaders bounds the IPv6 extension-header walk so that a crafted
	// chain costs at most this many steps. Real packets carry one or two.
	maxExtHeaders = 8
)

// v4Mapped is the prefix of an IPv4-mapped IPv6 address (RFC 4291 2.5.5.2).
var v4Mapped = [12]byte{10: 0xff, 11: 0xff}

// TCPFlags is the flags byte of a TCP header (byte 13: CWR ECE URG ACK PSH
// RST SYN FIN). Connection tracking follows a connection's end by it.
type TCPFlags uint8

// The TCP flags connection tracking looks at.
const (
	FIN TCPFlags = 0x01
	SYN TCPFlags = 0x02
	RST TCPFlags = 0x04
	ACK TCPFlags = 0x10
)

// Parse returns the flow key of pkt, which starts at the IP header, and the
// TCP flags of an unfragmented TCP packet (0 for any other packet, ICMP
// errors quoting TCP included). Bytes after the length the IP header gives
// (Ethernet padding) are ignored. The error, if any, is a Malformed.
func Parse(pkt []byte) (Key, TCPFlags, error) {
	if len(pkt) == 0 {
		return Key{}, 0, ErrTooShort
	}
	var (
		k        Key
		l4       []byte
		fragment bool
		err      error
	)
	v6 := pkt[0]>>4 == 6
	switch pkt[0] >> 4 {
	case 4:
		l4, fragment, err = ipv4(&k, pkt, false)
	case 6:
		l4, fragment, err = ipv6(&k, pkt, false)
	default:
		return Key{}, 0, ErrVersion
	}
	if err != nil {
		return Key{}, 0, err
	}
	if fragment {
		return k, 0, nil
	}
	key, err := transport(k, l4, v6, false)
	if err != nil {
		return Key{}, 0, err
	}
	var flags TCPFlags
	if k.Proto == protoTCP {
		flags = TCPFlags(l4[13]) // transport checked the 20-byte header
	}
	return key, flags, nil
}

// ipv4 parses the IPv4 header at the start of pkt into k's addresses and
// protocol, and returns the transport bytes and whether pkt is a fragment.
// A quoted packet (inside an ICMP error) may be cut short of its total length.
func ipv4(k *Key, pkt []byte, quoted bool) (l4 []byte, fragment bool, err error) {
	if len(pkt) < ipv4HeaderLen {
		return nil, false, ErrTooShort
	}
	hlen := int(pkt[0]&0x0f) * 4
	if hlen < ipv4HeaderLen || hlen > len(pkt) {
		return nil, false, ErrHeaderLength
	}
	end := int(binary.BigEndian.Uint16(pkt[2:4]))
	if end < hlen {
		return nil, false, ErrTotalLength
	}
	if end > len(pkt) {
		if !quoted {
			return nil, false, ErrTotalLength
		}
		end = len(pkt)
	}
	copy(k.Src[:], v4Mapped[:])
	copy(k.Src[12:], pkt[12:16])
	copy(k.Dst[:], v4Mapped[:])
	copy(k.Dst[12:], pkt[16:20])
	k.Proto = pkt[9]
	// 0x2000 is More Fragments, 0x1fff the fragment offset.
	fragment = binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0
	return pkt[hlen:end], fragment, nil
}

// ipv6 parses the IPv6 header and extension headers at the start of pkt into
// k's addresses and protocol, and returns the transport bytes and whether pkt
// is a fragment. A quoted packet may be cut short of its payload length.
func ipv6(k *Key, pkt []byte, quoted bool) (l4 []byte, fragment bool, err error) {
	if len(pkt) < ipv6HeaderLen {
		return nil, false, ErrTooShort
	}
	end := ipv6HeaderLen + int(binary.BigEndian.Uint16(pkt[4:6]))
	if end > len(pkt) {
		if !quoted {
			return nil, false, ErrTotalLength
		}
		end = len(pkt)
	}
	copy(k.Src[:], pkt[8:24])
	copy(k.Dst[:], pkt[24:40])
	next, off := pkt[6], ipv6HeaderLen
	for n := 0; isExtension(next); n++ {
		// Every extension header is at least 8 bytes long.
		if n == maxExtHeaders || end-off < 8 {
			return nil, false, ErrExtensionHeaders
		}
		var hlen int
		switch next {
		case protoFragment:
			// Offset in the top 13 bits, M flag in the lowest bit.
			if binary.BigEndian.Uint16(pkt[off+2:off+4])&0xfff9 != 0 {
				k.Proto = pkt[off]
				return nil, true, nil
			}
			hlen = 8
		case protoAH:
			// AH counts 4-byte units, minus 2 (RFC 4302).
			hlen = (int(pkt[off+1]) + 2) * 4
		case protoHopByHop:
			// Only allowed right after the IPv6 header (RFC 8200 4.1).
			if n != 0 {
				return nil, false, ErrExtensionHeaders
			}
			hlen = (int(pkt[off+1]) + 1) * 8
		default: // routing, destination options: 8-byte units, minus 1
			hlen = (int(pkt[off+1]) + 1) * 8
		}
		if hlen > end-off {
			return nil, false, ErrExtensionHeaders
		}
		next = pkt[off]
		off += hlen
	}
	k.Proto = next
	return pkt[off:end], false, nil
}

// isExtension reports whether the IPv6 next header p is an extension header
// that Parse walks past. ESP (50) ends the walk, since what follows it is
// encrypted, and so do No Next Header (59) and anything unknown.
func isExtension(p uint8) bool {
	switch p {
	case protoHopByHop, protoRouting, protoFragment, protoAH, protoDestOpts:
		return true
	}
	return false
}

// portsHeaderLen returns the fixed header length of a transport that carries
// source and destination ports in its first four bytes, or 0 for any other.
func portsHeaderLen(proto uint8) int {
	switch proto {
	case protoTCP:
		return 20
	case protoSCTP, protoDCCP:
		return 12
	case protoUDP, protoUDPLite:
		return 8
	}
	return 0
}

// transport completes k, whose addresses and protocol are set, from the
// transport bytes l4 of an unfragmented IPv4 (v6 false) or IPv6 packet.
func transport(k Key, l4 []byte, v6, quoted bool) (Key, error) {
	if n := portsHeaderLen(k.Proto); n > 0 {
		if quoted {
			n = quotedTransportLen
		}
		if len(l4) < n {
			return Key{}, ErrTruncatedTransport
		}
		k.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		k.DstPort = binary.BigEndian.Uint16(l4[2:4])
		return k, nil
	}
	icmp := uint8(protoICMP)
	if v6 {
		icmp = protoICMPv6
	}
	if k.Proto != icmp {
		return k, nil
	}
	if len(l4) < icmpHeaderLen {
		return Key{}, ErrTruncatedTransport
	}
	switch {
	case isEcho(l4[0], v6):
		id := binary.BigEndian.Uint16(l4[4:6])
		k.SrcPort, k.DstPort = id, id
	case isError(l4[0], v6):
		// RFC 1122 3.2.2 and RFC 4443 2.4: no ICMP error about an ICMP error.
		// Refusing one here also keeps the parse from recursing.
		if quoted {
			return Key{}, ErrICMPNested
		}
		return quote(l4[icmpHeaderLen:], v6)
	}
	return k, nil
}

// isEcho reports whether ICMP type t is an echo request or reply.
func isEcho(t uint8, v6 bool) bool {
	if v6 {
		return t == 128 || t == 129
	}
	return t == 8 || t == 0
}

// isError reports whether ICMP type t is an error that quotes a packet the
// balancer must route like its flow.
func isError(t uint8, v6 bool) bool {
	if v6 {
		return t >= 1 && t <= 4
	}
	return t == 3 || t == 11 || t == 12
}

// quote returns the reversed key of the packet quoted in an ICMP error, which
// must be of the error's own family (IPv6 if v6).
func quote(pkt []byte, v6 bool) (Key, error) {
	var (
		k        Key
		l4       []byte
		fragment bool
		err      error
	)
	switch {
	case len(pkt) == 0:
		return Key{}, ErrICMPEmbedded
	case !v6 && pkt[0]>>4 == 4:
		l4, fragment, err = ipv4(&k, pkt, true)
	case v6 && pkt[0]>>4 == 6:
		l4, fragment, err = ipv6(&k, pkt, true)
	default:
		return Key{}, ErrICMPEmbedded
	}
	if err == nil && !fragment {
		k, err = transport(k, l4, v6, true)
	}
	switch err {
	case nil:
		return Key{Src: k.Dst, Dst: k.Src, SrcPort: k.DstPort, DstPort: k.SrcPort, Proto: k.Proto}, nil
	case ErrICMPNested:
		return Key{}, err
	}
	return Key{}, ErrICMPEmbedded
}

// String formats k for logs and tests, as "tcp 10.0.0.1:1234 -> 10.0.0.100:80",
// or without ports for a 3-tuple key. It allocates; the data path must not
// call it per packet.
func (k Key) String() string {
	src := netip.AddrFrom16(k.Src).Unmap()
	dst := netip.AddrFrom16(k.Dst).Unmap()
	name := protoName(k.Proto) + " "
	if k.SrcPort == 0 && k.DstPort == 0 {
		return name + src.String() + " -> " + dst.String()
	}
	return name + netip.AddrPortFrom(src, k.SrcPort).String() + " -> " +
		netip.AddrPortFrom(dst, k.DstPort).String()
}

// protoName names the protocols Parse knows, and numbers the rest.
func protoName(p uint8) string {
	switch p {
	case protoICMP:
		return "icmp"
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoDCCP:
		return "dccp"
	case protoICMPv6:
		return "icmpv6"
	case protoSCTP:
		return "sctp"
	case protoUDPLite:
		return "udplite"
	}
	return "proto-" + strconv.Itoa(int(p))
}
