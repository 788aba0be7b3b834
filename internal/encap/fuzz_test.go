package encap_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"

	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/inet"
)

// FuzzDecapsulate feeds arbitrary bytes to Packet (IPv4 and IPv6 outers),
// and the same bytes as an IPv4 and an IPv6 balancer's UDP payload to
// Payload; it is seeded from both tables. Neither
// may panic, and whatever they accept must be a subslice of the input (a
// suffix: the inner packet runs to the end) whose inner destination, read
// here independently, is a VIP, and whose inner source is neither the
// destination nor one of the host's addresses.
func FuzzDecapsulate(f *testing.F) {
	for _, c := range packetCases(f) {
		f.Add(c.pkt)
	}
	for _, c := range payloadCases(f) {
		f.Add(c.payload)
	}
	d := newDecap(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(what string, input, inner []byte, r encap.Reject) {
			if int(r) >= encap.NumRejects {
				t.Fatalf("%s: reason %d out of range", what, r)
			}
			if r != encap.Accept {
				return
			}
			if len(inner) == 0 || len(inner) > len(input) || &inner[len(inner)-1] != &input[len(input)-1] {
				t.Fatalf("%s: accepted inner is not a suffix of the input", what)
			}
			var src, dst netip.Addr
			switch inner[0] >> 4 {
			case 4:
				src, dst = netip.AddrFrom4([4]byte(inner[12:16])), netip.AddrFrom4([4]byte(inner[16:20]))
			case 6:
				src, dst = netip.AddrFrom16([16]byte(inner[8:24])), netip.AddrFrom16([16]byte(inner[24:40]))
			default:
				t.Fatalf("%s: accepted inner version %d", what, inner[0]>>4)
			}
			if dst != vip4 && dst != vip4b && dst != vip6 && dst != vip6b {
				t.Fatalf("%s: accepted inner destination %v, not a VIP", what, dst)
			}
			if src == dst || src == backend || src == backend6 || src == vip4 || src == vip4b || src == vip6 || src == vip6b ||
				(src.Is6() && src.IsLinkLocalUnicast()) || src.Is4In6() || src.IsLoopback() || src.IsMulticast() || src.IsUnspecified() {
				t.Fatalf("%s: accepted inner source %v to %v", what, src, dst)
			}
		}
		inner, r := d.Packet(data, hostAddrs)
		check("Packet", data, inner, r)
		inner, r = d.Payload(balancer, data, hostAddrs)
		check("Payload", data, inner, r)
		inner, r = d.Payload(balancer6, data, hostAddrs)
		check("Payload from an IPv6 balancer", data, inner, r)
	})
}

// FuzzEncapsulate puts arbitrary inner packets behind both outer
// families. Encapsulate must not panic; on an error it changes nothing;
// otherwise the inner packet is unchanged, the outer lengths cover every
// byte, and an IPv6 outer's UDP checksum verifies by a full computation,
// unless the inner packet's own transport checksum, checked here
// independently, is wrong (then Encapsulate's sum, derived from it, must
// not be trusted, and is not: see TestEncapsulate6). Seeded from the
// encapsulation tables' kinds of inner packet.
func FuzzEncapsulate(f *testing.F) {
	v6 := innerV6(f, vip6, 60)
	for _, seed := range [][]byte{
		innerV4(f, vip4, true, false, 60), innerV4(f, vip4, true, true, 60), innerV4UDP(f, 99),
		v6, withExtensionHeaders(v6, 0, 60), withExtensionHeaders(v6, 44),
		withRoutingHeader(innerPacket(f, notVIP6, &layers.UDP{SrcPort: 1, DstPort: 2}, 30), vip6),
		innerPacket(f, vip6, &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}, 20),
		innerPacket(f, vip4, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}, 20),
		{0x45}, {0x60}, nil,
	} {
		f.Add(seed, flowHash)
	}
	o4, o6 := newOuter(f), newOuter6(f)
	f.Fuzz(func(t *testing.T, inner []byte, hash uint64) {
		for _, o := range []*encap.Outer{&o4, &o6} {
			frame := withRoom(o.Len(), inner)
			before := append([]byte(nil), frame...)
			if err := o.Encapsulate(frame, hash); err != nil {
				if !bytes.Equal(frame, before) {
					t.Fatalf("outer of %d bytes: Encapsulate failed (%v) and changed the frame", o.Len(), err)
				}
				continue
			}
			if !bytes.Equal(frame[o.Len():], inner) {
				t.Fatalf("outer of %d bytes: inner packet changed", o.Len())
			}
			if o.Len() == encap.HeaderLen4 {
				if got := int(binary.BigEndian.Uint16(frame[2:4])); got != len(frame) {
					t.Fatalf("IPv4 outer total length %d, want %d", got, len(frame))
				}
				continue
			}
			got := outer6Of(frame)
			if int(got.PayloadLength) != len(frame)-40 || got.UDPLength != got.PayloadLength ||
				got.FlowLabel != encap.FlowLabel(hash) || got.SrcPort != encap.SourcePort(hash) {
				t.Fatalf("IPv6 outer %+v for %d bytes, hash %#x", got, len(frame), hash)
			}
			if upper6Sum(frame) != 0xffff && !transportChecksumWrong(inner) {
				t.Fatalf("outer UDP checksum does not verify, and the inner packet's transport checksum is not wrong")
			}
		}
	})
}

