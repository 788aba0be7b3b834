// Package nft owns caplanced's one nftables table, "caplance" in the inet
// family, and nothing else: it creates, replaces, reads and deletes that
// table through netlink (github.com/google/nftables) and must not touch other
// tables, addresses, links, routes or sysctls.
//
// On a balancer the table keeps the host's own stack silent for the VIPs:
// caplanced's raw sockets get a copy of every packet, but the kernel still
// answers a SYN with RST, a datagram with ICMP port unreachable and a ping
// with an echo reply. Those answers are dropped in an output hook, matched by
// their VIP source address; a drop in the input hook would starve the raw
// sockets too. So that the kernel does not build those answers in the first
// place, a prerouting hook marks the TCP and UDP that caplanced forwards as
// addressed to another host: TCP and UDP discard such packets at once, raw
// sockets still receive them. On a receiver in kernel (FOU) mode the table drops
// encapsulated packets from anyone but the balancers, and decapsulated packets
// for anything but the VIPs or from a source no client can have (the same
// sources the user-space receiver refuses), so the receiver is not an open
// relay.
//
// Every function takes the network namespace to work in as an open file
// descriptor (a netns.NsHandle, or an opened /proc/PID/ns/net). CurrentNetNS
// (0), or any negative value such as netns.None(), means the namespace of the
// calling OS thread, which in caplanced is the host's; a caller that switches
// a thread's namespace must hold runtime.LockOSThread across the call.
// The balancer's rules take IPv4 and IPv6 VIPs, each family in sets and
// rules of its own; the receiver's tunnel filter is IPv4 only for now.
//
// With every rule asked for, `nft list table inet caplance` prints (counters
// left out; written by hand from the rules, nft itself is not needed):
//
//	table inet caplance {
//		set silence_vips { type ipv4_addr; elements = { 10.0.0.100, 10.0.0.101 } }
//		set forward_tcp_vips { type ipv4_addr; elements = { 10.0.0.100 } }
//		set forward_udp_vips { type ipv4_addr; elements = { 10.0.0.100 } }
//		set forward_tcp_vip_ports { type ipv4_addr . inet_service; elements = { 10.0.0.101 . 80, 10.0.0.101 . 443 } }
//		set forward_udp_vip_ports { type ipv4_addr . inet_service; elements = { 10.0.0.101 . 53 } }
//		set balancers { type ipv4_addr; elements = { 10.0.1.1, 10.0.1.2 } }
//		set tunnel_vips { type ipv4_addr; elements = { 10.0.0.100 } }
//		set silence_vips6 { type ipv6_addr; elements = { 2001:db8::100 } }
//		set forward_tcp_vips6 { type ipv6_addr; elements = { 2001:db8::100 } }
//		set forward_udp_vip_ports6 { type ipv6_addr . inet_service; elements = { 2001:db8::100 . 53 } }
//		chain output {
//			type filter hook output priority filter; policy accept;
//			ip saddr @silence_vips tcp flags rst counter drop comment "silence-tcp-rst"
//			ip saddr @silence_vips icmp type destination-unreachable icmp code port-unreachable counter drop comment "silence-icmp-port-unreachable"
//			ip saddr @silence_vips icmp type echo-reply counter drop comment "silence-icmp-echo-reply"
//			ip6 saddr @silence_vips6 tcp flags rst counter drop comment "silence-tcp-rst-ipv6"
//			ip6 saddr @silence_vips6 icmpv6 type destination-unreachable icmpv6 code port-unreachable counter drop comment "silence-icmpv6-port-unreachable"
//			ip6 saddr @silence_vips6 icmpv6 type echo-reply counter drop comment "silence-icmpv6-echo-reply"
//		}
//		chain input {
//			type filter hook input priority filter; policy accept;
//			udp dport 5555 ip saddr != @balancers counter drop comment "tunnel-foreign-source"
//		}
//		chain prerouting {
//			type filter hook prerouting priority filter; policy accept;
//			meta l4proto tcp ip daddr @forward_tcp_vips counter meta pkttype set other comment "forward-tcp"
//			ip daddr . tcp dport @forward_tcp_vip_ports counter meta pkttype set other comment "forward-tcp-ports"
//			meta l4proto udp ip daddr @forward_udp_vips counter meta pkttype set other comment "forward-udp"
//			ip daddr . udp dport @forward_udp_vip_ports counter meta pkttype set other comment "forward-udp-ports"
//			meta l4proto tcp ip6 daddr @forward_tcp_vips6 counter meta pkttype set other comment "forward-tcp-ipv6"
//			ip6 daddr . udp dport @forward_udp_vip_ports6 counter meta pkttype set other comment "forward-udp-ports-ipv6"
//			iifname "caplance0" ip daddr != @tunnel_vips counter drop comment "tunnel-foreign-destination"
//			iifname "caplance0" ip saddr 0.0.0.0/8 counter drop comment "tunnel-source-unspecified"
//			iifname "caplance0" ip saddr 127.0.0.0/8 counter drop comment "tunnel-source-loopback"
//			iifname "caplance0" ip saddr 224.0.0.0/4 counter drop comment "tunnel-source-multicast"
//			iifname "caplance0" fib saddr type broadcast counter drop comment "tunnel-source-broadcast"
//			iifname "caplance0" ip saddr 240.0.0.0/4 counter drop comment "tunnel-source-reserved"
//			iifname "caplance0" fib saddr type local counter drop comment "tunnel-source-local"
//		}
//	}
package nft

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the one table caplanced owns, family inet.
const TableName = "caplance"

