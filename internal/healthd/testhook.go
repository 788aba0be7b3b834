package healthd

import (
	"context"

	"github.com/caplance/caplance/internal/watchdog"
)

// TestWedgeEnv is the watchdog's test hook (caplance-healthd(8),
// ENVIRONMENT): "loop" hangs the main loop right after READY=1,
// "loop:DURATION" that long after it, until the daemon is told to stop;
// WATCHDOG=1 stops, and systemd restarts caplance-healthd. For tests only.
const TestWedgeEnv = watchdog.TestWedgeEnv

// wedge hangs the main loop until ctx ends.
func (d *Daemon) wedge(ctx context.Context) {
	d.log.Warn("test hook " + TestWedgeEnv + ": hanging the main loop")
	_ = d.inLoop(ctx, func() { <-ctx.Done() })
}
