// Package vip owns the changes caplanced makes to its host's network
// configuration, and the journal that lets every one of them be undone:
//
//   - as a balancer, each VIP as a /32 (IPv6: a /128, nodad) on a NIC
//     (AttachVIP);
//   - as a receiver, each VIP as a /32 (IPv6: a /128, without duplicate
//     address detection) on lo (AttachLoopback), and the ARP sysctls
//     net.ipv4.conf.all.arp_ignore and arp_announce (ReceiverSysctls); IPv6
//     needs no sysctl, since Linux answers a neighbour solicitation only for
//     an address of the interface it arrived on, never for one on lo;
//   - in the receiver's kernel mode, foo-over-UDP receive ports (one per
//     outer family), the tunnel devices they feed (ipip, ip6tnl), and
//     rp_filter relaxed on a device that receives IPv4 (SetupFOU);
//   - as a routed balancer, each announced VIP as a route VIP/32 (/128) dev
//     lo in caplanced's own routing table with caplanced's own route
//     protocol (AddRoute, DeleteRoute), for the host's routing daemon to
//     export; its VIPs then live on lo (AttachLoopback, ReceiverSysctls).
//     It adds and deletes only routes of its protocol, and never a route of
//     another.
//
// It must not touch anything else: nftables rules, sockets, packets, D-Bus
// and systemd belong to other packages. It changes the network namespace of
// the calling OS thread (for caplanced, the host's); a caller that moves
// threads between namespaces must lock the thread (runtime.LockOSThread).
//
// # The journal
//
// Before each change, Host appends to a journal an entry saying how to undo
// it; Undo runs the entries newest first and removes the journal when every
// one succeeded. A change that turns out to be a no-op (the address is
// already there, the sysctl already has the value) is not recorded, so
// caplanced never removes what it did not add. Undoing is idempotent: an
// address, port or link that is already gone counts as undone. After a crash
// (kill -9, power loss) the journal survives, and the next `caplanced` start
// or `caplanced --cleanup` undoes what it lists (Open, Leftovers, Undo).
//
// The journal is <dir>/host-changes.json, where dir is caplanced's state
// directory (/var/lib/caplance). It is replaced atomically on every change
// (written to host-changes.json.tmp, fsynced, renamed over, directory
// fsynced), so it is always either the old or the new list. It is JSON,
// here with one change of each kind:
//
//	{
//	  "version": 1,
//	  "changes": [
//	    {"kind":"address","link":"lo","address":"10.0.0.100/32"},
//	    {"kind":"sysctl","sysctl":"net.ipv4.conf.all.arp_ignore","value":"0"},
//	    {"kind":"link-up","link":"tunl0"},
//	    {"kind":"link-created","link":"caplance-ipip","type":"ipip"},
//	    {"kind":"fou","port":5555,"ipproto":4},
//	    {"kind":"fou","port":5555,"ipproto":41,"family":"ipv6"},
//	    {"kind":"route","link":"lo","address":"10.0.0.100/32","table":100,"protocol":252}
//	  ]
//	}
//
// oldest first, one change a line. Each kind is undone thus:
//
//	address       delete address (a prefix, /32 or /128) from link
//	sysctl        write value, the value before caplanced changed it, back
//	link-up       set link down (caplanced brought it up)
//	link-created  delete link, if it still has that type
//	fou           delete the foo-over-UDP receive port (IPv4, or IPv6 with
//	              family "ipv6")
//	route         delete the route to address dev link (lo) in table, if the
//	              table still has it with that protocol (the kernel matches
//	              the protocol, so another program's route stays)
//
// A journal that cannot be read is an error that names the file: caplanced
// then refuses to start rather than guess. Undo what it lists by hand (ip
// address del, sysctl -w, ip link, ip fou del, ip route del) and remove the
// file.
//
// The journal is guarded by an advisory lock on <dir>/host-changes.lock
// (flock, held from Open to Close, released by the kernel when the process
// dies), so `caplanced --cleanup` cannot undo the changes of a caplanced that
// is still running. The lock file is empty and never removed.
//
// # Receiver sysctls
//
// The kernel uses the larger of the "all" and the per-device value of
// arp_ignore, arp_announce and rp_filter. ReceiverSysctls therefore sets
// conf.all: arp_ignore to 1 (answer ARP only for addresses on the interface
// the request came in on, so never for a VIP on lo) unless it is already 1,
// 2 or 8, which are at least as strict; arp_announce to 2 (never use a VIP
// as the source of an ARP request) unless it is already 2. rp_filter is
// relaxed only where decapsulated packets arrive, on the kernel-mode ipip
// device: there the inner source is a client whose route leaves by another
// interface, which strict mode (1) drops. RelaxRPFilter sets the device, and
// conf.all, from 1 (strict) to 2 (loose) and leaves every other value alone.
//
// Sysctls are read and written through /proc/sys, whose net/ subtree shows
// the network namespace of the thread that looks a name up (a file opened
// there keeps showing that namespace even if the thread moves on), unlike
// /proc/net, a link to /proc/self/net, which shows the namespace of the
// process's main thread; /proc/thread-self/net shows the caller's. The tests
// check all three.
//
// # Kernel foo-over-UDP and the ipip device
//
// `ip fou add port P ipproto 4` makes the kernel strip the UDP header of
// packets to port P and hand the rest to the IPIP handler, which looks for
// a tunnel device that is up by the outer addresses (ip_tunnel_lookup): one
// whose remote and local match, one whose remote matches, one whose local
// matches, then the collect-metadata ("external") device, then the fallback
// device tunl0. A "remote any local any" device is not among them: ipip looks
// up without a key, which skips the round that matches wildcard devices, and
// the kernel refuses to create one beside tunl0 anyway (EEXIST: tunl0 has
// the same parameters). So SetupFOU brings up tunl0, which the kernel
// creates in every namespace once ipip is loaded. Where there is none (ipip
// not loaded yet, or net.core.fb_tunnels_only_for_init_net keeps fallback
// devices to the initial namespace) it creates caplance-ipip, an external
// device (`ip link add caplance-ipip type ipip external`); if creating it
// loaded ipip and so made tunl0, it deletes it again and uses tunl0, as every
// later start will. It prefers tunl0 because an external device is looked up
// first and would take the packets of anyone else using tunl0 (Calico's IPIP
// mode, for one). The device needs no address: the inner packets are for
// VIPs on lo.
//
// # IPv6 outers: ip6tnl
//
// `ip fou add port P ipproto 41 -6` (IPv6 inside) or `ipproto 4 -6` (IPv4
// inside) hands the payload of an IPv6 port to ip6_tunnel, which looks up an
// ip6tnl device the same way (ip6_tnl_lookup: exact, remote, local, the
// external device, then the fallback ip6tnl0), and drops the packet if that
// device's mode is not "any" and not the packet's protocol. ip6tnl0 is mode
// ip6ip6: SetupFOU brings it up for IPv6 inside, as tunl0 for IPv4. For
// IPv4 inside it always creates caplance-ip6tnl, an external device of mode
// ipip6; being looked up before ip6tnl0, it also makes the namespace drop
// IPv6 in IPv6 that no configured tunnel claims, which is why it is not
// created for IPv6 inside. A fou port hands its payload to one protocol, so
// a receiver decapsulates one inner family per outer family in the kernel;
// IPv6 in IPv4 (sit) is not set up (ErrNoKernelFOU): user space does it.
package vip
