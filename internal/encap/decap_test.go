package encap_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/caplance/caplance/internal/encap"
)

// rawOuter wraps payload in an outer IPv4+UDP header built by gopacket, not
// by Encapsulate, so the receiver can be fed inner packets Encapsulate would
// refuse. gopacket fills in a real UDP checksum, which the receiver ignores.
func rawOuter(t testing.TB, src netip.Addr, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{
		Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: net.IP(src.AsSlice()), DstIP: net.IP(backend.AsSlice()),
	}
	udp := &layers.UDP{SrcPort: 50000, DstPort: layers.UDPPort(encapPort)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, ip, udp, gopacket.Payload(payload))
}

// rawOuter6 wraps payload in an outer IPv6+UDP header built by gopacket, with
// its UDP checksum, from src to the backend.
func rawOuter6(t testing.TB, src netip.Addr, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv6{
		Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP,
		SrcIP: net.IP(src.AsSlice()), DstIP: net.IP(backend6.AsSlice()),
	}
	udp := &layers.UDP{SrcPort: 50000, DstPort: layers.UDPPort(encapPort)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, ip, udp, gopacket.Payload(payload))
}

// withOuterOptions inserts four NOP option bytes into pkt's outer IPv4 header.
func withOuterOptions(pkt []byte) []byte {
	p := append(append(append([]byte(nil), pkt[:20]...), 1, 1, 1, 1), pkt[20:]...)
	p[0] = 0x46
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	fixChecksum(p)
	return p
}

type decapCase struct {
	name      string
	pkt       []byte
	want      encap.Reject
	wantInner []byte // for Accept: the inner packet, at pkt[len(pkt)-len(wantInner):]
}

