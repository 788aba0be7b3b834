package nexthop

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// EtherType values of the frames Lookup describes.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeIPv6 = 0x86DD
)

const (
	// DefaultResyncInterval is how often the whole state is read again when
	// Options.ResyncInterval is zero.
	DefaultResyncInterval = 30 * time.Second
	// routeSettle coalesces a burst of route events into one pass over the
	// destinations.
	routeSettle = 50 * time.Millisecond
	// askInterval is the least time between two requests, driven by Lookup,
	// to resolve the same next hop: the kernel runs its own retransmissions in
	// between.
	askInterval = time.Second
	// subscribeBuffer is the receive buffer asked for each event socket, so a
	// burst (a routing daemon's full table) rarely overflows it.
	subscribeBuffer = 1 << 20
)

// ErrClosed is returned by SetDestinations after Close.
var ErrClosed = errors.New("nexthop: table is closed")

// Hop is what a frame to a destination carries: its Ethernet header, and the
// source address the kernel's route prefers for the destination.
type Hop struct {
	DstMAC, SrcMAC [6]byte
	EtherType      uint16
	Src            netip.Addr
}

// Options tune a Table. The zero value is ready to use.
type Options struct {
	// Logger receives warnings (lost events, failed requests); nil discards.
	Logger *slog.Logger
	// ResyncInterval is the period of the full resync; zero means
	// DefaultResyncInterval.
	ResyncInterval time.Duration
}

// Table keeps the next hop of each destination current; see the package
// comment. Lookup is safe for concurrent use without locks; the other methods
// are safe for concurrent use too.
type Table struct {
	ifindex int
	log     *slog.Logger
	resync  time.Duration
	// ns is the namespace the table's netlink sockets are opened in:
	// netns.None() when the caller's thread is in the process's own
	// namespace (caplanced), so that no socket needs setns, which takes
	// CAP_SYS_ADMIN and which caplanced's unit forbids (RestrictNamespaces);
	// the caller's namespace otherwise (tests in a lab namespace, where a
	// socket opened on another thread would land in the wrong one).
	ns netns.NsHandle
	h  *netlink.Handle

	// subscribe is (*Table).subscribeNetlink; tests replace it to lose events.
	subscribe func() *subscription

	snap atomic.Pointer[snapshot]
	kick chan struct{} // Lookup wants an unresolved next hop resolved
	reqs chan setRequest

	closeOnce sync.Once
	done      chan struct{} // closed by Close
	stopped   chan struct{} // closed when run returns
}

// snapshot is immutable once published, but for the want flags.
type snapshot struct {
	entries map[netip.Addr]*entry
}

type entry struct {
	hop Hop
	ok  bool
	// resolvable: the route leaves by the table's interface but the next hop
	// has no usable link-layer address yet, so asking the kernel may help.
	resolvable bool
	nexthop    netip.Addr
	// want is set by Lookup (once per snapshot and askInterval) to have the
	// goroutine ask the kernel to resolve nexthop.
	want atomic.Bool
}

type setRequest struct {
	dsts  []netip.Addr
	reply chan struct{}
}

// New starts a table for the interface ifindex in the network namespace of
// the calling thread. The interface must have an Ethernet (6-byte) address.
func New(ifindex int, opts Options) (*Table, error) {
	return newTable(ifindex, opts, nil)
}

