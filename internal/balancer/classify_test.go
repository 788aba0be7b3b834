package balancer

import (
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/flow"
	"github.com/caplance/caplance/internal/model"
)

// shells are services with their definitions only, enough to classify.
func shells(defs ...model.Service) []*service {
	var out []*service
	for _, d := range defs {
		out = append(out, &service{Service: d})
	}
	return out
}

// keyTo is the key of a flow from 198.51.100.1 (2001:db8:c::1 to an IPv6
// vip) to vip:port over proto (for ICMP echo, port is the identifier, in
// both ports as flow.Parse puts it).
func keyTo(vip string, proto uint8, port uint16) flow.Key {
	dst := netip.MustParseAddr(vip)
	src := netip.MustParseAddr("198.51.100.1")
	if dst.Is6() {
		src = netip.MustParseAddr("2001:db8:c::1")
	}
	k := flow.Key{Src: src.As16(), Dst: dst.As16(), SrcPort: 40000, DstPort: port, Proto: proto}
	if proto == unix.IPPROTO_ICMP || proto == unix.IPPROTO_ICMPV6 {
		k.SrcPort = port
	}
	return k
}

func ports(rs ...model.PortRange) []model.PortRange { return rs }

// TestClassify: each flow goes to the one service that takes its VIP,
// protocol and destination port, or to none; packets without ports of their
// own (ICMP echo) go to the first service by name that has the VIP.
func TestClassify(t *testing.T) {
	const one, two, three = "192.0.2.1", "192.0.2.2", "192.0.2.3"
	// six is an IPv6 VIP; nat64 ends in the same 32 bits as one, and
	// other differs from six only in its upper half.
	const six, nat64, other = "2001:db8::1", "64:ff9b::192.0.2.1", "2001:db9::1"
	services := shells(
		model.Service{Name: "web", Protocols: model.TCP, VIPs: []model.VIP{
			{Addr: netip.MustParseAddr(one), Ports: ports(model.PortRange{First: 80, Last: 80}, model.PortRange{First: 443, Last: 443}, model.PortRange{First: 8000, Last: 8099})},
			{Addr: netip.MustParseAddr(two), Ports: ports(model.PortRange{First: 80, Last: 80})},
			{Addr: netip.MustParseAddr(six), Ports: ports(model.PortRange{First: 80, Last: 80})}}},
		model.Service{Name: "dns", Protocols: model.TCP | model.UDP, VIPs: []model.VIP{
			{Addr: netip.MustParseAddr(one), Ports: ports(model.PortRange{First: 53, Last: 53})},
			{Addr: netip.MustParseAddr(six), Ports: ports(model.PortRange{First: 53, Last: 53})}}},
		model.Service{Name: "any", Protocols: model.UDP, VIPs: []model.VIP{{Addr: netip.MustParseAddr(two)}}},
	)
	// Sorted by name, as buildSnapshot hands them over.
	services[0], services[2] = services[2], services[0]
	c, err := newClassifier(services)
	if err != nil {
		t.Fatal(err)
	}
	tcp, udp, icmp, icmpv6 := uint8(unix.IPPROTO_TCP), uint8(unix.IPPROTO_UDP), uint8(unix.IPPROTO_ICMP), uint8(unix.IPPROTO_ICMPV6)
	tests := []struct {
		vip   string
		proto uint8
		port  uint16
		want  string // "" for none
	}{
		{one, tcp, 80, "web"},
		{one, tcp, 443, "web"},
		{one, tcp, 81, ""},
		{one, tcp, 442, ""},
		{one, tcp, 7999, ""},
		{one, tcp, 8000, "web"},
		{one, tcp, 8099, "web"},
		{one, tcp, 8100, ""},
		{one, tcp, 53, "dns"},
		{one, udp, 53, "dns"},
		{one, udp, 80, ""}, // web is TCP only
		{one, tcp, 0, ""},
		{one, tcp, 65535, ""},
		{two, tcp, 80, "web"},
		{two, udp, 80, "any"},
		{two, udp, 0, "any"},
		{two, udp, 65535, "any"},
		{two, tcp, 443, ""},
		{three, tcp, 80, ""},
		{three, udp, 53, ""},
		// ICMP echo: the first service by name with the VIP.
		{one, icmp, 7, "dns"},
		{two, icmp, 80, "any"},
		{three, icmp, 7, ""},
		// Another protocol keyed on its address pair: the same.
		{one, 47, 0, "dns"},
		// IPv6: the whole address counts.
		{six, tcp, 80, "web"},
		{six, tcp, 53, "dns"},
		{six, udp, 53, "dns"},
		{six, udp, 80, ""},
		{six, tcp, 443, ""},
		{six, icmpv6, 1, "dns"},
		{nat64, tcp, 80, ""},
		{nat64, icmpv6, 1, ""},
		{other, tcp, 80, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s proto %d port %d", tt.vip, tt.proto, tt.port), func(t *testing.T) {
			k := keyTo(tt.vip, tt.proto, tt.port)
			got := ""
			if svc := c.classify(&k); svc != nil {
				got = svc.Name
			}
			if got != tt.want {
				t.Errorf("classified to %q, want %q", got, tt.want)
			}
		})
	}
}

