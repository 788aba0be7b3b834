package nft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/model"
)

// Rules is everything the table holds. The zero value has no rules and is
// rejected by Apply (ErrNoRules): a caller with nothing to filter calls Remove.
type Rules struct {
	// SilenceVIPs are the balancer's VIPs, IPv4 or IPv6. In an output hook
	// the table drops locally generated packets with a source address in
	// this set that are TCP with RST set, ICMP port unreachable (type 3
	// code 3) or ICMP echo reply (type 0), for IPv6 ICMPv6 port unreachable
	// (type 1 code 4) or echo reply (type 129): the kernel's answers to
	// traffic that caplanced forwards. Everything else from a VIP passes,
	// e.g. the ICMP fragmentation-needed (type 3 code 4) and ICMPv6 Packet
	// Too Big (type 2) that caplanced itself sends, the neighbour
	// advertisements that keep an IPv6 VIP reachable, and TCP to a port
	// with a real listener.
	SilenceVIPs []netip.Addr

	// Forward is the traffic caplanced forwards: its protocols to each VIP,
	// only to its Ports if it has any. In a prerouting hook the table marks
	// those packets as addressed to another host (meta pkttype set other).
	// The raw sockets still receive them, but the kernel's TCP and UDP then
	// discard them at once instead of answering each with a RST or an ICMP
	// port unreachable for the output hook to drop. That answer is costly:
	// a RST is built per segment, and since the per-destination ICMP limit
	// comes before the global one (Linux 6.12, "icmp: change the order of
	// rate limits", also in stable kernels) every ICMP error costs a route
	// lookup (measured with make bench-dataplane: +18% forwarded packets per
	// second). A local listener on a port that is not forwarded keeps
	// working. A fragment after the first carries no ports, so the port
	// rules leave it unmarked; the output hook silences what it causes. So
	// are the ports of a Forward with more than MaxMarkedPorts: the set
	// would grow past what one netlink batch carries well, and the marking
	// only saves work. IPv6 is marked alike (the kernel's TCP drops a
	// segment not for this host, and sends no ICMPv6 error for it), with
	// rules and sets of its own.
	Forward []Forward

	// Tunnel filters what a receiver decapsulates in the kernel (FOU); nil
	// for none (balancer role, or receiver in user-space mode).
	Tunnel *Tunnel
}

// Forward is traffic to one VIP that caplanced forwards. A VIP may be in
// several, with other protocols or ports (one per service).
type Forward struct {
	VIP       netip.Addr
	Protocols model.Protocols
	// Ports are the forwarded ports; nil means every port.
	Ports []model.PortRange
}

// MaxMarkedPorts is how many ports of a Forward the prerouting hook marks
// at most; see Rules.Forward.
const MaxMarkedPorts = 4096

// Tunnel filters a receiver's kernel foo-over-UDP decapsulation so that the
// receiver is not an open relay. Each family has rules and sets of its own,
// present whether or not the family is in use, so that a family with no
// balancer or no VIP is dropped rather than let through.
type Tunnel struct {
	// Port is the encapsulation UDP port. In an input hook, UDP to Port
	// from a source not in Balancers (of its family) is dropped, and so is
	// every packet that is itself a tunnel (IPv4 or IPv6 in IP, protocol 4
	// or 41): the devices below decapsulate those too, from anyone, while
	// what the fou ports hand them skips the input hook.
	Port uint16
	// Balancers are the addresses encapsulated packets may come from,
	// IPv4 or IPv6.
	Balancers []netip.Addr
	// Devices are the decapsulating interfaces (the ipip or ip6tnl devices
	// the fou ports feed). In a prerouting hook — so that it also covers
	// packets the kernel would forward, which an input hook never sees —
	// every packet arriving on one of them whose destination is not in
	// VIPs is dropped, and so is every one whose source no client can
	// have, each counted by its rule. IPv4: in 0.0.0.0/8, 127.0.0.0/8 or
	// 224.0.0.0/4; a broadcast address by the routing table
	// (255.255.255.255 and the subnets' broadcast addresses); in
	// 240.0.0.0/4. IPv6: ::, in fe80::/10 (link-local) or ::ffff:0:0/96
	// (IPv4-mapped); the kernel itself drops a loopback or multicast
	// source before any hook (RFC 4291, ip6_rcv_core). Both: an address of the
	// host by the routing table ("fib saddr type local": the VIPs and every
	// address of the host, followed by the kernel). Source = destination
	// needs no rule of its own: the destination is a VIP, a local address.
	// The kernel's own martian and rp_filter checks would drop some of
	// these too, silently and depending on sysctls; the rules make the
	// guarantee explicit, the same as the user-space receiver's, and
	// counted.
	Devices []string
	// VIPs are the receiver's VIPs, the only valid inner destinations.
	VIPs []netip.Addr
}

