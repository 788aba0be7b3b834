package flow_test

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/caplance/caplance/internal/flow"
	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// The cross-check builds packets with gopacket, decodes them again with
// gopacket, applies the keying rules to gopacket's fields, and compares that
// with Parse. Both the packet bytes and the expected key come from an
// independent implementation of IPv4, IPv6 and the transports.

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func randIP4(r *rand.Rand) net.IP {
	return net.IPv4(10, byte(r.IntN(256)), byte(r.IntN(256)), byte(1+r.IntN(254))).To4()
}

func randIP6(r *rand.Rand) net.IP {
	ip := make(net.IP, 16)
	ip[0], ip[1], ip[2], ip[3] = 0x20, 0x01, 0x0d, 0xb8
	for i := 4; i < 16; i++ {
		ip[i] = byte(r.IntN(256))
	}
	return ip
}

func randPort(r *rand.Rand) uint16 { return uint16(1 + r.IntN(65535)) }

func ip4Layer(r *rand.Rand, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Id: uint16(r.Uint32()), Protocol: proto, SrcIP: randIP4(r), DstIP: randIP4(r)}
}

func ip6Layer(r *rand.Rand, next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: randIP6(r), DstIP: randIP6(r)}
}

// tcpIn builds a TCP layer with checksums over ip.
func tcpIn(r *rand.Rand, ip gopacket.NetworkLayer) *layers.TCP {
	l := &layers.TCP{SrcPort: layers.TCPPort(randPort(r)), DstPort: layers.TCPPort(randPort(r)), Seq: r.Uint32(), SYN: true, Window: 65535}
	if err := l.SetNetworkLayerForChecksum(ip); err != nil {
		panic(err)
	}
	return l
}

func udpIn(r *rand.Rand, ip gopacket.NetworkLayer) *layers.UDP {
	l := &layers.UDP{SrcPort: layers.UDPPort(randPort(r)), DstPort: layers.UDPPort(randPort(r))}
	if err := l.SetNetworkLayerForChecksum(ip); err != nil {
		panic(err)
	}
	return l
}

