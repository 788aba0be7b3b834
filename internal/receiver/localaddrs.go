package receiver

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/caplance/caplance/internal/encap"
)

// resubscribeDelay is how long hostAddrs waits before it subscribes again
// after the kernel broke its subscription (an overflowing socket buffer).
const resubscribeDelay = time.Second

// hostAddrs keeps the host's own addresses current for the decapsulator,
// which must refuse them as inner sources. The workers read the set with one
// atomic load per batch; the set is rebuilt off the data path, from a full
// list, whenever the kernel announces an address change.
type hostAddrs struct {
	// ns is the network namespace the receiver was opened in: its
	// addresses are the ones that count, whichever thread asks.
	ns     netns.NsHandle
	handle *netlink.Handle
	cur    atomic.Pointer[encap.LocalAddrs]
}

// openHostAddrs reads the current namespace's addresses once, so that the
// set is complete before the first packet.
func openHostAddrs() (*hostAddrs, error) {
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("receiver: host addresses: network namespace: %w", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("receiver: host addresses: netlink: %w", err)
	}
	a := &hostAddrs{ns: ns, handle: h}
	if err := a.refresh(); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// refresh lists every address of the namespace and publishes the new set:
// each address as local, each IPv4 broadcast address as broadcast.
func (a *hostAddrs) refresh() error {
	list, err := a.handle.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("receiver: list host addresses: %w", err)
	}
	var local, broadcast []netip.Addr
	for _, l := range list {
		if ip, ok := netip.AddrFromSlice(l.IP); ok {
			local = append(local, ip)
		}
		if ip, ok := netip.AddrFromSlice(l.Broadcast); ok {
			broadcast = append(broadcast, ip)
		}
	}
	a.cur.Store(encap.NewLocalAddrs(local, broadcast))
	return nil
}

// follow refreshes the set on every address change until ctx is done. It
// subscribes before it lists, so no change falls between the two, and
// subscribes again if the kernel ends the subscription.
func (a *hostAddrs) follow(ctx context.Context) {
	for ctx.Err() == nil {
		a.followOnce(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(resubscribeDelay):
		}
	}
}

// followOnce runs one subscription until ctx is done or the kernel ends it.
func (a *hostAddrs) followOnce(ctx context.Context) {
	updates := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	defer func() {
		close(done) // closes the subscription's socket, which ends its goroutine
		for range updates {
		}
	}()
	err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
		Namespace: &a.ns,
		// Errors end the subscription (the channel closes) or are about
		// one message; either way the next list is complete.
		ErrorCallback: func(error) {},
	})
	if err != nil {
		return
	}
	for {
		// A failed list keeps the last set; the next change lists again.
		_ = a.refresh()
		select {
		case <-ctx.Done():
			return
		case _, ok := <-updates:
			if !ok {
				return
			}
		}
		// One list for a burst of changes.
		for drained := false; !drained; {
			select {
			case _, ok := <-updates:
				if !ok {
					return
				}
			default:
				drained = true
			}
		}
	}
}

func (a *hostAddrs) close() {
	a.handle.Close()
	a.ns.Close()
}