// ErrNoRules is returned by Apply (and Rules.Validate) for Rules with no
// SilenceVIPs, no Forward and no Tunnel: there would be nothing in the table.
var ErrNoRules = errors.New("no rules: SilenceVIPs and Forward are empty and Tunnel is nil (use Remove)")

// Names of the table's rules, stored as each rule's comment (so that
// `nft list table inet caplance` explains itself) and used as the keys of
// Counters.
const (
	RuleSilenceTCPReset           = "silence-tcp-rst"
	RuleSilencePortUnreachable    = "silence-icmp-port-unreachable"
	RuleSilenceEchoReply          = "silence-icmp-echo-reply"
	RuleSilenceTCPReset6          = "silence-tcp-rst-ipv6"
	RuleSilencePortUnreachable6   = "silence-icmpv6-port-unreachable"
	RuleSilenceEchoReply6         = "silence-icmpv6-echo-reply"
	RuleForwardTCP                = "forward-tcp"
	RuleForwardUDP                = "forward-udp"
	RuleForwardTCPPorts           = "forward-tcp-ports"
	RuleForwardUDPPorts           = "forward-udp-ports"
	RuleForwardTCP6               = "forward-tcp-ipv6"
	RuleForwardUDP6               = "forward-udp-ipv6"
	RuleForwardTCPPorts6          = "forward-tcp-ports-ipv6"
	RuleForwardUDPPorts6          = "forward-udp-ports-ipv6"
	RuleTunnelForeignSource       = "tunnel-foreign-source"
	RuleTunnelForeignDestination  = "tunnel-foreign-destination"
	RuleTunnelSourceUnspecified   = "tunnel-source-unspecified"
	RuleTunnelSourceLoopback      = "tunnel-source-loopback"
	RuleTunnelSourceMulticast     = "tunnel-source-multicast"
	RuleTunnelSourceBroadcast     = "tunnel-source-broadcast"
	RuleTunnelSourceReserved      = "tunnel-source-reserved"
	RuleTunnelSourceLocal         = "tunnel-source-local"
	RuleTunnelRaw                 = "tunnel-raw"
	RuleTunnelForeignSource6      = "tunnel-foreign-source-ipv6"
	RuleTunnelForeignDestination6 = "tunnel-foreign-destination-ipv6"
	RuleTunnelSourceUnspecified6  = "tunnel-source-unspecified-ipv6"
	RuleTunnelSourceLoopback6     = "tunnel-source-loopback-ipv6"
	RuleTunnelSourceMulticast6    = "tunnel-source-multicast-ipv6"
	RuleTunnelSourceLinkLocal     = "tunnel-source-link-local"
	RuleTunnelSourceV4Mapped      = "tunnel-source-v4-mapped"
	RuleTunnelSourceLocal6        = "tunnel-source-local-ipv6"
)

