package receiver

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/encap"
)

// pollInterval is how often hostAddrs lists the addresses once the kernel
// has ended its subscription (an overflowing socket buffer).
const pollInterval = time.Second

// hostAddrs keeps the host's own addresses current for the decapsulator,
// which must refuse them as inner sources. The workers read the set with one
// atomic load per batch; the set is rebuilt off the data path, from a full
// list, whenever the kernel announces an address change.
//
// Both netlink sockets are opened by openHostAddrs, so they belong to the
// network namespace of the thread that opens the receiver whichever thread
// uses them later, and no namespace is ever entered (the unit's
// RestrictNamespaces=yes forbids setns).
type hostAddrs struct {
	handle  *netlink.Handle
	updates chan netlink.AddrUpdate
	done    chan struct{} // closed: the subscription's socket closes
	cur     atomic.Pointer[encap.LocalAddrs]
}

// openHostAddrs subscribes to address changes, then lists the addresses, so
// that the set is complete before the first packet and no change falls
// between the list and the subscription.
func openHostAddrs() (*hostAddrs, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("receiver: host addresses: netlink: %w", err)
	}
	a := &hostAddrs{handle: h, updates: make(chan netlink.AddrUpdate, 64), done: make(chan struct{})}
	err = netlink.AddrSubscribeWithOptions(a.updates, a.done, netlink.AddrSubscribeOptions{
		// An error either ends the subscription (the channel closes, and
		// follow polls) or concerns one message; the next list is whole.
		ErrorCallback: func(error) {},
	})
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("receiver: host addresses: subscribe: %w", err)
	}
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

// follow lists the addresses again after each burst of changes until ctx is
// done, and every pollInterval if the kernel ends the subscription. A failed
// list keeps the last set until the next one.
func (a *hostAddrs) follow(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-a.updates:
			if !ok {
				a.poll(ctx)
				return
			}
		}
		for drained := false; !drained; { // one list for a burst
			select {
			case _, ok := <-a.updates:
				if !ok {
					a.poll(ctx)
					return
				}
			default:
				drained = true
			}
		}
		_ = a.refresh()
	}
}

func (a *hostAddrs) poll(ctx context.Context) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		_ = a.refresh()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// close ends the subscription (its goroutine exits once its socket is
// closed; what it still sends is drained) and closes the handle.
func (a *hostAddrs) close() {
	close(a.done)
	for range a.updates {
	}
	a.handle.Close()
}
