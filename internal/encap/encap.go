package encap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/caplance/caplance/internal/inet"
)

// The outer header's length: the outer IP header (no options, no extension
// headers) and the UDP header. MaxHeaderLen is the headroom the data path
// reserves in front of each received packet, enough for either family; a
// packet to a backend whose outer header is shorter is framed behind the
// first MaxHeaderLen-Outer.Len bytes of that headroom.
const (
	HeaderLen4   = ipv4HeaderLen + udpHeaderLen
	HeaderLen6   = ipv6HeaderLen + udpHeaderLen
	MaxHeaderLen = HeaderLen6
)

const (
	ipv4HeaderLen = 20
	ipv6HeaderLen = 40
	udpHeaderLen  = 8

	// maxTotalLen is the largest IPv4 total length, and the largest IPv6
	// payload length: the inner packet may be at most 65507 bytes under an
	// IPv4 outer and 65527 under an IPv6 one (the UDP length is 16 bits).
	maxTotalLen = 65535

	// outerTTL is the outer header's TTL or hop limit; see the package
	// comment for why it is a constant rather than inherited from the inner
	// packet.
	outerTTL = 64

	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58

	// flagDF is the Don't Fragment bit in the IPv4 flags/fragment-offset word.
	flagDF = 0x4000
)

// Errors from Encapsulate. They are preallocated values, so returning one on
// the hot path allocates nothing; the data path branches on them to count drops.
var (
	ErrInnerEmpty   = errors.New("encap: no inner packet after the header room")
	ErrInnerVersion = errors.New("encap: inner packet is neither IPv4 nor IPv6")
	ErrInnerShort   = errors.New("encap: inner packet shorter than its fixed IP header")
	ErrTooLong      = errors.New("encap: encapsulated packet longer than its outer length field allows")
)

// Errors from NewOuter and NewDecapsulator, wrapped with the offending value.
var (
	ErrFamilyMismatch = errors.New("outer source and destination are of different address families")
	ErrInvalidAddr    = errors.New("invalid or unspecified address")
	ErrNotUnicast     = errors.New("not a routable unicast address (link-local, multicast or broadcast)")
	ErrZeroPort       = errors.New("port 0")
	ErrNoBalancers    = errors.New("no balancer addresses")
	ErrNoVIPs         = errors.New("no VIPs")
)

// Outer is the per-backend outer header template. The data path builds one
// with NewOuter whenever the backend set changes and then uses it, read-only,
// for every packet to that backend, from any number of goroutines.
type Outer struct {
	// hdr holds the constant fields in its first n bytes; the per-packet ones
	// (lengths, DF or flow label, checksums, UDP source port) are
	// overwritten in the copy.
	hdr [MaxHeaderLen]byte
	n   int
	// sum is the ones'-complement sum, unfolded, of the constant words of
	// what a checksum covers: the IPv4 header, or for an IPv6 outer the UDP
	// checksum's pseudo-header and the UDP destination port. Each packet
	// adds only the words that vary.
	sum uint32
}

// NewOuter builds the template for packets from the balancer address src to a
// backend at dst, UDP destination port dstPort. The outer family is the
// addresses' (IPv4-mapped IPv6 addresses are unmapped), and both must be of
// the same one and unicast: not link-local, multicast, broadcast or
// unspecified. Loopback is allowed: the balancer's tests send to backends on
// 127.0.0.0/8, and configuration refuses such a backend before it gets here.
func NewOuter(src, dst netip.Addr, dstPort uint16) (Outer, error) {
	src, dst = src.Unmap(), dst.Unmap()
	for _, a := range []struct {
		name string
		addr netip.Addr
	}{{"source", src}, {"destination", dst}} {
		if !a.addr.IsValid() || a.addr.IsUnspecified() {
			return Outer{}, fmt.Errorf("encap: outer %s %v: %w", a.name, a.addr, ErrInvalidAddr)
		}
		if a.addr.IsLinkLocalUnicast() || a.addr.IsMulticast() || a.addr.Zone() != "" || a.addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return Outer{}, fmt.Errorf("encap: outer %s %v: %w", a.name, a.addr, ErrNotUnicast)
		}
	}
	if src.Is4() != dst.Is4() {
		return Outer{}, fmt.Errorf("encap: outer %v → %v: %w", src, dst, ErrFamilyMismatch)
	}
	if dstPort == 0 {
		return Outer{}, fmt.Errorf("encap: outer destination port: %w", ErrZeroPort)
	}

	var o Outer
	if src.Is4() {
		o.n = HeaderLen4
		h := o.hdr[:o.n]
		h[0] = 4<<4 | ipv4HeaderLen/4
		h[8] = outerTTL
		h[9] = protoUDP
		s4, d4 := src.As4(), dst.As4()
		copy(h[12:16], s4[:])
		copy(h[16:20], d4[:])
		binary.BigEndian.PutUint16(h[22:24], dstPort)
		// Total length, ID, flags and checksum are still zero here, so this
		// is the sum of exactly the constant words.
		o.sum = inet.Sum(h[:ipv4HeaderLen], 0)
		return o, nil
	}
	o.n = HeaderLen6
	h := o.hdr[:o.n]
	h[0] = 6 << 4 // traffic class 0; the flow label is per packet
	h[6] = protoUDP
	h[7] = outerTTL
	s16, d16 := src.As16(), dst.As16()
	copy(h[8:24], s16[:])
	copy(h[24:40], d16[:])
	binary.BigEndian.PutUint16(h[42:44], dstPort)
	// The pseudo-header's constant words (RFC 8200 section 8.1): the
	// addresses and the next header; and the UDP destination port.
	o.sum = inet.Sum(h[8:40], protoUDP+uint32(dstPort))
	return o, nil
}

