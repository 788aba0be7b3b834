// Package nexthop keeps, for each of a set of destinations (the balancer's
// backends), the Ethernet header a frame to it must carry when the data path
// transmits it itself on one interface (AF_XDP), so that a worker builds
// "destination MAC, source MAC, EtherType" with one map read and no system
// call.
//
// It owns a read-only view of the kernel's routes, links and neighbour table
// over netlink in one network namespace (the one of the thread that called
// New), and one kind of write: asking the kernel to resolve a next hop
// (below). It never adds, changes or deletes a route, address, link or
// neighbour entry, and it sends no packet itself.
//
// # What it keeps
//
// For each destination: the route the kernel picks for it (RTM_GETROUTE, as
// `ip route get` does, so policy rules, ECMP and every table count), giving the
// outgoing interface, the preferred source address and the next hop (the
// gateway, or the destination itself when it is on the link; an IPv4 route
// via an IPv6 gateway is followed too); then the next hop's link-layer address
// from the neighbour table of the interface, and the interface's own MAC.
// Lookup answers ok only when the route leaves by the table's interface, the
// interface is up, and the neighbour entry holds an address in a state the
// kernel itself would send with (NUD_VALID: reachable, stale, delay, probe,
// permanent, noarp). Otherwise the caller sends the packet the slow way (the
// raw path), and the kernel routes and resolves it as for any packet: a route
// by another interface, an unreachable route and an unresolved neighbour are
// all the raw path's.
//
// # Keeping current
//
// One goroutine owns the state. It listens to neighbour, route and link
// events (RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE/IPV6_ROUTE, RTNLGRP_LINK) and
// publishes an immutable snapshot through an atomic pointer, which Lookup reads
// without locks or allocations. Neighbour and link events are applied at once;
// route events only say "something changed" and are coalesced for
// routeSettle before every destination's route is asked again, since a
// routing daemon can send thousands at a time. A netlink socket that
// overflows (ENOBUFS) or fails ends its subscription: then all three are
// opened again and everything is read again (a full resync). The same full
// resync runs every ResyncInterval as a safety net.
//
// # Asking the kernel to resolve
//
// A neighbour update with the NTF_USE flag (RTM_NEWNEIGH with NLM_F_CREATE,
// what `ip neigh replace ADDR dev DEV use` sends) makes the kernel treat the
// entry as if a packet were waiting for it: it creates the entry if needed
// and runs neigh_event_send, so an absent or failed entry starts ARP or
// neighbour solicitation and a stale one goes to delay, then probe, exactly as
// when the kernel sends traffic itself, with its own retransmit timers and
// limits. The entry's state and address are left to the kernel (no fake
// INCOMPLETE or PERMANENT entry, no packet to the backend's discard port).
// The table asks:
//   - when a destination gets a new next hop that is not resolved
//     (SetDestinations, a route change);
//   - when Lookup finds a destination unresolved (a flag in the snapshot
//     entry wakes the goroutine; at most once per next hop per askInterval),
//     so a backend that traffic wants is resolved again after the kernel
//     dropped or failed its entry, and one that nobody sends to is not probed;
//   - at each periodic resync, for next hops whose entry is stale: frames sent
//     by XDP never confirm a neighbour, so an entry the kernel learnt from
//     the backend's own packets (its ARP request, say) would stay stale, with
//     an address nobody checks, forever; the probe re-confirms it (or fails
//     it, and the raw path takes over until Lookup's request resolves the new
//     address) as the kernel's own traffic would.
//
// # Limits
//
// With no packet waiting, the kernel sends an IPv6 neighbour solicitation
// from the interface's link-local address: while that is tentative (duplicate
// address detection, a second or two after the link comes up) or if there is
// none (addr_gen_mode none), the request sends nothing, and the raw path's
// packets, which the kernel routes itself, are what resolve the next hop.
// For a multipath route the kernel's answer names one path per destination
// (its hash of the addresses alone), so every frame to one backend uses one
// next hop. The first route of the answer is used.
package nexthop
