// Package encap owns Caplance's "direct" foo-over-UDP encapsulation: building
// the outer IPv4+UDP or IPv6+UDP header the balancer puts in front of a
// client packet (the outer family is the backend's: 4-in-4, 6-in-4, 4-in-6,
// 6-in-6), the ICMP errors the balancer answers a packet too big for the
// tunnel with, and the checks the backend's receiver applies before it hands
// an inner packet to the local stack. The UDP payload is the client's IP
// packet, byte-identical (but for the header checksum of an IPv4 packet with
// options, which the balancer recomputes before it calls Encapsulate: see
// package balancer), so a Linux backend can also decapsulate in the kernel
// (`ip fou add port P ipproto 4`, or `ipproto 41` for IPv6 inner packets;
// `-6` for IPv6 outers).
//
// The package is pure: it works on byte slices it is given and never opens
// sockets, does I/O, or talks to netlink, D-Bus or systemd. It imports only
// the standard library (net/netip, encoding/binary, errors, fmt) and package
// inet, the project's one Internet checksum. The hot-path
// functions (Outer.Encapsulate, SourcePort, FlowLabel, Decapsulator.Payload
// and Decapsulator.Packet) allocate nothing and never copy the inner packet.
//
// # Outer header policy
//
// The data path receives each client packet behind MaxHeaderLen (48) bytes
// of headroom and hands Encapsulate the frame that starts Outer.Len() bytes
// before the packet: 28 for an IPv4 outer, 48 for an IPv6 one. Both:
//
//   - TTL / hop limit 64, a constant: the outer header travels only the
//     balancer→backend path, so the client's remaining hop count (Linux
//     ipip's default "inherit") says nothing about it and could expire the
//     tunnel packet early. A constant also keeps the checksums precomputable.
//   - Length from len(frame): the inner packet's own length field is not
//     trusted for the outer size; the data path passes exactly the bytes it
//     received.
//   - UDP source port from SourcePort(flow hash): stable per flow, spread over
//     49152–65535 so ECMP routers and NIC RSS on the way spread the load.
//   - UDP destination port: the backend's encap port.
//
// An IPv4 outer (20 bytes, no options, TOS 0, protocol UDP):
//
//   - DF is copied from an IPv4 inner packet, as Linux ipip does with pmtudisc,
//     so a client's path-MTU discovery keeps working through the tunnel; DF is
//     always set for an IPv6 inner packet, because routers never fragment IPv6.
//     The MTU consequences are the data path's concern (mtu.go).
//   - ID 0. The packets are sent on an IP_HDRINCL raw socket, and the kernel
//     fills in a zero ID (raw(7)), so unfragmentable and fragmentable packets
//     alike get a proper ID without the balancer keeping a counter.
//   - Header checksum computed: incrementally, from a sum precomputed per
//     backend, since only the total length and the DF word vary per packet.
//   - UDP checksum 0: allowed for UDP over IPv4 (RFC 768) and accepted by
//     Linux FOU; the inner packet carries its own header and L4 checksums, and
//     computing it over a reassembled datagram of up to 64 KiB would cost a
//     full pass over the payload per packet.
//
// An IPv6 outer (40 bytes, no extension headers, next header UDP):
//
//   - Traffic class 0; flow label FlowLabel(flow hash), 20 bits, never 0, so
//     routers hashing (source, destination, flow label) keep a flow on one
//     path (RFC 6438).
//   - A valid UDP checksum: RFC 8200 forbids 0 except under the conditions of
//     RFC 6935/6936, which Linux fou does not assume (it drops such a
//     datagram). It is computed without reading the inner payload where the
//     inner packet allows: the pseudo-header's constant words are summed once
//     per backend; per packet come the length, the source port, the inner IP
//     header (and IPv6 hop-by-hop and destination options), and the sum of
//     the inner transport segment, which for an unfragmented TCP, UDP (with
//     a checksum) or ICMPv6 segment is the complement of the sum of its own
//     pseudo-header, and for IPv4 ICMP zero, since its checksum is valid
//     (Linux's "local checksum offload" trick). If it is not, the outer
//     checksum is wrong too and the backend drops the corrupt packet, as it
//     should. Fragments, UDP without a checksum, IPv4 options or a routing
//     header (both can change the pseudo-header's destination), other
//     protocols, or a length field that disagrees with the bytes: a full
//     pass over the inner packet.
//
// # Receiver checks
//
// The receiver is not an open relay. Decapsulator accepts an encapsulated
// packet only from a configured balancer address (IPv4 or IPv6) and only
// when the inner packet is well-formed, addressed to one of the backend's
// VIPs (IPv4 or IPv6), and from a source a client can have: not
// unspecified, loopback, multicast, broadcast, reserved (240/4), IPv6
// link-local (fe80::/10), IPv4-mapped (::ffff:0:0/96), the destination
// itself, a VIP or one of the host's own addresses (LocalAddrs, which the
// caller keeps current and hands in). A whole IPv6 outer packet (Packet)
// must carry a valid, nonzero UDP checksum. Every other packet is rejected
// with a Reject reason that names a counter.
package encap
