package balancer

import (
	"net/netip"
	"testing"

	"golang.org/x/net/bpf"
)

// TestVIPFilter runs the sockets' filters in x/net/bpf's interpreter: a
// packet to any of MaxVIPs VIPs (the comparisons span several runs of
// conditional jumps) is kept by exactly one of three workers' filters, a
// packet to another address by none, and with no VIPs nothing is kept.
func TestVIPFilter(t *testing.T) {
	var vips []netip.Addr
	for i := range MaxVIPs {
		vips = append(vips, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
	}
	const workers = 3
	var vms []*bpf.VM
	for i := range uint32(workers) {
		vm, err := bpf.NewVM(vipFilter(vips, shareFilter(i, workers)))
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, vm)
	}
	keptBy := func(dst netip.Addr, sport uint16) int {
		t.Helper()
		pkt := udpPacket(client, dst, sport, 80)
		n := 0
		for _, vm := range vms {
			kept, err := vm.Run(pkt)
			if err != nil {
				t.Fatal(err)
			}
			if kept > 0 {
				n++
			}
		}
		return n
	}
	for i, v := range vips {
		if n := keptBy(v, uint16(i)); n != 1 {
			t.Errorf("a packet to VIP %s (number %d) was kept by %d workers, want 1", v, i, n)
		}
	}
	for _, a := range []string{"10.1.4.0", "10.0.0.100", "192.0.2.1", "0.0.0.0"} {
		if n := keptBy(netip.MustParseAddr(a), 7); n != 0 {
			t.Errorf("a packet to %s, no VIP, was kept by %d workers", a, n)
		}
	}
	none, err := bpf.NewVM(vipFilter(nil, []bpf.Instruction{keepPacket}))
	if err != nil {
		t.Fatal(err)
	}
	if kept, err := none.Run(udpPacket(client, vips[0], 1, 80)); err != nil || kept != 0 {
		t.Errorf("with no VIPs the filter kept %d bytes (%v), want none", kept, err)
	}
}
