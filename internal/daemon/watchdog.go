package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusname"
)

// watchdogInterval is how often WATCHDOG=1 is due: half of the WatchdogSec=
// that systemd passes in WATCHDOG_USEC (for this process only: WATCHDOG_PID),
// 0 when the watchdog is off. The variables are cleared, as sd_watchdog_enabled
// does, so that nothing caplanced might start inherits them.
func watchdogInterval(log *slog.Logger) time.Duration {
	d, err := sd.SdWatchdogEnabled(true)
	if err != nil {
		log.Warn("watchdog: ignoring the environment", "err", err)
		return 0
	}
	return d / 2
}

// watchdog sends WATCHDOG=1 every interval, but only while everything
// answers: at each tick the instant checks (the data-path workers'
// heartbeats, each set once per loop round) must pass, and the round trip
// started at the previous tick (the main loop, then a D-Bus call to
// ourselves through the bus) must have come back without error; then the
// next round trip starts. Something that hangs thus stops the pings, and
// systemd aborts the daemon after WatchdogSec and restarts it.
type watchdog struct {
	interval time.Duration
	instant  func() error
	// roundTrip gets a context that ends after two intervals (WatchdogSec,
	// by when systemd has given up on us) or when the watchdog stops.
	roundTrip func(ctx context.Context) error
	notify    func(state string)
	log       *slog.Logger
}

func (w watchdog) run(ctx context.Context) {
	tick := time.NewTicker(w.interval)
	defer tick.Stop()
	pending := w.startRoundTrip(ctx)
	failing := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := w.instant()
		select {
		case rtErr := <-pending:
			err = errors.Join(err, rtErr)
			pending = w.startRoundTrip(ctx)
		default:
			err = errors.Join(err, fmt.Errorf("no answer within %s", w.interval))
		}
		if err != nil {
			// Logged when it changes, not at every tick.
			if msg := oneLine(err); msg != failing {
				w.log.Error("watchdog: not telling systemd we are alive", "err", msg)
				failing = msg
			}
			continue
		}
		if failing != "" {
			w.log.Info("watchdog: everything answers again")
			failing = ""
		}
		w.notify("WATCHDOG=1")
	}
}

func (w watchdog) startRoundTrip(ctx context.Context) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 2*w.interval)
		defer cancel()
		done <- w.roundTrip(ctx)
	}()
	return done
}

// startWatchdog pings systemd every interval while r's workers, main loop
// and bus connection answer; it returns when ctx ends.
func (r *running) startWatchdog(ctx context.Context, interval time.Duration) {
	w := watchdog{
		interval:  interval,
		instant:   r.workersAlive,
		roundTrip: r.loopAndBusAlive,
		notify:    func(state string) { notify(r.log, state) },
		log:       r.log,
	}
	w.run(ctx)
}

// workersAlive reports the data-path workers that have not gone round their
// loop since the last call.
func (r *running) workersAlive() error {
	var errs []error
	if r.bal != nil && !r.bal.Alive() {
		errs = append(errs, errors.New("a balancer worker is stuck"))
	}
	if r.rcv != nil && !r.rcv.Alive() {
		errs = append(errs, errors.New("a receiver worker is stuck"))
	}
	return errors.Join(errs...)
}

// loopAndBusAlive waits for the main loop (signals, reloads) to answer,
// then, when the D-Bus API is served, calls Peer.Ping on our own bus name:
// the call goes out through the bus and comes back to the connection that
// serves the API, so both the bus and our side of it are exercised.
func (r *running) loopAndBusAlive(ctx context.Context) error {
	answered := make(chan struct{})
	select {
	case r.loopChecks <- answered:
	case <-ctx.Done():
		return fmt.Errorf("the main loop is stuck: %w", ctx.Err())
	}
	select {
	case <-answered:
	case <-ctx.Done():
		return fmt.Errorf("the main loop is stuck: %w", ctx.Err())
	}
	if r.bus == nil {
		return nil
	}
	return pingSelf(ctx, r.bus)
}

// pingSelf calls org.freedesktop.DBus.Peer.Ping on our own well-known name
// (the bus policy lets everyone ping it).
func pingSelf(ctx context.Context, conn *dbus.Conn) error {
	call := conn.Object(dbusname.BusName, dbusname.ManagerPath).
		CallWithContext(ctx, "org.freedesktop.DBus.Peer.Ping", dbus.FlagNoAutoStart)
	if call.Err != nil {
		return fmt.Errorf("D-Bus: pinging ourselves through the bus: %w", call.Err)
	}
	return nil
}

// oneLine joins the lines of err's message, for the log and STATUS=.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}
