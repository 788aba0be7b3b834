package encap_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket"
	"github.com/google/gopacket/ip4defrag"
	"github.com/google/gopacket/layers"

	"github.com/caplance/caplance/internal/encap"
)

// canary fills the bytes a function must not write.
const canary = 0xa5

// outerPacket is an encapsulated packet of exactly size bytes, as the data
// path hands it to Fragment: a client UDP datagram without DF (the kernel
// reassembled it), or with df a client TCP segment with DF, whose DF
// Encapsulate copies to the outer header.
func outerPacket(t testing.TB, size int, df bool) []byte {
	t.Helper()
	if df {
		return encapsulated(t, innerV4(t, vip4, true, false, size-encap.HeaderLen4-40))
	}
	return encapsulated(t, innerV4UDP(t, size-encap.HeaderLen4))
}

// diffBytes is cmp.Diff for byte slices, quick when they are equal, as
// they are when the tests pass (cmp walks 64 KiB packets slowly).
func diffBytes(want, got []byte) string {
	if bytes.Equal(want, got) && (want == nil) == (got == nil) {
		return ""
	}
	return cmp.Diff(want, got)
}

// equateAddr compares netip.Addr values, whose fields cmp cannot see.
var equateAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

// fragHeader is what every fragment's IPv4 header must share with the
// original outer header: all but total length, ID, flags/offset and checksum.
type fragHeader struct {
	Version, IHL, TOS, TTL uint8
	Protocol               layers.IPProtocol
	Src, Dst               netip.Addr
	Options                int
}

func headerOf(ip *layers.IPv4) fragHeader {
	src, _ := netip.AddrFromSlice(ip.SrcIP)
	dst, _ := netip.AddrFromSlice(ip.DstIP)
	return fragHeader{
		Version: ip.Version, IHL: ip.IHL, TOS: ip.TOS, TTL: ip.TTL,
		Protocol: ip.Protocol, Src: src, Dst: dst, Options: len(ip.Options),
	}
}

func decodeIPv4(t *testing.T, b []byte) *layers.IPv4 {
	t.Helper()
	ip := &layers.IPv4{}
	if err := ip.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil {
		t.Fatalf("decode IPv4: %v", err)
	}
	return ip
}