// Chain and set names inside the table; a chain is named for its hook.
const (
	chainOutput         = "output"
	chainInput          = "input"
	chainPrerouting     = "prerouting"
	setSilenceVIPs      = "silence_vips"
	setForwardTCPVIPs   = "forward_tcp_vips"
	setForwardUDPVIPs   = "forward_udp_vips"
	setForwardTCPPorts  = "forward_tcp_vip_ports"
	setForwardUDPPorts  = "forward_udp_vip_ports"
	setSilenceVIPs6     = "silence_vips6"
	setForwardTCPVIPs6  = "forward_tcp_vips6"
	setForwardUDPVIPs6  = "forward_udp_vips6"
	setForwardTCPPorts6 = "forward_tcp_vip_ports6"
	setForwardUDPPorts6 = "forward_udp_vip_ports6"
	setBalancers        = "balancers"
	setTunnelVIPs       = "tunnel_vips"
	setBalancers6       = "balancers6"
	setTunnelVIPs6      = "tunnel_vips6"
	setTunnelDevices    = "tunnel_devices"
	setTunnelProtos     = "tunnel_protos"
)

// Validate reports the first problem with r, naming the field. It does not
// touch the kernel, so a configuration loader can call it.
func (r Rules) Validate() error {
	if len(r.SilenceVIPs) == 0 && len(r.Forward) == 0 && r.Tunnel == nil {
		return ErrNoRules
	}
	for i, a := range r.SilenceVIPs {
		if err := validVIP(fmt.Sprintf("SilenceVIPs[%d]", i), a); err != nil {
			return err
		}
	}
	for i, f := range r.Forward {
		field := fmt.Sprintf("Forward[%d]", i)
		if err := validVIP(field+".VIP", f.VIP); err != nil {
			return err
		}
		if f.Protocols&^(model.TCP|model.UDP) != 0 || f.Protocols == 0 {
			return fmt.Errorf("%s.Protocols: %v: must be TCP, UDP or both", field, f.Protocols)
		}
		for _, pr := range f.Ports {
			if pr.First == 0 || pr.Last < pr.First {
				return fmt.Errorf("%s.Ports: %s: not a port range (from 1, first not after last)", field, model.FormatPorts([]model.PortRange{pr}))
			}
		}
	}
	if t := r.Tunnel; t != nil {
		if t.Port == 0 {
			return errors.New("Tunnel.Port: must not be 0")
		}
		if len(t.Balancers) == 0 {
			return errors.New("Tunnel.Balancers: empty: every encapsulated packet would be dropped")
		}
		if err := validAddrs("Tunnel.Balancers", t.Balancers); err != nil {
			return err
		}
		if len(t.Devices) == 0 {
			return errors.New("Tunnel.Devices: empty")
		}
		for i, d := range t.Devices {
			if d == "" || len(d) >= unix.IFNAMSIZ {
				return fmt.Errorf("Tunnel.Devices[%d]: %q is not an interface name (1 to %d bytes)", i, d, unix.IFNAMSIZ-1)
			}
		}
		if len(t.VIPs) == 0 {
			return errors.New("Tunnel.VIPs: empty: every decapsulated packet would be dropped")
		}
		if err := validAddrs("Tunnel.VIPs", t.VIPs); err != nil {
			return err
		}
	}
	return nil
}

func validAddrs(field string, addrs []netip.Addr) error {
	for i, a := range addrs {
		if err := validVIP(fmt.Sprintf("%s[%d]", field, i), a); err != nil {
			return err
		}
	}
	return nil
}

// validVIP checks an address the table matches packets against: IPv4 or
// IPv6, but as the packets carry it, so not IPv4-mapped and without a zone.
func validVIP(field string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("%s: invalid (zero) address", field)
	case a.Is4In6():
		return fmt.Errorf("%s: %s is IPv4-mapped; give the IPv4 address", field, a)
	case a.Zone() != "":
		return fmt.Errorf("%s: %s has a zone", field, a)
	}
	return nil
}