// CurrentNetNS selects the calling OS thread's network namespace.
const CurrentNetNS = 0

// ErrNoTable is returned by Counters when the table does not exist.
var ErrNoTable = errors.New("table inet " + TableName + " does not exist")

// Apply replaces the table with one holding r, in one netlink batch (create
// the table if absent, delete it, add the table, sets, chains and rules), so
// no packet ever sees a half-built table and a failed Apply leaves the
// previous table in place. It is idempotent; counters restart from zero.
func Apply(netnsFD int, r Rules) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("nft: %w", err)
	}
	c, err := dial(netnsFD)
	if err != nil {
		return err
	}
	defer c.CloseLasting()

	t := table()
	// Adding without NLM_F_EXCL is a no-op for an existing table and makes
	// the delete that follows safe when there is none, with no racy lookup.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	if err := build(c, t, r); err != nil {
		return fmt.Errorf("nft: table inet %s: %w", TableName, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: replace table inet %s: %w", TableName, err)
	}
	return nil
}

// Remove deletes the table. existed reports whether there was one, so that
// a daemon can say it removed a table left by a crashed run.
func Remove(netnsFD int) (existed bool, err error) {
	c, err := dial(netnsFD)
	if err != nil {
		return false, err
	}
	defer c.CloseLasting()

	c.DelTable(table())
	switch err := c.Flush(); {
	case errors.Is(err, unix.ENOENT):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("nft: delete table inet %s: %w", TableName, err)
	}
	return true, nil
}

// Counter counts the packets a rule dropped since the last Apply.
type Counter struct {
	Packets, Bytes uint64
}

// Counters returns the drop counters of the table's rules, keyed by rule
// name (the Rule* constants); rules that Rules did not ask for are absent.
// It returns ErrNoTable if there is no table.
func Counters(netnsFD int) (map[string]Counter, error) {
	c, err := dial(netnsFD)
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()

	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nft: list chains: %w", err)
	}
	t := table()
	counters := make(map[string]Counter)
	found := false
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		found = true
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("nft: list rules of chain %s: %w", ch.Name, err)
		}
		for _, rule := range rules {
			name, ok := userdata.GetString(rule.UserData, userdata.TypeComment)
			if !ok {
				continue
			}
			for _, e := range rule.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					counters[name] = Counter{Packets: ctr.Packets, Bytes: ctr.Bytes}
				}
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("nft: %w", ErrNoTable)
	}
	return counters, nil
}

func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

// dial opens one netlink socket in the namespace, used for every request of
// one call and closed by CloseLasting.
func dial(netnsFD int) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if netnsFD > 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nft: open netlink socket: %w", err)
	}
	return c, nil
}
