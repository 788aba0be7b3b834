package daemon

import (
	"log/slog"

	"github.com/caplance/caplance/internal/watchdog"
)

// TestWedgeEnv is the watchdog's test hook (caplanced(8), ENVIRONMENT):
// "worker" wedges the first data-path worker (the balancer's, else the
// receiver's) right after READY=1, "worker:DURATION" that long after it. The
// worker leaves its loop as if it hung, so WATCHDOG=1 stops and systemd
// restarts caplanced. For tests only: a wedged caplanced stops forwarding the
// worker's share of packets. "stop" (holdStopWedge) holds the stop instead.
const TestWedgeEnv = watchdog.TestWedgeEnv

// holdStopWedge is TestWedgeEnv's value that makes the stop hang after
// STOPPING=1, before anything is cleaned up, so that a test can send the
// second signal while a stop is surely under way; the stop timeout still
// ends it.
const holdStopWedge = "stop"

// holdTheStop hangs the stop until the process exits (a second signal, the
// stop timeout).
func holdTheStop(log *slog.Logger) {
	log.Warn("test hook " + TestWedgeEnv + "=" + holdStopWedge + ": holding the stop until a second signal")
	select {}
}

// wedge wedges the first data-path worker.
func (r *running) wedge() {
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