// family is what the silence and forward rules need of an address family.
type family struct {
	nfproto byte
	// saddr and daddr are the addresses' offsets in the network header,
	// size their length.
	saddr, daddr, size uint32
	keyType            nftables.SetDatatype
	// icmp is ICMP's protocol number; portUnreachable its type and code,
	// echoReply its type.
	icmp            byte
	portUnreachable [2]byte
	echoReply       byte
	// The names of the sets and rules of the family.
	silenceSet, tcpSet, udpSet, tcpPortSet, udpPortSet              string
	tcpReset, unreachable, echo, tcpAll, udpAll, tcpPorts, udpPorts string
	// The tunnel's sets and rules of the family, and its spoofed-source
	// rules, in the order the user-space receiver checks
	// (encap.Decapsulator): the classes, then the kernel's address types
	// for what only the host knows.
	balancerSet, tunnelVIPSet, foreignSource, foreignDestination string
	spoofed                                                      []spoofRule
}

// spoofRule drops decapsulated packets whose source is in prefix or, for
// the zero prefix, of the routing type rtn.
type spoofRule struct {
	name   string
	prefix netip.Prefix
	rtn    uint32
}

var (
	ipv4 = family{
		nfproto: unix.NFPROTO_IPV4, saddr: 12, daddr: 16, size: 4, keyType: nftables.TypeIPAddr,
		icmp: unix.IPPROTO_ICMP, portUnreachable: [2]byte{3, 3}, echoReply: 0,
		silenceSet: setSilenceVIPs, tcpSet: setForwardTCPVIPs, udpSet: setForwardUDPVIPs,
		tcpPortSet: setForwardTCPPorts, udpPortSet: setForwardUDPPorts,
		tcpReset: RuleSilenceTCPReset, unreachable: RuleSilencePortUnreachable, echo: RuleSilenceEchoReply,
		tcpAll: RuleForwardTCP, udpAll: RuleForwardUDP, tcpPorts: RuleForwardTCPPorts, udpPorts: RuleForwardUDPPorts,
		balancerSet: setBalancers, tunnelVIPSet: setTunnelVIPs,
		foreignSource: RuleTunnelForeignSource, foreignDestination: RuleTunnelForeignDestination,
		spoofed: []spoofRule{
			{name: RuleTunnelSourceUnspecified, prefix: netip.MustParsePrefix("0.0.0.0/8")},
			{name: RuleTunnelSourceLoopback, prefix: netip.MustParsePrefix("127.0.0.0/8")},
			{name: RuleTunnelSourceMulticast, prefix: netip.MustParsePrefix("224.0.0.0/4")},
			{name: RuleTunnelSourceBroadcast, rtn: unix.RTN_BROADCAST},
			{name: RuleTunnelSourceReserved, prefix: netip.MustParsePrefix("240.0.0.0/4")},
			{name: RuleTunnelSourceLocal, rtn: unix.RTN_LOCAL},
		},
	}
	ipv6 = family{
		nfproto: unix.NFPROTO_IPV6, saddr: 8, daddr: 24, size: 16, keyType: nftables.TypeIP6Addr,
		icmp: unix.IPPROTO_ICMPV6, portUnreachable: [2]byte{1, 4}, echoReply: 129,
		silenceSet: setSilenceVIPs6, tcpSet: setForwardTCPVIPs6, udpSet: setForwardUDPVIPs6,
		tcpPortSet: setForwardTCPPorts6, udpPortSet: setForwardUDPPorts6,
		tcpReset: RuleSilenceTCPReset6, unreachable: RuleSilencePortUnreachable6, echo: RuleSilenceEchoReply6,
		tcpAll: RuleForwardTCP6, udpAll: RuleForwardUDP6, tcpPorts: RuleForwardTCPPorts6, udpPorts: RuleForwardUDPPorts6,
		balancerSet: setBalancers6, tunnelVIPSet: setTunnelVIPs6,
		foreignSource: RuleTunnelForeignSource6, foreignDestination: RuleTunnelForeignDestination6,
		spoofed: []spoofRule{
			{name: RuleTunnelSourceUnspecified6, prefix: netip.MustParsePrefix("::/128")},
			{name: RuleTunnelSourceLinkLocal, prefix: netip.MustParsePrefix("fe80::/10")},
			{name: RuleTunnelSourceV4Mapped, prefix: netip.MustParsePrefix("::ffff:0:0/96")},
			{name: RuleTunnelSourceLocal6, rtn: unix.RTN_LOCAL},
		},
	}
)

