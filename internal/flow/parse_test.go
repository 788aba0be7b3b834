package flow_test

import (
	"bytes"
	"testing"

	"github.com/caplance/caplance/internal/flow"
	"github.com/google/go-cmp/cmp"
)

type parseTest struct {
	name string
	pkt  []byte
	want flow.Key
	err  error
}

// Frequently used packets.
var (
	tcp4 = v4(pTCP, client4, vip4, tcp(1234, 80))
	tcp6 = v6(pTCP, client6, vip6, tcp(1234, 80))
	// What the backends send back to the client, which ICMP errors quote.
	reply4 = v4(pTCP, vip4, client4, tcp(80, 1234))
	reply6 = v6(pTCP, vip6, client6, tcp(80, 1234))

	flowTCP4 = key(pTCP, client4, 1234, vip4, 80)
	flowTCP6 = key(pTCP, client6, 1234, vip6, 80)
)

// chain returns n destination options headers of 8 bytes, then next.
func chain(n int, next uint8) []byte {
	var b []byte
	for i := 0; i < n-1; i++ {
		b = append(b, ext(pDestOpts, 8)...)
	}
	return append(b, ext(next, 8)...)
}

var parseTests = []parseTest{
	// IPv4 header checks.
	{name: "empty", pkt: nil, err: flow.ErrTooShort},
	{name: "v4/short header", pkt: cut(tcp4, 19), err: flow.ErrTooShort},
	{name: "version 0", pkt: set(tcp4, 0, 0x05), err: flow.ErrVersion},
	{name: "version 5", pkt: set(tcp4, 0, 0x55), err: flow.ErrVersion},
	{name: "v4/IHL 4", pkt: set(tcp4, 0, 0x44), err: flow.ErrHeaderLength},
	{name: "v4/IHL past packet", pkt: set(tcp4, 0, 0x4f), err: flow.ErrHeaderLength},
	{name: "v4/total length below header", pkt: set16(tcp4, 2, 19), err: flow.ErrTotalLength},
	{name: "v4/total length below IHL with options", pkt: set16(v4opts(pTCP, client4, vip4, make([]byte, 8), tcp(1234, 80)), 2, 24), err: flow.ErrTotalLength},
	{name: "v4/total length past packet", pkt: set16(tcp4, 2, 41), err: flow.ErrTotalLength},
	{name: "v4/total length is the header, no transport", pkt: set16(tcp4, 2, 20), err: flow.ErrTruncatedTransport},

	// IPv4 5-tuples.
	{name: "v4/tcp", pkt: tcp4, want: flowTCP4},
	{name: "v4/tcp with options", pkt: v4opts(pTCP, client4, vip4, []byte{1, 1, 1, 0, 1, 1, 1, 0}, tcp(1234, 80)), want: flowTCP4},
	{name: "v4/tcp with Ethernet padding", pkt: cat(tcp4, make([]byte, 6)), want: flowTCP4},
	{name: "v4/DF is not a fragment", pkt: set16(tcp4, 6, 0x4000), want: flowTCP4},
	{name: "v4/udp", pkt: v4(pUDP, client4, vip4, udp(5353, 53)), want: key(pUDP, client4, 5353, vip4, 53)},
	{name: "v4/udplite", pkt: v4(pUDPLite, client4, vip4, ports(7, 8, 8)), want: key(pUDPLite, client4, 7, vip4, 8)},
	{name: "v4/sctp", pkt: v4(pSCTP, client4, vip4, ports(2905, 2906, 12)), want: key(pSCTP, client4, 2905, vip4, 2906)},
	{name: "v4/dccp", pkt: v4(pDCCP, client4, vip4, ports(5004, 5005, 12)), want: key(pDCCP, client4, 5004, vip4, 5005)},
	{name: "v4/tcp header cut short", pkt: v4(pTCP, client4, vip4, ports(1234, 80, 19)), err: flow.ErrTruncatedTransport},
	// The buffer holds a whole TCP header but the total length ends it early:
	// the transport must be read within the total length.
	{name: "v4/tcp beyond total length", pkt: set16(tcp4, 2, 39), err: flow.ErrTruncatedTransport},
	{name: "v4/udp header cut short", pkt: v4(pUDP, client4, vip4, ports(1, 2, 7)), err: flow.ErrTruncatedTransport},
	{name: "v4/sctp header cut short", pkt: v4(pSCTP, client4, vip4, ports(1, 2, 11)), err: flow.ErrTruncatedTransport},
	{name: "v4/dccp header cut short", pkt: v4(pDCCP, client4, vip4, ports(1, 2, 11)), err: flow.ErrTruncatedTransport},

	// IPv4 3-tuples.
	{name: "v4/unknown protocol", pkt: v4(pGRE, client4, vip4, make([]byte, 4)), want: key(pGRE, client4, 0, vip4, 0)},
	{name: "v4/esp", pkt: v4(pESP, client4, vip4, make([]byte, 16)), want: key(pESP, client4, 0, vip4, 0)},
	{name: "v4/icmpv6 number is not icmp in v4", pkt: v4(pICMPv6, client4, vip4, icmpEcho(8, 7)), want: key(pICMPv6, client4, 0, vip4, 0)},
	{name: "v4/first fragment", pkt: v4frag(pTCP, client4, vip4, 0, true, tcp(1234, 80)), want: key(pTCP, client4, 0, vip4, 0)},
	{name: "v4/middle fragment", pkt: v4frag(pTCP, client4, vip4, 185, true, make([]byte, 16)), want: key(pTCP, client4, 0, vip4, 0)},
	{name: "v4/last fragment", pkt: v4frag(pUDP, client4, vip4, 370, false, make([]byte, 3)), want: key(pUDP, client4, 0, vip4, 0)},
	{name: "v4/fragment with DF and offset", pkt: v4frag(pUDP, client4, vip4, 0x4000|1, false, nil), want: key(pUDP, client4, 0, vip4, 0)},
	{name: "v4/fragmented icmp error is not looked into", pkt: v4frag(pICMP, router4, vip4, 0, true, icmpErr(3, 4, quoteOf(reply4))), want: key(pICMP, router4, 0, vip4, 0)},

	// ICMPv4.
	{name: "v4/icmp echo request", pkt: v4(pICMP, client4, vip4, icmpEcho(8, 0x1234)), want: key(pICMP, client4, 0x1234, vip4, 0x1234)},
	{name: "v4/icmp echo reply", pkt: v4(pICMP, client4, vip4, icmpEcho(0, 0x1234)), want: key(pICMP, client4, 0x1234, vip4, 0x1234)},
	{name: "v4/icmp echo cut short", pkt: v4(pICMP, client4, vip4, cut(icmpEcho(8, 1), 7)), err: flow.ErrTruncatedTransport},
	{name: "v4/icmp timestamp", pkt: v4(pICMP, client4, vip4, icmpEcho(13, 0x1234)), want: key(pICMP, client4, 0, vip4, 0)},
	{name: "v4/icmp redirect", pkt: v4(pICMP, router4, vip4, icmpErr(5, 1, quoteOf(reply4))), want: key(pICMP, router4, 0, vip4, 0)},
	{name: "v4/icmp frag needed", pkt: v4(pICMP, router4, vip4, icmpErr(3, 4, quoteOf(reply4))), want: flowTCP4},
	{name: "v4/icmp port unreachable, whole quote", pkt: v4(pICMP, router4, vip4, icmpErr(3, 3, reply4)), want: flowTCP4},
	{name: "v4/icmp time exceeded", pkt: v4(pICMP, router4, vip4, icmpErr(11, 0, quoteOf(v4(pUDP, vip4, client4, udp(53, 5353))))), want: key(pUDP, client4, 5353, vip4, 53)},
	{name: "v4/icmp parameter problem", pkt: v4(pICMP, router4, vip4, icmpErr(12, 0, quoteOf(reply4))), want: flowTCP4},
	{name: "v4/icmp error with Ethernet padding", pkt: cat(v4(pICMP, router4, vip4, icmpErr(3, 4, quoteOf(reply4))), make([]byte, 6)), want: flowTCP4},
	{name: "v4/icmp error quoting options", pkt: v4(pICMP, router4, vip4, icmpErr(3, 4, quoteOf(v4opts(pTCP, vip4, client4, make([]byte, 12), tcp(80, 1234))))), want: flowTCP4},
	{name: "v4/icmp error quoting a fragment", pkt: v4(pICMP, router4, vip4, icmpErr(3, 4, cut(v4frag(pUDP, vip4, client4, 0, true, udp(53, 5353)), 28))), want: key(pUDP, client4, 0, vip4, 0)},
	{name: "v4/icmp error quoting an echo reply", pkt: v4(pICMP, router4, vip4, icmpErr(3, 1, v4(pICMP, vip4, client4, icmpEcho(0, 0x1234)))), want: key(pICMP, client4, 0x1234, vip4, 0x1234)},
	{name: "v4/icmp error quoting an unknown protocol", pkt: v4(pICMP, router4, vip4, icmpErr(3, 1, v4(pGRE, vip4, client4, make([]byte, 8)))), want: key(pGRE, client4, 0, vip4, 0)},
	{name: "v4/icmp error quoting icmp timestamp", pkt: v4(pICMP, router4, vip4, icmpErr(3, 1, v4(pICMP, vip4, client4, icmpEcho(14, 9)))), want: key(pICMP, client4, 0, vip4, 0)},
	{name: "v4/icmp error quoting an icmp error", pkt: v4(pICMP, router4, vip4, icmpErr(3, 1, quoteOf(v4(pICMP, vip4, client4, icmpErr(11, 0, quoteOf(reply4)))))), err: flow.ErrICMPNested},
	{name: "v4/icmp error cut short", pkt: v4(pICMP, router4, vip4, []byte{3, 4, 0, 0, 0, 0, 5}), err: flow.ErrTruncatedTransport},
	{name: "v4/icmp error quoting nothing", pkt: v4(pICMP, router4, vip4, icmpErr(3, 4, nil)), err: flow.ErrICMPEmbedded},
	{name: "v4/icmp error quoting IPv6", pkt: v4(pICMP, router4, vip4, icmpErr(3, 4, reply6)), err: flow.ErrICMPEmbedded},
	{name: "v4/icmp error quoting a short header", pkt: v4(pICMP, router4, vip4, icmpErr(3, 4, cut(reply4, 19))), err: flow.ErrICMPEmbedded},
	{name: "v4/icmp error quoting bad IHL", pkt: v4(pICMP, router4, vip4, icmpErr(3, 4, set(quoteOf(reply4), 0, 0x44))), err: flow.ErrICMPEmbedded},
	{name: "v4/icmp error quoting bad total length", pkt: v4(pICMP, router4, vip4, icmpErr(3, 4, set16(quoteOf(reply4), 2, 19))), err: flow.ErrICMPEmbedded},
	{name: "v4/icmp error quoting 7 bytes of transport", pkt: v4(pICMP, router4, vip4, icmpErr(3, 4, cut(reply4, 27))), err: flow.ErrICMPEmbedded},
	// The quote ends where its own total length says, even if more follows
	// (RFC 4884 extensions).
	{name: "v4/icmp error quote ends at its total length", pkt: v4(pICMP, router4, vip4, icmpErr(3, 4, cat(set16(quoteOf(reply4), 2, 24), make([]byte, 8)))), err: flow.ErrICMPEmbedded},

	// IPv6 header and extension headers.
	{name: "v6/short header", pkt: cut(tcp6, 39), err: flow.ErrTooShort},
	{name: "v6/payload length past packet", pkt: set16(tcp6, 4, 21), err: flow.ErrTotalLength},
	{name: "v6/tcp", pkt: tcp6, want: flowTCP6},
	{name: "v6/tcp with trailing bytes", pkt: cat(tcp6, make([]byte, 6)), want: flowTCP6},
	{name: "v6/tcp beyond payload length", pkt: set16(tcp6, 4, 19), err: flow.ErrTruncatedTransport},
	{name: "v6/udp", pkt: v6(pUDP, client6, vip6, udp(5353, 53)), want: key(pUDP, client6, 5353, vip6, 53)},
	{name: "v6/udplite", pkt: v6(pUDPLite, client6, vip6, ports(7, 8, 8)), want: key(pUDPLite, client6, 7, vip6, 8)},
	{name: "v6/sctp", pkt: v6(pSCTP, client6, vip6, ports(2905, 2906, 12)), want: key(pSCTP, client6, 2905, vip6, 2906)},
	{name: "v6/dccp", pkt: v6(pDCCP, client6, vip6, ports(5004, 5005, 12)), want: key(pDCCP, client6, 5004, vip6, 5005)},
	{name: "v6/udp header cut short", pkt: v6(pUDP, client6, vip6, ports(1, 2, 7)), err: flow.ErrTruncatedTransport},
	{name: "v6/no next header", pkt: v6(pNoNext, client6, vip6, nil), want: key(pNoNext, client6, 0, vip6, 0)},
	{name: "v6/esp", pkt: v6(pESP, client6, vip6, make([]byte, 16)), want: key(pESP, client6, 0, vip6, 0)},
	{name: "v6/icmp number is not icmpv6 in v6", pkt: v6(pICMP, client6, vip6, icmpEcho(128, 7)), want: key(pICMP, client6, 0, vip6, 0)},
	{name: "v6/hop-by-hop, tcp", pkt: v6(pHopByHop, client6, vip6, cat(ext(pTCP, 8), tcp(1234, 80))), want: flowTCP6},
	{name: "v6/hop-by-hop, routing, destination options, udp", pkt: v6(pHopByHop, client6, vip6, cat(ext(pRouting, 16), ext(pDestOpts, 24), ext(pUDP, 8), udp(5353, 53))), want: key(pUDP, client6, 5353, vip6, 53)},
	// (len+2)*4 = 24 bytes; read as (len+1)*8 it would be 40.
	{name: "v6/ah, tcp", pkt: v6(pAH, client6, vip6, cat(ah(pTCP, 24), tcp(1234, 80), make([]byte, 16))), want: flowTCP6},
	{name: "v6/destination options, esp", pkt: v6(pDestOpts, client6, vip6, cat(ext(pESP, 8), make([]byte, 16))), want: key(pESP, client6, 0, vip6, 0)},
	{name: "v6/8 extension headers", pkt: v6(pDestOpts, client6, vip6, cat(chain(8, pTCP), tcp(1234, 80))), want: flowTCP6},
	{name: "v6/9 extension headers", pkt: v6(pDestOpts, client6, vip6, cat(chain(9, pTCP), tcp(1234, 80))), err: flow.ErrExtensionHeaders},
	{name: "v6/9 extension headers ending in no next header", pkt: v6(pDestOpts, client6, vip6, chain(9, pNoNext)), err: flow.ErrExtensionHeaders},
	{name: "v6/hop-by-hop not first", pkt: v6(pDestOpts, client6, vip6, cat(ext(pHopByHop, 8), ext(pTCP, 8), tcp(1234, 80))), err: flow.ErrExtensionHeaders},
	{name: "v6/extension header under 8 bytes", pkt: v6(pDestOpts, client6, vip6, cut(ext(pTCP, 8), 7)), err: flow.ErrExtensionHeaders},
	{name: "v6/extension header past payload", pkt: v6(pDestOpts, client6, vip6, cat(ext(pTCP, 16), make([]byte, 8))[:8]), err: flow.ErrExtensionHeaders},
	{name: "v6/extension header past payload length, within buffer", pkt: set16(v6(pRouting, client6, vip6, cat(ext(pTCP, 16), tcp(1234, 80))), 4, 8), err: flow.ErrExtensionHeaders},
	{name: "v6/ah past payload", pkt: v6(pAH, client6, vip6, cut(ah(pTCP, 24), 20)), err: flow.ErrExtensionHeaders},

	// IPv6 fragments.
	{name: "v6/first fragment", pkt: v6(pFragment, client6, vip6, cat(frag(pTCP, 0, true), tcp(1234, 80))), want: key(pTCP, client6, 0, vip6, 0)},
	{name: "v6/middle fragment", pkt: v6(pFragment, client6, vip6, cat(frag(pTCP, 181, true), make([]byte, 16))), want: key(pTCP, client6, 0, vip6, 0)},
	{name: "v6/last fragment", pkt: v6(pFragment, client6, vip6, cat(frag(pUDP, 362, false), make([]byte, 3))), want: key(pUDP, client6, 0, vip6, 0)},
	{name: "v6/fragment after hop-by-hop", pkt: v6(pHopByHop, client6, vip6, cat(ext(pFragment, 8), frag(pUDP, 1, false))), want: key(pUDP, client6, 0, vip6, 0)},
	{name: "v6/fragment of destination options", pkt: v6(pFragment, client6, vip6, cat(frag(pDestOpts, 0, true), ext(pTCP, 8), tcp(1234, 80))), want: key(pDestOpts, client6, 0, vip6, 0)},
	{name: "v6/atomic fragment is a whole datagram", pkt: v6(pFragment, client6, vip6, cat(frag(pTCP, 0, false), tcp(1234, 80))), want: flowTCP6},
	{name: "v6/atomic fragment, reserved bits set", pkt: v6(pFragment, client6, vip6, cat(set(frag(pTCP, 0, false), 3, 0x06), tcp(1234, 80))), want: flowTCP6},
	{name: "v6/fragment header cut short", pkt: v6(pFragment, client6, vip6, cut(frag(pTCP, 1, true), 7)), err: flow.ErrExtensionHeaders},

	// ICMPv6.
	{name: "v6/icmp echo request", pkt: v6(pICMPv6, client6, vip6, icmpEcho(128, 0x1234)), want: key(pICMPv6, client6, 0x1234, vip6, 0x1234)},
	{name: "v6/icmp echo reply", pkt: v6(pICMPv6, client6, vip6, icmpEcho(129, 0x1234)), want: key(pICMPv6, client6, 0x1234, vip6, 0x1234)},
	{name: "v6/icmp v4 echo type is not echo", pkt: v6(pICMPv6, client6, vip6, icmpEcho(8, 0x1234)), want: key(pICMPv6, client6, 0, vip6, 0)},
	{name: "v6/icmp neighbor solicitation", pkt: v6(pICMPv6, client6, vip6, icmpEcho(135, 0x1234)), want: key(pICMPv6, client6, 0, vip6, 0)},
	{name: "v6/hop-by-hop, icmp MLD report", pkt: v6(pHopByHop, client6, vip6, cat(ext(pICMPv6, 8), icmpEcho(143, 0))), want: key(pICMPv6, client6, 0, vip6, 0)},
	{name: "v6/icmp echo cut short", pkt: v6(pICMPv6, client6, vip6, cut(icmpEcho(128, 1), 7)), err: flow.ErrTruncatedTransport},
	{name: "v6/icmp destination unreachable", pkt: v6(pICMPv6, router6, vip6, icmpErr(1, 4, reply6)), want: flowTCP6},
	{name: "v6/icmp packet too big", pkt: v6(pICMPv6, router6, vip6, icmpErr(2, 0, reply6)), want: flowTCP6},
	{name: "v6/icmp time exceeded", pkt: v6(pICMPv6, router6, vip6, icmpErr(3, 0, v6(pUDP, vip6, client6, udp(53, 5353)))), want: key(pUDP, client6, 5353, vip6, 53)},
	{name: "v6/icmp parameter problem", pkt: v6(pICMPv6, router6, vip6, icmpErr(4, 0, reply6)), want: flowTCP6},
	{name: "v6/icmp packet too big, quote cut short", pkt: v6(pICMPv6, router6, vip6, icmpErr(2, 0, cut(reply6, 48))), want: flowTCP6},
	{name: "v6/icmp packet too big, quote with extension headers", pkt: v6(pICMPv6, router6, vip6, icmpErr(2, 0, v6(pDestOpts, vip6, client6, cat(ext(pAH, 16), ah(pTCP, 16), tcp(80, 1234))))), want: flowTCP6},
	{name: "v6/icmp packet too big, quoting a fragment", pkt: v6(pICMPv6, router6, vip6, icmpErr(2, 0, v6(pFragment, vip6, client6, cat(frag(pUDP, 0, true), udp(53, 5353))))), want: key(pUDP, client6, 0, vip6, 0)},
	{name: "v6/icmp error quoting an echo reply", pkt: v6(pICMPv6, router6, vip6, icmpErr(1, 0, v6(pICMPv6, vip6, client6, icmpEcho(129, 0x1234)))), want: key(pICMPv6, client6, 0x1234, vip6, 0x1234)},
	{name: "v6/icmp error quoting an icmp error", pkt: v6(pICMPv6, router6, vip6, icmpErr(1, 0, v6(pICMPv6, vip6, client6, icmpErr(2, 0, reply6)))), err: flow.ErrICMPNested},
	{name: "v6/icmp error quoting IPv4", pkt: v6(pICMPv6, router6, vip6, icmpErr(2, 0, reply4)), err: flow.ErrICMPEmbedded},
	{name: "v6/icmp error quoting a short header", pkt: v6(pICMPv6, router6, vip6, icmpErr(2, 0, cut(reply6, 39))), err: flow.ErrICMPEmbedded},
	{name: "v6/icmp error quoting a cut extension chain", pkt: v6(pICMPv6, router6, vip6, icmpErr(2, 0, cut(v6(pDestOpts, vip6, client6, cat(ext(pTCP, 16), tcp(80, 1234))), 50))), err: flow.ErrICMPEmbedded},
	{name: "v6/icmp error quoting 7 bytes of transport", pkt: v6(pICMPv6, router6, vip6, icmpErr(2, 0, cut(reply6, 47))), err: flow.ErrICMPEmbedded},
	{name: "v6/icmp error cut short", pkt: v6(pICMPv6, router6, vip6, []byte{2, 0, 0, 0, 0, 0, 5}), err: flow.ErrTruncatedTransport},
}

