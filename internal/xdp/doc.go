// Package xdp is the kernel side of caplanced's AF_XDP data path: the XDP
// program that steers packets to a VIP into AF_XDP sockets, its two BPF maps
// (the VIP set and the sockets by receive queue), attaching it to an
// interface, and the AF_XDP sockets themselves (UMEM and the four rings)
// with a zero-allocation API for a worker loop.
//
// It owns the BPF objects it creates and the XDP attachment it makes, which
// is a bpf_link: the kernel detaches the program when the last file
// descriptor of the link closes, so a crashed process leaves nothing on the
// interface. It must not touch anything else on the host: no addresses,
// routes, sysctls or nftables rules, and no XDP program it did not attach.
//
// # The program
//
// For every frame on the interface it parses Ethernet (untagged only: a
// VLAN-tagged frame passes to the stack; caplanced's balancer interfaces
// carry untagged traffic, a VLAN being its own interface), then IPv4 or
// IPv6, and looks the destination address up in the VIP map, whose keys
// are 16-byte IPv6 addresses with IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d),
// so one map serves both families; the value is the VIP's IP version, which
// must be the packet's (an IPv6 packet to ::ffff:a.b.c.d is not for the IPv4
// VIP a.b.c.d). A hit is redirected with
// bpf_redirect_map to the XSKMAP entry of the frame's receive queue, and
// falls back to XDP_PASS when no socket is bound to that queue. Everything
// else passes to the stack untouched, in particular:
//   - IPv4 fragments (MF set or a non-zero offset) and IPv6 packets whose
//     first next header is a Fragment header: reassembly happens only in the
//     stack, so the raw path gets them;
//   - IPv6 packets whose first next header is any other extension header
//     the flow parser walks (hop-by-hop, routing, AH, destination options):
//     the program does not walk the chain, so a Fragment header behind one
//     of them cannot slip into the AF_XDP path; the raw path handles them;
//   - ICMP and ICMPv6 right after the fixed header: the stack answers them
//     as it does without XDP (neighbour discovery to an IPv6 VIP above all,
//     which nothing else answers), and caplanced's raw path takes the ICMP
//     errors that quote a flow to a VIP;
//   - IPv4 headers with IHL < 5, and frames too short for their IP header.
//
// The program only reads the IPv4 header's fixed part (the destination is at
// a fixed offset whatever IHL says); transport headers are the worker's job.
package xdp