func TestFragment(t *testing.T) {
	const id = 0xbeef
	tests := []struct {
		name      string
		size, mtu int
		df        bool // outer DF set (inner DF copied), which fragments must not carry
		want      int  // fragments
	}{
		{name: "4000 at 1500", size: 4000, mtu: 1500, want: 3},
		{name: "1473 at 1500 fits", size: 1473, mtu: 1500, want: 1},
		{name: "1500 at 1500 fits exactly", size: 1500, mtu: 1500, want: 1},
		{name: "1501 at 1500, 1-byte tail", size: 1501, mtu: 1500, want: 2},
		{name: "2980 at 1500, full tail", size: 2980, mtu: 1500, want: 2},
		{name: "65535 at 1500", size: 65535, mtu: 1500, want: 45},
		{name: "4000 at 576", size: 4000, mtu: 576, want: 8},
		{name: "65535 at 576", size: 65535, mtu: 576, want: 119},
		// 1499-20 = 1479 is not a multiple of 8: 1472 bytes per fragment.
		{name: "4000 at 1499", size: 4000, mtu: 1499, want: 3},
		{name: "3000 at 1006", size: 3000, mtu: 1006, want: 4},
		{name: "4000 at 68 (IPv4 minimum)", size: 4000, mtu: 68, want: 83},
		{name: "100 at 28 (8 bytes each)", size: 100, mtu: 28, want: 10},
		{name: "100 at 35 (still 8 bytes each)", size: 100, mtu: 35, want: 10},
		{name: "4000 at 1500 with DF", size: 4000, mtu: 1500, df: true, want: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := outerPacket(t, tt.size, tt.df)
			orig := append([]byte(nil), pkt...)
			if got := encap.FragmentCount(len(pkt), tt.mtu); got != tt.want {
				t.Fatalf("FragmentCount(%d, %d) = %d, want %d", len(pkt), tt.mtu, got, tt.want)
			}

			// The documented scratch bound, followed by canary bytes that
			// Fragment must not reach even though the slice's capacity would
			// let it.
			bound := len(pkt) + 20*tt.want
			mem := make([]byte, bound+64)
			for i := range mem {
				mem[i] = canary
			}
			// The fragments are kept, not copied, as the data path queues
			// them until a flush: later fragments must not overwrite them.
			var frags [][]byte
			if err := encap.Fragment(pkt, tt.mtu, id, mem[:bound], func(f []byte) { frags = append(frags, f) }); err != nil {
				t.Fatalf("Fragment: %v", err)
			}
			if diff := diffBytes(orig, pkt); diff != "" {
				t.Errorf("Fragment modified its input (-want +got):\n%s", diff)
			}
			for i, b := range mem[bound:] {
				if b != canary {
					t.Fatalf("Fragment wrote scratch[%d], beyond the bound len(pkt)+20*%d = %d", bound+i, tt.want, bound)
				}
			}
			if len(frags) != tt.want {
				t.Fatalf("Fragment emitted %d fragments, want %d", len(frags), tt.want)
			}

			want := headerOf(decodeIPv4(t, orig))
			payload := orig[20:]
			next := 0 // the offset the next fragment must start at
			for i, f := range frags {
				ip := decodeIPv4(t, f)
				last := i == len(frags)-1
				if len(f) > tt.mtu {
					t.Errorf("fragment %d: %d bytes, above the MTU %d", i, len(f), tt.mtu)
				}
				if int(ip.Length) != len(f) {
					t.Errorf("fragment %d: total length %d, is %d bytes", i, ip.Length, len(f))
				}
				if diff := cmp.Diff(want, headerOf(ip), equateAddr); diff != "" {
					t.Errorf("fragment %d: header (-want +got):\n%s", i, diff)
				}
				if ip.Id != id {
					t.Errorf("fragment %d: ID %#x, want %#x", i, ip.Id, id)
				}
				if ip.Flags&layers.IPv4DontFragment != 0 {
					t.Errorf("fragment %d: DF set", i)
				}
				if mf := ip.Flags&layers.IPv4MoreFragments != 0; mf == last {
					t.Errorf("fragment %d of %d: MF %v", i, len(frags), mf)
				}
				if ip.Flags&layers.IPv4EvilBit != 0 {
					t.Errorf("fragment %d: reserved flag set", i)
				}
				if int(ip.FragOffset)*8 != next {
					t.Errorf("fragment %d: offset %d bytes, want %d (contiguous)", i, int(ip.FragOffset)*8, next)
				}
				if !last && len(ip.Payload)%8 != 0 {
					t.Errorf("fragment %d: %d payload bytes, not a multiple of 8", i, len(ip.Payload))
				}
				if !last && len(f)+8 <= tt.mtu {
					t.Errorf("fragment %d: %d bytes, another 8 would fit in %d", i, len(f), tt.mtu)
				}
				if got, want := binary.BigEndian.Uint16(f[10:12]), checksumAt(f[:20], 10); got != want {
					t.Errorf("fragment %d: header checksum %#04x, want %#04x", i, got, want)
				}
				if next+len(ip.Payload) > len(payload) {
					t.Fatalf("fragment %d: runs past the original payload", i)
				}
				if diff := diffBytes(payload[next:next+len(ip.Payload)], ip.Payload); diff != "" {
					t.Errorf("fragment %d: payload (-want +got):\n%s", i, diff)
				}
				next += len(ip.Payload)
			}
			if next != len(payload) {
				t.Errorf("fragments carry %d payload bytes, want %d", next, len(payload))
			}

			// Reassembled, the fragments must be the original packet, except
			// for the ID Fragment gave them and DF, which no fragment has.
			wantPkt := append([]byte(nil), orig...)
			binary.BigEndian.PutUint16(wantPkt[4:6], id)
			binary.BigEndian.PutUint16(wantPkt[6:8], 0)
			fixChecksum(wantPkt)
			if diff := diffBytes(wantPkt, reassemble(t, frags)); diff != "" {
				t.Errorf("reassembled by hand (-want +got):\n%s", diff)
			}
			defragCheck(t, frags, wantPkt)
		})
	}
}

// reassemble puts fragments, given in order, back together the way a
// receiver does (RFC 791): the first fragment's header, total length the
// header plus every payload, no flags, offset 0, a fresh checksum.
func reassemble(t *testing.T, frags [][]byte) []byte {
	t.Helper()
	ihl := int(frags[0][0]&0x0f) * 4
	out := append([]byte(nil), frags[0][:ihl]...)
	for i, f := range frags {
		if off := int(binary.BigEndian.Uint16(f[6:8])&0x1fff) * 8; off != len(out)-ihl {
			t.Fatalf("reassemble: fragment %d at offset %d, have %d bytes (hole or overlap)", i, off, len(out)-ihl)
		}
		out = append(out, f[int(f[0]&0x0f)*4:]...)
	}
	binary.BigEndian.PutUint16(out[2:4], uint16(len(out)))
	binary.BigEndian.PutUint16(out[6:8], 0)
	fixChecksum(out)
	return out
}