// transportChecksumWrong reports whether inner is an unfragmented IPv4
// (without options) or IPv6 (with hop-by-hop or destination options at most)
// packet whose length field matches, carrying TCP, UDP with a checksum,
// ICMPv6, or IPv4 ICMP, whose checksum does not verify: the one case in
// which Encapsulate may write a wrong outer checksum.
func transportChecksumWrong(inner []byte) bool {
	if len(inner) == 0 {
		return false
	}
	var pseudo []byte // the transport's pseudo-header, nil for IPv4 ICMP
	var proto byte
	var l4 []byte
	switch inner[0] >> 4 {
	case 4:
		if len(inner) < 20 || inner[0]&0x0f != 5 || int(binary.BigEndian.Uint16(inner[2:4])) != len(inner) ||
			binary.BigEndian.Uint16(inner[6:8])&0x3fff != 0 {
			return false
		}
		proto, l4 = inner[9], inner[20:]
		if proto != 1 {
			pseudo = append(append([]byte(nil), inner[12:20]...), 0, proto, byte(len(l4)>>8), byte(len(l4)))
		}
	case 6:
		if len(inner) < 40 || 40+int(binary.BigEndian.Uint16(inner[4:6])) != len(inner) {
			return false
		}
		proto, l4 = inner[6], inner[40:]
		for proto == 0 || proto == 60 {
			if len(l4) < 8 || len(l4) < (int(l4[1])+1)*8 {
				return false
			}
			proto, l4 = l4[0], l4[(int(l4[1])+1)*8:]
		}
		n := len(l4)
		pseudo = append(append([]byte(nil), inner[8:40]...), byte(n>>24), byte(n>>16), byte(n>>8), byte(n), 0, 0, 0, proto)
	default:
		return false
	}
	switch {
	case proto == 6 && len(l4) >= 20,
		proto == 17 && len(l4) >= 8 && (l4[6] != 0 || l4[7] != 0),
		proto == 58 && inner[0]>>4 == 6 && len(l4) >= 4,
		proto == 1 && inner[0]>>4 == 4 && len(l4) >= 4:
		return inet.Fold(inet.Sum(l4, inet.Sum(pseudo, 0))) != 0xffff
	}
	return false
}

// FuzzPacketTooBig: for any inner packet and MTU, the message fits in 1280
// bytes, quotes the start of inner, is addressed from the VIP to the client,
// and its checksum verifies.
func FuzzPacketTooBig(f *testing.F) {
	f.Add(innerV6(f, vip6, 1400), uint32(1452))
	f.Add(innerV6(f, vip6, 10), uint32(1280))
	f.Add([]byte{}, uint32(0))
	buf := make([]byte, encap.PacketTooBigMaxLen)
	f.Fuzz(func(t *testing.T, inner []byte, mtu uint32) {
		msg := encap.PacketTooBig(buf, vip6, client6, inner, mtu)
		quote := min(len(inner), encap.PacketTooBigMaxLen-48)
		if len(msg) != 48+quote || !bytes.Equal(msg[48:], inner[:quote]) {
			t.Fatalf("message of %d bytes for a %d-byte packet", len(msg), len(inner))
		}
		if got := outer6Of(msg); got.Src != vip6 || got.Dst != client6 || int(got.PayloadLength) != len(msg)-40 {
			t.Fatalf("header %+v", got)
		}
		if msg[40] != 2 || msg[41] != 0 || binary.BigEndian.Uint32(msg[44:48]) != mtu {
			t.Fatalf("ICMPv6 header % x", msg[40:48])
		}
		if upper6Sum(msg) != 0xffff {
			t.Fatal("checksum does not verify")
		}
	})
}
