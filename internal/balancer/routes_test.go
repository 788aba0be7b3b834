package balancer

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/caplance/caplance/internal/conntrack"
	"github.com/caplance/caplance/internal/model"
)

var unroutable = netip.MustParseAddr("198.51.100.7")

// routeLab is a balancer in a throw-away network namespace whose only
// backend network is 10.9.0.0/24 on a veth pair: 198.51.100.7 has no
// route until the test adds one. The calling goroutine stays in the
// namespace (see newHotPath).
func routeLab(t *testing.T) (*Balancer, netlink.Link) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace")
	}
	runtime.LockOSThread() // never unlocked: the thread dies with the test's goroutine
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err == nil {
		err = netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: benchVIP.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	}
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "veth1"}
	if err == nil {
		err = netlink.LinkAdd(link)
	}
	if err == nil {
		err = netlink.LinkSetUp(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth1"}})
	}
	if err == nil {
		err = netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 9, 0, 1), Mask: net.CIDRMask(24, 32)}})
	}
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		t.Fatal(err)
	}
	ct, err := conntrack.New(1<<10, conntrack.DefaultTimeouts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(Config{EncapPort: 5555, Workers: 1, Conntrack: ct})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b, link
}

// slots counts each backend's slots in the current table and gives each
// backend's state in the snapshot.
func slots(b *Balancer) (map[string]int, map[string]string) {
	s := b.snap.Load().services[0]
	n, state := map[string]int{}, map[string]string{}
	for _, t := range s.byIndex {
		n[t.Name] = 0
		state[t.Name] = t.State.String()
	}
	for h := range uint64(s.table.Size()) {
		if i := s.table.Lookup(h); i >= 0 {
			n[s.byIndex[i].Name]++
		}
	}
	return n, state
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestUnroutableBackend: a backend the kernel has no route to neither fails
// SetServices nor gets slots; it shows why, and gets its slots back when a
// route appears, with no other change.
func TestUnroutableBackend(t *testing.T) {
	b, link := routeLab(t)
	set := []model.Backend{
		{ID: 1, Name: "a", Address: netip.MustParseAddr("10.9.0.2"), Weight: 1},
		{ID: 2, Name: "b", Address: netip.MustParseAddr("10.9.0.3"), Weight: 1},
		{ID: 3, Name: "c", Address: unroutable, Weight: 1},
	}
	if err := b.SetServices(oneService(1009, nil, set...)); err != nil {
		t.Fatalf("SetServices with one unroutable backend: %v", err)
	}
	n, state := slots(b)
	if n["a"] == 0 || n["b"] == 0 || n["c"] != 0 {
		t.Errorf("slots %v: want some for a and b, none for c", n)
	}
	if diff := cmp.Diff(map[string]string{"a": "active", "b": "active", "c": "down"}, state); diff != "" {
		t.Errorf("states (-want +got):\n%s", diff)
	}
	if b.snap.Load().services[0].valid(3) {
		t.Error("tracked flows of the unroutable backend are still valid")
	}
	if got, want := errText(b.RouteError(unroutable)), "no route to 198.51.100.7: network is unreachable"; got != want {
		t.Errorf("RouteError = %q, want %q", got, want)
	}

	// Other changes still go through.
	set[0].State = model.Down
	if err := b.SetServices(oneService(1009, nil, set...)); err != nil {
		t.Fatalf("marking a down with c unroutable: %v", err)
	}
	set[0].State = model.Active

	changed := make(chan struct{}, 16)
	if err := b.WatchRoutes(func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetServices(oneService(1009, nil, set...)); err != nil {
		t.Fatal(err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4(198, 51, 100, 0), Mask: net.CIDRMask(24, 32)},
		Gw: net.IPv4(10, 9, 0, 254)}
	if err := netlink.RouteAdd(route); err != nil {
		t.Fatal(err)
	}
	waitFor(t, changed, "the route to c appears", func() bool {
		n, _ := slots(b)
		return n["c"] > 0 && b.RouteError(unroutable) == nil
	})

	// The interface going down takes every route with it.
	if err := netlink.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	waitFor(t, changed, "the interface goes down", func() bool {
		n, _ := slots(b)
		return n["a"] == 0 && n["b"] == 0 && n["c"] == 0 && b.RouteError(unroutable) != nil
	})
	if err := b.SetServices(oneService(1009, nil, set[:2]...)); err != nil {
		t.Fatalf("SetServices with every backend unroutable: %v", err)
	}
}

// waitFor waits, for up to 20 s, until cond holds, checking it after every
// change announced on changed and every 100 ms.
func waitFor(t *testing.T, changed <-chan struct{}, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for !cond() {
		select {
		case <-changed:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: not seen within 20 s", what)
		}
	}
}

// TestRoutesCachedPerBackend: a change of the backend set asks the kernel
// only about the addresses it has not seen, not about every backend again.
func TestRoutesCachedPerBackend(t *testing.T) {
	b, _ := routeLab(t)
	asked := map[netip.Addr]int{}
	resolve := b.routes.resolve
	b.routes.resolve = func(a netip.Addr) route { asked[a]++; return resolve(a) }
	var set []model.Backend
	for i := range 200 {
		set = append(set, model.Backend{ID: uint32(i + 1), Name: fmt.Sprintf("be%03d", i), Address: netip.AddrFrom4([4]byte{10, 9, 0, byte(2 + i)}), Weight: 1})
	}
	steps := []struct {
		what   string
		change func()
	}{
		{"first set", func() {}},
		{"a weight", func() { set[7].Weight = 5 }},
		{"a backend down", func() { set[8].State = model.Down }},
		{"a backend added", func() {
			set = append(set, model.Backend{ID: 999, Name: "new", Address: unroutable, Weight: 1})
		}},
		{"a backend removed", func() { set = set[1:] }},
	}
	for _, step := range steps {
		step.change()
		if err := b.SetServices(oneService(1009, nil, set...)); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
		_ = b.RouteError(unroutable)
		for a, n := range asked {
			if n != 1 {
				t.Fatalf("after %s: the kernel was asked %d times about %s, want once", step.what, n, a)
			}
		}
	}
	if len(asked) != 201 {
		t.Errorf("the kernel was asked about %d addresses, want 201", len(asked))
	}
}