func payload(r *rand.Rand) gopacket.Payload {
	b := make([]byte, r.IntN(64))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Packet shapes for the cross-check, each built from random fields.
var crossShapes = []struct {
	name  string
	first gopacket.LayerType
	build func(t *testing.T, r *rand.Rand) []byte
}{
	{"v4/tcp", layers.LayerTypeIPv4, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip4Layer(r, layers.IPProtocolTCP)
		return serialize(t, ip, tcpIn(r, ip), payload(r))
	}},
	{"v4/tcp with options", layers.LayerTypeIPv4, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip4Layer(r, layers.IPProtocolTCP)
		ip.Options = []layers.IPv4Option{{OptionType: 7, OptionLength: 7, OptionData: []byte{4, 0, 0, 0, 0}}, {OptionType: 0}}
		return serialize(t, ip, tcpIn(r, ip), payload(r))
	}},
	{"v4/udp", layers.LayerTypeIPv4, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip4Layer(r, layers.IPProtocolUDP)
		return serialize(t, ip, udpIn(r, ip), payload(r))
	}},
	{"v4/sctp", layers.LayerTypeIPv4, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip4Layer(r, layers.IPProtocolSCTP)
		return serialize(t, ip, &layers.SCTP{SrcPort: layers.SCTPPort(randPort(r)), DstPort: layers.SCTPPort(randPort(r)), VerificationTag: r.Uint32()})
	}},
	{"v4/icmp echo", layers.LayerTypeIPv4, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip4Layer(r, layers.IPProtocolICMPv4)
		typ := []uint8{layers.ICMPv4TypeEchoRequest, layers.ICMPv4TypeEchoReply}[r.IntN(2)]
		return serialize(t, ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: uint16(r.Uint32()), Seq: 1}, payload(r))
	}},
	{"v4/icmp timestamp", layers.LayerTypeIPv4, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip4Layer(r, layers.IPProtocolICMPv4)
		return serialize(t, ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeTimestampRequest, 0), Id: uint16(r.Uint32())}, gopacket.Payload(make([]byte, 12)))
	}},
	{"v4/fragment", layers.LayerTypeIPv4, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip4Layer(r, layers.IPProtocolUDP)
		ip.FragOffset = uint16(r.IntN(3) * 100)
		if ip.FragOffset == 0 || r.IntN(2) == 0 {
			ip.Flags = layers.IPv4MoreFragments
		}
		return serialize(t, ip, udpIn(r, ip), payload(r))
	}},
	{"v4/icmp error quoting udp", layers.LayerTypeIPv4, func(t *testing.T, r *rand.Rand) []byte {
		in := ip4Layer(r, layers.IPProtocolUDP)
		quote := serialize(t, in, udpIn(r, in), payload(r))
		quote = quote[:28] // IP header and 8 bytes of UDP, as routers quote
		ip := ip4Layer(r, layers.IPProtocolICMPv4)
		typ := []layers.ICMPv4TypeCode{
			layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded),
			layers.CreateICMPv4TypeCode(layers.ICMPv4TypeTimeExceeded, 0),
			layers.CreateICMPv4TypeCode(layers.ICMPv4TypeParameterProblem, 0),
		}[r.IntN(3)]
		return serialize(t, ip, &layers.ICMPv4{TypeCode: typ, Seq: 1500}, gopacket.Payload(quote))
	}},
	{"v4/icmp error quoting tcp", layers.LayerTypeIPv4, func(t *testing.T, r *rand.Rand) []byte {
		in := ip4Layer(r, layers.IPProtocolTCP)
		quote := serialize(t, in, tcpIn(r, in))
		ip := ip4Layer(r, layers.IPProtocolICMPv4)
		return serialize(t, ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)}, gopacket.Payload(quote))
	}},
	{"v6/tcp", layers.LayerTypeIPv6, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip6Layer(r, layers.IPProtocolTCP)
		return serialize(t, ip, tcpIn(r, ip), payload(r))
	}},
	{"v6/udp", layers.LayerTypeIPv6, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip6Layer(r, layers.IPProtocolUDP)
		return serialize(t, ip, udpIn(r, ip), payload(r))
	}},
	{"v6/hop-by-hop, destination options, tcp", layers.LayerTypeIPv6, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip6Layer(r, layers.IPProtocolIPv6HopByHop)
		hbh := &layers.IPv6HopByHop{}
		hbh.NextHeader = layers.IPProtocolIPv6Destination
		hbh.Options = []*layers.IPv6HopByHopOption{{OptionType: 5, OptionLength: 2, OptionData: []byte{0, 0}}, {OptionType: 1, OptionLength: 0}}
		ip.HopByHop = hbh
		dst := &layers.IPv6Destination{}
		dst.NextHeader = layers.IPProtocolTCP
		dst.Options = []*layers.IPv6DestinationOption{{OptionType: 1, OptionLength: 4 + 8*uint8(r.IntN(3)), OptionData: make([]byte, 4+8*r.IntN(3))}}
		dst.Options[0].OptionLength = uint8(len(dst.Options[0].OptionData))
		return serialize(t, ip, dst, tcpIn(r, ip), payload(r))
	}},
	{"v6/fragment", layers.LayerTypeIPv6, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip6Layer(r, layers.IPProtocolIPv6Fragment)
		offset := uint16(r.IntN(3) * 100)
		more := offset == 0 || r.IntN(2) == 0
		return serialize(t, ip, gopacket.Payload(cat(frag(pUDP, offset, more), udp(randPort(r), randPort(r)))))
	}},
	{"v6/icmp echo", layers.LayerTypeIPv6, func(t *testing.T, r *rand.Rand) []byte {
		ip := ip6Layer(r, layers.IPProtocolICMPv6)
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode([]uint8{layers.ICMPv6TypeEchoRequest, layers.ICMPv6TypeEchoReply}[r.IntN(2)], 0)}
		if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		return serialize(t, ip, icmp, &layers.ICMPv6Echo{Identifier: uint16(r.Uint32()), SeqNumber: 1}, payload(r))
	}},
	{"v6/icmp packet too big quoting tcp", layers.LayerTypeIPv6, func(t *testing.T, r *rand.Rand) []byte {
		in := ip6Layer(r, layers.IPProtocolTCP)
		quote := serialize(t, in, tcpIn(r, in), payload(r))
		ip := ip6Layer(r, layers.IPProtocolICMPv6)
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypePacketTooBig, 0)}
		if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		mtu := []byte{0, 0, 0x05, 0x00}
		return serialize(t, ip, icmp, gopacket.Payload(cat(mtu, quote)))
	}},
	{"v6/icmp time exceeded quoting a fragment", layers.LayerTypeIPv6, func(t *testing.T, r *rand.Rand) []byte {
		in := ip6Layer(r, layers.IPProtocolIPv6Fragment)
		// gopacket v1.1.19 decodes the Fragment header but cannot serialize it.
		quote := serialize(t, in, gopacket.Payload(cat(frag(pUDP, 0, true), udp(randPort(r), randPort(r)))))
		ip := ip6Layer(r, layers.IPProtocolICMPv6)
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeTimeExceeded, 0)}
		if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		return serialize(t, ip, icmp, gopacket.Payload(cat(make([]byte, 4), quote)))
	}},
}