// familyOf is a's family.
func familyOf(a netip.Addr) family {
	if a.Is4() {
		return ipv4
	}
	return ipv6
}

// build queues the whole table on c, after Validate has passed. The caller
// has already queued the deletion of any previous table.
func build(c *nftables.Conn, t *nftables.Table, r Rules) error {
	// Set IDs are per batch; setting them here keeps google/nftables from
	// using its package-global counter.
	var nextSetID uint32
	addSet := func(s *nftables.Set, els []nftables.SetElement) (*nftables.Set, error) {
		nextSetID++
		s.Table, s.ID = t, nextSetID
		if err := c.AddSet(s, els); err != nil {
			return nil, fmt.Errorf("set %s: %w", s.Name, err)
		}
		return s, nil
	}
	addAddrSet := func(name string, f family, addrs []netip.Addr) (*nftables.Set, error) {
		return addSet(&nftables.Set{Name: name, KeyType: f.keyType}, elements(addrs))
	}
	chains := map[string]*nftables.Chain{}
	addChain := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		if ch, ok := chains[name]; ok {
			return ch
		}
		chains[name] = c.AddChain(&nftables.Chain{
			Name:     name,
			Table:    t,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  hook,
			Priority: nftables.ChainPriorityFilter,
			Policy:   ref(nftables.ChainPolicyAccept),
		})
		return chains[name]
	}
	// addRule adds a rule that counts what matches and then acts.
	addRule := func(ch *nftables.Chain, name string, action []expr.Any, match ...[]expr.Any) {
		var exprs []expr.Any
		for _, m := range match {
			exprs = append(exprs, m...)
		}
		exprs = append(append(exprs, &expr.Counter{}), action...)
		c.AddRule(&nftables.Rule{
			Table:    t,
			Chain:    ch,
			Exprs:    exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, name),
		})
	}
	drop := []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	addDrop := func(ch *nftables.Chain, name string, match ...[]expr.Any) {
		addRule(ch, name, drop, match...)
	}

	for _, f := range []family{ipv4, ipv6} {
		var silence []netip.Addr
		for _, a := range r.SilenceVIPs {
			if familyOf(a).nfproto == f.nfproto {
				silence = append(silence, a)
			}
		}
		if len(silence) == 0 {
			continue
		}
		vips, err := addAddrSet(f.silenceSet, f, silence)
		if err != nil {
			return err
		}
		out := addChain(chainOutput, nftables.ChainHookOutput)
		fromVIP := f.addrIn(f.saddr, vips, false)
		// tcp flags rst: (flags & RST) != 0.
		addDrop(out, f.tcpReset, fromVIP, l4proto(unix.IPPROTO_TCP),
			[]expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFlagRST}, Xor: []byte{0}},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0}},
			})
		// icmp type destination-unreachable icmp code port-unreachable, as
		// one two-byte load the way nft itself compiles it.
		addDrop(out, f.unreachable, fromVIP, l4proto(f.icmp),
			[]expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: f.portUnreachable[:]},
			})
		addDrop(out, f.echo, fromVIP, l4proto(f.icmp),
			[]expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.echoReply}},
			})
	}

	if len(r.Forward) > 0 {
		pre := addChain(chainPrerouting, nftables.ChainHookPrerouting)
		// meta pkttype set other
		markOtherHost := []expr.Any{
			&expr.Immediate{Register: 1, Data: []byte{unix.PACKET_OTHERHOST}},
			&expr.Meta{Key: expr.MetaKeyPKTTYPE, SourceRegister: true, Register: 1},
		}
		for _, f := range []family{ipv4, ipv6} {
			for _, proto := range []struct {
				p                 model.Protocols
				num               byte
				vipSet, portSet   string
				allRule, portRule string
			}{
				{model.TCP, unix.IPPROTO_TCP, f.tcpSet, f.tcpPortSet, f.tcpAll, f.tcpPorts},
				{model.UDP, unix.IPPROTO_UDP, f.udpSet, f.udpPortSet, f.udpAll, f.udpPorts},
			} {
				var allPorts []netip.Addr
				var somePorts []nftables.SetElement
				for _, fw := range r.Forward {
					switch {
					case familyOf(fw.VIP).nfproto != f.nfproto || fw.Protocols&proto.p == 0:
					case fw.Ports == nil:
						allPorts = append(allPorts, fw.VIP)
					default:
						somePorts = append(somePorts, vipPortElements(fw.VIP, fw.Ports)...)
					}
				}
				if len(allPorts) > 0 {
					vips, err := addAddrSet(proto.vipSet, f, allPorts)
					if err != nil {
						return err
					}
					addRule(pre, proto.allRule, markOtherHost, l4proto(proto.num), f.addrIn(f.daddr, vips, false))
				}
				if len(somePorts) > 0 {
					vipPorts, err := addSet(&nftables.Set{
						Name:          proto.portSet,
						KeyType:       nftables.MustConcatSetType(f.keyType, nftables.TypeInetService),
						Concatenation: true,
					}, dedup(somePorts))
					if err != nil {
						return err
					}
					// ip daddr . th dport @forward_…_vip_ports: the port goes in
					// the 32-bit register after the address's, as nft compiles it.
					toVIPPort := []expr.Any{
						&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
						&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
						&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.size},
						&expr.Payload{DestRegister: unix.NFT_REG32_00 + f.size/4, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
						&expr.Lookup{SourceRegister: 1, SetName: vipPorts.Name, SetID: vipPorts.ID},
					}
					addRule(pre, proto.portRule, markOtherHost, l4proto(proto.num), toVIPPort)
				}
			}
		}
	}

	if tun := r.Tunnel; tun != nil {
		var names []nftables.SetElement
		for _, d := range tun.Devices {
			names = append(names, nftables.SetElement{Key: ifname(d)})
		}
		// Host byte order, as nft declares strings: `nft list` then prints
		// the names rather than "".
		devices, err := addSet(&nftables.Set{Name: setTunnelDevices, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}, names)
		if err != nil {
			return err
		}
		protos, err := addSet(&nftables.Set{Name: setTunnelProtos, KeyType: nftables.TypeInetProto},
			[]nftables.SetElement{{Key: []byte{unix.IPPROTO_IPIP}}, {Key: []byte{unix.IPPROTO_IPV6}}})
		if err != nil {
			return err
		}
		in := addChain(chainInput, nftables.ChainHookInput)
		// meta l4proto @tunnel_protos
		addDrop(in, RuleTunnelRaw, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: protos.Name, SetID: protos.ID},
		})
		pre := addChain(chainPrerouting, nftables.ChainHookPrerouting)
		// iifname @tunnel_devices
		fromTunnel := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: devices.Name, SetID: devices.ID},
		}
		for _, f := range []family{ipv4, ipv6} {
			of := func(addrs []netip.Addr) []netip.Addr {
				return slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool { return familyOf(a).nfproto != f.nfproto })
			}
			balancers, err := addAddrSet(f.balancerSet, f, of(tun.Balancers))
			if err != nil {
				return err
			}
			vips := of(tun.VIPs)
			vipSet, err := addAddrSet(f.tunnelVIPSet, f, vips)
			if err != nil {
				return err
			}
			// udp dport PORT ip saddr != @balancers
			addDrop(in, f.foreignSource, l4proto(unix.IPPROTO_UDP),
				[]expr.Any{
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, tun.Port)},
				},
				f.addrIn(f.saddr, balancers, true))
			// iifname @tunnel_devices ip daddr != @tunnel_vips
			addDrop(pre, f.foreignDestination, fromTunnel, f.addrIn(f.daddr, vipSet, true))
			if len(vips) == 0 {
				continue // the rule above drops the whole family
			}
			for _, sp := range f.spoofed {
				if sp.prefix.IsValid() {
					addDrop(pre, sp.name, fromTunnel, f.saddrIn(sp.prefix))
				} else {
					addDrop(pre, sp.name, fromTunnel, f.saddrType(sp.rtn))
				}
			}
		}
	}
	return nil
}

