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
// here independently, is a VIP.
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
			var dst netip.Addr
			switch inner[0] >> 4 {
			case 4:
				dst = netip.AddrFrom4([4]byte(inner[16:20]))
			case 6:
				dst = netip.AddrFrom16([16]byte(inner[24:40]))
			default:
				t.Fatalf("%s: accepted inner version %d", what, inner[0]>>4)
			}
			if dst != vip4 && dst != vip6 {
				t.Fatalf("%s: accepted inner destination %v, not a VIP", what, dst)
			}
		}
		inner, r := d.Packet(data)
		check("Packet", data, inner, r)
		inner, r = d.Payload(balancer, data)
		check("Payload", data, inner, r)
	})
}
