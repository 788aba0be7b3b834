package healthd

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// watchdogInterval is how often WATCHDOG=1 is due: half of the WatchdogSec=
// that systemd passes in WATCHDOG_USEC (for this process only: WATCHDOG_PID),
// 0 when the watchdog is off. The variables are cleared so that exec checks
// do not inherit them.
func watchdogInterval(log *slog.Logger) time.Duration {
	d, err := sd.SdWatchdogEnabled(true)
	if err != nil {
		log.Warn("watchdog: ignoring the environment", "err", err)
		return 0
	}
	return d / 2
}

// watchdog sends WATCHDOG=1 every interval, but only when the main loop has
// answered (Alive) the check started at the previous tick; then it starts
// the next one. A loop that hangs thus stops the pings, and systemd aborts
// caplance-healthd after WatchdogSec and restarts it. It returns when ctx
// ends.
func (d *Daemon) watchdog(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	pending := d.startAliveCheck(ctx, interval)
	failing := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var err error
		select {
		case err = <-pending:
			pending = d.startAliveCheck(ctx, interval)
		default:
			err = fmt.Errorf("the main loop has not answered for %s", interval)
		}
		if err != nil {
			// Logged when it changes, not at every tick.
			if msg := strings.ReplaceAll(err.Error(), "\n", "; "); msg != failing {
				d.log.Error("watchdog: not telling systemd we are alive", "err", msg)
				failing = msg
			}
			continue
		}
		if failing != "" {
			d.log.Info("watchdog: the main loop answers again")
			failing = ""
		}
		d.opts.Notify("WATCHDOG=1")
	}
}

// startAliveCheck asks the main loop to answer; the check gives up after two
// intervals (WatchdogSec, by when systemd has given up on us).
func (d *Daemon) startAliveCheck(ctx context.Context, interval time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 2*interval)
		defer cancel()
		done <- d.Alive(ctx)
	}()
	return done
}

// TestWedgeEnv names the environment variable of the watchdog's test hook,
// read once at start (caplance-healthd(8), ENVIRONMENT): "loop" hangs the
// main loop right after READY=1, "loop:DURATION" that long after it, until
// the daemon is told to stop; WATCHDOG=1 stops, and systemd restarts
// caplance-healthd. For tests only.
const TestWedgeEnv = "CAPLANCE_TEST_WEDGE"

// parseTestWedge reads TestWedgeEnv's value.
func parseTestWedge(v string) (wedge bool, after time.Duration, err error) {
	if v == "" {
		return false, 0, nil
	}
	what, delay, hasDelay := strings.Cut(v, ":")
	if what == "loop" {
		if !hasDelay {
			return true, 0, nil
		}
		if after, err = time.ParseDuration(delay); err == nil && after >= 0 {
			return true, after, nil
		}
	}
	return false, 0, fmt.Errorf("%s=%q: want loop or loop:DURATION (a test hook, see caplance-healthd(8))", TestWedgeEnv, v)
}

// wedgeAfter hangs the main loop after delay until ctx ends.
func (d *Daemon) wedgeAfter(ctx context.Context, delay time.Duration) {
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	d.log.Warn("test hook " + TestWedgeEnv + ": hanging the main loop")
	_ = d.inLoop(ctx, func() { <-ctx.Done() })
}
