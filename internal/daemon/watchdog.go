package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/watchdog"
)

// startWatchdog pings systemd every interval while r's workers, main loop
// and bus connection answer; it returns when ctx ends.
func (r *running) startWatchdog(ctx context.Context, interval time.Duration) {
	watchdog.Watchdog{
		Interval:      interval,
		Instant:       r.workersAlive,
		RoundTrip:     r.loopAndBusAlive,
		RoundTripName: "the main loop or the bus",
		Notify:        func(state string) { notify(r.log, state) },
		Log:           r.log,
	}.Run(ctx)
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
