package vip_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/vip"
)

// loUp brings lo up, as it is on every host: a route dev lo needs it.
func loUp(t *testing.T) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
}

// routesIn lists table's routes as `ip route show table N` would, one
// "DST proto P scope S" a line, sorted by the kernel (IPv4 first).
func routesIn(t *testing.T, table int) []string {
	t.Helper()
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast() {
			continue // IPv6's own
		}
		lo, _ := netlink.LinkByIndex(r.LinkIndex)
		out = append(out, strings.Join([]string{r.Dst.String(), "dev", lo.Attrs().Name, "proto", r.Protocol.String(), "scope", r.Scope.String()}, " "))
	}
	return out
}

// addForeignRoute adds dst dev lo in table with protocol, as BIRD or an
// operator would.
func addForeignRoute(t *testing.T, dst string, table, protocol int) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	n, err := netlink.ParseIPNet(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteAdd(&netlink.Route{Dst: n, LinkIndex: lo.Attrs().Index, Table: table, Protocol: netlink.RouteProtocol(protocol)}); err != nil {
		t.Fatalf("add %s table %d proto %d: %v", dst, table, protocol, err)
	}
}

// TestRoutes: AddRoute publishes a VIP in its table with its protocol,
// journalled; DeleteRoute and Undo delete exactly caplanced's routes and
// never one of another protocol, even to the same VIP.
func TestRoutes(t *testing.T) {
	inNetns(t)
	loUp(t)
	dir := t.TempDir()
	h := openHost(t, dir)
	addForeignRoute(t, "10.0.0.200/32", 100, 12) // BIRD's, in the same table
	v4 := vip.Route{VIP: ip("10.0.0.100"), Table: 100, Protocol: 252}
	v6 := vip.Route{VIP: ip("2001:db8::100"), Table: 100, Protocol: 252}
	for _, r := range []vip.Route{v4, v6} {
		if err := h.AddRoute(r); err != nil {
			t.Fatalf("AddRoute(%v): %v", r, err)
		}
	}
	want := []string{
		"10.0.0.100/32 dev lo proto 252 scope link",
		"10.0.0.200/32 dev lo proto bird scope universe",
		"2001:db8::100/128 dev lo proto 252 scope universe",
	}
	if diff := cmp.Diff(want, routesIn(t, 100)); diff != "" {
		t.Errorf("table 100 after AddRoute (-want +got):\n%s", diff)
	}
	if main := routesIn(t, unix.RT_TABLE_MAIN); len(main) != 0 {
		t.Errorf("the main table got routes: %v", main)
	}
	got, err := vip.Routes(100, 252)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]netip.Addr{v4.VIP, v6.VIP}, got, equateAddrs); diff != "" {
		t.Errorf("Routes(100, 252) (-want +got):\n%s", diff)
	}
	wantJournal := []vip.Change{
		{Kind: vip.KindRoute, Link: "lo", Address: pfx("10.0.0.100/32"), Table: 100, Protocol: 252},
		{Kind: vip.KindRoute, Link: "lo", Address: pfx("2001:db8::100/128"), Table: 100, Protocol: 252},
	}
	if diff := cmp.Diff(wantJournal, h.Changes(), equateAddrs); diff != "" {
		t.Errorf("journal (-want +got):\n%s", diff)
	}
	// Adding it again is no change; the journal still has it once.
	if err := h.AddRoute(v4); err != nil {
		t.Errorf("AddRoute of a route that is there: %v", err)
	}
	if diff := cmp.Diff(wantJournal, h.Changes(), equateAddrs); diff != "" {
		t.Errorf("journal after adding the route again (-want +got):\n%s", diff)
	}

	// A VIP whose route in the table is someone else's is refused.
	err = h.AddRoute(vip.Route{VIP: ip("10.0.0.200"), Table: 100, Protocol: 252})
	if want := "add route 10.0.0.200/32 dev lo table 100 proto 252: table 100 already has a route to 10.0.0.200/32 of protocol 12, not caplanced's"; err == nil || err.Error() != want {
		t.Errorf("AddRoute over BIRD's route: %v, want %s", err, want)
	}

	if err := h.DeleteRoute(v4); err != nil {
		t.Fatal(err)
	}
	if err := h.DeleteRoute(v4); err != nil {
		t.Errorf("DeleteRoute of a route that is gone: %v", err)
	}
	if diff := cmp.Diff(wantJournal[1:], h.Changes(), equateAddrs); diff != "" {
		t.Errorf("journal after DeleteRoute (-want +got):\n%s", diff)
	}
	if err := h.Undo(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want[1:2], routesIn(t, 100)); diff != "" {
		t.Errorf("table 100 after Undo: only BIRD's route stays (-want +got):\n%s", diff)
	}
	if journalExists(t, dir) {
		t.Error("journal left after Undo")
	}
}

