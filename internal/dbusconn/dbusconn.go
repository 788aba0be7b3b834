// Package dbusconn connects to the bus that a --bus flag (or caplance-healthd's
// bus key) names, the same way for caplanced, caplance-healthd and
// caplancectl: "system", "session" or a D-Bus address. It owns that rule and
// the wording of a failure; what a command serves or calls on the connection
// is its own.
package dbusconn

import (
	"fmt"

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
