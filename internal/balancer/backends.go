package balancer

import (
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/vishvananda/netlink"

	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/maglev"
)

// State is a backend's place in the rotation.
type State uint8

// Backend states. Active backends get new flows; Draining ones keep their
// established flows and get no new ones; Down ones get nothing, and their
// connection-tracking entries are not reused.
const (
	Active State = iota
	Draining
	Down
)

func (s State) String() string {
	switch s {
	case Active:
		return "active"
	case Draining:
		return "draining"
	case Down:
		return "down"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Backend is one backend as the data path needs it.
type Backend struct {
	// ID identifies the backend in connection tracking. The daemon keeps it
	// stable for a name, so flows keep their backend across table changes;
	// it is never given to another name.
	ID      uint32
	Name    string
	Address netip.Addr
	Weight  uint32
	State   State
}

// target is a backend resolved for sending: outer header template, route
// MTU and its counters, which survive snapshots.
type target struct {
	Backend
	outer encap.Outer
	dst   [4]byte
	mtu   int
	stats *backendStats
}

// backendStats are one backend's counters, one padded slot per worker so
// that workers never write the same cache line.
type backendStats struct {
	perWorker []backendCounters
}

type backendCounters struct {
	packets, bytes, newFlows atomic.Uint64
	_                        [40]byte
}

// snapshot is the immutable backend set the workers read; SetBackends builds
// a new one and swaps it in atomically.
type snapshot struct {
	table   *maglev.Table
	byIndex []*target // Maglev index → target
	byID    map[uint32]*target
	// valid is built once per snapshot so that conntrack lookups do not
	// allocate a closure per packet.
	valid func(id uint32) bool
}

// route is how the balancer learns, for a backend address, the source
// address and MTU of the path to it.
type route func(dst netip.Addr) (src netip.Addr, mtu int, err error)

// kernelRoute asks the kernel's routing table, as a packet sent now would.
func kernelRoute(dst netip.Addr) (netip.Addr, int, error) {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("no route: %w", err)
	}
	if len(routes) == 0 {
		return netip.Addr{}, 0, fmt.Errorf("no route")
	}
	r := routes[0]
	src, ok := netip.AddrFromSlice(r.Src)
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("route has no source address")
	}
	mtu := r.MTU
	if mtu == 0 {
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("route's interface: %w", err)
		}
		mtu = link.Attrs().MTU
	}
	return src.Unmap(), mtu, nil
}

func (b *Balancer) buildSnapshot(backends []Backend) (*snapshot, error) {
	mb := make([]maglev.Backend, len(backends))
	byName := make(map[string]Backend, len(backends))
	for i, be := range backends {
		w := be.Weight
		if be.State != Active {
			w = 0
		}
		mb[i] = maglev.Backend{Name: be.Name, Weight: w}
		byName[be.Name] = be
	}
	table, err := maglev.New(mb, b.cfg.TableSize)
	if err != nil {
		return nil, err
	}
	s := &snapshot{table: table, byID: make(map[uint32]*target, len(backends))}
	for _, mbe := range table.Backends() {
		be := byName[mbe.Name]
		src, mtu, err := b.route(be.Address)
		if err != nil {
			return nil, fmt.Errorf("backend %q (%s): %w", be.Name, be.Address, err)
		}
		outer, err := encap.NewOuter(src, be.Address, b.cfg.EncapPort)
		if err != nil {
			return nil, fmt.Errorf("backend %q: %w", be.Name, err)
		}
		stats := b.stats[be.ID]
		if stats == nil {
			stats = &backendStats{perWorker: make([]backendCounters, b.cfg.Workers)}
		}
		t := &target{Backend: be, outer: outer, dst: be.Address.As4(), mtu: mtu, stats: stats}
		s.byIndex = append(s.byIndex, t)
		s.byID[be.ID] = t
	}
	s.valid = func(id uint32) bool {
		t, ok := s.byID[id]
		return ok && t.State != Down
	}
	return s, nil
}

// SetBackends replaces the backend set: it rebuilds the Maglev table off the
// hot path and swaps it in; workers pick it up at their next batch. Flows of
// backends still present and not down keep their backend.
func (b *Balancer) SetBackends(backends []Backend) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, err := b.buildSnapshot(backends)
	if err != nil {
		return err
	}
	stats := make(map[uint32]*backendStats, len(s.byID))
	for id, t := range s.byID {
		stats[id] = t.stats
	}
	b.stats = stats
	b.snap.Store(s)
	return nil
}
