package balancer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteRetryInterval is how often the routes to backends that have none are
// looked up again, besides at once on every netlink route, link or address
// change: a change can come without a notification the balancer sees (a
// notification lost to a full socket buffer), and then this bounds how long a
// backend stays out of rotation after its route is back.
const RouteRetryInterval = 5 * time.Second

// route is the kernel's path to a backend: the source address and MTU an
// encapsulated packet gets, or why there is none.
type route struct {
	src netip.Addr
	mtu int
	err error
}

func (r route) equal(o route) bool {
	return r.src == o.src && r.mtu == o.mtu && errString(r.err) == errString(o.err)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// routeCache remembers the route to each backend address, so that a change
// of the backend set looks up only the addresses it has not seen (a lookup
// is a netlink round trip, ~50 µs). WatchRoutes keeps it true.
type routeCache struct {
	mu sync.Mutex
	// nl is a netlink handle opened in the balancer's network namespace,
	// so lookups ask that namespace whatever thread makes them. It is not
	// safe for concurrent use: mu guards it.
	nl      *netlink.Handle
	entries map[netip.Addr]route
	// resolve asks the kernel (lookup); tests wrap it to count the asks.
	resolve func(netip.Addr) route
	// gen counts the refreshes that changed a route: a target resolved in
	// the current generation needs no new lookup.
	gen atomic.Uint64
}

func (c *routeCache) generation() uint64 { return c.gen.Load() }

func newRouteCache() (*routeCache, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("balancer: netlink: %w", err)
	}
	c := &routeCache{nl: h, entries: map[netip.Addr]route{}}
	c.resolve = c.lookup
	return c, nil
}

func (c *routeCache) close() { c.nl.Close() }

// get returns the route to dst, looking it up the first time.
func (c *routeCache) get(dst netip.Addr) route {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.entries[dst]
	if !ok {
		r = c.resolve(dst)
		c.entries[dst] = r
	}
	return r
}

// retain forgets the addresses that are no longer backends, once they
// are more than a few: until then they only cost a little memory, while
// sorting them out costs a pass over every backend.
func (c *routeCache) retain(backends []Backend) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) <= len(backends)+len(backends)/8+16 {
		return
	}
	keep := make(map[netip.Addr]bool, len(backends))
	for _, be := range backends {
		keep[be.Address] = true
	}
	for a := range c.entries {
		if !keep[a] {
			delete(c.entries, a)
		}
	}
}

// refresh looks up again every address (all) or only those without a
// route, and says whether any route changed.
func (c *routeCache) refresh(all bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := false
	for a, old := range c.entries {
		if !all && old.err == nil {
			continue
		}
		if r := c.resolve(a); !r.equal(old) {
			c.entries[a] = r
			changed = true
		}
	}
	if changed {
		c.gen.Add(1)
	}
	return changed
}

// lookup asks the kernel's routing table, as a packet sent now would. A
// route out of an interface that is down counts as none. c.mu is held.
func (c *routeCache) lookup(dst netip.Addr) route {
	fail := func(format string, args ...any) route {
		return route{err: fmt.Errorf("no route to %s: "+format, append([]any{dst}, args...)...)}
	}
	routes, err := c.nl.RouteGet(dst.AsSlice())
	if err != nil {
		return fail("%w", err)
	}
	if len(routes) == 0 {
		return fail("the kernel returned none")
	}
	r := routes[0]
	src, ok := netip.AddrFromSlice(r.Src)
	if !ok {
		return fail("the route has no source address")
	}
	link, err := c.nl.LinkByIndex(r.LinkIndex)
	if err != nil {
		return fail("its interface (index %d): %w", r.LinkIndex, err)
	}
	attrs := link.Attrs()
	if attrs.Flags&net.FlagUp == 0 || attrs.OperState == netlink.OperDown {
		return fail("interface %s is down", attrs.Name)
	}
	mtu := r.MTU
	if mtu == 0 {
		mtu = attrs.MTU
	}
	return route{src: src.Unmap(), mtu: mtu}
}

// RouteError returns why the balancer has no route to addr, nil when it has
// one. It answers from the route cache (looking addr up the first time), so
// it is cheap enough to ask for every backend at every change.
func (b *Balancer) RouteError(addr netip.Addr) error {
	return b.routes.get(addr).err
}

// WatchRoutes keeps the routes to the backends true until Close: on every
// netlink route, link or IPv4 address change it looks up every backend's
// route again, and every RouteRetryInterval those of the backends without
// one. When a route changed it rebuilds the backend snapshot (a backend
// whose route came back gets its slots again) and then calls changed, which
// the daemon uses to refresh what the registry shows. Call it once.
//
// It opens its netlink socket in the calling thread's network namespace,
// which must be the balancer's.
func (b *Balancer) WatchRoutes(changed func()) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("balancer: netlink socket for route changes: %w", err)
	}
	groups := uint32(unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV4_ROUTE)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("balancer: subscribing to route changes: %w", err)
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("balancer: eventfd: %w", err)
	}
	b.watchStop, b.watchDone = stop, make(chan struct{})
	go func() {
		defer close(b.watchDone)
		defer unix.Close(fd)
		b.watchRoutes(fd, stop, changed)
	}()
	return nil
}

// stopWatchingRoutes ends WatchRoutes' goroutine and waits for it.
func (b *Balancer) stopWatchingRoutes() {
	if b.watchDone == nil {
		return
	}
	_, _ = unix.Write(b.watchStop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	<-b.watchDone
	unix.Close(b.watchStop)
	b.watchDone = nil
}

func (b *Balancer) watchRoutes(fd, stop int, changed func()) {
	buf := make([]byte, 64<<10)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(stop), Events: unix.POLLIN}}
	// Look everything up once first: routes may have changed between the
	// first lookups and the subscription.
	all, nextRetry := true, time.Now()
	for {
		if !all {
			timeout := max(time.Until(nextRetry), 0)
			_, err := unix.Poll(fds, int(timeout.Milliseconds())+1)
			if err != nil && !errors.Is(err, unix.EINTR) {
				b.log.Error("watching route changes", "err", err)
				return
			}
			if fds[1].Revents != 0 {
				return
			}
			if fds[0].Revents != 0 {
				// The messages only say that something changed: read them
				// all (a burst, such as a link going down, costs one
				// refresh) and look everything up again. ENOBUFS (some
				// were lost) means the same.
				for {
					_, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
					if errors.Is(err, unix.EAGAIN) {
						break
					}
					if err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EINTR) {
						b.log.Error("reading route changes", "err", err)
						break
					}
				}
				all = true
			} else if time.Now().Before(nextRetry) {
				continue
			}
		}
		nextRetry = time.Now().Add(RouteRetryInterval)
		refreshed := b.routes.refresh(all)
		all = false
		if !refreshed {
			continue
		}
		if err := b.rebuild(); err != nil {
			b.log.Error("rebuilding the backend table after a route change", "err", err)
			continue
		}
		if changed != nil {
			changed()
		}
	}
}
