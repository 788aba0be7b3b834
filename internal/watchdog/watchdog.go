// Package watchdog is the systemd watchdog of caplanced and caplance-healthd:
// it reads the interval systemd asks for, sends WATCHDOG=1 only while the
// daemon's own checks pass, and parses the test hook that makes a daemon
// hang on purpose. It owns no checks itself: the daemons pass theirs in.
package watchdog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// Interval is how often WATCHDOG=1 is due: half of the WatchdogSec= that
// systemd passes in WATCHDOG_USEC (for this process only: WATCHDOG_PID), 0
// when the watchdog is off. The variables are cleared, as
// sd_watchdog_enabled does, so that nothing the daemon starts inherits them.
func Interval(log *slog.Logger) time.Duration {
	d, err := sd.SdWatchdogEnabled(true)
	if err != nil {
		log.Warn("watchdog: ignoring the environment", "err", err)
		return 0
	}
	return d / 2
}

// Watchdog sends WATCHDOG=1 every Interval, but only while everything
// answers: at each tick Instant (if set) must pass, and the RoundTrip
// started at the previous tick must have come back without error; then the
// next round trip starts. Something that hangs thus stops the pings, and
// systemd aborts the daemon after WatchdogSec and restarts it.
type Watchdog struct {
	Interval time.Duration
	// Instant checks what answers at once (e.g. workers' heartbeats); nil
	// for none.
	Instant func() error
	// RoundTrip gets a context that ends after two intervals (WatchdogSec,
	// by when systemd has given up on us) or when the watchdog stops.
	RoundTrip func(ctx context.Context) error
	// RoundTripName says what RoundTrip waits for, in the log line of a
	// round trip that has not come back ("the main loop").
	RoundTripName string
	Notify        func(state string)
	Log           *slog.Logger
}

// Run pings until ctx ends. A failure is logged when it changes, not at
// every tick, and so is the recovery. Each tick comes Interval after the
// previous one was handled, not on a fixed beat: a ticker that fell behind
// (a loaded machine) would fire twice in a row, and two pings would leave
// almost together.
func (w Watchdog) Run(ctx context.Context) {
	tick := time.NewTimer(w.Interval)
	defer tick.Stop()
	pending := w.startRoundTrip(ctx)
	failing := ""
	for ; ; tick.Reset(w.Interval) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var err error
		if w.Instant != nil {
			err = w.Instant()
		}
		select {
		case rtErr := <-pending:
			err = errors.Join(err, rtErr)
			pending = w.startRoundTrip(ctx)
		default:
			err = errors.Join(err, fmt.Errorf("%s has not answered for %s", w.RoundTripName, w.Interval))
		}
		if err != nil {
			if msg := strings.ReplaceAll(err.Error(), "\n", "; "); msg != failing {
				w.Log.Error("watchdog: not telling systemd we are alive", "err", msg)
				failing = msg
			}
			continue
		}
		if failing != "" {
			w.Log.Info("watchdog: everything answers again")
			failing = ""
		}
		w.Notify("WATCHDOG=1")
	}
}

func (w Watchdog) startRoundTrip(ctx context.Context) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 2*w.Interval)
		defer cancel()
		done <- w.RoundTrip(ctx)
	}()
	return done
}

// TestWedgeEnv names the environment variable of the daemons' watchdog test
// hook, read once at start: WHAT hangs part of the daemon right after
// READY=1, "WHAT:DURATION" that long after it, so that WATCHDOG=1 stops and
// systemd restarts the daemon. For tests only; each daemon's man page says
// what WHAT it takes. (Not CAPLANCED_*: those name configuration keys.)
const TestWedgeEnv = "CAPLANCE_TEST_WEDGE"

// ParseTestWedge reads TestWedgeEnv's value v for a daemon whose hook is
// named what and documented in manPage.
func ParseTestWedge(v, what, manPage string) (wedge bool, after time.Duration, err error) {
	if v == "" {
		return false, 0, nil
	}
	got, delay, hasDelay := strings.Cut(v, ":")
	if got == what {
		if !hasDelay {
			return true, 0, nil
		}
		if after, err = time.ParseDuration(delay); err == nil && after >= 0 {
			return true, after, nil
		}
	}
	return false, 0, fmt.Errorf("%s=%q: want %s or %s:DURATION (a test hook, see %s)", TestWedgeEnv, v, what, what, manPage)
}

// WedgeAfter calls wedge, the daemon's way of hanging, after delay, unless
// ctx ends first.
func WedgeAfter(ctx context.Context, delay time.Duration, wedge func()) {
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
		wedge()
	}
}