func TestParseMatchesGopacket(t *testing.T) {
	for _, s := range crossShapes {
		t.Run(s.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			for range 200 {
				pkt := s.build(t, r)
				want := gopacketKey(t, pkt, s.first, false)
				got, _, err := flow.Parse(pkt)
				if err != nil {
					t.Fatalf("Parse(% x): %v", pkt, err)
				}
				if diff := cmp.Diff(want, got, keyCmp); diff != "" {
					t.Fatalf("Parse(% x) differs from gopacket (-want +got):\n%s", pkt, diff)
				}
			}
		})
	}
}

// gopacketKey applies the package's keying rules to gopacket's decoding of pkt.
// A quoted packet may be cut short.
func gopacketKey(t *testing.T, pkt []byte, first gopacket.LayerType, quoted bool) flow.Key {
	t.Helper()
	p := gopacket.NewPacket(pkt, first, gopacket.Default)
	if e := p.ErrorLayer(); e != nil {
		t.Fatalf("gopacket cannot decode % x: %v", pkt, e.Error())
	}
	// gopacket v1.1.19 compares the IPv6 payload length with the payload
	// after the hop-by-hop header and so calls every such packet truncated.
	if p.Metadata().Truncated && !quoted && p.Layer(layers.LayerTypeIPv6HopByHop) == nil {
		t.Fatalf("gopacket finds % x truncated", pkt)
	}
	var k flow.Key
	for _, l := range p.Layers() {
		switch l := l.(type) {
		case *layers.IPv4:
			k.Src, k.Dst = addr(l.SrcIP), addr(l.DstIP)
			k.Proto = uint8(l.Protocol)
			if l.Flags&layers.IPv4MoreFragments != 0 || l.FragOffset != 0 {
				return k
			}
		case *layers.IPv6:
			k.Src, k.Dst = addr(l.SrcIP), addr(l.DstIP)
			k.Proto = uint8(l.NextHeader)
		case *layers.IPv6HopByHop:
			k.Proto = uint8(l.NextHeader)
		case *layers.IPv6Destination:
			k.Proto = uint8(l.NextHeader)
		case *layers.IPv6Fragment:
			k.Proto = uint8(l.NextHeader)
			if l.FragmentOffset != 0 || l.MoreFragments {
				return k
			}
		case *layers.TCP:
			k.SrcPort, k.DstPort = uint16(l.SrcPort), uint16(l.DstPort)
		case *layers.UDP:
			k.SrcPort, k.DstPort = uint16(l.SrcPort), uint16(l.DstPort)
		case *layers.SCTP:
			k.SrcPort, k.DstPort = uint16(l.SrcPort), uint16(l.DstPort)
		case *layers.ICMPv4:
			switch l.TypeCode.Type() {
			case layers.ICMPv4TypeEchoRequest, layers.ICMPv4TypeEchoReply:
				k.SrcPort, k.DstPort = l.Id, l.Id
			case layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4TypeTimeExceeded, layers.ICMPv4TypeParameterProblem:
				return reverse(gopacketKey(t, l.Payload, layers.LayerTypeIPv4, true))
			}
			return k
		case *layers.ICMPv6:
			switch l.TypeCode.Type() {
			case layers.ICMPv6TypeDestinationUnreachable, layers.ICMPv6TypePacketTooBig, layers.ICMPv6TypeTimeExceeded, layers.ICMPv6TypeParameterProblem:
				// gopacket leaves the 4 bytes after the ICMPv6 header in the payload.
				return reverse(gopacketKey(t, l.Payload[4:], layers.LayerTypeIPv6, true))
			}
		case *layers.ICMPv6Echo:
			k.SrcPort, k.DstPort = l.Identifier, l.Identifier
		}
	}
	return k
}

