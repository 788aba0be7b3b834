// Package dbusconn connects to the bus that a --bus flag (or caplance-healthd's
// bus key) names, the same way for caplanced, caplance-healthd and
// caplancectl: "system", "session" or a D-Bus address. It owns that rule and
// the wording of a failure; what a command serves or calls on the connection
// is its own.
package dbusconn

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/godbus/dbus/v5"
)

// Dial connects to bus: "system" (DBUS_SYSTEM_BUS_ADDRESS if set, else the
// system's socket), "session" (DBUS_SESSION_BUS_ADDRESS or
// $XDG_RUNTIME_DIR/bus; a session bus is never launched, a daemon has no
// business starting one), or a D-Bus address such as
// unix:path=/run/x.sock. opts are godbus's connection options. The error
// says which bus could not be reached.
func Dial(bus string, opts ...dbus.ConnOption) (*dbus.Conn, error) {
	var (
		c   *dbus.Conn
		err error
	)
	switch bus {
	case "system":
		c, err = dbus.ConnectSystemBus(opts...)
	case "session":
		c, err = dbus.SessionBusPrivateNoAutoStartup(opts...)
		if err == nil {
			if err = c.Auth(nil); err == nil {
				err = c.Hello()
			}
			if err != nil {
				_ = c.Close()
			}
		}
	default:
		c, err = dbus.Connect(bus, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot connect to the %s: %w", Label(bus), err)
	}
	return c, nil
}

// Label names bus in a message: "system bus", "session bus" or
// "bus unix:path=…".
func Label(bus string) string {
	switch bus {
	case "system", "session":
		return bus + " bus"
	}
	return "bus " + bus
}

// CheckAddress checks that addr has the form of a D-Bus address
// ("transport:key=value,…", entries joined by ";"), so that a typo in --bus
// is a usage error rather than a bus that cannot be reached. Whether the
// transport is one godbus speaks is Dial's to say.
func CheckAddress(addr string) error {
	const want = "want system, session or an address such as unix:path=/run/dbus/system_bus_socket"
	for _, entry := range strings.Split(addr, ";") {
		transport, params, ok := strings.Cut(entry, ":")
		if !ok || transport == "" {
			return errors.New("not a D-Bus address: " + want)
		}
		keys := map[string]bool{}
		for _, kv := range strings.Split(params, ",") {
			k, _, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return fmt.Errorf("not a D-Bus address: %q is not key=value: %s", kv, want)
			}
			keys[k] = true
		}
		if transport == "unix" && !keys["path"] && !keys["abstract"] && !keys["dir"] && !keys["tmpdir"] && !keys["runtime"] {
			return errors.New("not a D-Bus address: a unix address needs path= or abstract=: " + want)
		}
	}
	return nil
}

// NoBus reports whether err, from Dial, means that nothing listens at the
// bus's address (no socket, connection refused, no session bus address):
// no bus at all, rather than a bus that refused the connection.
func NoBus(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) ||
		strings.Contains(err.Error(), "couldn't determine address of session bus")
}

// Address is the address Dial uses for bus, for messages.
func Address(bus string) string {
	switch bus {
	case "system":
		if a := os.Getenv("DBUS_SYSTEM_BUS_ADDRESS"); a != "" {
			return a
		}
		return "unix:path=/var/run/dbus/system_bus_socket"
	case "session":
		if a := os.Getenv("DBUS_SESSION_BUS_ADDRESS"); a != "" {
			return a
		}
		return "unix:path=" + filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "bus")
	}
	return bus
}
