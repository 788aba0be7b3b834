package balancer

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/caplance/caplance/internal/flow"
	"github.com/caplance/caplance/internal/maglev"
	"github.com/caplance/caplance/internal/model"
)

// MaxVIPs is the most distinct VIPs the services may have together: the
// sockets' BPF filter compares a packet's destination with each of them in
// turn (see vipFilter), and classic BPF allows 4096 instructions.
const MaxVIPs = 1024

// maxFilter6 is the most instructions the comparisons of the IPv6 VIPs'
// filter may take (vipFilter6 without its accept part): MaxVIPs VIPs that
// share their first 96 bits (one instruction each) take 1061, which fits,
// twice while one replaces the other, in the socket option memory that the
// IPv4 filter of MaxVIPs fits in (TestMaxVIPsFit). VIPs spread over other
// prefixes cost up to 14 instructions each (about 75 of them fit).
const maxFilter6 = 1061

// snapshot is the immutable set of services and backends the workers read;
// SetServices builds a new one and swaps it in atomically.
type snapshot struct {
	classes  classifier
	services []*service // sorted by name
	// backends is every service's, in the order SetServices got them.
	backends []*target
	// vips are the services' VIPs, sorted: what the sockets' filters keep.
	vips []netip.Addr
}

// service returns the snapshot's service of that name, nil if none.
func (s *snapshot) service(name string) *service {
	i, ok := slices.BinarySearchFunc(s.services, name, func(svc *service, name string) int {
		return strings.Compare(svc.Name, name)
	})
	if !ok {
		return nil
	}
	return s.services[i]
}

// service is one service of a snapshot: its Maglev table over its own
// backends. It is reused as it is by the next snapshot when neither the
// service nor its backends changed, so a change of one service rebuilds
// only its table.
type service struct {
	model.Service
	// gen is the route cache's generation its targets were resolved in.
	gen uint64
	// mb is what table was built from.
	mb    []maglev.Backend
	table *maglev.Table
	// targets are its backends in the order SetServices got them; each
	// remembers how it got it (given).
	targets []*target
	// sorted says targets are sorted by name, as the registry's set is;
	// remembered, as checking it again chases a pointer per backend.
	sorted  bool
	byIndex []*target // Maglev index → target
	byID    map[uint32]*target
	// valid and takesNew are built once per service so that conntrack
	// lookups do not allocate a closure per packet. They accept only the
	// service's own backends: a flow whose port moved to another service
	// never follows its old entry.
	valid    func(id uint32) bool
	takesNew func(id uint32) bool
	stats    *serviceStats
}

// unchanged reports whether the service would be built from d and pool
// as it is, with the routes of generation gen.
func (s *service) unchanged(d model.Service, pool []model.Backend, gen uint64) bool {
	if s.gen != gen || len(s.targets) != len(pool) || !s.Service.Equal(d) {
		return false
	}
	for i, t := range s.targets {
		if t.given != pool[i] {
			return false
		}
	}
	return true
}

// pick is the hash that picks a new flow's backend; h is k.Hash().
func (s *service) pick(k *flow.Key, h uint64) uint64 {
	switch s.Hash {
	case model.SourceIP:
		return flow.Key{Src: k.Src}.Hash()
	case model.SourceIPPort:
		return flow.Key{Src: k.Src, SrcPort: k.SrcPort}.Hash()
	}
	return h
}

// SetServices replaces the services and their backends, all or nothing: it
// builds the Maglev tables of the services that changed off the hot path,
// re-attaches the sockets' filters when the VIP set changed, and swaps the
// new snapshot in; workers pick it up at their next batch. Flows of backends
// still in their service and not down keep their backend. A backend without
// a route does not make it fail: see buildService.
func (b *Balancer) SetServices(set model.Set) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.install(set); err != nil {
		return err
	}
	b.routes.retain(set.Backends)
	return nil
}

// rebuild installs the last set again, with the routes as they are now.
func (b *Balancer) rebuild() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.install(b.last)
}

