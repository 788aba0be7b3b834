package balancer

import (
	"github.com/caplance/caplance/internal/model"

	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteRetryInterval is how often the routes to backends that have none are
// looked up again, besides after every netlink route, link or address
// change: a change can come without a notification the balancer sees (a
// notification lost to a full socket buffer), and then this bounds how long a
// backend stays out of rotation after its route is back.
const RouteRetryInterval = 5 * time.Second

// routeRefreshSpacing is the least time between two lookups of every
// backend's route for netlink changes: the first change is followed at once,
// a burst (a routing daemon installing a table) costs one more lookup a
// second, not one per change, each a netlink round trip per backend.
const routeRefreshSpacing = time.Second

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
	log *slog.Logger

	// nlMu guards nl, a netlink handle opened in the balancer's network
	// namespace, so lookups ask that namespace whatever thread makes them;
	// it is not safe for concurrent use. It is held for one lookup at a
	// time, so that a refresh of every route does not hold up a change.
	nlMu sync.Mutex
	nl   *netlink.Handle
	// resolve asks the kernel (lookup); tests wrap it to count the asks.
	resolve func(netip.Addr) route

	mu      sync.Mutex // guards entries; never held across a lookup
	entries map[netip.Addr]route
	// gen counts the refreshes that changed a route: a target resolved in
	// the current generation needs no new lookup.
	gen atomic.Uint64
}

func (c *routeCache) generation() uint64 { return c.gen.Load() }

func newRouteCache(log *slog.Logger) (*routeCache, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("balancer: netlink: %w", err)
	}
	c := &routeCache{log: log, nl: h, entries: map[netip.Addr]route{}}
	c.resolve = c.lookup
	return c, nil
}

func (c *routeCache) close() { c.nl.Close() }

// ask looks dst up in the kernel.
func (c *routeCache) ask(dst netip.Addr) route {
	c.nlMu.Lock()
	defer c.nlMu.Unlock()
	return c.resolve(dst)
}

// get returns the route to dst, looking it up the first time.
func (c *routeCache) get(dst netip.Addr) route {
	c.mu.Lock()
	r, ok := c.entries[dst]
	c.mu.Unlock()
	if ok {
		return r
	}
	r = c.ask(dst)
	c.mu.Lock()
	defer c.mu.Unlock()
	if known, ok := c.entries[dst]; ok {
		return known // a refresh or another change was first
	}
	c.entries[dst] = r
	if r.err != nil {
		c.log.Warn("a backend address has no route: it gets no traffic until it has one", "err", r.err)
	}
	return r
}

// retain forgets the addresses that are no longer backends, once they
// are more than a few: until then they only cost a little memory, while
// sorting them out costs a pass over every backend.
func (c *routeCache) retain(backends []model.Backend) {
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
// route, logs the routes lost and found, and says whether any route
// changed.
func (c *routeCache) refresh(all bool) bool {
	c.mu.Lock()
	old := make(map[netip.Addr]route, len(c.entries))
	for a, r := range c.entries {
		if all || r.err != nil {
			old[a] = r
		}
	}
	c.mu.Unlock()
	now := make(map[netip.Addr]route, len(old))
	for a := range old {
		now[a] = c.ask(a)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := false
	for a, r := range now {
		if cur, ok := c.entries[a]; !ok || !cur.equal(old[a]) || r.equal(cur) {
			continue // gone, or changed by get meanwhile, or the same
		}
		c.entries[a] = r
		changed = true
		switch {
		case r.err == nil && old[a].err != nil:
			c.log.Info("a backend address has a route again", "address", a, "source", r.src, "mtu", r.mtu)
		case r.err != nil && old[a].err == nil:
			c.log.Warn("a backend address lost its route: it gets no traffic until it has one again", "err", r.err)
		}
	}
	if changed {
		c.gen.Add(1)
	}
	return changed
}

// lookup asks the kernel's routing table, as a packet sent now would. A
// route out of an interface that is down counts as none. c.nlMu is held.
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

// WatchRoutes keeps the routes to the backends true until Close: after
// netlink route, link or IPv4 address changes it looks up every backend's
// route again (at once, then at most once a second while changes keep
// coming), and every RouteRetryInterval those of the backends without one. When a route changed it rebuilds the backend snapshot (a backend
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
	pending, lastAll := true, time.Time{}
	nextRetry := time.Now().Add(RouteRetryInterval)
	for {
		wake := nextRetry
		if next := lastAll.Add(routeRefreshSpacing); pending && next.Before(wake) {
			wake = next
		}
		_, err := unix.Poll(fds, int(max(time.Until(wake), 0).Milliseconds())+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			b.log.Error("watching route changes", "err", err)
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		if fds[0].Revents != 0 {
			// The messages only say that something changed: read them all
			// and look everything up again. ENOBUFS (some were lost) means
			// the same.
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
			pending = true
		}
		now := time.Now()
		all := false
		switch {
		case pending && !now.Before(lastAll.Add(routeRefreshSpacing)):
			all, pending, lastAll = true, false, now
		case !now.Before(nextRetry):
		default:
			continue
		}
		nextRetry = now.Add(RouteRetryInterval)
		if !b.routes.refresh(all) {
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
