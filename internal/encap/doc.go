// Package encap owns Caplance's "direct" foo-over-UDP encapsulation: building
// the outer IPv4+UDP header the balancer puts in front of a client packet, and
// the checks the backend's receiver applies before it hands an inner packet to
// the local stack. The UDP payload is the client's IP packet, byte-identical
// (but for the header checksum of an IPv4 packet with options, which the
// balancer recomputes before it calls Encapsulate: see package balancer), so
// a Linux backend can also decapsulate in the kernel
// (`ip fou add port P ipproto 4`, or `ipproto 41` for IPv6 inner packets).
//
// The package is pure: it works on byte slices it is given and never opens
// sockets, does I/O, or talks to netlink, D-Bus or systemd. It imports only
// the standard library (net/netip, encoding/binary, errors, fmt) and package
// inet, the project's one Internet checksum. The hot-path
// functions (Outer.Encapsulate, SourcePort, Decapsulator.Payload and
// Decapsulator.Packet) allocate nothing and never copy the inner packet.
//
// # Outer header policy
//
// The data path receives each client packet into buf[HeaderLen:] and
// Encapsulate writes the 28-byte outer header into the headroom buf[:HeaderLen]:
//
//   - IPv4, IHL 5 (no options), TOS 0, protocol UDP (17).
//   - TTL 64, a constant: the outer header travels only the balancer→backend
//     path, so the client's remaining hop count (Linux ipip's default "inherit")
//     says nothing about it and could expire the tunnel packet early. A
//     constant also keeps the header checksum precomputable.
//   - DF is copied from an IPv4 inner packet, as Linux ipip does with pmtudisc,
//     so a client's path-MTU discovery keeps working through the tunnel; DF is
//     always set for an IPv6 inner packet, because routers never fragment IPv6.
//     The MTU consequences are the data path's concern, not this package's.
//   - ID 0. The packets are sent on an IP_HDRINCL raw socket, and the kernel
//     fills in a zero ID (raw(7)), so unfragmentable and fragmentable packets
//     alike get a proper ID without the balancer keeping a counter.
//   - Header checksum computed: incrementally, from a sum precomputed per
//     backend, since only the total length and the DF word vary per packet.
//   - Total length is len(pkt): the inner packet's own length field is not
//     trusted for the outer size; the data path passes exactly the bytes it
//     received.
//   - UDP source port from SourcePort(flow hash): stable per flow, spread over
//     49152–65535 so ECMP routers and NIC RSS on the way spread the load.
//   - UDP destination port: the backend's encap port.
//   - UDP checksum 0: allowed for UDP over IPv4 (RFC 768) and accepted by
//     Linux FOU; the inner packet carries its own header and L4 checksums, and
//     computing it over a reassembled datagram of up to 64 KiB would cost a
//     full pass over the payload per packet.
//
// # Receiver checks
//
// The receiver is not an open relay. Decapsulator accepts an encapsulated
// packet only from a configured balancer address and only when the inner
// packet is well-formed, addressed to one of the backend's VIPs, and from a
// source a client can have: not unspecified, loopback, multicast, broadcast,
// reserved (240/4), the destination itself, a VIP or one of the host's own
// addresses (LocalAddrs, which the caller keeps current and hands in). Every
// other packet is rejected with a Reject reason that names a counter.
package encap