// defragCheck reassembles frags with gopacket's ip4defrag, delivering them
// last first to exercise its ordering too, and compares the result with want.
// ip4defrag refuses, as "handcrafted", tail fragments shorter than 8 bytes,
// which RFC 791 allows; those cases rely on reassemble alone.
func defragCheck(t *testing.T, frags [][]byte, want []byte) {
	t.Helper()
	if len(frags[len(frags)-1])-20 < ip4defrag.IPv4MinimumFragmentSize {
		return
	}
	d := ip4defrag.NewIPv4Defragmenter()
	var out *layers.IPv4
	for i := len(frags) - 1; i >= 0; i-- {
		var err error
		out, err = d.DefragIPv4(decodeIPv4(t, frags[i]))
		if err != nil {
			t.Fatalf("ip4defrag, fragment %d: %v", i, err)
		}
		if out != nil && i != 0 {
			t.Fatalf("ip4defrag done at fragment %d, before the first", i)
		}
	}
	if out == nil {
		t.Fatal("ip4defrag did not reassemble the fragments")
	}
	// ip4defrag leaves Length as the payload length and the checksum 0 (its
	// TODOs); let gopacket fix both, then compare whole packets.
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		out, gopacket.Payload(out.Payload)); err != nil {
		t.Fatalf("serialize reassembled packet: %v", err)
	}
	if diff := diffBytes(want, buf.Bytes()); diff != "" {
		t.Errorf("reassembled by ip4defrag (-want +got):\n%s", diff)
	}
}

func TestFragmentTooSmall(t *testing.T) {
	pkt := outerPacket(t, 100, false)
	for _, mtu := range []int{27, 20, 0, -1} {
		if got := encap.FragmentCount(len(pkt), mtu); got != 0 {
			t.Errorf("FragmentCount(%d, %d) = %d, want 0", len(pkt), mtu, got)
		}
		scratch := make([]byte, 4096)
		for i := range scratch {
			scratch[i] = canary
		}
		emitted := 0
		err := encap.Fragment(pkt, mtu, 1, scratch, func([]byte) { emitted++ })
		if !errors.Is(err, encap.ErrFragmentTooSmall) {
			t.Errorf("Fragment(mtu %d) = %v, want ErrFragmentTooSmall", mtu, err)
		}
		if emitted != 0 {
			t.Errorf("Fragment(mtu %d) emitted %d fragments with an error", mtu, emitted)
		}
		for i, b := range scratch {
			if b != canary {
				t.Fatalf("Fragment(mtu %d) wrote scratch[%d] with an error", mtu, i)
			}
		}
	}
}

// withOptions returns inner with n bytes of IPv4 options (a router alert,
// then NOPs) inserted after its fixed header, lengths and checksum fixed.
func withOptions(inner []byte, n int) []byte {
	opts := make([]byte, n)
	for i := range opts {
		opts[i] = 1 // NOP
	}
	copy(opts, []byte{0x94, 4, 0, 0})
	p := append(append(append([]byte(nil), inner[:20]...), opts...), inner[20:]...)
	p[0] = 0x40 | byte(20+n)/4
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	fixChecksum(p)
	return p
}

// fragNeededFields are the decoded fields of a FragNeeded message.
type fragNeededFields struct {
	Version, IHL, TOS, TTL uint8
	Length, ID, FragOffset uint16
	Flags                  layers.IPv4Flag
	Protocol               layers.IPProtocol
	Src, Dst               netip.Addr
	TypeCode               layers.ICMPv4TypeCode
	Unused                 uint16 // bytes 4-5, zero (RFC 1191); gopacket's Id
	NextHopMTU             uint16 // bytes 6-7 (RFC 1191); gopacket's Seq
	Quote                  []byte
}