// TestUndoRouteOfAnotherProtocol: a journalled route whose VIP now has a
// route of another protocol (the routing daemon's, say) is not deleted.
func TestUndoRouteOfAnotherProtocol(t *testing.T) {
	inNetns(t)
	loUp(t)
	dir := t.TempDir()
	addForeignRoute(t, "10.0.0.100/32", 100, 12)
	addForeignRoute(t, "2001:db8::100/128", 100, 12)
	addForeignRoute(t, "10.0.0.101/32", 7, 252)
	addForeignRoute(t, "10.0.0.102/32", 100, 252) // scope universe: still caplanced's
	writeJournal(t, dir, `{"version": 1, "changes": [
		{"kind":"route","link":"lo","address":"10.0.0.100/32","table":100,"protocol":252},
		{"kind":"route","link":"lo","address":"2001:db8::100/128","table":100,"protocol":252},
		{"kind":"route","link":"lo","address":"10.0.0.101/32","table":100,"protocol":252},
		{"kind":"route","link":"lo","address":"10.0.0.102/32","table":100,"protocol":252}
	]}`)
	h := openHost(t, dir)
	if err := h.Undo(); err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.100/32 dev lo proto bird scope universe", "2001:db8::100/128 dev lo proto bird scope universe"}
	if diff := cmp.Diff(want, routesIn(t, 100)); diff != "" {
		t.Errorf("table 100 after Undo (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"10.0.0.101/32 dev lo proto 252 scope universe"}, routesIn(t, 7)); diff != "" {
		t.Errorf("table 7 after Undo (-want +got):\n%s", diff)
	}
}

// TestAddRouteRefused: a bad route is an error and changes nothing.
func TestAddRouteRefused(t *testing.T) {
	inNetns(t)
	loUp(t)
	dir := t.TempDir()
	h := openHost(t, dir)
	for _, tt := range []struct {
		r    vip.Route
		want string
	}{
		{vip.Route{VIP: ip("10.0.0.100"), Table: 254, Protocol: 252}, "route 10.0.0.100/32 dev lo table 254 proto 252: table 254 is not one of caplanced's own"},
		{vip.Route{VIP: ip("10.0.0.100"), Table: 0, Protocol: 252}, "route 10.0.0.100/32 dev lo table 0 proto 252: table 0 is not one of caplanced's own"},
		{vip.Route{VIP: ip("10.0.0.100"), Table: 100, Protocol: 2}, "route 10.0.0.100/32 dev lo table 100 proto 2: protocol 2 is the kernel's own"},
		{vip.Route{VIP: ip("224.0.0.1"), Table: 100, Protocol: 252}, "route 224.0.0.1/32 dev lo table 100 proto 252: not a unicast address"},
	} {
		if err := h.AddRoute(tt.r); err == nil || err.Error() != tt.want {
			t.Errorf("AddRoute(%v) = %v, want %s", tt.r, err, tt.want)
		}
	}
	if n := len(h.Changes()); n != 0 || journalExists(t, dir) {
		t.Errorf("refused routes left %d journal entries", n)
	}
	if got := routesIn(t, 100); len(got) != 0 {
		t.Errorf("table 100 got %v", got)
	}
}

// TestRouteJournalFormat pins a route's journal line: public behaviour.
func TestRouteJournalFormat(t *testing.T) {
	inNetns(t)
	loUp(t)
	dir := t.TempDir()
	h := openHost(t, dir)
	if err := h.AddRoute(vip.Route{VIP: ip("10.0.0.100"), Table: 100, Protocol: 252}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, vip.JournalName))
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "version": 1,
  "changes": [
    {"kind":"route","link":"lo","address":"10.0.0.100/32","table":100,"protocol":252}
  ]
}
`
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("journal (-want +got):\n%s", diff)
	}
}