// ifname is an interface name as nft keys it: IFNAMSIZ bytes, zero-padded.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// saddrIn matches the family's packets whose source is in the prefix p, as
// nft compiles "ip saddr 127.0.0.0/8": the address masked, then compared.
func (f family) saddrIn(p netip.Prefix) []expr.Any {
	bits := int(f.size) * 8
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.size},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: f.size, Mask: net.CIDRMask(p.Bits(), bits), Xor: make([]byte, f.size)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// saddrType matches the family's packets whose source address has the
// routing type rtn (unix.RTN_LOCAL, RTN_BROADCAST) in the packet's
// namespace, as nft compiles "fib saddr type local": the kernel answers
// from its local table, so it follows the host's addresses by itself.
func (f family) saddrType(rtn uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
		&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, rtn)},
	}
}

const tcpFlagRST = 0x04

// addrIn matches the family's packets whose address at offset (f.saddr or
// f.daddr) is in s, or not in s if invert. The nfproto test is what nft
// adds for "ip saddr" or "ip6 saddr" in an inet table.
func (f family) addrIn(offset uint32, s *nftables.Set, invert bool) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: f.size},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID, Invert: invert},
	}
}

// l4proto matches the transport protocol; a transport-header load after it
// does not match non-first fragments.
func l4proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// elements returns the set elements for addrs, sorted and without
// duplicates (a duplicate in one batch would fail it).
func elements(addrs []netip.Addr) []nftables.SetElement {
	sorted := slices.Clone(addrs)
	slices.SortFunc(sorted, netip.Addr.Compare)
	sorted = slices.Compact(sorted)
	els := make([]nftables.SetElement, len(sorted))
	for i, a := range sorted {
		els[i] = nftables.SetElement{Key: a.AsSlice()}
	}
	return els
}

