package encap

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/caplance/caplance/internal/inet"
)

// What the data path does with a packet that, encapsulated, exceeds the MTU
// towards its backend (Linux refuses an IP_HDRINCL send above the device MTU
// with EMSGSIZE, whatever DF says, so the kernel never fragments it for us):
//
//   - inner IPv4 with DF set: the client asked not to be fragmented, so the
//     balancer answers with ICMP "fragmentation needed" carrying MTU minus
//     the outer header (28, or 48 for an IPv6 outer), as IPVS does, and the
//     client's path-MTU discovery sends smaller packets;
//   - inner IPv6: routers never fragment IPv6, so likewise an ICMPv6 Packet
//     Too Big (PacketTooBig) with MTU minus the outer header;
//   - otherwise (no DF, as on every datagram the kernel reassembled): the
//     balancer fragments the outer packet itself (Fragment) and the backend's
//     kernel reassembles it before decapsulation.

// ErrFragmentTooSmall is returned by Fragment when the MTU leaves no room for
// 8 bytes of payload per fragment.
var ErrFragmentTooSmall = errors.New("encap: MTU too small to fragment")

// FragmentCount is how many fragments Fragment makes of a packet of length
// n for mtu.
func FragmentCount(n, mtu int) int {
	step := (mtu - ipv4HeaderLen) &^ 7
	if step < 8 {
		return 0
	}
	return (n - ipv4HeaderLen + step - 1) / step
}

// Fragment splits the encapsulated packet pkt (an outer IPv4 header without
// options, as Encapsulate writes) into IPv4 fragments of at most mtu bytes
// (RFC 791), all with identification id (which must not be 0, because the
// kernel replaces a zero ID per packet and the fragments would no longer
// match). The fragments are written one after the other into scratch, which
// must hold len(pkt) + 20 bytes per fragment, and passed to emit in order.
func Fragment(pkt []byte, mtu int, id uint16, scratch []byte, emit func([]byte)) error {
	payload := pkt[ipv4HeaderLen:]
	step := (mtu - ipv4HeaderLen) &^ 7
	if step < 8 {
		return ErrFragmentTooSmall
	}
	for off := 0; off < len(payload); off += step {
		end := min(off+step, len(payload))
		frag := scratch[:ipv4HeaderLen+end-off]
		scratch = scratch[len(frag):]
		copy(frag, pkt[:ipv4HeaderLen])
		copy(frag[ipv4HeaderLen:], payload[off:end])
		flags := uint16(off / 8)
		if end < len(payload) {
			flags |= 0x2000 // more fragments
		}
		binary.BigEndian.PutUint16(frag[2:4], uint16(len(frag)))
		binary.BigEndian.PutUint16(frag[4:6], id)
		binary.BigEndian.PutUint16(frag[6:8], flags)
		frag[10], frag[11] = 0, 0
		binary.BigEndian.PutUint16(frag[10:12], inet.Checksum(frag[:ipv4HeaderLen]))
		emit(frag)
	}
	return nil
}

// FragNeededLen is the length of the ICMP message FragNeeded writes for an
// inner packet with IPv4 header length ihl: outer IPv4 header, ICMP header,
// the quoted header and the first 8 bytes of its payload (RFC 792).
func FragNeededLen(ihl int) int { return ipv4HeaderLen + 8 + ihl + 8 }

// FragNeeded writes into buf an IPv4 ICMP "destination unreachable,
// fragmentation needed" (type 3, code 4, RFC 1191) from src to the source of
// the IPv4 packet inner, advertising mtu, and returns the message. inner must
// be a well-formed IPv4 packet of at least its header plus 8 bytes, and buf
// must hold FragNeededLen bytes.
func FragNeeded(buf []byte, src [4]byte, inner []byte, mtu uint16) []byte {
	ihl := int(inner[0]&0x0f) * 4
	quote := inner[:ihl+8]
	msg := buf[:FragNeededLen(ihl)]
	clear(msg[:ipv4HeaderLen+8])
	msg[0] = 4<<4 | ipv4HeaderLen/4
	binary.BigEndian.PutUint16(msg[2:4], uint16(len(msg)))
	msg[8] = outerTTL
	msg[9] = 1 // ICMP
	copy(msg[12:16], src[:])
	copy(msg[16:20], inner[12:16])
	binary.BigEndian.PutUint16(msg[10:12], inet.Checksum(msg[:ipv4HeaderLen]))
	icmp := msg[ipv4HeaderLen:]
	icmp[0], icmp[1] = 3, 4
	binary.BigEndian.PutUint16(icmp[6:8], mtu)
	copy(icmp[8:], quote)
	binary.BigEndian.PutUint16(icmp[2:4], inet.Checksum(icmp))
	return msg
}

// PacketTooBigMaxLen is the longest message PacketTooBig writes: the IPv6
// minimum MTU, which RFC 4443 section 2.4 says an ICMPv6 error must not
// exceed.
const PacketTooBigMaxLen = 1280

const icmpv6HeaderLen = 8

// PacketTooBig writes into buf an IPv6 ICMPv6 Packet Too Big (type 2, code
// 0, RFC 4443 section 3.2) from vip to client about the IPv6 packet inner,
// advertising mtu, and returns the message: as much of inner as keeps it
// within PacketTooBigMaxLen bytes, hop limit 64, checksum computed. buf must
// hold PacketTooBigMaxLen bytes; vip and client must be IPv6 addresses.
//
// An mtu below 1280 is written as given; a client ignores or clamps it
// (RFC 8201 section 4), so the path to the backends should carry 1280 bytes
// plus the outer header.
func PacketTooBig(buf []byte, vip, client netip.Addr, inner []byte, mtu uint32) []byte {
	quote := inner[:min(len(inner), PacketTooBigMaxLen-ipv6HeaderLen-icmpv6HeaderLen)]
	msg := buf[:ipv6HeaderLen+icmpv6HeaderLen+len(quote)]
	clear(msg[:ipv6HeaderLen+icmpv6HeaderLen])
	msg[0] = 6 << 4
	length := uint32(icmpv6HeaderLen + len(quote))
	binary.BigEndian.PutUint16(msg[4:6], uint16(length))
	msg[6] = protoICMPv6
	msg[7] = outerTTL
	s, d := vip.As16(), client.As16()
	copy(msg[8:24], s[:])
	copy(msg[24:40], d[:])
	icmp := msg[ipv6HeaderLen:]
	icmp[0] = 2
	binary.BigEndian.PutUint32(icmp[4:8], mtu)
	copy(icmp[icmpv6HeaderLen:], quote)
	pseudo := inet.Sum(msg[8:40], length+protoICMPv6)
	binary.BigEndian.PutUint16(icmp[2:4], ^inet.Fold(inet.Sum(icmp, pseudo)))
	return msg
}