// TestClassifyICMPError: an ICMP error is classified by the flow it quotes,
// as flow.Parse keys it: the client's flow to the VIP's port.
func TestClassifyICMPError(t *testing.T) {
	vip := netip.MustParseAddr("192.0.2.1")
	c, err := newClassifier(shells(model.Service{Name: "web", Protocols: model.TCP,
		VIPs: []model.VIP{{Addr: vip, Ports: ports(model.PortRange{First: 443, Last: 443})}}}))
	if err != nil {
		t.Fatal(err)
	}
	// frag-needed from a router on the way back, quoting the VIP's
	// segment 192.0.2.1:443 → 198.51.100.1:40000.
	quoted := make([]byte, 28)
	quoted[0], quoted[8], quoted[9] = 0x45, 64, unix.IPPROTO_TCP
	quoted[2], quoted[3] = 0, 40
	copy(quoted[12:16], vip.AsSlice())
	copy(quoted[16:20], []byte{198, 51, 100, 1})
	quoted[20], quoted[21], quoted[22], quoted[23] = 443>>8, 443&0xff, 40000>>8, 40000&0xff
	pkt := make([]byte, 28, 28+len(quoted))
	pkt[0], pkt[8], pkt[9] = 0x45, 64, unix.IPPROTO_ICMP
	copy(pkt[12:16], []byte{203, 0, 113, 1})
	copy(pkt[16:20], vip.AsSlice())
	pkt[20], pkt[21] = 3, 4 // destination unreachable, fragmentation needed
	pkt = append(pkt, quoted...)
	pkt[2], pkt[3] = 0, byte(len(pkt))
	k, _, err := flow.Parse(pkt)
	if err != nil {
		t.Fatal(err)
	}
	if svc := c.classify(&k); svc == nil || svc.Name != "web" {
		t.Errorf("the ICMP error quoting a segment of web's flow went to %v, want web", svc)
	}
}

// TestClassifierRefusesOverlaps: two services, or one twice, that would
// take the same VIP, protocol and port make an error naming them all.
func TestClassifierRefusesOverlaps(t *testing.T) {
	vip := netip.MustParseAddr("192.0.2.1")
	svc := func(name string, p model.Protocols, rs ...model.PortRange) model.Service {
		var ps []model.PortRange
		if rs != nil {
			ps = rs
		}
		return model.Service{Name: name, Protocols: p, VIPs: []model.VIP{{Addr: vip, Ports: ps}}}
	}
	tests := []struct {
		name     string
		services []model.Service
		want     string // "" for no error
	}{
		{"same port", []model.Service{svc("a", model.TCP, model.PortRange{First: 80, Last: 80}), svc("b", model.TCP, model.PortRange{First: 80, Last: 80})},
			"balancer: services a and b both take VIP 192.0.2.1 tcp port 80"},
		{"ranges that overlap", []model.Service{svc("a", model.UDP, model.PortRange{First: 50, Last: 60}), svc("b", model.TCP|model.UDP, model.PortRange{First: 55, Last: 70})},
			"balancer: services a and b both take VIP 192.0.2.1 udp port 55"},
		{"every port and one", []model.Service{svc("a", model.TCP), svc("b", model.TCP, model.PortRange{First: 443, Last: 443})},
			"balancer: services a and b both take VIP 192.0.2.1 tcp port 443"},
		{"one service twice", []model.Service{{Name: "a", Protocols: model.TCP, VIPs: []model.VIP{{Addr: vip}, {Addr: vip}}}},
			"balancer: service a takes VIP 192.0.2.1 tcp port 0 twice"},
		{"other protocol", []model.Service{svc("a", model.TCP), svc("b", model.UDP)}, ""},
		{"ranges that touch", []model.Service{svc("a", model.TCP, model.PortRange{First: 1, Last: 79}), svc("b", model.TCP, model.PortRange{First: 80, Last: 90})}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newClassifier(shells(tt.services...))
			if got := errText(err); got != tt.want {
				t.Errorf("error %q, want %q", got, tt.want)
			}
		})
	}
}