func TestFragNeeded(t *testing.T) {
	base := innerV4(t, vip4, true, false, 1400)
	tests := []struct {
		name  string
		inner []byte
		ihl   int
		mtu   uint16
	}{
		{name: "no options", inner: base, ihl: 20, mtu: 1472},
		{name: "IHL 6", inner: withOptions(base, 4), ihl: 24, mtu: 1472},
		{name: "IHL 15", inner: withOptions(base, 40), ihl: 60, mtu: 548},
		{name: "header and 8 bytes only", inner: base[:28], ihl: 20, mtu: 1280},
	}
	src := vip4.As4()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := int(tt.inner[0]&0x0f) * 4; got != tt.ihl {
				t.Fatalf("test inner has IHL %d bytes, want %d", got, tt.ihl)
			}
			n := encap.FragNeededLen(tt.ihl)
			if want := 20 + 8 + tt.ihl + 8; n != want {
				t.Errorf("FragNeededLen(%d) = %d, want %d", tt.ihl, n, want)
			}
			// Stale bytes in buf must not leak into the message; the bytes
			// past FragNeededLen must stay as they were.
			buf := make([]byte, n+32)
			for i := range buf {
				buf[i] = canary
			}
			innerCopy := append([]byte(nil), tt.inner...)
			msg := encap.FragNeeded(buf, src, tt.inner, tt.mtu)
			if len(msg) != n || &msg[0] != &buf[0] {
				t.Fatalf("FragNeeded returned %d bytes (at buf[0]: %v), want buf[:%d]", len(msg), &msg[0] == &buf[0], n)
			}
			for i, b := range buf[n:] {
				if b != canary {
					t.Fatalf("FragNeeded wrote buf[%d], past FragNeededLen %d", n+i, n)
				}
			}
			if diff := diffBytes(innerCopy, tt.inner); diff != "" {
				t.Errorf("FragNeeded modified inner (-want +got):\n%s", diff)
			}

			p := gopacket.NewPacket(msg, layers.LayerTypeIPv4, gopacket.Default)
			if el := p.ErrorLayer(); el != nil {
				t.Fatalf("decode: %v", el.Error())
			}
			ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			if ip == nil || icmp == nil {
				t.Fatalf("decoded layers %v, want IPv4 and ICMPv4", p.Layers())
			}
			s, _ := netip.AddrFromSlice(ip.SrcIP)
			d, _ := netip.AddrFromSlice(ip.DstIP)
			got := fragNeededFields{
				Version: ip.Version, IHL: ip.IHL, TOS: ip.TOS, TTL: ip.TTL,
				Length: ip.Length, ID: ip.Id, FragOffset: ip.FragOffset, Flags: ip.Flags,
				Protocol: ip.Protocol, Src: s, Dst: d,
				TypeCode: icmp.TypeCode, Unused: icmp.Id, NextHopMTU: icmp.Seq,
				Quote: icmp.Payload,
			}
			want := fragNeededFields{
				// ID 0 and no flags: the raw socket's kernel fills in the ID.
				Version: 4, IHL: 5, TTL: 64,
				Length: uint16(n), Protocol: layers.IPProtocolICMPv4,
				Src: vip4, Dst: client,
				TypeCode:   layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded),
				NextHopMTU: tt.mtu,
				Quote:      tt.inner[:tt.ihl+8],
			}
			if diff := cmp.Diff(want, got, equateAddr); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			// The MTU read straight from the bytes, not through gopacket's
			// echo-request names.
			if got := binary.BigEndian.Uint16(msg[20+6 : 20+8]); got != tt.mtu {
				t.Errorf("ICMP bytes 6-7: %d, want %d", got, tt.mtu)
			}
			if got, want := binary.BigEndian.Uint16(msg[10:12]), checksumAt(msg[:20], 10); got != want {
				t.Errorf("IPv4 checksum %#04x, want %#04x", got, want)
			}
			if got, want := binary.BigEndian.Uint16(msg[22:24]), checksumAt(msg[20:], 2); got != want {
				t.Errorf("ICMP checksum %#04x, want %#04x", got, want)
			}
		})
	}
}

// fragSink is a Fragment emit target; its method value allocates nothing
// per call once made.
type fragSink struct{ n, bytes int }

func (s *fragSink) emit(f []byte) { s.n, s.bytes = s.n+1, s.bytes+len(f) }

