package announce_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/caplance/caplance/internal/announce"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/vip"
)

// table lists the routes of table 100, "DST proto P" each, as
// `ip route show table 100` would.
func table() ([]string, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 100}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range routes {
		if r.Dst != nil && !r.Dst.IP.IsLinkLocalUnicast() && !r.Dst.IP.IsMulticast() {
			out = append(out, r.Dst.String()+" proto "+r.Protocol.String())
		}
	}
	slices.Sort(out)
	return out, nil
}

func addRoute(dst string, protocol int) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	n, err := netlink.ParseIPNet(dst)
	if err != nil {
		return err
	}
	return netlink.RouteAdd(&netlink.Route{Dst: n, LinkIndex: lo.Attrs().Index, Table: 100, Protocol: netlink.RouteProtocol(protocol)})
}

// TestReconcile: in a namespace, the table follows the set and the state:
// routes appear once ready, go with the last backend that takes new flows
// and with maintenance, come back, and go for good at Withdraw. BIRD's
// route in the same table is never touched; a route of caplanced's
// protocol that nothing journalled (an earlier run's) is deleted.
func TestReconcile(t *testing.T) {
	lab := netnstest.NewForTest(t, "ann")
	h, err := lab.AddHost("lb")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	web := svc("web", "10.0.0.100", "2001:db8::100")
	up := model.Set{Services: []model.Service{web, svc("dns", "10.0.0.53")}, Backends: []model.Backend{backend("web", 100, model.Active)}}
	down := model.Set{Services: up.Services, Backends: []model.Backend{backend("web", 100, model.Down)}}
	const bird = "10.0.0.200/32 proto bird"
	err = h.Do(func() error {
		if err := addRoute("10.0.0.200/32", 12); err != nil {
			return err
		}
		if err := addRoute("10.0.0.99/32", 252); err != nil {
			return err
		}
		host, err := vip.Open(dir)
		if err != nil {
			return err
		}
		defer host.Close()
		var changes atomic.Int32
		a := announce.New(host, announce.Config{Table: 100, Protocol: 252, MinBackends: 1, Changed: func() { changes.Add(1) }})
		step := func(what string, f func() error, want ...string) error {
			if f != nil {
				if err := f(); err != nil {
					return fmt.Errorf("%s: %w", what, err)
				}
			}
			got, err := table()
			if err != nil {
				return err
			}
			want = append(want, bird)
			slices.Sort(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s: table 100 (-want +got):\n%s", what, diff)
			}
			var announced []string
			for _, r := range want {
				if strings.HasSuffix(r, " proto 252") {
					p := netip.MustParsePrefix(strings.TrimSuffix(r, " proto 252"))
					announced = append(announced, p.Addr().String())
				}
			}
			var status []string
			for _, v := range a.Status().Announced {
				status = append(status, v.String())
			}
			if diff := cmp.Diff(announced, status, equateAddrs); diff != "" {
				t.Errorf("%s: Status().Announced (-want +got):\n%s", what, diff)
			}
			return nil
		}
		// Before ready nothing is announced, and a stray route of
		// caplanced's protocol is withdrawn at the first reconcile.
		if err := step("before ready", func() error { a.SetSet(up); return nil }); err != nil {
			return err
		}
		if err := step("ready", a.SetReady, "10.0.0.100/32 proto 252", "2001:db8::100/128 proto 252"); err != nil {
			return err
		}
		if err := step("the last backend down", func() error { a.SetSet(down); return nil }); err != nil {
			return err
		}
		if err := step("a backend up again", func() error { a.SetSet(up); return nil }, "10.0.0.100/32 proto 252", "2001:db8::100/128 proto 252"); err != nil {
			return err
		}
		before := changes.Load()
		if err := step("maintenance on", func() error { return a.SetMaintenance(true) }); err != nil {
			return err
		}
		if changes.Load() == before {
			t.Error("maintenance on did not call Changed")
		}
		if st := a.Status(); !st.Maintenance || len(st.Servable) != 2 {
			t.Errorf("Status in maintenance = %+v, want Maintenance and 2 servable VIPs", st)
		}
		if err := step("maintenance off", func() error { return a.SetMaintenance(false) }, "10.0.0.100/32 proto 252", "2001:db8::100/128 proto 252"); err != nil {
			return err
		}
		// A route deleted by hand, as by `ip route flush table 100`, is
		// back at the next Reconcile.
		if err := step("a route deleted by hand, then Reconcile", func() error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			dst, err := netlink.ParseIPNet("10.0.0.100/32")
			if err != nil {
				return err
			}
			if err := netlink.RouteDel(&netlink.Route{Dst: dst, LinkIndex: lo.Attrs().Index, Table: 100, Protocol: 252, Scope: netlink.SCOPE_NOWHERE}); err != nil {
				return err
			}
			if got, err := table(); err != nil || slices.Contains(got, "10.0.0.100/32 proto 252") {
				return fmt.Errorf("the route is still there after deleting it: %v, %v", got, err)
			}
			return a.Reconcile()
		}, "10.0.0.100/32 proto 252", "2001:db8::100/128 proto 252"); err != nil {
			return err
		}
		if err := step("withdraw", a.Withdraw); err != nil {
			return err
		}
		if err := step("no coming back after withdraw", func() error { a.SetSet(up); return a.SetMaintenance(false) }); err != nil {
			return err
		}
		if left := host.Changes(); len(left) != 0 {
			t.Errorf("journal after Withdraw: %v", left)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCrashLeavesJournal: routes of a run that dies without withdrawing are
// in the journal, and the next run's Undo deletes them, and only them.
func TestCrashLeavesJournal(t *testing.T) {
	lab := netnstest.NewForTest(t, "ann")
	h, err := lab.AddHost("lb")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	err = h.Do(func() error {
		if err := addRoute("10.0.0.200/32", 12); err != nil {
			return err
		}
		host, err := vip.Open(dir)
		if err != nil {
			return err
		}
		a := announce.New(host, announce.Config{Table: 100, Protocol: 252, MinBackends: 1})
		a.SetSet(model.Set{Services: []model.Service{svc("web", "10.0.0.100")}, Backends: []model.Backend{backend("web", 1, model.Active)}})
		if err := a.SetReady(); err != nil {
			return err
		}
		host.Close() // the crash: no Withdraw, no Undo

		next, err := vip.Open(dir)
		if err != nil {
			return err
		}
		defer next.Close()
		if got := len(next.Leftovers()); got != 1 {
			t.Errorf("%d leftovers, want the route", got)
		}
		if err := next.Undo(); err != nil {
			return err
		}
		got, err := table()
		if err != nil {
			return err
		}
		if diff := cmp.Diff([]string{"10.0.0.200/32 proto bird"}, got); diff != "" {
			t.Errorf("table 100 after Undo (-want +got):\n%s", diff)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
