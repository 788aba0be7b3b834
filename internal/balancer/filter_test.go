package balancer

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
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

// TestVIPFilter6 runs the IPv6 packet socket's filters in x/net/bpf's
// interpreter, from their fourth instruction on (the interpreter has no
// packet type; the namespace tests cover that part): a TCP or UDP packet to
// any of MaxVIPs VIPs (a tree that branches on every word, with leaves of
// more than one run) is kept by exactly one of three workers' filters, an
// ICMPv6 echo or a packet behind an extension header by worker 0's only, a
// neighbour solicitation to a VIP and a packet to an address that differs
// from a VIP in any one word by none.
func TestVIPFilter6(t *testing.T) {
	var vips []netip.Addr
	for i := range MaxVIPs {
		vips = append(vips, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, byte(0xb8 + i%8/6),
			7: byte(i % 2), 11: byte(i % 4 / 2), 14: byte(i >> 8), 15: byte(i)}))
	}
	slices.SortFunc(vips, netip.Addr.Compare)
	const workers = 3
	var vms []*bpf.VM
	for i := range uint32(workers) {
		vm, err := bpf.NewVM(vipFilter6(vips, shareFilter6(i, workers))[3:])
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, vm)
	}
	// keptBy returns the workers whose filter keeps pkt.
	keptBy := func(pkt []byte) []int {
		t.Helper()
		var by []int
		for i, vm := range vms {
			kept, err := vm.Run(pkt)
			if err != nil {
				t.Fatal(err)
			}
			if kept > 0 {
				by = append(by, i)
			}
		}
		return by
	}
	to := func(dst netip.Addr, sport uint16, opts bool) []byte {
		pkt := clientUDP6(sport, 8, opts)
		copy(pkt[24:40], dst.AsSlice())
		return pkt
	}
	icmp := func(dst netip.Addr, typ byte) []byte {
		pkt := to(dst, 0, false)
		pkt[6], pkt[40] = unix.IPPROTO_ICMPV6, typ
		return pkt
	}
	for i, v := range vips {
		if by := keptBy(to(v, uint16(i), false)); len(by) != 1 {
			t.Errorf("a UDP packet to VIP %s (number %d) was kept by workers %v, want one", v, i, by)
		}
		for what, pkt := range map[string][]byte{"an echo request": icmp(v, 128), "a packet behind destination options": to(v, 7, true)} {
			if diff := cmp.Diff([]int{0}, keptBy(pkt)); diff != "" {
				t.Errorf("%s to VIP %s: the workers that kept it (-want +got):\n%s", what, v, diff)
			}
		}
		if by := keptBy(icmp(v, 135)); by != nil {
			t.Errorf("a neighbour solicitation to VIP %s was kept by workers %v", v, by)
		}
	}
	for w := range 4 {
		a := vips[5].As16()
		a[4*w] ^= 0x80
		if by := keptBy(to(netip.AddrFrom16(a), 7, false)); by != nil {
			t.Errorf("a packet to %s, no VIP, was kept by workers %v", netip.AddrFrom16(a), by)
		}
	}
	none, err := bpf.NewVM(vipFilter6(nil, []bpf.Instruction{keepPacket})[3:])
	if err != nil {
		t.Fatal(err)
	}
	if kept, err := none.Run(to(vips[0], 1, false)); err != nil || kept != 0 {
		t.Errorf("with no VIPs the filter kept %d bytes (%v), want none", kept, err)
	}
}
