package encap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/caplance/caplance/internal/inet"
)

// HeaderLen is the headroom the data path reserves in front of each received
// packet: the outer IPv4 header (20 bytes, no options) and the UDP header (8).
const HeaderLen = ipv4HeaderLen + udpHeaderLen

const (
	ipv4HeaderLen = 20
	ipv6HeaderLen = 40
	udpHeaderLen  = 8

	// maxTotalLen is the largest IPv4 total length; the outer header adds
	// HeaderLen, so an inner packet may be at most 65507 bytes.
	maxTotalLen = 65535

	// outerTTL is the outer header's TTL; see the package comment for why it
	// is a constant rather than inherited from the inner packet.
	outerTTL = 64

	protoUDP = 17

	// flagDF is the Don't Fragment bit in the IPv4 flags/fragment-offset word.
	flagDF = 0x4000
)

// Errors from Encapsulate. They are preallocated values, so returning one on
// the hot path allocates nothing; the data path branches on them to count drops.
var (
	ErrInnerEmpty   = errors.New("encap: no inner packet after the header room")
	ErrInnerVersion = errors.New("encap: inner packet is neither IPv4 nor IPv6")
	ErrInnerShort   = errors.New("encap: inner packet shorter than its fixed IP header")
	ErrTooLong      = errors.New("encap: encapsulated packet longer than 65535 bytes")
)

// Errors from NewOuter and NewDecapsulator, wrapped with the offending value.
var (
	ErrNotIPv4     = errors.New("outer header is IPv4 only")
	ErrInvalidAddr = errors.New("invalid or unspecified address")
	ErrZeroPort    = errors.New("port 0")
	ErrNoBalancers = errors.New("no balancer addresses")
	ErrNoVIPs      = errors.New("no VIPs")
)

// Outer is the per-backend outer header template. The data path builds one
// with NewOuter whenever the backend set changes and then uses it, read-only,
// for every packet to that backend, from any number of goroutines.
type Outer struct {
	// hdr holds the constant fields; the per-packet ones (total length, DF,
	// checksum, UDP source port and length) are overwritten in the copy.
	hdr [HeaderLen]byte
	// sum is the ones'-complement sum of the constant IPv4 header words,
	// unfolded, so each packet adds only its total length and DF word.
	sum uint32
}

// NewOuter builds the template for packets from the balancer address src to a
// backend at dst, UDP destination port dstPort. Both addresses must be IPv4
// (IPv4-mapped IPv6 addresses are unmapped).
func NewOuter(src, dst netip.Addr, dstPort uint16) (Outer, error) {
	src, dst = src.Unmap(), dst.Unmap()
	for _, a := range []struct {
		name string
		addr netip.Addr
	}{{"source", src}, {"destination", dst}} {
		if !a.addr.IsValid() || a.addr.IsUnspecified() {
			return Outer{}, fmt.Errorf("encap: outer %s %v: %w", a.name, a.addr, ErrInvalidAddr)
		}
		if !a.addr.Is4() {
			return Outer{}, fmt.Errorf("encap: outer %s %v: %w", a.name, a.addr, ErrNotIPv4)
		}
	}
	if dstPort == 0 {
		return Outer{}, fmt.Errorf("encap: outer destination port: %w", ErrZeroPort)
	}

	var o Outer
	h := o.hdr[:]
	h[0] = 4<<4 | ipv4HeaderLen/4
	h[8] = outerTTL
	h[9] = protoUDP
	s4, d4 := src.As4(), dst.As4()
	copy(h[12:16], s4[:])
	copy(h[16:20], d4[:])
	binary.BigEndian.PutUint16(h[22:24], dstPort)
	// Total length, ID, flags and checksum are still zero here, so this is
	// the sum of exactly the constant words.
	o.sum = inet.Sum(h[:ipv4HeaderLen], 0)
	return o, nil
}

// Encapsulate writes the outer IPv4+UDP header into pkt[:HeaderLen] in
// front of the inner packet pkt[HeaderLen:], which it neither copies nor
// modifies. srcPort is the outer UDP source port, normally SourcePort of the
// flow's hash. The outer total length is len(pkt), not the inner packet's own
// length field. DF is the inner IPv4 packet's DF bit, or set for IPv6; TTL is
// 64, ID 0 (filled by the kernel on IP_HDRINCL sends) and the UDP checksum 0,
// as the package comment explains.
//
// It returns ErrInnerEmpty, ErrTooLong, ErrInnerVersion or ErrInnerShort, and
// then leaves pkt untouched.
func (o *Outer) Encapsulate(pkt []byte, srcPort uint16) error {
	if len(pkt) <= HeaderLen {
		return ErrInnerEmpty
	}
	if len(pkt) > maxTotalLen {
		return ErrTooLong
	}
	inner := pkt[HeaderLen:]
	var frag uint32
	switch inner[0] >> 4 {
	case 4:
		if len(inner) < ipv4HeaderLen {
			return ErrInnerShort
		}
		frag = uint32(binary.BigEndian.Uint16(inner[6:8]) & flagDF)
	case 6:
		if len(inner) < ipv6HeaderLen {
			return ErrInnerShort
		}
		frag = flagDF
	default:
		return ErrInnerVersion
	}

	total := uint32(len(pkt))
	h := pkt[:HeaderLen]
	copy(h, o.hdr[:])
	binary.BigEndian.PutUint16(h[2:4], uint16(total))
	binary.BigEndian.PutUint16(h[6:8], uint16(frag))
	binary.BigEndian.PutUint16(h[10:12], ^inet.Fold(o.sum+total+frag))
	binary.BigEndian.PutUint16(h[20:22], srcPort)
	binary.BigEndian.PutUint16(h[24:26], uint16(total-ipv4HeaderLen))
	return nil
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