// packetCases are whole outer packets for Decapsulator.Packet; the fuzz
// target is seeded from them.
func packetCases(t testing.TB) []decapCase {
	v4 := innerV4(t, vip4, true, false, 50)
	v4opt := innerV4(t, vip4, true, true, 50)
	v6 := innerV6(t, vip6, 50)
	good := encapsulated(t, v4)
	// outer mutates a copy of good and fixes the outer header checksum.
	outer := func(f func(p []byte)) []byte {
		return mutate(good, func(p []byte) { f(p); fixChecksum(p) })
	}
	// inner mutates a copy of the v4 inner packet, fixes its header
	// checksum, and wraps it.
	inner := func(in []byte, f func(p []byte)) []byte {
		return rawOuter(t, balancer, mutate(in, func(p []byte) { f(p); fixChecksum(p) }))
	}
	good6 := encapsulated6(t, v6)
	// outer6 mutates a copy of good6 and fixes its UDP checksum.
	outer6 := func(f func(p []byte)) []byte {
		return mutate(good6, func(p []byte) { f(p); fixUDP6(p) })
	}
	return []decapCase{
		{name: "accept v4 in v4", pkt: good, wantInner: v4},
		{name: "accept v6 in v6", pkt: good6, wantInner: v6},
		{name: "accept v4 in v6", pkt: encapsulated6(t, v4), wantInner: v4},
		{name: "accept v6 in v6 built by gopacket", pkt: rawOuter6(t, balancer6, v6), wantInner: v6},
		{name: "v6 outer shorter than its headers", pkt: good6[:47], want: encap.RejectMalformedOuter},
		{name: "v6 outer payload length short", pkt: outer6(func(p []byte) { binary.BigEndian.PutUint16(p[4:6], uint16(len(p)-41)) }), want: encap.RejectMalformedOuter},
		{name: "v6 outer trailing byte", pkt: append(mutate(good6, func([]byte) {}), 0), want: encap.RejectMalformedOuter},
		{name: "v6 outer UDP checksum 0", pkt: mutate(good6, func(p []byte) { p[46], p[47] = 0, 0 }), want: encap.RejectMalformedOuter},
		{name: "v6 outer bad UDP checksum", pkt: mutate(good6, func(p []byte) { p[47] ^= 1 }), want: encap.RejectMalformedOuter},
		{name: "v6 outer inner byte flipped", pkt: mutate(good6, func(p []byte) { p[len(p)-1] ^= 0x10 }), want: encap.RejectMalformedOuter},
		{name: "v6 outer UDP length mismatch", pkt: outer6(func(p []byte) { binary.BigEndian.PutUint16(p[44:46], uint16(len(p)-41)) }), want: encap.RejectMalformedOuter},
		{name: "v6 outer fragment header", pkt: outer6(func(p []byte) { p[6] = 44 }), want: encap.RejectNotUDP},
		{name: "v6 outer next header TCP", pkt: outer6(func(p []byte) { p[6] = 6 }), want: encap.RejectNotUDP},
		{name: "v6 outer wrong port", pkt: outer6(func(p []byte) { binary.BigEndian.PutUint16(p[42:44], 4789) }), want: encap.RejectWrongPort},
		{name: "v6 outer source not a balancer", pkt: outer6(func(p []byte) { copy(p[8:24], notVIP6.AsSlice()) }), want: encap.RejectSourceNotAllowed},
		{name: "v6 outer inner source link-local", pkt: rawOuter6(t, balancer6, withSource(v6, netip.MustParseAddr("fe80::1"))), want: encap.RejectInnerSourceLinkLocal},
		{name: "accept v6 in v4", pkt: encapsulated(t, v6), wantInner: v6},
		{name: "accept inner with IP options", pkt: encapsulated(t, v4opt), wantInner: v4opt},
		{name: "accept outer with IP options", pkt: withOuterOptions(good), wantInner: v4},
		{name: "accept nonzero UDP checksum", pkt: rawOuter(t, balancer, v4), wantInner: v4},

		{name: "empty packet", pkt: []byte{}, want: encap.RejectEmpty},
		{name: "empty UDP payload", pkt: rawOuter(t, balancer, nil), want: encap.RejectEmpty},

		{name: "shorter than IPv4 header", pkt: good[:19], want: encap.RejectMalformedOuter},
		{name: "outer version 5", pkt: outer(func(p []byte) { p[0] = 0x55 }), want: encap.RejectMalformedOuter},
		{name: "outer version 6 with an IPv4 header", pkt: outer(func(p []byte) { p[0] = 0x65 }), want: encap.RejectMalformedOuter},
		{name: "outer IHL 4", pkt: outer(func(p []byte) { p[0] = 0x44 }), want: encap.RejectMalformedOuter},
		{name: "outer IHL beyond packet", pkt: outer(func(p []byte) { p[0] = 0x4f })[:40], want: encap.RejectMalformedOuter},
		{name: "outer total length short", pkt: outer(func(p []byte) { binary.BigEndian.PutUint16(p[2:4], uint16(len(p)-1)) }), want: encap.RejectMalformedOuter},
		{name: "outer trailing byte", pkt: append(outer(func([]byte) {}), 0), want: encap.RejectMalformedOuter},
		{name: "outer more fragments", pkt: outer(func(p []byte) { p[6] |= 0x20 }), want: encap.RejectMalformedOuter},
		{name: "outer fragment offset", pkt: outer(func(p []byte) { p[7] = 1 }), want: encap.RejectMalformedOuter},
		{name: "outer bad checksum", pkt: mutate(good, func(p []byte) { p[10] ^= 0xff }), want: encap.RejectMalformedOuter},
		{name: "no room for UDP header", pkt: mutate(good[:27], func(p []byte) { binary.BigEndian.PutUint16(p[2:4], 27); fixChecksum(p) }), want: encap.RejectMalformedOuter},
		{name: "UDP length mismatch", pkt: mutate(good, func(p []byte) { binary.BigEndian.PutUint16(p[24:26], uint16(len(p)-21)) }), want: encap.RejectMalformedOuter},

		{name: "outer protocol TCP", pkt: outer(func(p []byte) { p[9] = 6 }), want: encap.RejectNotUDP},

		{name: "wrong port", pkt: mutate(good, func(p []byte) { binary.BigEndian.PutUint16(p[22:24], 4789) }), want: encap.RejectWrongPort},

		{name: "source not a balancer", pkt: outer(func(p []byte) { copy(p[12:16], stranger.AsSlice()) }), want: encap.RejectSourceNotAllowed},

		{name: "inner version 5", pkt: inner(v4, func(p []byte) { p[0] = 0x55 }), want: encap.RejectInnerMalformed},
		{name: "inner version 0", pkt: rawOuter(t, balancer, make([]byte, 40)), want: encap.RejectInnerMalformed},
		{name: "inner v4 shorter than 20", pkt: rawOuter(t, balancer, v4[:19]), want: encap.RejectInnerMalformed},
		{name: "inner v4 IHL 4", pkt: inner(v4, func(p []byte) { p[0] = 0x44 }), want: encap.RejectInnerMalformed},
		{name: "inner v4 IHL beyond packet", pkt: rawOuter(t, balancer, mutate(v4[:40], func(p []byte) { p[0] = 0x4f; binary.BigEndian.PutUint16(p[2:4], 40) })), want: encap.RejectInnerMalformed},
		{name: "inner v6 shorter than 40", pkt: rawOuter(t, balancer, v6[:39]), want: encap.RejectInnerMalformed},

		{name: "inner v4 length short", pkt: inner(v4, func(p []byte) { binary.BigEndian.PutUint16(p[2:4], uint16(len(p)-1)) }), want: encap.RejectInnerLength},
		{name: "inner v4 length long", pkt: inner(v4, func(p []byte) { binary.BigEndian.PutUint16(p[2:4], uint16(len(p)+1)) }), want: encap.RejectInnerLength},
		{name: "inner v6 payload length", pkt: rawOuter(t, balancer, mutate(v6, func(p []byte) { binary.BigEndian.PutUint16(p[4:6], uint16(len(p)-39)) })), want: encap.RejectInnerLength},

		{name: "inner v4 bad checksum", pkt: rawOuter(t, balancer, mutate(v4, func(p []byte) { p[11] ^= 1 })), want: encap.RejectInnerChecksum},

		{name: "inner v4 not a VIP", pkt: encapsulated(t, innerV4(t, notVIP4, true, false, 50)), want: encap.RejectInnerNotVIP},
		{name: "inner v6 not a VIP", pkt: encapsulated(t, innerV6(t, notVIP6, 50)), want: encap.RejectInnerNotVIP},
		{name: "inner v6 to IPv4-mapped VIP", pkt: encapsulated(t, innerV6(t, netip.AddrFrom16(vip4.As16()), 50)), want: encap.RejectInnerNotVIP},
	}
}