// classifyBench is 100 services of 4 ports each (80, 443 and two of their
// own) over TCP, on 25 VIPs, 4 services a VIP, and the keys of a flow to
// each of their ports; the VIPs are IPv4, or IPv6 when v6.
func classifyBench(tb testing.TB, v6 bool) (classifier, []flow.Key) {
	var services []*service
	var keys []flow.Key
	for i := range 100 {
		vip := netip.AddrFrom4([4]byte{192, 0, 2, byte(i / 4)})
		if v6 {
			vip = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i / 4)})
		}
		own := uint16(10000 + 10*i)
		one := func(p uint16) model.PortRange { return model.PortRange{First: p, Last: p} }
		ps := ports(one(own), one(own+1), one(own+2), one(own+3))
		if i%4 == 0 { // one service a VIP has the well-known ports
			ps = ports(one(80), one(443), one(own), one(own+1))
		}
		services = append(services, &service{Service: model.Service{Name: fmt.Sprintf("svc%03d", i), Protocols: model.TCP,
			VIPs: []model.VIP{{Addr: vip, Ports: ps}}}})
		for _, r := range ps {
			keys = append(keys, keyTo(vip.String(), unix.IPPROTO_TCP, r.First))
		}
	}
	c, err := newClassifier(services)
	if err != nil {
		tb.Fatal(err)
	}
	return c, keys
}

// TestClassifyAllocatesNothing: classification runs for every packet.
func TestClassifyAllocatesNothing(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		c, keys := classifyBench(t, v6)
		miss := keyTo("192.0.2.1", unix.IPPROTO_TCP, 9)
		if v6 {
			miss = keyTo("2001:db8::1", unix.IPPROTO_TCP, 9)
		}
		allocs := testing.AllocsPerRun(100, func() {
			for i := range keys {
				if c.classify(&keys[i]) == nil {
					t.Fatal("a flow to a service's port classified to none")
				}
			}
			if c.classify(&miss) != nil {
				t.Fatal("a flow to a port no service takes classified to one")
			}
		})
		if allocs != 0 {
			t.Errorf("IPv6 %v: %v allocations per round, want 0", v6, allocs)
		}
	}
}

// BenchmarkClassify: one classification of a packet among 100 services × 4
// ports (classifyBench), cycling over every service's ports, with IPv4 VIPs
// and with IPv6 VIPs; and, for comparison, with the one service of every
// port that the hot-path benchmark has.
func BenchmarkClassify(b *testing.B) {
	many, keys := classifyBench(b, false)
	many6, keys6 := classifyBench(b, true)
	one, err := newClassifier(shells(model.Service{Name: "default", Protocols: model.TCP | model.UDP,
		VIPs: []model.VIP{{Addr: benchVIP}}}))
	if err != nil {
		b.Fatal(err)
	}
	k := keyTo(benchVIP.String(), unix.IPPROTO_UDP, 80)
	for _, bb := range []struct {
		name string
		c    classifier
		keys []flow.Key
	}{
		{"100x4", many, keys},
		{"100x4-ipv6", many6, keys6},
		{"1xall", one, []flow.Key{k}},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if bb.c.classify(&bb.keys[i]) == nil {
					b.Fatal("classified to none")
				}
				i++
				if i == len(bb.keys) {
					i = 0
				}
			}
		})
	}
}
