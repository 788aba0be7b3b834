package encap

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/caplance/caplance/internal/inet"
)

// Reject is why the receiver dropped an encapsulated packet. It is a small
// integer so the data path can count drops in an array indexed by it without
// allocating; Accept (0) means the packet passed every check.
type Reject uint8

// The reasons, in the order the checks run. Their String names are stable:
// they are counter and metric labels.
const (
	// Accept: the inner packet may be delivered.
	Accept Reject = iota
	// RejectEmpty: nothing to decapsulate (zero-length packet or UDP payload).
	RejectEmpty
	// RejectMalformedOuter: the outer IP or UDP header is truncated,
	// inconsistent with the packet's length, a fragment, or fails its
	// checksum: the IPv4 header checksum, or an IPv6 outer's UDP checksum,
	// which may not be 0 (Packet only; the kernel checks a UDP socket's).
	RejectMalformedOuter
	// RejectNotUDP: the outer protocol (for IPv6, the next header, so any
	// extension header too) is not UDP (Packet only).
	RejectNotUDP
	// RejectWrongPort: the outer UDP destination port is not the encap port
	// (Packet only; a UDP socket has already matched it).
	RejectWrongPort
	// RejectSourceNotAllowed: the outer source is not a configured balancer.
	RejectSourceNotAllowed
	// RejectInnerMalformed: the inner packet is not IPv4 or IPv6 by its
	// version nibble, is shorter than its fixed header, or has an IPv4 IHL
	// below 5 or beyond the bytes that arrived.
	RejectInnerMalformed
	// RejectInnerLength: the inner packet's own length field disagrees with
	// the number of bytes that arrived.
	RejectInnerLength
	// RejectInnerChecksum: the inner IPv4 header checksum is wrong. The outer
	// UDP checksum is 0, so this is the only guard against corruption of the
	// inner header in transit, and an IP_HDRINCL injection would otherwise
	// recompute the checksum and hide it.
	RejectInnerChecksum
	// RejectInnerNotVIP: the inner destination is not one of the VIPs.
	RejectInnerNotVIP

	// The inner source checks. The receiver injects on the output path,
	// where the kernel makes none of its input checks (martian sources,
	// rp_filter), so a balancer's tunnel must not carry a source that no
	// client can have: the service's answer would go to the host itself, to
	// a group, or back into the service (source = destination = a UDP echo
	// port loops forever).

	// RejectInnerSourceUnspecified: the inner source is in 0.0.0.0/8 ("this
	// network") or is ::.
	RejectInnerSourceUnspecified
	// RejectInnerSourceLoopback: the inner source is in 127.0.0.0/8 or is ::1.
	RejectInnerSourceLoopback
	// RejectInnerSourceMulticast: the inner source is in 224.0.0.0/4 or
	// ff00::/8.
	RejectInnerSourceMulticast
	// RejectInnerSourceLinkLocal: the inner source is in fe80::/10, an
	// address valid only on the client's own link, never the balancer's
	// tunnel.
	RejectInnerSourceLinkLocal
	// RejectInnerSourceV4Mapped: the inner source is an IPv4-mapped IPv6
	// address (::ffff:0:0/96), which Linux refuses on input (RFC 4291
	// section 2.5.5.2), so that it cannot stand for a local IPv4 address.
	RejectInnerSourceV4Mapped
	// RejectInnerSourceBroadcast: the inner source is 255.255.255.255 or a
	// broadcast address of one of the host's subnets.
	RejectInnerSourceBroadcast
	// RejectInnerSourceReserved: the inner source is in 240.0.0.0/4 (other
	// than 255.255.255.255).
	RejectInnerSourceReserved
	// RejectInnerSourceIsDestination: the inner source equals the inner
	// destination.
	RejectInnerSourceIsDestination
	// RejectInnerSourceLocal: the inner source is a VIP or one of the host's
	// own addresses.
	RejectInnerSourceLocal

	// NumRejects is the number of Reject values, Accept included, for sizing
	// counter arrays.
	NumRejects int = iota
)

var rejectNames = [NumRejects]string{
	Accept:                 "accept",
	RejectEmpty:            "empty",
	RejectMalformedOuter:   "malformed_outer",
	RejectNotUDP:           "not_udp",
	RejectWrongPort:        "wrong_port",
	RejectSourceNotAllowed: "source_not_allowed",
	RejectInnerMalformed:   "inner_malformed",
	RejectInnerLength:      "inner_length",
	RejectInnerChecksum:    "inner_checksum",
	RejectInnerNotVIP:      "inner_not_vip",

	RejectInnerSourceUnspecified:   "inner_source_unspecified",
	RejectInnerSourceLoopback:      "inner_source_loopback",
	RejectInnerSourceMulticast:     "inner_source_multicast",
	RejectInnerSourceLinkLocal:     "inner_source_link_local",
	RejectInnerSourceV4Mapped:      "inner_source_v4_mapped",
	RejectInnerSourceBroadcast:     "inner_source_broadcast",
	RejectInnerSourceReserved:      "inner_source_reserved",
	RejectInnerSourceIsDestination: "inner_source_is_destination",
	RejectInnerSourceLocal:         "inner_source_local",
}