func checkDecap(t *testing.T, input, got []byte, gotR encap.Reject, want encap.Reject, wantInner []byte) {
	t.Helper()
	if gotR != want {
		t.Fatalf("reject = %v, want %v", gotR, want)
	}
	if want != encap.Accept {
		if got != nil {
			t.Errorf("rejected, yet returned %d bytes", len(got))
		}
		return
	}
	if diff := cmp.Diff(wantInner, got); diff != "" {
		t.Errorf("inner packet (-want +got):\n%s", diff)
	}
	if len(got) > 0 && &got[len(got)-1] != &input[len(input)-1] {
		t.Error("inner packet is not a subslice of the input")
	}
}

func TestPacket(t *testing.T) {
	d := newDecap(t)
	for _, tt := range packetCases(t) {
		t.Run(tt.name, func(t *testing.T) {
			before := append([]byte(nil), tt.pkt...)
			got, r := d.Packet(tt.pkt, hostAddrs)
			checkDecap(t, tt.pkt, got, r, tt.want, tt.wantInner)
			if !bytes.Equal(tt.pkt, before) {
				t.Error("Packet modified its input")
			}
		})
	}
}

type payloadCase struct {
	name      string
	src       netip.Addr
	payload   []byte
	want      encap.Reject
	wantInner []byte
}

