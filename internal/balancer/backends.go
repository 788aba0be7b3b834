package balancer

import (
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/caplance/caplance/internal/encap"
	"github.com/caplance/caplance/internal/model"
)

// target is a backend resolved for sending: outer header template, route
// MTU and its counters, which survive snapshots.
type target struct {
	model.Backend
	// given is the backend as SetServices got it (Backend may have been
	// put down for want of a route) and gen the route cache's generation
	// it was resolved in: while both hold, the target is still right.
	given model.Backend
	gen   uint64
	route route
	outer encap.Outer
	// v6 says the outer is IPv6: sent to dst6 on the IPv6 socket, not to
	// dst on the IPv4 one; src6 is the outer's source, given to the kernel
	// with each packet (rawio.Queue.Add6From).
	v6    bool
	dst   [4]byte
	dst6  [16]byte
	src6  [16]byte
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

// serviceStats are one service's counters, kept by name while the service
// stays, one padded slot per worker.
type serviceStats struct {
	perWorker []serviceCounters
}

type serviceCounters struct {
	packets, bytes, newFlows, drops atomic.Uint64
	_                               [32]byte
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
	t := &target{Backend: be, given: given, gen: gen, route: r, outer: outer, mtu: r.mtu, stats: stats}
	if a := be.Address.Unmap(); a.Is4() {
		t.dst = a.As4()
	} else {
		t.v6, t.dst6, t.src6 = true, a.As16(), r.src.As16()
	}
	return t
}
