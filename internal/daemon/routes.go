package daemon

import "fmt"

// followRoutes sets the registry's backend limit (warning when the state
// file's run-time backends already go past it) and makes it show the
// backends the balancer has no route to, as the balancer's route cache
// follows the kernel's changes (see balancer.WatchRoutes): a backend
// without a route is down with "no route to …" and the others are not held
// up by it.
func (r *running) followRoutes(maxBackends int) error {
	r.reg.SetMaxBackends(maxBackends)
	if n := len(r.reg.List()); n > maxBackends {
		// Run-time backends of the state file: kept, but none can be added.
		r.log.Warn("more backends than max_backends: no backend can be added until some are removed", "backends", n, "max_backends", maxBackends)
	}
	if err := r.reg.UseRoutes(r.bal.RouteError); err != nil {
		return fmt.Errorf("backend routes: %w", err)
	}
	return r.bal.WatchRoutes(func() {
		if err := r.reg.RoutesChanged(); err != nil {
			r.log.Error("applying a route change to the backend set", "err", err)
		}
	})
}