func payloadCases(t testing.TB) []payloadCase {
	v4 := innerV4(t, vip4, true, false, 50)
	v6 := innerV6(t, vip6, 50)
	return []payloadCase{
		{name: "accept v4 from balancer", src: balancer, payload: v4, wantInner: v4},
		{name: "accept v6 from balancer", src: balancer, payload: v6, wantInner: v6},
		{name: "accept IPv4-mapped source", src: netip.AddrFrom16(balancer.As16()), payload: v4, wantInner: v4},
		{name: "accept IPv6 balancer", src: balancer6, payload: v6, wantInner: v6},
		{name: "accept zoned IPv6 balancer", src: balancer6.WithZone("eth0"), payload: v4, wantInner: v4},
		{name: "empty from balancer", src: balancer, payload: nil, want: encap.RejectEmpty},
		{name: "stranger", src: stranger, payload: v4, want: encap.RejectSourceNotAllowed},
		{name: "IPv4-mapped stranger", src: netip.AddrFrom16(stranger.As16()), payload: v4, want: encap.RejectSourceNotAllowed},
		{name: "empty from stranger", src: stranger, payload: nil, want: encap.RejectSourceNotAllowed},
		{name: "zero source", src: netip.Addr{}, payload: v4, want: encap.RejectSourceNotAllowed},
		{name: "inner not a VIP", src: balancer, payload: innerV4(t, notVIP4, true, false, 50), want: encap.RejectInnerNotVIP},

		{name: "inner source 0.0.0.0", src: balancer, payload: withSource(v4, netip.MustParseAddr("0.0.0.0")), want: encap.RejectInnerSourceUnspecified},
		{name: "inner source 0.1.2.3", src: balancer, payload: withSource(v4, netip.MustParseAddr("0.1.2.3")), want: encap.RejectInnerSourceUnspecified},
		{name: "inner source ::", src: balancer, payload: withSource(v6, netip.IPv6Unspecified()), want: encap.RejectInnerSourceUnspecified},
		{name: "inner source 127.0.0.1", src: balancer, payload: withSource(v4, netip.MustParseAddr("127.0.0.1")), want: encap.RejectInnerSourceLoopback},
		{name: "inner source 127.255.0.9", src: balancer, payload: withSource(v4, netip.MustParseAddr("127.255.0.9")), want: encap.RejectInnerSourceLoopback},
		{name: "inner source ::1", src: balancer, payload: withSource(v6, netip.IPv6Loopback()), want: encap.RejectInnerSourceLoopback},
		{name: "inner source 224.0.0.1", src: balancer, payload: withSource(v4, netip.MustParseAddr("224.0.0.1")), want: encap.RejectInnerSourceMulticast},
		{name: "inner source 239.255.255.255", src: balancer, payload: withSource(v4, netip.MustParseAddr("239.255.255.255")), want: encap.RejectInnerSourceMulticast},
		{name: "inner source ff02::1", src: balancer, payload: withSource(v6, netip.MustParseAddr("ff02::1")), want: encap.RejectInnerSourceMulticast},
		{name: "inner source 255.255.255.255", src: balancer, payload: withSource(v4, netip.MustParseAddr("255.255.255.255")), want: encap.RejectInnerSourceBroadcast},
		{name: "inner source the subnet's broadcast", src: balancer, payload: withSource(v4, backendBroadcast), want: encap.RejectInnerSourceBroadcast},
		{name: "inner source 240.0.0.1", src: balancer, payload: withSource(v4, netip.MustParseAddr("240.0.0.1")), want: encap.RejectInnerSourceReserved},
		{name: "inner source 255.255.255.254", src: balancer, payload: withSource(v4, netip.MustParseAddr("255.255.255.254")), want: encap.RejectInnerSourceReserved},
		{name: "inner source IPv4-mapped", src: balancer, payload: withSource(v6, netip.AddrFrom16(client.As16())), want: encap.RejectInnerSourceV4Mapped},
		{name: "inner source IPv4-mapped host address", src: balancer6, payload: withSource(v6, netip.AddrFrom16(backend.As16())), want: encap.RejectInnerSourceV4Mapped},
		{name: "inner source fe80::1", src: balancer6, payload: withSource(v6, netip.MustParseAddr("fe80::1")), want: encap.RejectInnerSourceLinkLocal},
		{name: "inner source febf::1", src: balancer6, payload: withSource(v6, netip.MustParseAddr("febf:ffff::1")), want: encap.RejectInnerSourceLinkLocal},
		{name: "inner source fec0::1 (deprecated site-local) passes", src: balancer6, payload: withSource(v6, netip.MustParseAddr("fec0::1")), wantInner: withSource(v6, netip.MustParseAddr("fec0::1"))},
		{name: "inner source a unique local address passes", src: balancer6, payload: withSource(v6, netip.MustParseAddr("fd00::5")), wantInner: withSource(v6, netip.MustParseAddr("fd00::5"))},
		{name: "inner source ff0e::1", src: balancer6, payload: withSource(v6, netip.MustParseAddr("ff0e::1")), want: encap.RejectInnerSourceMulticast},
		{name: "inner v6 source a VIP, to a v6 VIP", src: balancer6, payload: withSource(innerV6(t, vip6b, 50), vip6), want: encap.RejectInnerSourceLocal},
		{name: "accept v4 from an IPv6 balancer", src: balancer6, payload: v4, wantInner: v4},
		{name: "inner source = destination", src: balancer, payload: withSource(v4, vip4), want: encap.RejectInnerSourceIsDestination},
		{name: "inner v6 source = destination", src: balancer, payload: withSource(v6, vip6), want: encap.RejectInnerSourceIsDestination},
		{name: "inner source a VIP, to another VIP", src: balancer, payload: withSource(innerV4(t, vip4b, true, false, 50), vip4), want: encap.RejectInnerSourceLocal},
		{name: "inner source the host's address", src: balancer, payload: withSource(v4, backend), want: encap.RejectInnerSourceLocal},
		{name: "inner source the host's v6 address", src: balancer, payload: withSource(v6, backend6), want: encap.RejectInnerSourceLocal},
		{name: "inner source next to the host's address", src: balancer, payload: withSource(v4, backend.Next()), wantInner: withSource(v4, backend.Next())},
	}
}

