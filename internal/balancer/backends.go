package balancer

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/maglev"
	"github.com/caplance/caplance/internal/model"
)

// target is a backend resolved for sending: outer header template, route
// MTU and its counters, which survive snapshots.
type target struct {
	model.Backend
	// given is the backend as SetBackends got it (Backend may have been
	// put down for want of a route) and gen the route cache's generation
	// it was resolved in: while both hold, the target is still right.
	given model.Backend
	gen   uint64
	route route
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
	// valid and takesNew are built once per snapshot so that conntrack
	// lookups do not allocate a closure per packet.
	valid    func(id uint32) bool
	takesNew func(id uint32) bool
}

// buildSnapshot resolves every backend and builds the table. A backend
// without a route (RouteError) is put down in this snapshot: it gets no
// slots and its tracked flows are not reused, and the others are not held up
// by it. A target whose backend is as it was in the last snapshot, while no
// route changed since, is reused as it is, with its outer header template
// and counters: a change of one backend among thousands then costs little
// more than the Maglev build.
func (b *Balancer) buildSnapshot(backends []model.Backend) (*snapshot, error) {
	var prev map[uint32]*target
	if old := b.snap.Load(); old != nil {
		prev = old.byID
	}
	gen := b.routes.generation()
	mb := make([]maglev.Backend, len(backends))
	targets := make([]*target, len(backends))
	var fresh []*target // targets that are not prev's
	kept := 0           // backends whose ID prev has
	for i, be := range backends {
		p := prev[be.ID]
		t := p
		if p != nil {
			kept++
		}
		if p == nil || p.given != be || p.gen != gen {
			t = b.target(be, p, gen)
		}
		if t != p {
			fresh = append(fresh, t)
		}
		w := t.Weight
		if t.State != model.Active {
			w = 0
		}
		mb[i] = maglev.Backend{Name: be.Name, Weight: w}
		targets[i] = t
	}
	table, err := maglev.New(mb, b.cfg.TableSize)
	if err != nil {
		return nil, err
	}
	s := &snapshot{table: table}
	// The table's indices follow the backends sorted by name, which the
	// registry's set already is.
	sorted := slices.IsSortedFunc(backends, byName)
	if sorted {
		s.byIndex = targets
	} else {
		named := make(map[string]*target, len(targets))
		for _, t := range targets {
			named[t.Name] = t
		}
		for _, mbe := range table.Backends() {
			s.byIndex = append(s.byIndex, named[mbe.Name])
		}
	}
	switch {
	case prev != nil && kept == len(prev):
		// No ID left: patch a copy of the previous index, which costs a
		// fraction of building one.
		s.byID = maps.Clone(prev)
		for _, t := range fresh {
			s.byID[t.ID] = t
		}
	case prev != nil && sorted && slices.IsSortedFunc(b.last, byName):
		// Some left: find them by walking both sorted sets.
		s.byID = maps.Clone(prev)
		for _, t := range fresh {
			s.byID[t.ID] = t
		}
		i := 0
		for _, old := range b.last {
			for i < len(backends) && backends[i].Name < old.Name {
				i++
			}
			if i == len(backends) || backends[i].Name != old.Name {
				delete(s.byID, old.ID)
			}
		}
	default:
		s.byID = make(map[uint32]*target, len(targets))
		for _, t := range targets {
			s.byID[t.ID] = t
		}
	}
	s.valid = func(id uint32) bool {
		t, ok := s.byID[id]
		return ok && t.State != model.Down
	}
	s.takesNew = func(id uint32) bool {
		t, ok := s.byID[id]
		return ok && t.State == model.Active && t.Weight > 0
	}
	return s, nil
}

func byName(a, b model.Backend) int { return strings.Compare(a.Name, b.Name) }

// target resolves be for sending, with the routes of generation gen;
// it reuses prev when its route and resolved backend are the same.
func (b *Balancer) target(be model.Backend, prev *target, gen uint64) *target {
	given := be
	r := b.routes.get(be.Address)
	var outer encap.Outer
	if r.err == nil {
		var err error
		if outer, err = encap.NewOuter(r.src, be.Address, b.cfg.EncapPort); err != nil {
			r = route{err: fmt.Errorf("no route to %s: %w", be.Address, err)}
		}
	}
	if r.err != nil {
		be.State = model.Down
	}
	if prev != nil && prev.Backend == be && prev.route.equal(r) {
		if prev.gen == gen && prev.given == given {
			return prev
		}
		t := *prev // same resolution: a copy that remembers what it was made from
		t.given, t.gen = given, gen
		return &t
	}
	stats := b.stats[be.ID]
	if stats == nil {
		stats = &backendStats{perWorker: make([]backendCounters, b.cfg.Workers)}
		b.stats[be.ID] = stats
	}
	return &target{Backend: be, given: given, gen: gen, route: r, outer: outer, dst: be.Address.As4(), mtu: r.mtu, stats: stats}
}

// SetBackends replaces the backend set: it rebuilds the Maglev table off the
// hot path and swaps it in; workers pick it up at their next batch. Flows of
// backends still present and not down keep their backend. A backend without
// a route does not make it fail: see buildSnapshot.
func (b *Balancer) SetBackends(backends []model.Backend) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.install(backends); err != nil {
		return err
	}
	b.routes.retain(backends)
	return nil
}

// rebuild installs the last set again, with the routes as they are now.
func (b *Balancer) rebuild() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.install(b.last)
}

// install builds and swaps in a snapshot of backends. b.mu is held.
func (b *Balancer) install(backends []model.Backend) error {
	s, err := b.buildSnapshot(backends)
	if err != nil {
		return err
	}
	if len(b.stats) > len(s.byID) {
		for id := range b.stats {
			if _, ok := s.byID[id]; !ok {
				delete(b.stats, id)
			}
		}
	}
	b.last = backends
	b.snap.Store(s)
	return nil
}