func TestMTUAllocs(t *testing.T) {
	pkt := outerPacket(t, 9000, false)
	const mtu = 1500
	scratch := make([]byte, len(pkt)+20*encap.FragmentCount(len(pkt), mtu))
	var s fragSink
	emit := s.emit
	if n := testing.AllocsPerRun(100, func() {
		if err := encap.Fragment(pkt, mtu, 7, scratch, emit); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Fragment: %v allocs per run, want 0", n)
	}
	if s.n == 0 {
		t.Error("Fragment emitted nothing")
	}

	inner := withOptions(innerV4(t, vip4, true, false, 1400), 4)
	buf := make([]byte, encap.FragNeededLen(24))
	src := vip4.As4()
	if n := testing.AllocsPerRun(100, func() {
		_ = encap.FragNeeded(buf, src, inner, 1472)
	}); n != 0 {
		t.Errorf("FragNeeded: %v allocs per run, want 0", n)
	}

	inner6 := innerV6(t, vip6, 1400)
	ptb := make([]byte, encap.PacketTooBigMaxLen)
	if n := testing.AllocsPerRun(100, func() {
		_ = encap.PacketTooBig(ptb, vip6, client6, inner6, 1452)
	}); n != 0 {
		t.Errorf("PacketTooBig: %v allocs per run, want 0", n)
	}
}

// ptbFields are a Packet Too Big message's fields, decoded here.
type ptbFields struct {
	Version, TrafficClass uint8
	FlowLabel             uint32
	PayloadLength         uint16
	NextHeader, HopLimit  uint8
	Src, Dst              netip.Addr
	Type, Code            uint8
	MTU                   uint32
	Quote                 []byte
}

func TestPacketTooBig(t *testing.T) {
	room := encap.PacketTooBigMaxLen - 48 // the quote's room in 1280 bytes
	tests := []struct {
		name      string
		inner     []byte
		mtu       uint32
		wantQuote int
	}{
		{name: "full-size TCP segment: quote cut at 1280", inner: innerPacket(t, vip6, &layers.TCP{SrcPort: 40000, DstPort: 80, ACK: true}, 1440), mtu: 1452, wantQuote: room},
		{name: "exactly the room", inner: innerPacket(t, vip6, &layers.UDP{SrcPort: 40000, DstPort: 53}, room-48), mtu: 1400, wantQuote: room},
		{name: "one byte more than the room", inner: innerPacket(t, vip6, &layers.UDP{SrcPort: 40000, DstPort: 53}, room-47), mtu: 1400, wantQuote: room},
		{name: "small packet quoted whole", inner: innerV6(t, vip6, 100), mtu: 1232, wantQuote: 40 + 8 + 100},
		{name: "odd length quoted whole", inner: innerV6(t, vip6, 101), mtu: 9000 - 48, wantQuote: 40 + 8 + 101},
		{name: "4-in-6 tunnel MTU below 1280 written as given", inner: innerV6(t, vip6, 1300), mtu: 1232, wantQuote: room},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf := make([]byte, encap.PacketTooBigMaxLen+32)
			for i := range buf {
				buf[i] = canary
			}
			innerCopy := append([]byte(nil), tt.inner...)
			msg := encap.PacketTooBig(buf, vip6, client6, tt.inner, tt.mtu)
			n := 48 + tt.wantQuote
			if len(msg) != n || &msg[0] != &buf[0] {
				t.Fatalf("PacketTooBig returned %d bytes (at buf[0]: %v), want buf[:%d]", len(msg), &msg[0] == &buf[0], n)
			}
			for i, b := range buf[n:] {
				if b != canary {
					t.Fatalf("PacketTooBig wrote buf[%d], past the message's %d bytes", n+i, n)
				}
			}
			if diff := diffBytes(innerCopy, tt.inner); diff != "" {
				t.Errorf("PacketTooBig modified inner (-want +got):\n%s", diff)
			}
			word := binary.BigEndian.Uint32(msg[0:4])
			got := ptbFields{
				Version: uint8(word >> 28), TrafficClass: uint8(word >> 20), FlowLabel: word & 0xfffff,
				PayloadLength: binary.BigEndian.Uint16(msg[4:6]), NextHeader: msg[6], HopLimit: msg[7],
				Src: netip.AddrFrom16([16]byte(msg[8:24])), Dst: netip.AddrFrom16([16]byte(msg[24:40])),
				Type: msg[40], Code: msg[41], MTU: binary.BigEndian.Uint32(msg[44:48]), Quote: msg[48:],
			}
			want := ptbFields{
				Version: 6, PayloadLength: uint16(n - 40), NextHeader: 58, HopLimit: 64,
				Src: vip6, Dst: client6, Type: 2, Code: 0, MTU: tt.mtu, Quote: tt.inner[:tt.wantQuote],
			}
			if diff := cmp.Diff(want, got, equateAddr); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			if s := upper6Sum(msg); s != 0xffff {
				t.Errorf("ICMPv6 checksum %#04x does not verify (sum %#04x)", binary.BigEndian.Uint16(msg[42:44]), s)
			}
			// gopacket agrees that it is a valid Packet Too Big.
			p := gopacket.NewPacket(msg, layers.LayerTypeIPv6, gopacket.Default)
			icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
			if icmp == nil || icmp.TypeCode != layers.CreateICMPv6TypeCode(layers.ICMPv6TypePacketTooBig, 0) {
				t.Errorf("gopacket decodes %v, want an ICMPv6 Packet Too Big", p.Layers())
			}
		})
	}
}