func addr(ip net.IP) [16]byte {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		panic("bad IP " + ip.String())
	}
	return a.As16()
}

func reverse(k flow.Key) flow.Key {
	return flow.Key{Src: k.Dst, Dst: k.Src, SrcPort: k.DstPort, DstPort: k.SrcPort, Proto: k.Proto}
}

// gopacketKeyer is BenchmarkParse's baseline: the key Parse gives, from
// gopacket's DecodingLayerParser reused across packets as gopacket advises
// for speed. It covers the shapes of benchPackets, as TestGopacketKeyer
// checks, and no more (no ICMPv6, no IPv6 fragments).
type gopacketKeyer struct {
	ip4           layers.IPv4
	ip6           layers.IPv6
	ext           layers.IPv6ExtensionSkipper
	ah            ahSkipper
	tcp           layers.TCP
	udp           layers.UDP
	icmp          layers.ICMPv4
	quoted        layers.IPv4
	v4, v6, quote *gopacket.DecodingLayerParser
	decoded       []gopacket.LayerType
}

func newGopacketKeyer() *gopacketKeyer {
	g := &gopacketKeyer{}
	ls := []gopacket.DecodingLayer{&g.ip4, &g.ip6, &g.ext, &g.ah, &g.tcp, &g.udp, &g.icmp}
	g.v4 = gopacket.NewDecodingLayerParser(layers.LayerTypeIPv4, ls...)
	g.v6 = gopacket.NewDecodingLayerParser(layers.LayerTypeIPv6, ls...)
	g.quote = gopacket.NewDecodingLayerParser(layers.LayerTypeIPv4, &g.quoted)
	for _, p := range []*gopacket.DecodingLayerParser{g.v4, g.v6, g.quote} {
		// Decoding ends without error at a layer with no decoder: an IPv4
		// fragment's payload, a UDP payload, a quoted transport header.
		p.IgnoreUnsupported = true
	}
	return g
}

var errQuote = errors.New("ICMP error quotes too little")

