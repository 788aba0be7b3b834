package registry

import (
	"net/netip"
)

// Routes and the backend limit: the data path knows which backends it has
// no route to (package balancer caches the routes and follows the kernel's
// changes), the registry shows it; and the registry refuses to grow past
// max_backends. Both are set after Open by the daemon.

// UseRoutes makes every backend whose address routeErr says has no route
// show as down, with routeErr's message ("no route to 198.51.100.7: …") as
// its health detail, and go to the data path as down, until its route is
// back: then it shows what caplance-healthd last reported again. Its
// configuration, admin state and reported health are kept; only what is
// shown and applied changes. routeErr is asked about every backend now and
// at every RoutesChanged, and at other changes only about new addresses:
// call RoutesChanged when its answers change.
func (r *Registry) UseRoutes(routeErr func(netip.Addr) error) error {
	r.opMu.Lock()
	r.routeErr = routeErr
	r.opMu.Unlock()
	return r.RoutesChanged()
}

// RoutesChanged asks routeErr about every backend again, then applies and
// announces what changed.
func (r *Registry) RoutesChanged() error {
	r.opMu.Lock()
	r.askRoutes = true
	_, err := r.changeLocked("following a route change", func(*state) error { return nil })
	// A failed change leaves the old answers current: the next one asks
	// again.
	r.askRoutes = err != nil
	r.opMu.Unlock()
	r.deliver()
	return err
}

// routeDown marks b, whose entry in the derivation is e, down when it has
// no route, and records why in noRoute. It reuses the answer of the state
// s was cloned from for an address it had, unless RoutesChanged asks
// again: asking about thousands of backends at every change cost a third
// of a Maglev build. r.opMu is held.
func (r *Registry) routeDown(s *state, e named, b *Backend, noRoute map[string]string) {
	if r.routeErr == nil {
		return
	}
	var why string
	if e.prev != nil && e.prev.Address == b.Address && !r.askRoutes {
		why = s.noRoute[b.Name]
	} else if err := r.routeErr(b.Address); err != nil {
		why = err.Error()
	}
	if why != "" {
		noRoute[b.Name] = why
		b.Health, b.HealthDetail = HealthDown, why
	}
}

// SetMaxBackends sets how many backends the registry holds at most
// (max_backends of caplanced.toml); 0 means no limit. A change that would
// make the set larger than that is refused with ErrInvalidArgument; one that
// shrinks it or keeps its size is not, so a set already above a lowered
// limit can still be changed and brought under it.
func (r *Registry) SetMaxBackends(n int) {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	r.maxBackends = n
}

// checkLimit refuses a change from cur to next that grows the set past
// the limit. r.opMu is held.
func (r *Registry) checkLimit(what string, cur, next *state) error {
	if r.maxBackends == 0 || len(next.list) <= r.maxBackends || len(next.list) <= len(cur.list) {
		return nil
	}
	return errorf(ErrInvalidArgument, "%s: that makes %d backends, more than max_backends = %d allows (caplanced.toml, [balancer])",
		what, len(next.list), r.maxBackends)
}