// newTable is New with the event subscription replaced when subscribe is not
// nil.
func newTable(ifindex int, opts Options, subscribe func() *subscription) (*Table, error) {
	t := &Table{
		ifindex: ifindex,
		log:     opts.Logger,
		resync:  opts.ResyncInterval,
		kick:    make(chan struct{}, 1),
		reqs:    make(chan setRequest),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	t.subscribe = subscribe
	if t.subscribe == nil {
		t.subscribe = t.subscribeNetlink
	}
	if t.resync <= 0 {
		t.resync = DefaultResyncInterval
	}
	var err error
	if t.ns, err = callersNetns(); err != nil {
		return nil, fmt.Errorf("nexthop: open the network namespace: %w", err)
	}
	if t.h, err = netlink.NewHandleAt(t.ns, unix.NETLINK_ROUTE); err != nil {
		t.ns.Close()
		return nil, fmt.Errorf("nexthop: netlink: %w", err)
	}
	s := &state{t: t, dsts: map[netip.Addr]*dest{}, neigh: map[netip.Addr]neighbour{}, asked: map[netip.Addr]time.Time{}}
	if err := s.readLink(); err != nil {
		t.h.Close()
		t.ns.Close()
		return nil, err
	}
	t.snap.Store(&snapshot{entries: map[netip.Addr]*entry{}})
	go t.run(s)
	return t, nil
}

// Lookup returns the hop for dst, with ok false when dst is not a destination,
// its route leaves by another interface, or its next hop is not resolved; in
// the last case it has the table ask the kernel to resolve it. It allocates
// nothing and takes no lock.
func (t *Table) Lookup(dst netip.Addr) (hop Hop, ok bool) {
	e := t.snap.Load().entries[dst]
	switch {
	case e == nil:
		return Hop{}, false
	case e.ok:
		return e.hop, true
	case e.resolvable && !e.want.Load() && e.want.CompareAndSwap(false, true):
		select {
		case t.kick <- struct{}{}:
		default: // a kick is already pending; it reads every want flag
		}
	}
	return Hop{}, false
}

// SetDestinations replaces the set of destinations. When it returns, Lookup
// answers for the new set from what the kernel already knows (new unresolved
// next hops are being resolved), and has forgotten removed destinations.
func (t *Table) SetDestinations(dsts []netip.Addr) error {
	for _, d := range dsts {
		switch {
		case !d.IsValid():
			return errors.New("nexthop: destination: invalid address")
		case d.Is4In6():
			return fmt.Errorf("nexthop: destination %v: IPv4-mapped IPv6 address: give the IPv4 form", d)
		case d.Zone() != "":
			return fmt.Errorf("nexthop: destination %.64v: an address with a zone is not supported", d)
		case d.IsUnspecified() || d.IsMulticast():
			return fmt.Errorf("nexthop: destination %v: not a unicast address", d)
		}
	}
	r := setRequest{dsts: append([]netip.Addr(nil), dsts...), reply: make(chan struct{})}
	select {
	case t.reqs <- r:
	case <-t.stopped:
		return ErrClosed
	}
	<-r.reply
	return nil
}

// Close stops the table and releases its sockets. Lookup keeps answering
// from the last snapshot. It is safe to call more than once.
func (t *Table) Close() error {
	t.closeOnce.Do(func() {
		close(t.done)
		<-t.stopped
		t.h.Close()
		t.ns.Close()
	})
	return nil
}

// dest is what the goroutine knows of one destination's route.
type dest struct {
	err     error // the route lookup failed (unreachable, no route)
	oif     int
	src     netip.Addr
	nexthop netip.Addr
}

type neighbour struct {
	mac   [6]byte
	state int
}

// state is owned by the run goroutine.
type state struct {
	t       *Table
	linkMAC [6]byte
	linkUp  bool
	dsts    map[netip.Addr]*dest
	neigh   map[netip.Addr]neighbour // entries on the interface
	asked   map[netip.Addr]time.Time // last Lookup-driven request per next hop
}

type subscription struct {
	done  chan struct{}
	neigh chan netlink.NeighUpdate
	route chan netlink.RouteUpdate
	link  chan netlink.LinkUpdate
}

func (t *Table) run(s *state) {
	defer close(t.stopped)
	sub := t.subscribe()
	s.fullResync()
	resync := time.NewTicker(t.resync)
	defer resync.Stop()
	settle, retry := time.NewTimer(0), time.NewTimer(0)
	<-settle.C
	<-retry.C
	settling := false // settle runs: a steady stream of route events must not postpone it forever
	for {
		var lost bool
		select {
		case <-t.done:
			sub.close()
			return
		case r := <-t.reqs:
			s.setDestinations(r.dsts)
			close(r.reply)
		case <-t.kick:
			if later := s.askWanted(); later > 0 {
				retry.Reset(later)
			}
		case <-retry.C:
			if later := s.askWanted(); later > 0 {
				retry.Reset(later)
			}
		case u, ok := <-sub.neigh:
			lost = !ok
			if ok && s.applyNeigh(u) {
				s.publish()
			}
		case u, ok := <-sub.link:
			lost = !ok
			if ok && u.Index == int32(t.ifindex) {
				s.applyLink(u)
				s.publish()
			}
		case _, ok := <-sub.route:
			lost = !ok
			if ok && !settling {
				settling = true
				settle.Reset(routeSettle)
			}
		case <-settle.C:
			settling = false
			s.rerouteAll()
			s.publish()
		case <-resync.C:
			if sub.done == nil {
				sub = t.subscribe()
			}
			s.fullResync()
			s.probeStale()
		}
		if lost {
			t.log.Warn("nexthop: netlink events lost; subscribing again and reading everything")
			sub.close()
			sub = t.subscribe()
			s.fullResync()
		}
	}
}

// subscribeNetlink opens the three event subscriptions, or returns an empty
// subscription, whose nil channels never deliver, when one fails: the next
// resync tries again.
func (t *Table) subscribeNetlink() *subscription {
	sub := &subscription{done: make(chan struct{})}
	onErr := func(err error) {
		select {
		case <-sub.done: // our own close ends the receive
		default:
			t.log.Warn("nexthop: netlink events", "err", err)
		}
	}
	neigh := make(chan netlink.NeighUpdate, 64)
	err := netlink.NeighSubscribeWithOptions(neigh, sub.done, netlink.NeighSubscribeOptions{
		Namespace: t.nsOption(), ErrorCallback: onErr, ReceiveBufferSize: subscribeBuffer,
	})
	if err == nil {
		sub.neigh = neigh
		route := make(chan netlink.RouteUpdate, 64)
		err = netlink.RouteSubscribeWithOptions(route, sub.done, netlink.RouteSubscribeOptions{
			Namespace: t.nsOption(), ErrorCallback: onErr, ReceiveBufferSize: subscribeBuffer,
		})
		if err == nil {
			sub.route = route
			link := make(chan netlink.LinkUpdate, 16)
			err = netlink.LinkSubscribeWithOptions(link, sub.done, netlink.LinkSubscribeOptions{
				Namespace: t.nsOption(), ErrorCallback: onErr, ReceiveBufferSize: subscribeBuffer,
			})
			if err == nil {
				sub.link = link
				return sub
			}
		}
	}
	t.log.Warn("nexthop: subscribe to netlink events; relying on the periodic resync", "err", err)
	sub.close()
	return &subscription{}
}

// close ends the subscriptions and drains their channels, so that the
// library's goroutines, which block on sending, can return.
func (sub *subscription) close() {
	if sub.done == nil {
		return
	}
	close(sub.done)
	for range sub.neigh {
	}
	for range sub.route {
	}
	for range sub.link {
	}
}

func (s *state) readLink() error {
	link, err := s.t.h.LinkByIndex(s.t.ifindex)
	if err != nil {
		return fmt.Errorf("nexthop: interface %d: %w", s.t.ifindex, err)
	}
	a := link.Attrs()
	if len(a.HardwareAddr) != 6 {
		return fmt.Errorf("nexthop: interface %s: not an Ethernet interface (link-layer address %q)", a.Name, a.HardwareAddr)
	}
	s.linkMAC = [6]byte(a.HardwareAddr)
	s.linkUp = a.Flags&net.FlagUp != 0
	return nil
}

func (s *state) applyLink(u netlink.LinkUpdate) {
	a := u.Link.Attrs()
	if u.Header.Type == unix.RTM_DELLINK || len(a.HardwareAddr) != 6 {
		s.linkMAC, s.linkUp = [6]byte{}, false
		return
	}
	s.linkMAC = [6]byte(a.HardwareAddr)
	s.linkUp = a.Flags&net.FlagUp != 0
}

// applyNeigh records u and reports whether it concerns a next hop.
func (s *state) applyNeigh(u netlink.NeighUpdate) bool {
	n := u.Neigh
	if n.LinkIndex != s.t.ifindex || (n.Family != unix.AF_INET && n.Family != unix.AF_INET6) {
		return false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap()
	if u.Type == unix.RTM_DELNEIGH {
		delete(s.neigh, ip)
	} else {
		s.neigh[ip] = toNeighbour(n)
	}
	for _, d := range s.dsts {
		if d.nexthop == ip {
			return true
		}
	}
	return false
}

func toNeighbour(n netlink.Neigh) neighbour {
	var nb neighbour
	nb.state = n.State
	if len(n.HardwareAddr) == 6 {
		nb.mac = [6]byte(n.HardwareAddr)
	}
	return nb
}

// setDestinations applies a new destination set, publishes it, and asks the
// kernel to resolve the new next hops it does not know.
func (s *state) setDestinations(dsts []netip.Addr) {
	old := s.dsts
	s.dsts = make(map[netip.Addr]*dest, len(dsts))
	for _, a := range dsts {
		if d, ok := old[a]; ok {
			s.dsts[a] = d
		} else {
			s.dsts[a] = s.route(a)
		}
	}
	s.publish()
	s.askNew(old)
}

// rerouteAll asks the kernel for every destination's route again, and asks it
// to resolve next hops that changed and are unresolved.
func (s *state) rerouteAll() {
	old := s.dsts
	s.dsts = make(map[netip.Addr]*dest, len(old))
	for a := range old {
		s.dsts[a] = s.route(a)
	}
	s.askNew(old)
}

// askNew asks the kernel to resolve each next hop on the interface that is
// new compared with old and unresolved.
func (s *state) askNew(old map[netip.Addr]*dest) {
	for a, d := range s.dsts {
		if d.oif != s.t.ifindex || s.resolved(d.nexthop) {
			continue
		}
		if o, ok := old[a]; ok && o.oif == d.oif && o.nexthop == d.nexthop {
			continue
		}
		s.ask(d.nexthop)
	}
}

func (s *state) route(a netip.Addr) *dest {
	routes, err := s.t.h.RouteGet(a.AsSlice())
	if err == nil && len(routes) == 0 {
		err = errors.New("no route")
	}
	if err != nil {
		return &dest{err: err}
	}
	r := routes[0]
	d := &dest{oif: r.LinkIndex, nexthop: a}
	if r.Type != unix.RTN_UNICAST {
		d.oif = 0 // local, broadcast, …: never sent out of the interface
	}
	if src, ok := netip.AddrFromSlice(r.Src); ok {
		d.src = src.Unmap()
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok {
		d.nexthop = gw.Unmap()
	} else if via, ok := r.Via.(*netlink.Via); ok {
		if v, ok := netip.AddrFromSlice(via.Addr); ok {
			d.nexthop = v.Unmap()
		}
	}
	return d
}

// resolved reports whether the kernel would send to nexthop with the address
// it has: an entry in a NUD_VALID state with a non-zero address.
func (s *state) resolved(nexthop netip.Addr) bool {
	const valid = netlink.NUD_PERMANENT | netlink.NUD_NOARP | netlink.NUD_REACHABLE |
		netlink.NUD_PROBE | netlink.NUD_STALE | netlink.NUD_DELAY
	n, ok := s.neigh[nexthop]
	return ok && n.state&valid != 0 && n.mac != [6]byte{}
}

// publish builds and stores a new snapshot.
func (s *state) publish() {
	entries := make(map[netip.Addr]*entry, len(s.dsts))
	for a, d := range s.dsts {
		e := &entry{nexthop: d.nexthop}
		if d.err == nil && d.oif == s.t.ifindex && s.linkUp {
			if s.resolved(d.nexthop) {
				e.ok = true
				e.hop = Hop{DstMAC: s.neigh[d.nexthop].mac, SrcMAC: s.linkMAC, EtherType: EtherTypeIPv6, Src: d.src}
				if a.Is4() {
					e.hop.EtherType = EtherTypeIPv4
				}
			} else {
				e.resolvable = true
			}
		}
		entries[a] = e
	}
	s.t.snap.Store(&snapshot{entries: entries})
}

// askWanted serves Lookup's requests, at most one per next hop per
// askInterval, and returns how long to wait before serving the ones it had to
// put off (zero if none).
func (s *state) askWanted() time.Duration {
	now := time.Now()
	var later time.Duration
	for _, e := range s.t.snap.Load().entries {
		if !e.want.Load() {
			continue
		}
		if wait := askInterval - now.Sub(s.asked[e.nexthop]); wait > 0 {
			if later == 0 || wait < later {
				later = wait
			}
			continue
		}
		// Served: the flag stays set, so this snapshot asks no more; the
		// kernel's answer (or its failure) comes as an event and a new one.
		s.asked[e.nexthop] = now
		s.ask(e.nexthop)
	}
	for nh, at := range s.asked {
		if now.Sub(at) >= askInterval {
			delete(s.asked, nh)
		}
	}
	return later
}

// probeStale asks the kernel to confirm the stale next hops in use.
func (s *state) probeStale() {
	seen := map[netip.Addr]bool{}
	for _, d := range s.dsts {
		if d.oif == s.t.ifindex && !seen[d.nexthop] && s.neigh[d.nexthop].state == netlink.NUD_STALE {
			seen[d.nexthop] = true
			s.ask(d.nexthop)
		}
	}
}

// ask makes the kernel act as if a packet waited for nexthop (NTF_USE): see
// the package comment.
func (s *state) ask(nexthop netip.Addr) {
	err := s.t.h.NeighSet(&netlink.Neigh{LinkIndex: s.t.ifindex, IP: nexthop.AsSlice(), Flags: netlink.NTF_USE})
	if err != nil {
		s.t.log.Warn("nexthop: ask the kernel to resolve a next hop", "nexthop", nexthop, "err", err)
	}
}

// fullResync reads the link, the interface's neighbour table and every
// destination's route again, then publishes.
func (s *state) fullResync() {
	if err := s.readLink(); err != nil {
		s.t.log.Warn("nexthop: resync", "err", err)
		s.linkMAC, s.linkUp = [6]byte{}, false
	}
	neigh, err := s.t.h.NeighList(s.t.ifindex, netlink.FAMILY_ALL)
	if err != nil {
		// A dump interrupted by a change is retried at the next resync; the
		// events of the change itself arrive meanwhile.
		s.t.log.Warn("nexthop: resync: list neighbours", "err", err)
	}
	if err == nil || errors.Is(err, netlink.ErrDumpInterrupted) {
		s.neigh = make(map[netip.Addr]neighbour, len(neigh))
		for _, n := range neigh {
			s.applyNeigh(netlink.NeighUpdate{Type: unix.RTM_NEWNEIGH, Neigh: n})
		}
	}
	s.rerouteAll()
	s.publish()
}

// callersNetns returns the calling thread's network namespace, or
// netns.None() when it is the one the process started in.
func callersNetns() (netns.NsHandle, error) {
	if startErr != nil {
		return netns.None(), fmt.Errorf("the namespace the process started in: %w", startErr)
	}
	thread, err := netns.Get()
	if err != nil {
		return netns.None(), err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(thread), &st); err != nil {
		thread.Close()
		return netns.None(), err
	}
	if (nsID{st.Dev, st.Ino}) == startNetns {
		thread.Close()
		return netns.None(), nil
	}
	return thread, nil
}

// nsID identifies a namespace: the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

// startNetns is the network namespace the process started in, read while
// the packages are initialised, on the main thread before anything can move
// a thread (/proc/self/ns/net, the main thread's, would not do: a test that
// ends a goroutine locked in a lab namespace on the main thread leaves it
// there).
var startNetns, startErr = func() (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return nsID{}, err
	}
	return nsID{st.Dev, st.Ino}, nil
}()

// nsOption is the Namespace of the table's subscriptions: nil (the
// thread's own, which is the process's) or t.ns.
func (t *Table) nsOption() *netns.NsHandle {
	if !t.ns.IsOpen() {
		return nil
	}
	return &t.ns
}
