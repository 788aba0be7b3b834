package flow_test

import (
	"testing"

	"github.com/caplance/caplance/internal/flow"
)

// FuzzParse: Parse never panics, rejects only with a known reason, and every
// key it returns obeys the rules the rest of the balancer relies on.
func FuzzParse(f *testing.F) {
	for _, tt := range parseTests {
		f.Add(tt.pkt)
	}
	for _, bp := range benchPackets {
		f.Add(bp.pkt)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		k, flags, err := flow.Parse(pkt)
		if err != nil {
			m, ok := err.(flow.Malformed)
			if !ok || int(m) >= flow.NumMalformed {
				t.Fatalf("error %v (%T) is not a Malformed reason", err, err)
			}
			if k != (flow.Key{}) || flags != 0 {
				t.Fatalf("error %v with non-zero key %v or flags %#x", err, k, flags)
			}
			return
		}
		// Accepted, so pkt has a version nibble; an IPv4 packet, ICMP error
		// or not, must give an IPv4 key.
		if pkt[0]>>4 == 4 && (!isMapped(k.Src) || !isMapped(k.Dst)) {
			t.Fatalf("IPv4 packet gave non-IPv4 key %v", k)
		}
		if flags != 0 && k.Proto != pTCP {
			t.Fatalf("key %v has TCP flags %#x", k, flags)
		}
		switch k.Proto {
		case pTCP, pUDP, pUDPLite, pSCTP, pDCCP:
		case pICMP, pICMPv6:
			if k.SrcPort != k.DstPort {
				t.Fatalf("ICMP key %v has different ports", k)
			}
		default:
			if k.SrcPort != 0 || k.DstPort != 0 {
				t.Fatalf("key %v has ports for a protocol without them", k)
			}
		}
		// Bytes past the IP length fields change nothing.
		padded := append(append([]byte(nil), pkt...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
		if k2, f2, err := flow.Parse(padded); err != nil || k2 != k || f2 != flags {
			t.Fatalf("with trailing bytes: %v %#x, %v; without: %v %#x", k2, f2, err, k, flags)
		}
	})
}

func isMapped(a [16]byte) bool {
	return [12]byte(a[:12]) == [12]byte{10: 0xff, 11: 0xff}
}