// install builds and swaps in a snapshot of set. b.mu is held.
func (b *Balancer) install(set model.Set) error {
	s, err := b.buildSnapshot(set)
	if err != nil {
		return err
	}
	if _, v6 := splitFamilies(s.vips); len(v6) > 0 && b.noIPv6 != nil {
		return fmt.Errorf("balancer: IPv6 VIP %s: no IPv6 packets can be read (%w): a systemd unit must allow AF_PACKET in RestrictAddressFamilies", v6[0], b.noIPv6)
	}
	old := b.snap.Load()
	if b.xdp != nil {
		if err := b.xdp.follow(s); err != nil {
			_ = b.xdp.follow(old) // best effort: the set that works
			return err
		}
	}
	if !slices.Equal(old.vips, s.vips) {
		if err := b.filter(s.vips, old.vips); err != nil {
			if b.xdp != nil {
				_ = b.xdp.follow(old)
			}
			return err
		}
	}
	if len(b.stats) > len(s.backends) {
		ids := make(map[uint32]bool, len(s.backends))
		for _, t := range s.backends {
			ids[t.ID] = true
		}
		maps.DeleteFunc(b.stats, func(id uint32, _ *backendStats) bool { return !ids[id] })
	}
	maps.DeleteFunc(b.svcStats, func(name string, _ *serviceStats) bool { return s.service(name) == nil })
	b.last = set
	b.snap.Store(s)
	return nil
}

// buildSnapshot checks set and builds its snapshot, reusing the services
// of the current one that did not change. It only reads set's slices, and
// tells what changed by the copies its targets keep.
func (b *Balancer) buildSnapshot(set model.Set) (*snapshot, error) {
	defs := make([]model.Service, len(set.Services))
	for i, d := range set.Services {
		d.VIPs = slices.Clone(d.VIPs)
		for j := range d.VIPs {
			d.VIPs[j].Ports = slices.Clone(d.VIPs[j].Ports)
		}
		defs[i] = d
	}
	slices.SortFunc(defs, func(a, b model.Service) int { return strings.Compare(a.Name, b.Name) })
	vips, err := checkServices(defs)
	if err != nil {
		return nil, err
	}
	// Each backend's service, as an index in defs: the registry's backends
	// come sorted by name, often many of one service in a row.
	of := make([]int, len(set.Backends))
	count, first := make([]int, len(defs)), make([]int, len(defs))
	last := -1
	for i, be := range set.Backends {
		if last < 0 || defs[last].Name != be.Service {
			j, ok := slices.BinarySearchFunc(defs, be.Service, func(d model.Service, name string) int {
				return strings.Compare(d.Name, name)
			})
			if !ok {
				return nil, fmt.Errorf("balancer: backend %s: no service %q", be.Name, be.Service)
			}
			last = j
		}
		of[i] = last
		if count[last] == 0 {
			first[last] = i
		}
		count[last]++
	}
	// A service's backends in one run (all of them when there is one
	// service) are a slice of set.Backends; the others' are copied into one
	// array, each service's in the order of set.Backends.
	pools := make([][]model.Backend, len(defs))
	var spread []model.Backend
	for j, n := range count {
		if !slices.ContainsFunc(of[first[j]:first[j]+n], func(k int) bool { return k != j }) {
			pools[j] = set.Backends[first[j] : first[j]+n : first[j]+n]
			continue
		}
		if spread == nil {
			spread = make([]model.Backend, 0, len(set.Backends))
		}
		pools[j] = spread[len(spread) : len(spread) : len(spread)+n]
		spread = spread[:len(spread)+n]
	}
	if spread != nil {
		for i, be := range set.Backends {
			if j := of[i]; len(pools[j]) < count[j] {
				pools[j] = append(pools[j], be)
			}
		}
	}
	old := b.snap.Load()
	gen := b.routes.generation()
	s := &snapshot{vips: vips, services: make([]*service, len(defs))}
	for i, d := range defs {
		var prev *service
		if old != nil { // nil in Open
			prev = old.service(d.Name)
		}
		if prev != nil && prev.unchanged(d, pools[i], gen) {
			s.services[i] = prev
			continue
		}
		if s.services[i], err = b.buildService(d, pools[i], prev, gen); err != nil {
			return nil, err
		}
	}
	if s.classes, err = newClassifier(s.services); err != nil {
		return nil, err
	}
	if len(defs) == 1 {
		s.backends = s.services[0].targets
		return s, nil
	}
	s.backends = make([]*target, len(set.Backends))
	next := make([]int, len(defs)) // of each service's targets, the next in set.Backends
	for i, j := range of {
		s.backends[i] = s.services[j].targets[next[j]]
		next[j]++
	}
	return s, nil
}

