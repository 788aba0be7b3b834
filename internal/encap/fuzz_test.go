package encap_test

import (
	"net/netip"
	"testing"

	"github.com/caplance/caplance/internal/encap"
)

// FuzzDecapsulate feeds arbitrary bytes to Packet, and the same bytes as a
// balancer's UDP payload to Payload; it is seeded from both tables. Neither
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
			if dst != vip4 && dst != vip6 {
				t.Fatalf("%s: accepted inner destination %v, not a VIP", what, dst)
			}
			if src == dst || src == backend || src == vip4 || src == vip6 {
				t.Fatalf("%s: accepted inner source %v to %v", what, src, dst)
			}
		}
		inner, r := d.Packet(data, hostAddrs)
		check("Packet", data, inner, r)
		inner, r = d.Payload(balancer, data, hostAddrs)
		check("Payload", data, inner, r)
	})
}