func TestParse(t *testing.T) {
	for _, tt := range parseTests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := flow.Parse(tt.pkt)
			if diff := cmp.Diff(tt.want, got, keyCmp); diff != "" {
				t.Errorf("Parse key mismatch (-want +got):\n%s", diff)
			}
			if err != tt.err {
				t.Errorf("Parse error = %v, want %v", err, tt.err)
			}
		})
	}
}

// TestParseTCPFlags: Parse reports the flags of the client's own TCP
// segment, and no flags for anything else, a quoted TCP header included.
func TestParseTCPFlags(t *testing.T) {
	withFlags := func(l4 []byte, f flow.TCPFlags) []byte { return set(l4, 13, byte(f)) }
	tests := []struct {
		name string
		pkt  []byte
		want flow.TCPFlags
	}{
		{"v4 SYN", v4(pTCP, client4, vip4, withFlags(tcp(1234, 80), flow.SYN)), flow.SYN},
		{"v4 FIN ACK", v4(pTCP, client4, vip4, withFlags(tcp(1234, 80), flow.FIN|flow.ACK)), flow.FIN | flow.ACK},
		{"v4 with options RST", v4opts(pTCP, client4, vip4, make([]byte, 4), withFlags(tcp(1234, 80), flow.RST)), flow.RST},
		{"v6 behind an extension header RST ACK", v6(pDestOpts, client6, vip6, cat(ext(pTCP, 16), withFlags(tcp(1234, 80), flow.RST|flow.ACK))), flow.RST | flow.ACK},
		{"v4 fragment", v4frag(pTCP, client4, vip4, 0, true, withFlags(tcp(1234, 80), flow.FIN)), 0},
		{"v4 UDP", v4(pUDP, client4, vip4, cat(udp(1234, 80), bytes.Repeat([]byte{0xff}, 12))), 0},
		{"v4 ICMP error quoting a FIN", v4(pICMP, router4, vip4, icmpErr(3, 4, v4(pTCP, vip4, client4, withFlags(tcp(80, 1234), flow.FIN)))), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got, err := flow.Parse(tt.pkt)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("flags %#x, want %#x", got, tt.want)
			}
		})
	}
}

