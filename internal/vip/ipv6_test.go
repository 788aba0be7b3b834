package vip_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/vip"
)

// addrs6Of lists link's IPv6 addresses as "2001:db8::1/128 nodad", the
// flag named when the address has it, and "tentative" when it is still
// under duplicate address detection.
func addrs6Of(t *testing.T, link string) []string {
	t.Helper()
	l, err := netlink.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		s := a.IPNet.String()
		if a.Flags&unix.IFA_F_NODAD != 0 {
			s += " nodad"
		}
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			s += " tentative"
		}
		out = append(out, s)
	}
	return out
}

// TestAttachLoopback6: an IPv6 VIP goes on lo as a /128 without duplicate
// address detection, is journaled, and Undo removes it; one already there
// is left alone and not recorded; addresses a VIP cannot be are refused and
// change nothing.
func TestAttachLoopback6(t *testing.T) {
	tests := []struct {
		name        string
		onLo        string // an address on lo before
		vip         string
		wantErr     string
		wantLo      []string
		wantChanges []vip.Change
	}{
		{
			name: "attached", vip: "2001:db8:f::100",
			wantLo:      []string{"2001:db8:f::100/128 nodad", "::1/128"},
			wantChanges: []vip.Change{{Kind: vip.KindAddress, Link: "lo", Address: pfx("2001:db8:f::100/128")}},
		},
		{
			name: "IPv4-mapped form is IPv4", vip: "::ffff:10.0.0.100",
			wantLo:      []string{"::1/128"},
			wantChanges: []vip.Change{{Kind: vip.KindAddress, Link: "lo", Address: pfx("10.0.0.100/32")}},
		},
		{
			name: "already there", onLo: "2001:db8:f::100/64", vip: "2001:db8:f::100",
			wantLo: []string{"2001:db8:f::100/64 nodad", "::1/128"}, // added by addAddr, left alone
		},
		{name: "link-local", vip: "fe80::1", wantErr: "VIP fe80::1: not a unicast address", wantLo: []string{"::1/128"}},
		{name: "multicast", vip: "ff02::1", wantErr: "VIP ff02::1: not a unicast address", wantLo: []string{"::1/128"}},
		{name: "unspecified", vip: "::", wantErr: "VIP ::: not a unicast address", wantLo: []string{"::1/128"}},
		{name: "zoned", vip: "2001:db8:f::100%eth0", wantErr: "VIP 2001:db8:f::100%eth0: not a unicast address", wantLo: []string{"::1/128"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t)
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				t.Fatal(err)
			}
			if err := netlink.LinkSetUp(lo); err != nil { // gives lo its ::1
				t.Fatal(err)
			}
			if tt.onLo != "" {
				addAddr(t, "lo", tt.onLo)
			}
			before := addrs6Of(t, "lo")
			dir := t.TempDir()
			h := openHost(t, dir)

			err = h.AttachLoopback(netip.MustParseAddr(tt.vip))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("AttachLoopback error = %v, want %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("AttachLoopback: %v", err)
			}
			if diff := cmp.Diff(tt.wantLo, addrs6Of(t, "lo")); diff != "" {
				t.Errorf("lo's IPv6 addresses (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantChanges, h.Changes(), equateAddrs); diff != "" {
				t.Errorf("recorded changes (-want +got):\n%s", diff)
			}
			if err := h.Undo(); err != nil {
				t.Fatalf("Undo: %v", err)
			}
			if diff := cmp.Diff(before, addrs6Of(t, "lo")); diff != "" {
				t.Errorf("lo's IPv6 addresses after Undo (-want +got):\n%s", diff)
			}
			var v4 []string // addrsOf lists both families
			for _, a := range addrsOf(t, "lo") {
				if !strings.Contains(a, ":") {
					v4 = append(v4, a)
				}
			}
			if len(v4) != 1 || !strings.HasPrefix(v4[0], "127.0.0.1/") {
				t.Errorf("lo's IPv4 addresses after Undo: %v, want only 127.0.0.1", v4)
			}
		})
	}
}

