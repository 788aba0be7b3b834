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
// shown and applied changes. routeErr is asked for every backend at every
// change, so it must answer from a cache; call RoutesChanged when its
// answers change.
func (r *Registry) UseRoutes(routeErr func(netip.Addr) error) error {
	r.opMu.Lock()
	r.routeErr = routeErr
	r.opMu.Unlock()
	return r.RoutesChanged()
}

// RoutesChanged applies and announces what changed since routeErr's
// answers changed.
func (r *Registry) RoutesChanged() error {
	_, err := r.change("following a route change", func(*state) error { return nil })
	return err
}

// routeDown marks b down when it has no route. r.opMu is held.
func (r *Registry) routeDown(b *Backend) {
	if r.routeErr == nil {
		return
	}
	if err := r.routeErr(b.Address); err != nil {
		b.Health, b.HealthDetail = HealthDown, err.Error()
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