func (g *gopacketKeyer) key(pkt []byte) (flow.Key, error) {
	p := g.v4
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		p = g.v6
	}
	if err := p.DecodeLayers(pkt, &g.decoded); err != nil {
		return flow.Key{}, err
	}
	var k flow.Key
	for _, t := range g.decoded {
		switch t {
		case layers.LayerTypeIPv4:
			k.Src, k.Dst, k.Proto = addr(g.ip4.SrcIP), addr(g.ip4.DstIP), uint8(g.ip4.Protocol)
		case layers.LayerTypeIPv6:
			k.Src, k.Dst, k.Proto = addr(g.ip6.SrcIP), addr(g.ip6.DstIP), uint8(g.ip6.NextHeader)
			if g.ip6.HopByHop != nil {
				k.Proto = uint8(g.ip6.HopByHop.NextHeader)
			}
		// g.ext and g.ah hold the last header of their kind, so the chain's
		// last header, met last here, sets Proto.
		case layers.LayerTypeIPv6Routing, layers.LayerTypeIPv6Destination:
			k.Proto = uint8(g.ext.NextHeader)
		case layers.LayerTypeIPSecAH:
			k.Proto = uint8(g.ah.NextHeader)
		case layers.LayerTypeTCP:
			k.SrcPort, k.DstPort = uint16(g.tcp.SrcPort), uint16(g.tcp.DstPort)
		case layers.LayerTypeUDP:
			k.SrcPort, k.DstPort = uint16(g.udp.SrcPort), uint16(g.udp.DstPort)
		case layers.LayerTypeICMPv4:
			switch g.icmp.TypeCode.Type() {
			case layers.ICMPv4TypeEchoRequest, layers.ICMPv4TypeEchoReply:
				k.SrcPort, k.DstPort = g.icmp.Id, g.icmp.Id
			case layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4TypeTimeExceeded, layers.ICMPv4TypeParameterProblem:
				return g.quoteKey(g.icmp.Payload)
			}
		}
	}
	return k, nil
}

// quoteKey is the key of the packet an ICMPv4 error quotes, reversed. A quote
// carries 8 bytes of the transport header, too few for gopacket's TCP layer,
// so the ports are read by hand.
func (g *gopacketKeyer) quoteKey(quote []byte) (flow.Key, error) {
	if err := g.quote.DecodeLayers(quote, &g.decoded); err != nil {
		return flow.Key{}, err
	}
	q := &g.quoted
	if len(g.decoded) == 0 || len(q.Payload) < 4 {
		return flow.Key{}, errQuote
	}
	k := flow.Key{Src: addr(q.SrcIP), Dst: addr(q.DstIP), Proto: uint8(q.Protocol)}
	fragment := q.Flags&layers.IPv4MoreFragments != 0 || q.FragOffset != 0
	if !fragment && (q.Protocol == layers.IPProtocolTCP || q.Protocol == layers.IPProtocolUDP) {
		k.SrcPort, k.DstPort = binary.BigEndian.Uint16(q.Payload), binary.BigEndian.Uint16(q.Payload[2:])
	}
	return reverse(k), nil
}

// ahSkipper skips an IP Authentication Header, whose length is in 4-byte
// units: gopacket v1.1.19 decodes AH in gopacket.NewPacket only, not as a
// DecodingLayer.
type ahSkipper struct {
	layers.BaseLayer
	NextHeader layers.IPProtocol
}

func (a *ahSkipper) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	if len(data) < 8 || len(data) < (int(data[1])+2)*4 {
		df.SetTruncated()
		return errors.New("AH truncated")
	}
	n := (int(data[1]) + 2) * 4
	a.NextHeader = layers.IPProtocol(data[0])
	a.BaseLayer = layers.BaseLayer{Contents: data[:n], Payload: data[n:]}
	return nil
}

func (a *ahSkipper) CanDecode() gopacket.LayerClass    { return layers.LayerTypeIPSecAH }
func (a *ahSkipper) NextLayerType() gopacket.LayerType { return a.NextHeader.LayerType() }

// TestGopacketKeyer checks that BenchmarkParse's baseline gets Parse's keys.
func TestGopacketKeyer(t *testing.T) {
	g := newGopacketKeyer()
	for _, bp := range benchPackets {
		t.Run(bp.name, func(t *testing.T) {
			want, _, err := flow.Parse(bp.pkt)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got, err := g.key(bp.pkt)
			if err != nil {
				t.Fatalf("gopacketKeyer: %v", err)
			}
			if diff := cmp.Diff(want, got, keyCmp); diff != "" {
				t.Errorf("gopacketKeyer differs from Parse (-Parse +gopacket):\n%s", diff)
			}
		})
	}
}
