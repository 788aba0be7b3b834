package ctl

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/dbusconn"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/quote"
)

// Names of the bus itself and of the standard interfaces.
const (
	busDaemonName   = "org.freedesktop.DBus"
	busDaemonPath   = dbus.ObjectPath("/org/freedesktop/DBus")
	propertiesIface = "org.freedesktop.DBus.Properties"
)

// Conn is the part of a bus connection caplancectl uses: method calls and
// signals. DialBus gives the real one; tests give a fake.
type Conn interface {
	// Call calls method ("interface.Member") on the object at path of dest
	// and returns the reply's body. A refusal is a dbus.Error.
	Call(ctx context.Context, dest string, path dbus.ObjectPath, method string, args ...any) ([]any, error)
	// Subscribe adds one match rule per element of rules (type=signal is
	// implied) and returns the channel the signals arrive on; it is closed
	// when the connection is.
	Subscribe(ctx context.Context, rules ...[]dbus.MatchOption) (<-chan *dbus.Signal, error)
	Close() error
}

// DialBus connects to the bus of --bus (see package dbusconn). A --bus that
// is no address is a usage error; a bus that is not there is an error of
// its own, not a *NotRunningError: exit code 3 means the bus works and
// caplanced is not on it.
func DialBus(bus string) (Conn, error) {
	if bus != "system" && bus != "session" {
		if err := dbusconn.CheckAddress(bus); err != nil {
			return nil, cli.UsageError{Msg: fmt.Sprintf("--bus %s: %v", quote.Q(bus), err)}
		}
	}
	c, err := dbusconn.Dial(bus)
	if err != nil {
		if dbusconn.NoBus(err) {
			what, _ := strings.CutSuffix(dbusconn.Label(bus), " "+bus) // "system bus", "bus"
			return nil, fmt.Errorf("no %s at %s (%w)", what, quote.Q(dbusconn.Address(bus)), errors.Unwrap(err))
		}
		return nil, err
	}
	return &busConn{c: c}, nil
}

// busConn is Conn over a godbus connection.
type busConn struct{ c *dbus.Conn }

func (b *busConn) Call(ctx context.Context, dest string, path dbus.ObjectPath, method string, args ...any) ([]any, error) {
	// NoAutoStart: caplancectl reports a stopped daemon, it never starts
	// one through bus activation.
	call := b.c.Object(dest, path).CallWithContext(ctx, method, dbus.FlagNoAutoStart, args...)
	return call.Body, call.Err
}

func (b *busConn) Subscribe(ctx context.Context, rules ...[]dbus.MatchOption) (<-chan *dbus.Signal, error) {
	for _, rule := range rules {
		if err := b.c.AddMatchSignalContext(ctx, rule...); err != nil {
			return nil, err
		}
	}
	ch := make(chan *dbus.Signal, 64)
	b.c.Signal(ch)
	return ch, nil
}

func (b *busConn) Close() error { return b.c.Close() }

// NotRunningError means the bus works but caplanced's name has no owner.
// caplancectl exits with ExitNotRunning.
type NotRunningError struct{ Msg string }

func (e *NotRunningError) Error() string {
	return e.Msg + " (is caplanced running? systemctl start caplanced)"
}

// ExitCode is ExitNotRunning, for cli.Execute.
func (e *NotRunningError) ExitCode() int { return ExitNotRunning }

// callError turns the error of a call of method into what the user reads:
// the D-Bus error's message, with a hint where one helps; the result still
// tells its D-Bus name to errorName. It is the one place D-Bus errors
// become messages.
func callError(method string, err error) error {
	if err == nil {
		return nil
	}
	dbusErr, ok := dbusname.AsError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: no reply from caplanced within %v", method, callTimeout)
		}
		return fmt.Errorf("%s: %w", method, err)
	}
	var user error
	switch dbusErr.Name {
	case "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner":
		user = &NotRunningError{Msg: "caplanced is not running: " + dbusErr.Error()}
	case dbusname.ErrorPrefix + "AccessDenied":
		user = errors.New(dbusErr.Error() + accessHint)
	case "org.freedesktop.DBus.Error.AccessDenied":
		// The bus's message is a dump of the message's header fields.
		user = errors.New(method + ": refused by the D-Bus policy" + accessHint)
	default:
		user = errors.New(dbusErr.Error()) // the message, or the name without one
	}
	return &namedError{name: dbusErr.Name, err: user}
}

const accessHint = " (run as root or a member of caplance-admin)"

// namedError is a message for the user that remembers the name of the
// D-Bus error it came from.
type namedError struct {
	name string
	err  error
}

func (e *namedError) Error() string { return e.err.Error() }
func (e *namedError) Unwrap() error { return e.err }

// errorName returns the D-Bus error name of err, or "".
func errorName(err error) string {
	var named *namedError
	if errors.As(err, &named) {
		return named.name
	}
	if e, ok := dbusname.AsError(err); ok {
		return e.Name
	}
	return ""
}

// Error names of a call to an object that is not there.
var noObjectNames = map[string]bool{
	"org.freedesktop.DBus.Error.UnknownObject":    true,
	"org.freedesktop.DBus.Error.NoSuchObject":     true,
	"org.freedesktop.DBus.Error.UnknownInterface": true,
	"org.freedesktop.DBus.Error.UnknownMethod":    true,
}