// String returns the reason's stable snake_case name.
func (r Reject) String() string {
	if int(r) < NumRejects {
		return rejectNames[r]
	}
	return fmt.Sprintf("reject_%d", uint8(r))
}

// Decapsulator checks encapsulated packets on the receiver. It is immutable
// after NewDecapsulator and safe for concurrent use.
type Decapsulator struct {
	port uint16
	// Sets keyed by unmapped, zoneless addresses; netip.Addr keys make
	// lookups allocation-free.
	balancers map[netip.Addr]struct{}
	vips      map[netip.Addr]struct{}
}

// NewDecapsulator returns a Decapsulator for the encap UDP port that accepts
// packets only from the balancer addresses and only for inner destinations
// among vips. Both lists must be non-empty; addresses may be IPv4 or IPv6, and
// IPv4-mapped IPv6 addresses count as IPv4.
func NewDecapsulator(port uint16, balancers, vips []netip.Addr) (*Decapsulator, error) {
	if port == 0 {
		return nil, fmt.Errorf("encap: receiver port: %w", ErrZeroPort)
	}
	b, err := addrSet("balancer", balancers)
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("encap: receiver: %w", ErrNoBalancers)
	}
	v, err := addrSet("VIP", vips)
	if err != nil {
		return nil, err
	}
	if len(v) == 0 {
		return nil, fmt.Errorf("encap: receiver: %w", ErrNoVIPs)
	}
	return &Decapsulator{port: port, balancers: b, vips: v}, nil
}

func addrSet(what string, addrs []netip.Addr) (map[netip.Addr]struct{}, error) {
	set := make(map[netip.Addr]struct{}, len(addrs))
	for i, a := range addrs {
		if !a.IsValid() || a.IsUnspecified() {
			return nil, fmt.Errorf("encap: receiver %s %d (%v): %w", what, i, a, ErrInvalidAddr)
		}
		set[canonical(a)] = struct{}{}
	}
	return set, nil
}

// canonical is the form addresses are stored and looked up in: a UDP socket
// reports an IPv4 peer as ::ffff:a.b.c.d on a dual-stack socket, and a
// link-local IPv6 peer with a zone; neither should change whether it matches.
func canonical(a netip.Addr) netip.Addr {
	return a.WithZone("").Unmap()
}

// LocalAddrs is the receiving host's own addresses, which no inner packet
// may carry as its source: its interfaces' addresses (RejectInnerSourceLocal)
// and their subnets' broadcast addresses (RejectInnerSourceBroadcast). It is
// immutable: whoever follows the host's addresses builds a new one when they
// change and hands the current one to Payload. A nil *LocalAddrs is empty.
type LocalAddrs struct {
	// reason for each address, keyed in canonical form.
	reason map[netip.Addr]Reject
}

// NewLocalAddrs returns the set of the host's addresses local and of its
// subnets' broadcast addresses broadcast. Invalid addresses are skipped; an
// address in both lists counts as local.
func NewLocalAddrs(local, broadcast []netip.Addr) *LocalAddrs {
	l := &LocalAddrs{reason: make(map[netip.Addr]Reject, len(local)+len(broadcast))}
	for _, a := range broadcast {
		if a.IsValid() {
			l.reason[canonical(a)] = RejectInnerSourceBroadcast
		}
	}
	for _, a := range local {
		if a.IsValid() {
			l.reason[canonical(a)] = RejectInnerSourceLocal
		}
	}
	return l
}

// Payload checks a UDP payload that arrived on the encap port from src (the
// userspace receiver's UDP socket path: the kernel has already matched the
// port and the UDP header) and returns the inner packet, a subslice of
// payload, or the reason to drop it. The source is checked first, so nothing
// from a stranger is parsed. The inner source must not be one of local's
// addresses or any address no client can have (see the RejectInnerSource
// reasons); local may be nil.
func (d *Decapsulator) Payload(src netip.Addr, payload []byte, local *LocalAddrs) ([]byte, Reject) {
	if _, ok := d.balancers[canonical(src)]; !ok {
		return nil, RejectSourceNotAllowed
	}
	if len(payload) == 0 {
		return nil, RejectEmpty
	}
	inner := payload
	var innerSrc, dst netip.Addr
	switch inner[0] >> 4 {
	case 4:
		if len(inner) < ipv4HeaderLen {
			return nil, RejectInnerMalformed
		}
		ihl := int(inner[0]&0x0f) * 4
		if ihl < ipv4HeaderLen || ihl > len(inner) {
			return nil, RejectInnerMalformed
		}
		if int(binary.BigEndian.Uint16(inner[2:4])) != len(inner) {
			return nil, RejectInnerLength
		}
		if !inet.Valid(inner[:ihl]) {
			return nil, RejectInnerChecksum
		}
		innerSrc = netip.AddrFrom4([4]byte(inner[12:16]))
		dst = netip.AddrFrom4([4]byte(inner[16:20]))
	case 6:
		if len(inner) < ipv6HeaderLen {
			return nil, RejectInnerMalformed
		}
		if ipv6HeaderLen+int(binary.BigEndian.Uint16(inner[4:6])) != len(inner) {
			return nil, RejectInnerLength
		}
		innerSrc = netip.AddrFrom16([16]byte(inner[8:24]))
		dst = netip.AddrFrom16([16]byte(inner[24:40]))
	default:
		return nil, RejectInnerMalformed
	}
	// dst needs no canonical form: AddrFrom4 is already unmapped, and an
	// IPv4-mapped inner IPv6 destination is not an IPv4 VIP.
	if _, ok := d.vips[dst]; !ok {
		return nil, RejectInnerNotVIP
	}
	if r := d.innerSource(innerSrc, dst, local); r != Accept {
		return nil, r
	}
	return inner, Accept
}

