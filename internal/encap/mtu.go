package encap

import (
	"encoding/binary"
	"errors"

	"github.com/caplance/caplance/internal/inet"
)

// What the data path does with a packet that, encapsulated, exceeds the MTU
// towards its backend (Linux refuses an IP_HDRINCL send above the device MTU
// with EMSGSIZE, whatever DF says, so the kernel never fragments it for us):
//
//   - inner IPv4 with DF set: the client asked not to be fragmented, so the
//     balancer answers with ICMP "fragmentation needed" carrying MTU-28, as
//     IPVS does, and the client's path-MTU discovery sends smaller packets;
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