// TestParseTrailingBytes: bytes past the IP length fields never change the
// result of a packet Parse accepts.
func TestParseTrailingBytes(t *testing.T) {
	for _, tt := range parseTests {
		if tt.err != nil {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			padded := cat(tt.pkt, bytes.Repeat([]byte{0xff}, 64))
			got, _, err := flow.Parse(padded)
			if err != nil {
				t.Fatalf("Parse with trailing bytes: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, keyCmp); diff != "" {
				t.Errorf("Parse key mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestParseFragmentsAlike: every fragment of one datagram gets the same key.
func TestParseFragmentsAlike(t *testing.T) {
	tests := []struct {
		name  string
		frags [][]byte
	}{
		{"v4", [][]byte{
			v4frag(pUDP, client4, vip4, 0, true, cat(udp(5353, 53), make([]byte, 8))),
			v4frag(pUDP, client4, vip4, 2, true, make([]byte, 16)),
			v4frag(pUDP, client4, vip4, 4, false, make([]byte, 5)),
		}},
		{"v6", [][]byte{
			v6(pFragment, client6, vip6, cat(frag(pUDP, 0, true), udp(5353, 53), make([]byte, 8))),
			v6(pFragment, client6, vip6, cat(frag(pUDP, 2, true), make([]byte, 16))),
			v6(pFragment, client6, vip6, cat(frag(pUDP, 4, false), make([]byte, 5))),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, _, err := flow.Parse(tt.frags[0])
			if err != nil {
				t.Fatal(err)
			}
			for i, f := range tt.frags[1:] {
				got, _, err := flow.Parse(f)
				if err != nil {
					t.Fatalf("fragment %d: %v", i+1, err)
				}
				if diff := cmp.Diff(first, got, keyCmp); diff != "" {
					t.Errorf("fragment %d key differs from the first's (-want +got):\n%s", i+1, diff)
				}
			}
		})
	}
}

// TestMalformed pins the reasons' numbers and names, which counters and
// dashboards depend on, and checks that the table exercises every one.
func TestMalformed(t *testing.T) {
	want := []string{
		"too_short",
		"version",
		"header_length",
		"total_length",
		"extension_headers",
		"truncated_transport",
		"icmp_embedded",
		"icmp_nested",
	}
	var got []string
	for m := range flow.NumMalformed {
		got = append(got, flow.Malformed(m).String())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reasons changed (-want +got):\n%s", diff)
	}

	seen := map[error]bool{}
	messages := map[string]bool{}
	for _, tt := range parseTests {
		seen[tt.err] = true
	}
	for m := range flow.NumMalformed {
		r := flow.Malformed(m)
		if !seen[r] {
			t.Errorf("no Parse test case returns %s", r)
		}
		if messages[r.Error()] {
			t.Errorf("%s: message %q is not distinct", r, r.Error())
		}
		messages[r.Error()] = true
	}

	out := flow.Malformed(flow.NumMalformed)
	if out.String() != "unknown" || out.Error() != "flow: malformed packet" {
		t.Errorf("out of range: String %q, Error %q", out.String(), out.Error())
	}
}

func TestKeyString(t *testing.T) {
	tests := []struct {
		key  flow.Key
		want string
	}{
		{flowTCP4, "tcp 10.0.0.1:1234 -> 10.0.0.100:80"},
		{flowTCP6, "tcp [2001:db8::1]:1234 -> [2001:db8::100]:80"},
		{key(pUDP, client4, 0, vip4, 0), "udp 10.0.0.1 -> 10.0.0.100"},
		{key(pICMP, client4, 7, vip4, 7), "icmp 10.0.0.1:7 -> 10.0.0.100:7"},
		{key(pICMPv6, client6, 0, vip6, 0), "icmpv6 2001:db8::1 -> 2001:db8::100"},
		{key(pUDPLite, client4, 1, vip4, 2), "udplite 10.0.0.1:1 -> 10.0.0.100:2"},
		{key(pSCTP, client4, 1, vip4, 2), "sctp 10.0.0.1:1 -> 10.0.0.100:2"},
		{key(pDCCP, client4, 1, vip4, 2), "dccp 10.0.0.1:1 -> 10.0.0.100:2"},
		{key(pGRE, client4, 0, vip4, 0), "proto-47 10.0.0.1 -> 10.0.0.100"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.key.String()); diff != "" {
				t.Errorf("String mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