// TestNoNeighbourAdvertisement proves that a backend with an IPv6 VIP on lo
// does not answer neighbour solicitations for it from its link, so no
// sysctl (IPv6 has no arp_ignore) is needed: Linux answers a solicitation
// only for an address of the interface it arrived on (ndisc_recv_ns,
// ipv6_get_ifaddr with strict). A host on the link that routes the VIP
// straight onto the link never resolves it, while the backend's own
// address on eth0 resolves, which shows the solicitations do arrive.
func TestNoNeighbourAdvertisement(t *testing.T) {
	lab := netnstest.NewForTest(t, "vipnd")
	neighbour, err := lab.AddHost("nb", pfx("2001:db8::1/64"))
	if err != nil {
		t.Fatal(err)
	}
	backend, err := lab.AddHost("backend", pfx("2001:db8::2/64"))
	if err != nil {
		t.Fatal(err)
	}
	vip6 := netip.MustParseAddr("2001:db8:f::100")
	dir := t.TempDir()
	if err := backend.Do(func() error {
		h, err := vip.Open(dir)
		if err != nil {
			return err
		}
		defer h.Close()
		return h.AttachLoopback(vip6)
	}); err != nil {
		t.Fatal(err)
	}
	// The VIP routed onto the link, as if the backend were the next hop
	// that owns it: the neighbour solicits it directly.
	if err := neighbour.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{
			LinkIndex: eth0.Attrs().Index, Dst: &net.IPNet{IP: vip6.AsSlice(), Mask: net.CIDRMask(128, 128)},
			Scope: netlink.SCOPE_LINK,
		})
	}); err != nil {
		t.Fatal(err)
	}

	// states sends one datagram to each of addrs, which makes the kernel
	// solicit them, then polls the neighbour's table until their entries
	// are settled (reachable or failed: after three unanswered
	// solicitations, a second apart), and returns them. Only one datagram:
	// another would start a failed entry over.
	states := func(addrs ...netip.Addr) map[netip.Addr]string {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := neighbour.Do(func() error {
			for _, a := range addrs {
				c, err := net.DialUDP("udp6", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 9)))
				if err != nil {
					return err
				}
				_, _ = c.Write([]byte("who has it?"))
				c.Close()
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for {
			got := map[netip.Addr]string{}
			err := neighbour.Do(func() error {
				neighs, err := netlink.NeighList(0, netlink.FAMILY_V6)
				if err != nil {
					return err
				}
				for _, n := range neighs {
					if ip, ok := netip.AddrFromSlice(n.IP); ok {
						got[ip] = neighState(n.State)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			settled := true
			for _, a := range addrs {
				if s := got[a]; s != "reachable" && s != "stale" && s != "failed" {
					settled = false
				}
			}
			if settled || ctx.Err() != nil {
				out := map[netip.Addr]string{}
				for _, a := range addrs {
					out[a] = got[a]
				}
				return out
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	want := map[netip.Addr]string{netip.MustParseAddr("2001:db8::2"): "reachable", vip6: "failed"}
	got := states(netip.MustParseAddr("2001:db8::2"), vip6)
	if got[netip.MustParseAddr("2001:db8::2")] == "stale" { // resolved, then aged: as good
		got[netip.MustParseAddr("2001:db8::2")] = "reachable"
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("the neighbour's entries (-want +got):\n%s", diff)
	}
}

func neighState(s int) string {
	switch {
	case s&netlink.NUD_REACHABLE != 0:
		return "reachable"
	case s&netlink.NUD_STALE != 0, s&netlink.NUD_DELAY != 0, s&netlink.NUD_PROBE != 0:
		return "stale"
	case s&netlink.NUD_FAILED != 0:
		return "failed"
	case s&netlink.NUD_INCOMPLETE != 0:
		return "incomplete"
	}
	return "other"
}

// An IPv6 VIP on the balancer's NIC is never the kernel's choice of source
// address: the balancer's tunnels to IPv6 backends take the route's source,
// which must be an address the receivers list as a balancer's, and the
// host's own connections must not leave from an address whose answers the
// balancer would take. Without a deprecated VIP (preferred lifetime 0)
// the kernel prefers the VIP here.
func TestIPv6VIPIsNeverASource(t *testing.T) {
	inNetns(t)
	link := addVeth(t, "eth0", "2001:db8::2/64")
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	h := openHost(t, t.TempDir())
	for _, a := range []string{"2001:db8::100", "2001:db8::101"} {
		if _, err := h.AttachVIP(ip(a), "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	for _, dst := range []string{"2001:db8::11", "2001:db8::1ff", "2001:db8::100:1"} {
		routes, err := netlink.RouteGet(ip(dst).AsSlice())
		if err != nil || len(routes) == 0 {
			t.Fatalf("route to %s: %v %v", dst, routes, err)
		}
		if got := routes[0].Src.String(); got != "2001:db8::2" {
			t.Errorf("source to %s is %s, want the host's 2001:db8::2", dst, got)
		}
	}
}