// innerSource checks the inner source src of a packet to the VIP dst: the
// address classes no client can have first (a few compares), then src = dst,
// then the VIPs and local (two map lookups).
func (d *Decapsulator) innerSource(src, dst netip.Addr, local *LocalAddrs) Reject {
	if src.Is4() {
		b := src.As4()
		switch {
		case b[0] == 0:
			return RejectInnerSourceUnspecified
		case b[0] == 127:
			return RejectInnerSourceLoopback
		case b[0]&0xf0 == 224:
			return RejectInnerSourceMulticast
		case b == [4]byte{255, 255, 255, 255}:
			return RejectInnerSourceBroadcast
		case b[0]&0xf0 == 240:
			return RejectInnerSourceReserved
		}
	} else {
		switch {
		case src.IsUnspecified():
			return RejectInnerSourceUnspecified
		case src.IsLoopback():
			return RejectInnerSourceLoopback
		case src.IsMulticast():
			return RejectInnerSourceMulticast
		case src.IsLinkLocalUnicast():
			return RejectInnerSourceLinkLocal
		case src.Is4In6():
			return RejectInnerSourceV4Mapped
		}
	}
	if src == dst {
		return RejectInnerSourceIsDestination
	}
	if _, ok := d.vips[src]; ok {
		return RejectInnerSourceLocal
	}
	if local != nil {
		if r, ok := local.reason[src]; ok {
			return r
		}
	}
	return Accept
}

// Packet checks a whole outer packet (the raw-socket path, and tests). An
// IPv4 outer: a well-formed, unfragmented header (options allowed) with a
// correct checksum, protocol UDP; its UDP checksum is not verified, since
// balancers send 0 over IPv4 and the inner packet carries its own checksums.
// An IPv6 outer: a fixed header whose payload length matches, next header UDP
// (no extension headers: the kernel reassembles fragments before a socket sees
// them), and a valid UDP checksum, which IPv6 requires. Then a UDP length
// that matches and the encap port as destination; then the UDP payload goes
// through the same checks as Payload, with the outer source address as src
// and local as the host's addresses.
func (d *Decapsulator) Packet(pkt []byte, local *LocalAddrs) ([]byte, Reject) {
	if len(pkt) == 0 {
		return nil, RejectEmpty
	}
	var src netip.Addr
	var udp []byte
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < ipv4HeaderLen {
			return nil, RejectMalformedOuter
		}
		ihl := int(pkt[0]&0x0f) * 4
		if ihl < ipv4HeaderLen || len(pkt) < ihl+udpHeaderLen ||
			int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) ||
			// More Fragments set or a nonzero offset: the kernel reassembles
			// before a socket sees the packet, so a fragment here is bogus.
			binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 ||
			!inet.Valid(pkt[:ihl]) {
			return nil, RejectMalformedOuter
		}
		if pkt[9] != protoUDP {
			return nil, RejectNotUDP
		}
		src, udp = netip.AddrFrom4([4]byte(pkt[12:16])), pkt[ihl:]
	case 6:
		if len(pkt) < ipv6HeaderLen+udpHeaderLen ||
			ipv6HeaderLen+int(binary.BigEndian.Uint16(pkt[4:6])) != len(pkt) {
			return nil, RejectMalformedOuter
		}
		if pkt[6] != protoUDP {
			return nil, RejectNotUDP
		}
		src, udp = netip.AddrFrom16([16]byte(pkt[8:24])), pkt[ipv6HeaderLen:]
		if binary.BigEndian.Uint16(udp[6:8]) == 0 ||
			inet.Fold(inet.Sum(udp, inet.Sum(pkt[8:40], protoUDP+uint32(len(udp))))) != 0xffff {
			return nil, RejectMalformedOuter
		}
	default:
		return nil, RejectMalformedOuter
	}
	if int(binary.BigEndian.Uint16(udp[4:6])) != len(udp) {
		return nil, RejectMalformedOuter
	}
	if binary.BigEndian.Uint16(udp[2:4]) != d.port {
		return nil, RejectWrongPort
	}
	return d.Payload(src, udp[udpHeaderLen:], local)
}
