package daemon

import "fmt"

// followRoutes sets the registry's backend limit and makes it show the
// backends the balancer has no route to, as the balancer's route cache
// follows the kernel's changes (see balancer.WatchRoutes): a backend
// without a route is down with "no route to …" and the others are not held
// up by it.
func (r *running) followRoutes(maxBackends int) error {
	r.reg.SetMaxBackends(maxBackends)
	if err := r.reg.UseRoutes(r.bal.RouteError); err != nil {
		return fmt.Errorf("backend routes: %w", err)
	}
	return r.bal.WatchRoutes(func() {
		if err := r.reg.RoutesChanged(); err != nil {
			r.log.Error("applying a route change to the backend set", "err", err)
		}
	})
}
