package nexthop

import (
	"errors"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/caplance/caplance/internal/netnstest"
)

// TestLostEvents: a subscription that ends (ENOBUFS: the kernel dropped
// events) is replaced, and everything is read again, so what happened while
// events were lost is seen.
func TestLostEvents(t *testing.T) {
	lab := netnstest.NewForTest(t, "nhlost")
	lb, err := lab.AddHost("lb", netip.MustParsePrefix("10.0.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lab.AddHost("b1", netip.MustParsePrefix("10.0.0.2/24")); err != nil {
		t.Fatal(err)
	}
	b1 := netip.MustParseAddr("10.0.0.2")

	// The first subscription delivers nothing, and ends when lose is closed,
	// as the library's does on a receive error; the next ones are real.
	lose := make(chan struct{})
	var tbl *Table
	subscribed := 0
	fake := func() *subscription {
		subscribed++
		if subscribed > 1 {
			return tbl.subscribeNetlink()
		}
		sub := &subscription{done: make(chan struct{}), neigh: make(chan netlink.NeighUpdate),
			route: make(chan netlink.RouteUpdate), link: make(chan netlink.LinkUpdate)}
		go func() {
			select {
			case <-lose:
			case <-sub.done:
			}
			close(sub.neigh)
			<-sub.done
			close(sub.route)
			close(sub.link)
		}()
		return sub
	}
	err = lb.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		tbl, err = newTable(eth0.Attrs().Index, Options{ResyncInterval: time.Hour}, fake)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Close()
	if err := tbl.SetDestinations([]netip.Addr{b1}); err != nil {
		t.Fatal(err)
	}

	// The kernel resolves b1 (the table asked), but the table hears nothing.
	waitFor(t, "the kernel resolves b1", func() bool {
		var reachable bool
		err := lb.Do(func() error {
			neigh, err := netlink.NeighList(0, netlink.FAMILY_V4)
			for _, n := range neigh {
				reachable = reachable || (n.IP.Equal(b1.AsSlice()) && n.State == netlink.NUD_REACHABLE)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return reachable
	})
	if hop, ok := tbl.Lookup(b1); ok {
		t.Fatalf("Lookup(%v) = %v, true with no event delivered; the test cannot tell a resync from an event", b1, hop)
	}

	close(lose)
	waitFor(t, "Lookup(b1) ok after the subscription was lost", func() bool {
		_, ok := tbl.Lookup(b1)
		return ok
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// TestCallersNetns: a caller in the process's own namespace (caplanced) gets
// no namespace, so the table's sockets need no setns, which caplanced's
// unit forbids; a caller in a lab namespace gets that one.
func TestCallersNetns(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // a thread of the process's namespace
		defer runtime.UnlockOSThread()
		ns, err := callersNetns()
		if err != nil || ns.IsOpen() {
			t.Errorf("in the process's namespace: callersNetns = %v, %v; want none", ns, err)
		}
	}()
	<-done
	lab := netnstest.NewForTest(t, "nhns")
	h, err := lab.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	err = h.Do(func() error {
		ns, err := callersNetns()
		if err != nil {
			return err
		}
		defer ns.Close()
		if !ns.IsOpen() {
			return errors.New("in a lab namespace: callersNetns gave none")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