func TestPayload(t *testing.T) {
	d := newDecap(t)
	for _, tt := range payloadCases(t) {
		t.Run(tt.name, func(t *testing.T) {
			got, r := d.Payload(tt.src, tt.payload, hostAddrs)
			checkDecap(t, tt.payload, got, r, tt.want, tt.wantInner)
		})
	}
}

// TestLocalAddrs: the host's addresses are the caller's to give. Without a
// set only the VIPs count as local; a set holds exactly what it was given,
// an address in both lists being local.
func TestLocalAddrs(t *testing.T) {
	d := newDecap(t)
	v4 := innerV4(t, vip4, true, false, 50)
	other := netip.MustParseAddr("198.51.100.8")
	tests := []struct {
		name  string
		local *encap.LocalAddrs
		src   netip.Addr
		want  encap.Reject
	}{
		{"nil set, the host's address", nil, backend, encap.Accept},
		{"nil set, a VIP", nil, vip4b, encap.RejectInnerSourceLocal},
		{"empty set", encap.NewLocalAddrs(nil, nil), backend, encap.Accept},
		{"local", encap.NewLocalAddrs([]netip.Addr{other}, nil), other, encap.RejectInnerSourceLocal},
		{"IPv4-mapped in the set", encap.NewLocalAddrs([]netip.Addr{netip.AddrFrom16(other.As16())}, nil), other, encap.RejectInnerSourceLocal},
		{"broadcast", encap.NewLocalAddrs(nil, []netip.Addr{other}), other, encap.RejectInnerSourceBroadcast},
		{"local and broadcast: local", encap.NewLocalAddrs([]netip.Addr{other}, []netip.Addr{other}), other, encap.RejectInnerSourceLocal},
		{"invalid addresses skipped", encap.NewLocalAddrs([]netip.Addr{{}}, []netip.Addr{{}}), other, encap.Accept},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, r := d.Payload(balancer, withSource(v4, tt.src), tt.local)
			if r != tt.want {
				t.Errorf("reject = %v, want %v", r, tt.want)
			}
		})
	}
}

