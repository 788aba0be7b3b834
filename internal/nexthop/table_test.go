package nexthop_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/nexthop"
)

var (
	lbAddrs = []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("fd00::1/64")}
	b1v4    = netip.MustParseAddr("10.0.0.2")
	b1v6    = netip.MustParseAddr("fd00::2")
	gwv4    = netip.MustParseAddr("10.0.0.254")
	gwv6    = netip.MustParseAddr("fd00::fe")
	// Behind the gateway; nothing answers for them, nothing needs to.
	farv4 = netip.MustParseAddr("10.9.0.5")
	farv6 = netip.MustParseAddr("fd09::5")
	// On the link, but no host holds them.
	nobodyv4 = netip.MustParseAddr("10.0.0.77")
)

// lab is a balancer host "lb" and a backend "b1" on one link.
type lab struct {
	*netnstest.Lab
	lb, b1 *netnstest.Host
	lbMAC  [6]byte
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{Lab: netnstest.NewForTest(t, "nhop")}
	var err error
	if l.lb, err = l.AddHost("lb", lbAddrs...); err != nil {
		t.Fatal(err)
	}
	if l.b1, err = l.AddHost("b1", netip.PrefixFrom(b1v4, 24), netip.PrefixFrom(b1v6, 64)); err != nil {
		t.Fatal(err)
	}
	l.lbMAC = mac(t, l.lb, "eth0")
	return l
}

// newTable starts a table on lb's eth0 whose periodic resync never comes
// during a test, so what the tests see comes from events and Lookup.
func (l *lab) newTable(t *testing.T, dsts ...netip.Addr) *nexthop.Table {
	t.Helper()
	var tbl *nexthop.Table
	err := l.lb.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		tbl, err = nexthop.New(eth0.Attrs().Index, nexthop.Options{ResyncInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tbl.Close() })
	if err := tbl.SetDestinations(dsts); err != nil {
		t.Fatal(err)
	}
	return tbl
}

func mac(t *testing.T, h *netnstest.Host, ifname string) [6]byte {
	t.Helper()
	var hw net.HardwareAddr
	err := h.Do(func() error {
		link, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		hw = link.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return [6]byte(hw)
}

func run(t *testing.T, h *netnstest.Host, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := h.Command(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// lookup is Lookup's two results as one comparable value.
type lookup struct {
	Hop nexthop.Hop
	OK  bool
}

// waitLookup calls Lookup until it returns want, and fails the test if it
// has not after a generous deadline.
func waitLookup(t *testing.T, tbl *nexthop.Table, dst netip.Addr, want lookup) {
	t.Helper()
	var got lookup
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got.Hop, got.OK = tbl.Lookup(dst)
		if got == want {
			return
		}
	}
	t.Fatalf("Lookup(%v) (-want +got):\n%s", dst, cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })))
}

func hop(dst, src [6]byte, srcAddr netip.Addr) lookup {
	et := uint16(nexthop.EtherTypeIPv6)
	if srcAddr.Is4() {
		et = nexthop.EtherTypeIPv4
	}
	return lookup{Hop: nexthop.Hop{DstMAC: dst, SrcMAC: src, EtherType: et, Src: srcAddr}, OK: true}
}

// TestOnLinkAndGateway: a backend on the link resolves (ARP, NDP) to its own
// MAC, one behind a gateway to the gateway's, none of them known to the
// kernel before the table asks.
func TestOnLinkAndGateway(t *testing.T) {
	l := newLab(t)
	gw, err := l.AddHost("gw", netip.PrefixFrom(gwv4, 24), netip.PrefixFrom(gwv6, 64))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		dst netip.Prefix
		via netip.Addr
	}{{netip.PrefixFrom(farv4, 24), gwv4}, {netip.PrefixFrom(farv6, 64), gwv6}} {
		if err := l.lb.AddRoute(r.dst, r.via); err != nil {
			t.Fatal(err)
		}
	}
	b1MAC, gwMAC := mac(t, l.b1, "eth0"), mac(t, gw, "eth0")
	tbl := l.newTable(t, b1v4, b1v6, farv4, farv6)
	for _, tc := range []struct {
		name string
		dst  netip.Addr
		want lookup
	}{
		{"ipv4 on link", b1v4, hop(b1MAC, l.lbMAC, lbAddrs[0].Addr())},
		{"ipv6 on link", b1v6, hop(b1MAC, l.lbMAC, lbAddrs[1].Addr())},
		{"ipv4 via gateway", farv4, hop(gwMAC, l.lbMAC, lbAddrs[0].Addr())},
		{"ipv6 via gateway", farv6, hop(gwMAC, l.lbMAC, lbAddrs[1].Addr())},
	} {
		t.Run(tc.name, func(t *testing.T) { waitLookup(t, tbl, tc.dst, tc.want) })
	}
}