// Len is the length of the outer header: HeaderLen4 or HeaderLen6.
func (o *Outer) Len() int { return o.n }

// Encapsulate writes the outer header into frame[:o.Len()] in front of the
// inner packet frame[o.Len():], which it neither copies nor modifies. The
// outer UDP source port is SourcePort(flowHash) and an IPv6 outer's flow
// label FlowLabel(flowHash). The outer length is len(frame), not the inner
// packet's own length field.
//
// An IPv4 outer gets the inner IPv4 packet's DF bit (set for an IPv6 inner),
// TTL 64, ID 0 (filled by the kernel on IP_HDRINCL sends) and UDP checksum 0.
// An IPv6 outer gets traffic class 0, hop limit 64 and a valid UDP checksum,
// computed without reading the inner payload when the inner transport
// checksum allows it (see checksum6).
//
// It returns ErrInnerEmpty, ErrTooLong, ErrInnerVersion or ErrInnerShort, and
// then leaves frame untouched.
func (o *Outer) Encapsulate(frame []byte, flowHash uint64) error {
	if len(frame) <= o.n {
		return ErrInnerEmpty
	}
	inner := frame[o.n:]
	var version byte
	switch version = inner[0] >> 4; version {
	case 4:
		if len(inner) < ipv4HeaderLen {
			return ErrInnerShort
		}
	case 6:
		if len(inner) < ipv6HeaderLen {
			return ErrInnerShort
		}
	default:
		return ErrInnerVersion
	}
	if o.n == HeaderLen6 {
		return o.encapsulate6(frame, inner, flowHash)
	}

	if len(frame) > maxTotalLen {
		return ErrTooLong
	}
	frag := uint32(flagDF)
	if version == 4 {
		frag = uint32(binary.BigEndian.Uint16(inner[6:8]) & flagDF)
	}
	total := uint32(len(frame))
	h := frame[:HeaderLen4]
	copy(h, o.hdr[:HeaderLen4])
	binary.BigEndian.PutUint16(h[2:4], uint16(total))
	binary.BigEndian.PutUint16(h[6:8], uint16(frag))
	binary.BigEndian.PutUint16(h[10:12], ^inet.Fold(o.sum+total+frag))
	binary.BigEndian.PutUint16(h[20:22], SourcePort(flowHash))
	binary.BigEndian.PutUint16(h[24:26], uint16(total-ipv4HeaderLen))
	return nil
}

func (o *Outer) encapsulate6(frame, inner []byte, flowHash uint64) error {
	length := uint32(len(frame) - ipv6HeaderLen) // payload length = UDP length
	if length > maxTotalLen {
		return ErrTooLong
	}
	sport := SourcePort(flowHash)
	h := frame[:HeaderLen6]
	copy(h, o.hdr[:HeaderLen6])
	binary.BigEndian.PutUint32(h[0:4], 6<<28|FlowLabel(flowHash))
	binary.BigEndian.PutUint16(h[4:6], uint16(length))
	binary.BigEndian.PutUint16(h[40:42], sport)
	binary.BigEndian.PutUint16(h[44:46], uint16(length))
	// The length counts twice: in the pseudo-header and in the UDP header.
	sum := ^inet.Fold(o.sum + 2*length + uint32(sport) + uint32(innerSum(inner)))
	if sum == 0 {
		sum = 0xffff // RFC 768: a computed 0 is sent as all ones
	}
	binary.BigEndian.PutUint16(h[46:48], sum)
	return nil
}

