package benchnet

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var (
	testSrcMAC = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	testDstMAC = net.HardwareAddr{2, 0, 0, 0, 0, 2}
)

// TestLoadFrames decodes every frame of an IPv4 and an IPv6 load and
// checks the fields the forwarders and sinks depend on.
func TestLoadFrames(t *testing.T) {
	for _, tc := range []struct{ src, dst netip.Addr }{
		{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.100")},
		{netip.MustParseAddr("2001:db8:18::1"), netip.MustParseAddr("2001:db8:18::100")},
	} {
		l, err := NewLoad(testSrcMAC, testDstMAC, tc.src, tc.dst, 7)
		if err != nil {
			t.Fatal(err)
		}
		for _, ph := range []Phase{Warm, Measured} {
			if len(l.Frames[ph]) != Flows {
				t.Fatalf("%v phase %d: %d frames, want %d", tc.dst, ph, len(l.Frames[ph]), Flows)
			}
			for f, frame := range l.Frames[ph] {
				if len(frame) > MaxFrameLen {
					t.Fatalf("%v: frame of %d bytes, a ring slot takes %d", tc.dst, len(frame), MaxFrameLen)
				}
				p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
				eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
				udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
				if eth == nil || udp == nil || p.NetworkLayer() == nil {
					t.Fatalf("%v flow %d: not Ethernet/IP/UDP: %v", tc.dst, f, p)
				}
				src, _ := netip.AddrFromSlice(p.NetworkLayer().NetworkFlow().Src().Raw())
				dst, _ := netip.AddrFromSlice(p.NetworkLayer().NetworkFlow().Dst().Raw())
				type fields struct {
					SrcMAC, DstMAC   string
					Src, Dst         string
					SrcPort, DstPort int
					Payload          int
					Phase            Phase
				}
				want := fields{testSrcMAC.String(), testDstMAC.String(), tc.src.String(), tc.dst.String(), SrcPort + f, DstPort, Payload, ph}
				got := fields{eth.SrcMAC.String(), eth.DstMAC.String(), src.String(), dst.String(), int(udp.SrcPort), int(udp.DstPort), len(udp.Payload), l.CheckPayload(udp.Payload, uint16(udp.SrcPort))}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Fatalf("%v flow %d (-want +got):\n%s", tc.dst, f, diff)
				}
			}
		}
	}
}

// TestCheckPacket: a sink accepts the packets sent, byte for byte, tells an
// earlier run's apart, and rejects anything else.
func TestCheckPacket(t *testing.T) {
	for _, dst := range []netip.Addr{netip.MustParseAddr("198.18.0.100"), netip.MustParseAddr("2001:db8:18::100")} {
		src := netip.MustParseAddr("198.18.0.1")
		if dst.Is6() {
			src = netip.MustParseAddr("2001:db8:18::1")
		}
		l, err := NewLoad(testSrcMAC, testDstMAC, src, dst, 2)
		if err != nil {
			t.Fatal(err)
		}
		earlier, err := NewLoad(testSrcMAC, testDstMAC, src, dst, 1)
		if err != nil {
			t.Fatal(err)
		}
		changed := func(p []byte, i int) []byte {
			c := append([]byte(nil), p...)
			c[i] ^= 0x40
			return c
		}
		p := l.Packets[Measured][5]
		for _, tc := range []struct {
			name string
			p    []byte
			want Phase
		}{
			{"warm-up", l.Packets[Warm][3], Warm},
			{"measured", p, Measured},
			{"earlier run", earlier.Packets[Measured][5], Stale},
			{"destination changed", changed(p, len(p)-Payload-8-1), 0},
			{"UDP checksum changed", changed(p, len(p)-Payload-1), 0},
			{"payload changed", changed(p, len(p)-1), 0},
			{"flow does not match source port", changed(p, len(p)-Payload+len(magic)+1), 0},
			{"truncated", p[:len(p)-1], 0},
		} {
			if got := l.CheckPacket(tc.p); got != tc.want {
				t.Errorf("%v %s: phase %d, want %d", dst, tc.name, got, tc.want)
			}
		}
	}
}
