package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusname"
)

// watchRules are the match rules of watch: the manager's signals, the
// services' and the backends' PropertiesChanged (the backends' objects are
// beneath their services') and caplanced's coming and going.
var watchRules = [][]dbus.MatchOption{
	{dbus.WithMatchSender(dbusname.BusName), dbus.WithMatchObjectPath(dbusname.ManagerPath), dbus.WithMatchInterface(dbusname.ManagerIface)},
	propertiesChangedRule(dbusname.ServiceIface),
	propertiesChangedRule(dbusname.BackendIface),
	{dbus.WithMatchSender(busDaemonName), dbus.WithMatchInterface(busDaemonName), dbus.WithMatchMember("NameOwnerChanged"),
		dbus.WithMatchArg(0, dbusname.BusName)},
}

// propertiesChangedRule matches PropertiesChanged of iface on the objects
// beneath the services' path.
func propertiesChangedRule(iface string) []dbus.MatchOption {
	return []dbus.MatchOption{dbus.WithMatchSender(dbusname.BusName),
		dbus.WithMatchPathNamespace(dbus.ObjectPath(strings.TrimSuffix(dbusname.ServicePathPrefix, "/"))),
		dbus.WithMatchInterface(propertiesIface), dbus.WithMatchMember("PropertiesChanged"), dbus.WithMatchArg(0, iface)}
}

func watchAction(ctx context.Context, c Conn, out io.Writer) error {
	signals, err := c.Subscribe(ctx, watchRules...)
	if err != nil {
		return callError("AddMatch", err)
	}
	// Subscribed first, so that nothing is missed between the two.
	running, err := nameHasOwner(ctx, c, dbusname.BusName)
	if err != nil {
		return err
	}
	if !running {
		return &NotRunningError{Msg: "caplanced is not running: " + dbusname.BusName + " has no owner"}
	}
	return watchLoop(ctx, signals, out)
}

// watchLoop prints one line per signal until ctx is done (nil) or the
// connection closes.
func watchLoop(ctx context.Context, signals <-chan *dbus.Signal, out io.Writer) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig, ok := <-signals:
			if !ok {
				return errors.New("the connection to the bus was closed")
			}
			if line, ok := formatSignal(sig); ok {
				if _, err := fmt.Fprintln(out, line); err != nil {
					return err
				}
			}
		}
	}
}

// formatSignal is watch's line for sig; ok is false for a signal watch
// does not show.
func formatSignal(sig *dbus.Signal) (line string, ok bool) {
	switch sig.Name {
	case dbusname.ManagerIface + ".BackendAdded", dbusname.ManagerIface + ".BackendRemoved",
		dbusname.ManagerIface + ".ServiceAdded", dbusname.ManagerIface + ".ServiceRemoved":
		var name string
		var path dbus.ObjectPath
		if dbus.Store(sig.Body, &name, &path) != nil {
			return "", false
		}
		return fmt.Sprintf("%s %s %s", strings.TrimPrefix(sig.Name, dbusname.ManagerIface+"."), name, path), true
	case dbusname.ManagerIface + ".BackendHealthChanged":
		var name, detail string
		var healthy bool
		if dbus.Store(sig.Body, &name, &healthy, &detail) != nil {
			return "", false
		}
		health := "down"
		if healthy {
			health = "up"
		}
		return fmt.Sprintf("BackendHealthChanged %s %s %q", name, health, detail), true
	case propertiesIface + ".PropertiesChanged":
		var iface string
		var changed map[string]dbus.Variant
		var invalidated []string
		if dbus.Store(sig.Body, &iface, &changed, &invalidated) != nil {
			return "", false
		}
		switch iface {
		case dbusname.BackendIface:
			// Backend names are unique across services: the name is enough.
			if _, name, ok := dbusname.BackendName(sig.Path); ok {
				return "PropertiesChanged " + name + formatChanged(changed, invalidated), true
			}
		case dbusname.ServiceIface:
			if name, ok := dbusname.ServiceName(sig.Path); ok {
				return "ServicePropertiesChanged " + name + formatChanged(changed, invalidated), true
			}
		}
		return "", false
	case busDaemonName + ".NameOwnerChanged":
		var name, oldOwner, newOwner string
		if dbus.Store(sig.Body, &name, &oldOwner, &newOwner) != nil || name != dbusname.BusName {
			return "", false
		}
		if newOwner == "" {
			return "caplanced stopped", true
		}
		return "caplanced started", true
	}
	return "", false
}

// formatChanged is " Key=value" for each changed property, sorted, and
// " invalidated=A,B" when properties were invalidated.
func formatChanged(changed map[string]dbus.Variant, invalidated []string) string {
	keys := make([]string, 0, len(changed))
	for k := range changed {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		v := changed[k].Value()
		if s, ok := v.(string); ok {
			fmt.Fprintf(&b, " %s=%s", k, strconv.Quote(s))
		} else {
			fmt.Fprintf(&b, " %s=%s", k, formatValue(v))
		}
	}
	if len(invalidated) > 0 {
		inv := slices.Clone(invalidated)
		slices.Sort(inv)
		fmt.Fprintf(&b, " invalidated=%s", strings.Join(inv, ","))
	}
	return b.String()
}