// innerSum is the ones'-complement sum of the inner packet's bytes, folded,
// as the outer UDP checksum needs it. Where it can, it reads only a few
// header words: a TCP segment, UDP datagram or ICMPv6 message carries a
// checksum over a pseudo-header and itself, so when that checksum is valid
// the segment's own sum is the complement of the pseudo-header's (the trick
// of Linux's local checksum offload). The pseudo-header's addresses are the
// IP header's, so they cancel out: the packet's sum is that of the header
// words before the addresses (and of IPv6 hop-by-hop and destination
// options) minus the pseudo-header's length and protocol. An IPv4 ICMP
// message sums to zero by itself, so there the sum is the IP header's. A
// segment whose checksum is wrong then gives a wrong outer checksum, and the
// backend drops the packet as corrupt, as it should.
//
// It falls back to a pass over the packet where the sum is not known: a
// fragment (the checksum covers the whole datagram), a UDP checksum of 0
// (none, as IPv4 allows), another protocol, IPv4 options or IPv6 extension
// headers other than hop-by-hop and destination options (a source route
// changes the pseudo-header's destination), or a length field that
// disagrees with the bytes present.
func innerSum(inner []byte) uint16 {
	var hdrLen int
	var proto byte
	var fixed uint32 // the sum of the header without its addresses
	if inner[0]>>4 == 4 {
		hdrLen = ipv4HeaderLen
		if inner[0]&0x0f != ipv4HeaderLen/4 ||
			int(binary.BigEndian.Uint16(inner[2:4])) != len(inner) ||
			binary.BigEndian.Uint16(inner[6:8])&0x3fff != 0 { // MF or an offset
			return inet.Fold(inet.Sum(inner, 0))
		}
		proto = inner[9]
		fixed = inet.Sum(inner[:12], 0)
	} else {
		if ipv6HeaderLen+int(binary.BigEndian.Uint16(inner[4:6])) != len(inner) {
			return inet.Fold(inet.Sum(inner, 0))
		}
		proto, hdrLen = inner[6], ipv6HeaderLen
		for proto == 0 || proto == 60 { // hop-by-hop, destination options
			if len(inner) < hdrLen+8 {
				return inet.Fold(inet.Sum(inner, 0))
			}
			proto, hdrLen = inner[hdrLen], hdrLen+(int(inner[hdrLen+1])+1)*8
		}
		if hdrLen > len(inner) {
			return inet.Fold(inet.Sum(inner, 0))
		}
		fixed = inet.Sum(inner[ipv6HeaderLen:hdrLen], inet.Sum(inner[:8], 0))
	}
	l4 := inner[hdrLen:]
	switch {
	case proto == protoTCP && len(l4) >= 20,
		proto == protoUDP && len(l4) >= 8 && binary.BigEndian.Uint16(l4[6:8]) != 0,
		proto == protoICMPv6 && inner[0]>>4 == 6 && len(l4) >= 4:
		// len(l4) < 65536: the length counts as one word in either family.
		return inet.Fold(fixed + uint32(^inet.Fold(uint32(proto)+uint32(len(l4)))))
	case proto == protoICMP && inner[0]>>4 == 4 && len(l4) >= 4:
		return inet.Fold(inet.Sum(inner[12:20], fixed))
	}
	return inet.Fold(inet.Sum(inner, 0))
}

// Source ports for the outer UDP header come from the IANA dynamic range
// 49152–65535, which RFC 7348 (VXLAN), RFC 7510 (MPLS-in-UDP) and RFC 8086
// (GRE-in-UDP) recommend for encapsulation entropy. Its size is a power of two,
// so every port is equally likely, and no port in it is registered to a
// service that a middlebox might treat specially.
const (
	SourcePortMin = 49152
	SourcePortMax = 65535

	sourcePortBits = 14 // SourcePortMax-SourcePortMin+1 == 1<<14
)

// SourcePort maps a flow hash to the outer UDP source port, in
// [SourcePortMin, SourcePortMax]. The same hash always gives the same port,
// so one flow stays on one ECMP path and one RSS queue.
func SourcePort(flowHash uint64) uint16 {
	// Fibonacci hashing: the multiply carries every input bit into the top
	// bits, so the port depends on the whole hash even if the flow hash is
	// weak in some bits.
	return SourcePortMin | uint16(flowHash*0x9e3779b97f4a7c15>>(64-sourcePortBits))
}

// FlowLabel maps a flow hash to an IPv6 outer header's flow label: 20 bits,
// never 0 (0 means "no label", RFC 6437), the same for every packet of a
// flow, so routers that hash the 3-tuple of source, destination and flow
// label (RFC 6438) keep a flow on one path and spread flows apart.
func FlowLabel(flowHash uint64) uint32 {
	// Another odd multiplier than SourcePort's, so label and port are not
	// the same bits of one product.
	if l := uint32(flowHash * 0xc2b2ae3d27d4eb4f >> 44); l != 0 {
		return l
	}
	return 1
}
