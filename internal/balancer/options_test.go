package balancer

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/inet"
)

// TestRefreshOptionsChecksum: only an IPv4 header with options gets its
// checksum rewritten, and nothing else of the packet changes.
func TestRefreshOptionsChecksum(t *testing.T) {
	plain := clientUDP(40000, 8)
	// A Record Route option the balancer's kernel filled in (one address
	// recorded, pointer moved on) without fixing the checksum.
	rr := []byte{7, 11, 8, 10, 0, 0, 1, 0, 0, 0, 0, 0}
	withRR := append(append(append([]byte(nil), plain[:20]...), rr...), plain[20:]...)
	withRR[0] = 0x40 | byte(20+len(rr))/4
	withRR[3] = byte(len(withRR))
	v6 := make([]byte, 48)
	v6[0] = 0x60

	tests := []struct {
		name      string
		pkt       []byte
		wantFixed bool
	}{
		{"IPv4 without options, stale checksum: untouched", plain, false},
		{"IPv4 with options, stale checksum: rewritten", withRR, true},
		{"IPv6: untouched", v6, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := append([]byte(nil), tt.pkt...)
			refreshOptionsChecksum(pkt)
			want := append([]byte(nil), tt.pkt...)
			if tt.wantFixed {
				ihl := int(pkt[0]&0x0f) * 4
				if !inet.Valid(pkt[:ihl]) {
					t.Errorf("header checksum %#02x%02x is wrong", pkt[10], pkt[11])
				}
				copy(want[10:12], pkt[10:12])
			}
			if diff := cmp.Diff(want, pkt); diff != "" {
				t.Errorf("packet (-want +got):\n%s", diff)
			}
		})
	}
	if n := testing.AllocsPerRun(100, func() { refreshOptionsChecksum(withRR) }); n != 0 {
		t.Errorf("%v allocations per packet, want 0", n)
	}
}