// TestMACChange: when the backend's address changes and it says so (a
// gratuitous ARP, an unsolicited NA), the table follows the kernel's entry.
func TestMACChange(t *testing.T) {
	l := newLab(t)
	for _, s := range []string{"net/ipv4/conf/eth0/arp_notify", "net/ipv6/conf/eth0/ndisc_notify"} {
		if err := l.b1.SetSysctl(s, "1"); err != nil {
			t.Fatal(err)
		}
	}
	tbl := l.newTable(t, b1v4, b1v6)
	old := mac(t, l.b1, "eth0")
	waitLookup(t, tbl, b1v4, hop(old, l.lbMAC, lbAddrs[0].Addr()))
	waitLookup(t, tbl, b1v6, hop(old, l.lbMAC, lbAddrs[1].Addr()))

	run(t, l.b1, "ip", "link", "set", "eth0", "address", "02:00:00:00:0b:01")
	newMAC := [6]byte{2, 0, 0, 0, 0x0b, 1}
	waitLookup(t, tbl, b1v4, hop(newMAC, l.lbMAC, lbAddrs[0].Addr()))
	waitLookup(t, tbl, b1v6, hop(newMAC, l.lbMAC, lbAddrs[1].Addr()))

	// The balancer's own address comes from link events.
	run(t, l.lb, "ip", "link", "set", "eth0", "address", "02:00:00:00:01:01")
	lbMAC := [6]byte{2, 0, 0, 0, 1, 1}
	waitLookup(t, tbl, b1v4, hop(newMAC, lbMAC, lbAddrs[0].Addr()))
	waitLookup(t, tbl, b1v6, hop(newMAC, lbMAC, lbAddrs[1].Addr()))
}