// TestEveryRejectTested fails when a Reject reason has no case above, so a
// new reason cannot be added untested.
func TestEveryRejectTested(t *testing.T) {
	seen := make(map[encap.Reject]bool)
	for _, c := range packetCases(t) {
		seen[c.want] = true
	}
	for _, c := range payloadCases(t) {
		seen[c.want] = true
	}
	for r := range encap.Reject(encap.NumRejects) {
		if !seen[r] {
			t.Errorf("no test case expects %v", r)
		}
	}
}

func TestRejectString(t *testing.T) {
	want := []string{
		"accept", "empty", "malformed_outer", "not_udp", "wrong_port", "source_not_allowed",
		"inner_malformed", "inner_length", "inner_checksum", "inner_not_vip",
		"inner_source_unspecified", "inner_source_loopback", "inner_source_multicast",
		"inner_source_link_local", "inner_source_v4_mapped", "inner_source_broadcast", "inner_source_reserved", "inner_source_is_destination",
		"inner_source_local",
	}
	var got []string
	for r := range encap.Reject(encap.NumRejects) {
		got = append(got, r.String())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Reject names (-want +got):\n%s", diff)
	}
	snake := regexp.MustCompile(`^[a-z]+(_[a-z0-9]+)*$`)
	for _, name := range append(got, encap.Reject(200).String()) {
		if !snake.MatchString(name) {
			t.Errorf("name %q is not snake_case", name)
		}
	}
}

func TestNewDecapsulator(t *testing.T) {
	tests := []struct {
		name            string
		port            uint16
		balancers, vips []netip.Addr
		want            error
	}{
		{name: "ok", port: encapPort, balancers: []netip.Addr{balancer}, vips: []netip.Addr{vip4, vip6}},
		{name: "duplicates are one", port: encapPort, balancers: []netip.Addr{balancer, netip.AddrFrom16(balancer.As16())}, vips: []netip.Addr{vip4, vip4}},
		{name: "zero port", port: 0, balancers: []netip.Addr{balancer}, vips: []netip.Addr{vip4}, want: encap.ErrZeroPort},
		{name: "no balancers", port: encapPort, balancers: nil, vips: []netip.Addr{vip4}, want: encap.ErrNoBalancers},
		{name: "no VIPs", port: encapPort, balancers: []netip.Addr{balancer}, vips: []netip.Addr{}, want: encap.ErrNoVIPs},
		{name: "invalid balancer", port: encapPort, balancers: []netip.Addr{balancer, {}}, vips: []netip.Addr{vip4}, want: encap.ErrInvalidAddr},
		{name: "unspecified VIP", port: encapPort, balancers: []netip.Addr{balancer}, vips: []netip.Addr{netip.IPv6Unspecified()}, want: encap.ErrInvalidAddr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := encap.NewDecapsulator(tt.port, tt.balancers, tt.vips)
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewDecapsulator error = %v, want %v", err, tt.want)
			}
			if (d == nil) == (err == nil) {
				t.Errorf("got Decapsulator %v with error %v", d, err)
			}
		})
	}
}

func TestDecapsulateAllocs(t *testing.T) {
	d := newDecap(t)
	inner6 := innerV6(t, vip6, 1000)
	pkt := encapsulated(t, innerV4(t, vip4, true, false, 1000))
	mapped := netip.AddrFrom16(balancer.As16())
	stray := encapsulated(t, innerV4(t, notVIP4, true, false, 1000))
	spoofed := withSource(innerV4(t, vip4, true, false, 1000), backend)
	pkt6 := encapsulated6(t, inner6)
	spoofed6 := rawOuter6(t, balancer6, withSource(inner6, netip.MustParseAddr("fe80::1")))
	for _, c := range []struct {
		name string
		f    func()
	}{
		{"Packet accept", func() { _, _ = d.Packet(pkt, hostAddrs) }},
		{"Packet reject", func() { _, _ = d.Packet(stray, hostAddrs) }},
		{"Packet IPv6 outer accept", func() { _, _ = d.Packet(pkt6, hostAddrs) }},
		{"Packet IPv6 outer reject link-local inner source", func() { _, _ = d.Packet(spoofed6, hostAddrs) }},
		{"Payload accept mapped source", func() { _, _ = d.Payload(mapped, inner6, hostAddrs) }},
		{"Payload reject source", func() { _, _ = d.Payload(stranger, inner6, hostAddrs) }},
		{"Payload reject local inner source", func() { _, _ = d.Payload(balancer, spoofed, hostAddrs) }},
	} {
		if n := testing.AllocsPerRun(100, c.f); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", c.name, n)
		}
	}
}