// vipPortElements returns the port set's elements for vip's ports: the
// address (4 or 16 bytes), then the port padded to the 4-byte register;
// none when there are more than MaxMarkedPorts.
func vipPortElements(vip netip.Addr, ports []model.PortRange) []nftables.SetElement {
	n := 0
	for _, r := range ports {
		n += int(r.Last) - int(r.First) + 1
	}
	if n > MaxMarkedPorts {
		return nil
	}
	els := make([]nftables.SetElement, 0, n)
	a := vip.AsSlice()
	for _, r := range ports {
		for p := int(r.First); p <= int(r.Last); p++ {
			key := append(make([]byte, 0, len(a)+4), a...)
			key = binary.BigEndian.AppendUint16(key, uint16(p))
			els = append(els, nftables.SetElement{Key: append(key, 0, 0)})
		}
	}
	return els
}

// dedup sorts els by key and drops duplicates, which would fail the batch.
func dedup(els []nftables.SetElement) []nftables.SetElement {
	slices.SortFunc(els, func(a, b nftables.SetElement) int { return bytes.Compare(a.Key, b.Key) })
	return slices.CompactFunc(els, func(a, b nftables.SetElement) bool { return bytes.Equal(a.Key, b.Key) })
}

func ref[T any](v T) *T { return &v }