// TestSilentMACChange: an entry the kernel learnt from the backend's own
// packets (an ARP request, a neighbour solicitation) is stale, and frames the
// data path sends itself never confirm it, so only the table's periodic probe
// finds out that the address has changed: the probe of the old address fails
// and Lookup's request resolves the new one.
func TestSilentMACChange(t *testing.T) {
	l := newLab(t)
	for _, fam := range []string{"ipv4", "ipv6"} {
		for s, v := range map[string]string{"delay_first_probe_time": "1", "retrans_time_ms": "200"} {
			if err := l.lb.SetSysctl("net/"+fam+"/neigh/eth0/"+s, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	old := mac(t, l.b1, "eth0")
	for _, a := range []netip.Addr{b1v4, b1v6} {
		run(t, l.lb, "ip", "neigh", "replace", a.String(), "lladdr", net.HardwareAddr(old[:]).String(), "nud", "stale", "dev", "eth0")
	}
	var tbl *nexthop.Table
	err := l.lb.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		tbl, err = nexthop.New(eth0.Attrs().Index, nexthop.Options{ResyncInterval: 500 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Close()
	if err := tbl.SetDestinations([]netip.Addr{b1v4, b1v6}); err != nil {
		t.Fatal(err)
	}
	waitLookup(t, tbl, b1v4, hop(old, l.lbMAC, lbAddrs[0].Addr()))
	waitLookup(t, tbl, b1v6, hop(old, l.lbMAC, lbAddrs[1].Addr()))

	// arp_notify and ndisc_notify are off (the default): nothing announces it.
	run(t, l.b1, "ip", "link", "set", "eth0", "address", "02:00:00:00:0b:02")
	newMAC := [6]byte{2, 0, 0, 0, 0x0b, 2}
	waitLookup(t, tbl, b1v4, hop(newMAC, l.lbMAC, lbAddrs[0].Addr()))
	waitLookup(t, tbl, b1v6, hop(newMAC, l.lbMAC, lbAddrs[1].Addr()))
}

// TestRouteToOtherInterface: a route moving a backend to another interface
// makes Lookup not ok (the raw path's), and removing it brings it back.
func TestRouteToOtherInterface(t *testing.T) {
	l := newLab(t)
	// The other interface: a veth pair inside lb, both ends up so it has a
	// carrier (this kernel has no dummy links).
	run(t, l.lb, "ip", "link", "add", "other0", "up", "type", "veth", "peer", "name", "other1")
	run(t, l.lb, "ip", "link", "set", "other1", "up")
	tbl := l.newTable(t, b1v4, b1v6)
	b1MAC := mac(t, l.b1, "eth0")
	for _, tc := range []struct {
		dst  netip.Addr
		want lookup
	}{
		{b1v4, hop(b1MAC, l.lbMAC, lbAddrs[0].Addr())},
		{b1v6, hop(b1MAC, l.lbMAC, lbAddrs[1].Addr())},
	} {
		t.Run(tc.dst.String(), func(t *testing.T) {
			waitLookup(t, tbl, tc.dst, tc.want)
			host := netip.PrefixFrom(tc.dst, tc.dst.BitLen()).String()
			run(t, l.lb, "ip", "route", "add", host, "dev", "other0")
			waitLookup(t, tbl, tc.dst, lookup{})
			run(t, l.lb, "ip", "route", "del", host, "dev", "other0")
			waitLookup(t, tbl, tc.dst, tc.want)
		})
	}
}

// TestLookupAsks: when the kernel forgets a next hop, nothing sends to it
// (the data path bypasses the kernel), so only Lookup's request brings it
// back.
func TestLookupAsks(t *testing.T) {
	l := newLab(t)
	tbl := l.newTable(t, b1v4, b1v6)
	b1MAC := mac(t, l.b1, "eth0")
	for _, tc := range []struct {
		dst  netip.Addr
		want lookup
	}{
		{b1v4, hop(b1MAC, l.lbMAC, lbAddrs[0].Addr())},
		{b1v6, hop(b1MAC, l.lbMAC, lbAddrs[1].Addr())},
	} {
		t.Run(tc.dst.String(), func(t *testing.T) {
			waitLookup(t, tbl, tc.dst, tc.want)
			run(t, l.lb, "ip", "neigh", "del", tc.dst.String(), "dev", "eth0")
			waitLookup(t, tbl, tc.dst, lookup{}) // this Lookup asks
			waitLookup(t, tbl, tc.dst, tc.want)
		})
	}
}

// TestSetDestinations: removing a destination forgets it at once, and a bad
// set is refused whole.
func TestSetDestinations(t *testing.T) {
	l := newLab(t)
	tbl := l.newTable(t, b1v4)
	want := hop(mac(t, l.b1, "eth0"), l.lbMAC, lbAddrs[0].Addr())
	waitLookup(t, tbl, b1v4, want)

	for _, tc := range []struct {
		name string
		dsts []netip.Addr
		want string
	}{
		{"zero", []netip.Addr{{}}, "invalid address"},
		{"mapped", []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.3")}, "IPv4-mapped"},
		{"zone", []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}, "zone"},
		{"unspecified", []netip.Addr{netip.IPv6Unspecified()}, "not a unicast address"},
		{"multicast", []netip.Addr{netip.MustParseAddr("224.0.0.1")}, "not a unicast address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tbl.SetDestinations(append(tc.dsts, netip.MustParseAddr("10.0.0.3")))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("SetDestinations: got %v, want an error containing %q", err, tc.want)
			}
			if got, ok := tbl.Lookup(b1v4); (lookup{got, ok}) != want {
				t.Errorf("after a refused set, Lookup(%v) = %v, %v; want the old hop", b1v4, got, ok)
			}
		})
	}

	if err := tbl.SetDestinations(nil); err != nil {
		t.Fatal(err)
	}
	if got, ok := tbl.Lookup(b1v4); ok {
		t.Errorf("Lookup(%v) after removing it = %v, true; want not ok", b1v4, got)
	}
	if err := tbl.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tbl.SetDestinations([]netip.Addr{b1v4}); err != nexthop.ErrClosed {
		t.Errorf("SetDestinations after Close: got %v, want %v", err, nexthop.ErrClosed)
	}
}

// TestLookupAllocs: the hot path allocates nothing, resolved or not.
func TestLookupAllocs(t *testing.T) {
	l := newLab(t)
	tbl := l.newTable(t, b1v4, nobodyv4)
	waitLookup(t, tbl, b1v4, hop(mac(t, l.b1, "eth0"), l.lbMAC, lbAddrs[0].Addr()))
	for _, dst := range []netip.Addr{b1v4, nobodyv4, farv6} {
		if n := testing.AllocsPerRun(1000, func() { tbl.Lookup(dst) }); n != 0 {
			t.Errorf("Lookup(%v): %v allocations per call, want 0", dst, n)
		}
	}
}

// TestNotEthernet: a table needs an interface with an Ethernet address.
func TestNotEthernet(t *testing.T) {
	l := newLab(t)
	err := l.lb.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		tbl, err := nexthop.New(lo.Attrs().Index, nexthop.Options{})
		if err == nil {
			tbl.Close()
			return fmt.Errorf("New(lo) succeeded, want an error")
		}
		if !strings.Contains(err.Error(), "not an Ethernet interface") {
			return fmt.Errorf("New(lo): got %v, want \"not an Ethernet interface\"", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkLookup measures the hot path: a resolved destination among 1000.
func BenchmarkLookup(b *testing.B) {
	l := &lab{Lab: netnstest.NewForTest(b, "nhop")}
	var err error
	if l.lb, err = l.AddHost("lb", lbAddrs...); err != nil {
		b.Fatal(err)
	}
	if l.b1, err = l.AddHost("b1", netip.PrefixFrom(b1v4, 24)); err != nil {
		b.Fatal(err)
	}
	dsts := []netip.Addr{b1v4}
	for i := range 999 {
		dsts = append(dsts, netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}))
	}
	var tbl *nexthop.Table
	err = l.lb.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		tbl, err = nexthop.New(eth0.Attrs().Index, nexthop.Options{ResyncInterval: time.Hour})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	defer tbl.Close()
	if err := tbl.SetDestinations(dsts); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := tbl.Lookup(b1v4); ok {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("Lookup(%v) never resolved", b1v4)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, ok := tbl.Lookup(b1v4); !ok {
			b.Fatal("Lookup not ok")
		}
	}
}
