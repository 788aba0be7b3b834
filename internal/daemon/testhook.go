package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// TestWedgeEnv names the environment variable of the watchdog's test hook,
// read once at start (caplanced(8), ENVIRONMENT): "worker" wedges the first
// data-path worker (the balancer's, else the receiver's) right after
// READY=1, "worker:DURATION" that long after it. The worker leaves its loop
// as if it hung, so WATCHDOG=1 stops and systemd restarts caplanced. For
// tests only: a wedged caplanced stops forwarding the worker's share of
// packets. (Not CAPLANCED_*: those name configuration keys.)
const TestWedgeEnv = "CAPLANCE_TEST_WEDGE"

// parseTestWedge reads TestWedgeEnv's value.
func parseTestWedge(v string) (wedge bool, after time.Duration, err error) {
	if v == "" {
		return false, 0, nil
	}
	what, delay, hasDelay := strings.Cut(v, ":")
	if what == "worker" {
		if !hasDelay {
			return true, 0, nil
		}
		if after, err = time.ParseDuration(delay); err == nil && after >= 0 {
			return true, after, nil
		}
	}
	return false, 0, fmt.Errorf("%s=%q: want worker or worker:DURATION (a test hook, see caplanced(8))", TestWedgeEnv, v)
}

// wedgeAfter wedges the first data-path worker after d, unless ctx ends
// first.
func (r *running) wedgeAfter(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	switch {
	case r.bal != nil:
		r.log.Warn("test hook " + TestWedgeEnv + ": wedging the first balancer worker")
		r.bal.Wedge()
	case r.rcv != nil:
		r.log.Warn("test hook " + TestWedgeEnv + ": wedging the first receiver worker")
		r.rcv.Wedge()
	default:
		r.log.Warn("test hook " + TestWedgeEnv + ": no data-path worker to wedge (kernel-mode receiver only)")
	}
}