// checkServices checks what the data path relies on in the services,
// sorted by name, and returns their distinct VIPs, sorted. Overlaps are
// newClassifier's to find.
func checkServices(defs []model.Service) ([]netip.Addr, error) {
	var vips []netip.Addr
	for i, d := range defs {
		if d.Name == "" {
			return nil, errors.New("balancer: a service without a name")
		}
		if i > 0 && defs[i-1].Name == d.Name {
			return nil, fmt.Errorf("balancer: two services named %s", d.Name)
		}
		if d.Protocols == 0 || d.Protocols&^(model.TCP|model.UDP) != 0 {
			return nil, fmt.Errorf("balancer: service %s: protocols %v", d.Name, d.Protocols)
		}
		if !slices.Contains(model.Hashes(), d.Hash) {
			return nil, fmt.Errorf("balancer: service %s: unknown %v", d.Name, d.Hash)
		}
		for _, v := range d.VIPs {
			// The sockets see IPv4 as IPv4 and IPv6 as IPv6: a mapped
			// form or a zone would never match a packet.
			if !v.Addr.IsValid() || v.Addr.Is4In6() || v.Addr.Zone() != "" {
				return nil, fmt.Errorf("balancer: service %s: VIP %s: not a plain IPv4 or IPv6 address", d.Name, v.Addr)
			}
			for _, r := range v.Ports {
				if r.First > r.Last {
					return nil, fmt.Errorf("balancer: service %s: VIP %s: port range %d-%d ends before it starts", d.Name, v.Addr, r.First, r.Last)
				}
			}
			vips = append(vips, v.Addr)
		}
	}
	slices.SortFunc(vips, netip.Addr.Compare)
	vips = slices.Compact(vips)
	if len(vips) > MaxVIPs {
		return nil, fmt.Errorf("balancer: %d VIPs, at most %d are supported", len(vips), MaxVIPs)
	}
	if _, v6 := splitFamilies(vips); len(v6) > 0 {
		if n := len(vipFilter6(v6, nil)); n > maxFilter6 {
			return nil, fmt.Errorf("balancer: the %d IPv6 VIPs need a socket filter of %d instructions, at most %d fit "+
				"(VIPs that share their first 96 bits cost one each, others up to 14)", len(v6), n, maxFilter6)
		}
	}
	return vips, nil
}

// buildService resolves the backends of service d and builds its table;
// prev is the service in the current snapshot, if any. A backend without a
// route (RouteError) is put down in this snapshot: it gets no slots and its
// tracked flows are not reused, and the others are not held up by it. A
// target whose backend is as it was in prev, while no route changed since,
// is reused as it is, with its outer header template and counters, and the
// table too when every backend's weight is as it was: a change of one
// backend among thousands then costs little more than the Maglev build, and
// a route change that does not concern the service costs no build at all.
func (b *Balancer) buildService(d model.Service, backends []model.Backend, prev *service, gen uint64) (*service, error) {
	var prevByID map[uint32]*target
	var prevTargets []*target
	if prev != nil {
		prevByID, prevTargets = prev.byID, prev.targets
	}
	mb := make([]maglev.Backend, len(backends))
	targets := make([]*target, len(backends))
	var fresh []*target // targets that are not prev's
	kept := 0           // backends whose ID prev has
	for i, be := range backends {
		p := prevByID[be.ID]
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
	var table *maglev.Table
	if prev != nil && prev.TableSize == d.TableSize && slices.Equal(prev.mb, mb) {
		table = prev.table
	} else {
		var err error
		start := time.Now()
		if table, err = maglev.New(mb, d.TableSize); err != nil {
			return nil, fmt.Errorf("balancer: service %s: %w", d.Name, err)
		}
		if b.cfg.TableBuilt != nil {
			b.cfg.TableBuilt(d.Name, time.Since(start))
		}
	}
	stats := b.svcStats[d.Name]
	if stats == nil {
		stats = &serviceStats{perWorker: make([]serviceCounters, b.cfg.Workers)}
		b.svcStats[d.Name] = stats
	}
	s := &service{Service: d, gen: gen, mb: mb, table: table, targets: targets, stats: stats}
	// The table's indices follow the backends sorted by name, which the
	// registry's set already is.
	sorted := slices.IsSortedFunc(backends, byName)
	s.sorted = sorted
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
	case prev != nil && kept == len(prevByID):
		// No ID left: patch a copy of the previous index, which costs a
		// fraction of building one.
		s.byID = maps.Clone(prevByID)
		for _, t := range fresh {
			s.byID[t.ID] = t
		}
	case prev != nil && sorted && prev.sorted:
		// Some left: find them by walking both sorted sets.
		s.byID = maps.Clone(prevByID)
		for _, t := range fresh {
			s.byID[t.ID] = t
		}
		i := 0
		for _, old := range prevTargets {
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