// BenchmarkDecapsulate measures Packet and Payload. Packet is compared in the
// same run with the baseline of decoding the outer IPv4 and UDP headers with a
// reused gopacket.DecodingLayerParser: each Packet result reports x-gopacket,
// its time as a multiple of the gopacket run just before it. gopacket does
// less (no header checksum, no source or inner-packet checks); Payload, whose
// work is those checks, has no gopacket counterpart and no ratio.
func BenchmarkDecapsulate(b *testing.B) {
	for _, size := range []int{64, 1500} {
		inner := innerV4UDP(b, size)
		d := newDecap(b)
		pkt := encapsulated(b, inner)
		var base float64 // ns/op of gopacket
		b.Run(fmt.Sprintf("%dB/gopacket", size), func(b *testing.B) {
			var (
				ip      layers.IPv4
				udp     layers.UDP
				payload gopacket.Payload
			)
			parser := gopacket.NewDecodingLayerParser(layers.LayerTypeIPv4, &ip, &udp, &payload)
			decoded := make([]gopacket.LayerType, 0, 3)
			b.SetBytes(int64(len(inner)))
			b.ReportAllocs()
			for b.Loop() {
				if err := parser.DecodeLayers(pkt, &decoded); err != nil {
					b.Fatal(err)
				}
				if udp.DstPort != layers.UDPPort(encapPort) || len(payload) != len(inner) {
					b.Fatalf("decoded port %d, %d-byte payload", udp.DstPort, len(payload))
				}
			}
			base = nsPerOp(b)
		})
		b.Run(fmt.Sprintf("%dB/Packet", size), func(b *testing.B) {
			b.SetBytes(int64(len(inner)))
			b.ReportAllocs()
			for b.Loop() {
				if _, r := d.Packet(pkt, hostAddrs); r != encap.Accept {
					b.Fatal(r)
				}
			}
			reportRatio(b, base, "x-gopacket")
		})
		b.Run(fmt.Sprintf("%dB/Payload", size), func(b *testing.B) {
			b.SetBytes(int64(len(inner)))
			b.ReportAllocs()
			for b.Loop() {
				if _, r := d.Payload(balancer, inner, hostAddrs); r != encap.Accept {
					b.Fatal(r)
				}
			}
		})
	}
}

// TestConcurrentUse shares Outers (IPv4 and IPv6) and one Decapsulator
// between goroutines, as the data path's workers do; under -race it proves none
// is written after construction.
func TestConcurrentUse(t *testing.T) {
	outers := []encap.Outer{newOuter(t), newOuter6(t)}
	d := newDecap(t)
	inner := innerV4(t, vip4, true, false, 100)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			o := &outers[w%2] // two goroutines share each
			pkt := withRoom(o.Len(), inner)
			for i := range 200 {
				if err := o.Encapsulate(pkt, uint64(w*1000+i)); err != nil {
					t.Error(err)
					return
				}
				if _, r := d.Packet(pkt, hostAddrs); r != encap.Accept {
					t.Errorf("Packet: %v", r)
					return
				}
				src := balancer
				if o.Len() == encap.HeaderLen6 {
					src = balancer6
				}
				if _, r := d.Payload(src, pkt[o.Len():], hostAddrs); r != encap.Accept {
					t.Errorf("Payload: %v", r)
					return
				}
			}
		})
	}
	wg.Wait()
}
