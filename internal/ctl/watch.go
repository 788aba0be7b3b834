package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/spf13/pflag"

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

func setupWatch(fs *pflag.FlagSet) func([]string) (action, error) {
	asJSON := fs.Bool("json", false, "print a JSON object per line instead of text")
	return func(args []string) (action, error) {
		if err := wantArgs(args); err != nil {
			return nil, err
		}
		return func(ctx context.Context, c Conn, out io.Writer) error {
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
			return watchLoop(ctx, signals, out, *asJSON, time.Now)
		}, nil
	}
}

// watchLoop prints one line per signal until ctx is done (nil) or the
// connection closes: the time it arrived (RFC 3339, UTC, from now) and the
// event, as text or as a JSON object.
func watchLoop(ctx context.Context, signals <-chan *dbus.Signal, out io.Writer, asJSON bool, now func() time.Time) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig, ok := <-signals:
			if !ok {
				return errors.New("the connection to the bus was closed")
			}
			ev, ok := parseSignal(sig)
			if !ok {
				continue
			}
			ev.Time = formatTime(now())
			line := ev.Time + " " + ev.line
			if asJSON {
				b, err := json.Marshal(ev)
				if err != nil {
					return err
				}
				line = string(b)
			}
			if _, err := fmt.Fprintln(out, line); err != nil {
				return err
			}
		}
	}
}

// watchEvent is one line of watch: as JSON its fields, as text line.
type watchEvent struct {
	Time string `json:"time"`
	// Event is backend_added, backend_removed, service_added,
	// service_removed, backend_health_changed, backend_changed,
	// service_changed, caplanced_started or caplanced_stopped.
	Event  string          `json:"event"`
	Name   string          `json:"name,omitempty"`
	Path   dbus.ObjectPath `json:"path,omitempty"`
	Health string          `json:"health,omitempty"` // up or down
	Detail *string         `json:"detail,omitempty"`
	// Changed are the changed properties by snake_case name, Invalidated
	// the names of those changed without their value.
	Changed     map[string]any `json:"changed,omitempty"`
	Invalidated []string       `json:"invalidated,omitempty"`

	line string // the text, without the time
}

// parseSignal is watch's event of sig; ok is false for a signal watch
// does not show.
func parseSignal(sig *dbus.Signal) (ev watchEvent, ok bool) {
	switch sig.Name {
	case dbusname.ManagerIface + ".BackendAdded", dbusname.ManagerIface + ".BackendRemoved",
		dbusname.ManagerIface + ".ServiceAdded", dbusname.ManagerIface + ".ServiceRemoved":
		var name string
		var path dbus.ObjectPath
		if dbus.Store(sig.Body, &name, &path) != nil {
			return ev, false
		}
		member := strings.TrimPrefix(sig.Name, dbusname.ManagerIface+".")
		return watchEvent{Event: snakeCase(member), Name: name, Path: path,
			line: fmt.Sprintf("%s %s %s", member, name, path)}, true
	case dbusname.ManagerIface + ".BackendHealthChanged":
		var name, detail string
		var healthy bool
		if dbus.Store(sig.Body, &name, &healthy, &detail) != nil {
			return ev, false
		}
		health := "down"
		if healthy {
			health = "up"
		}
		return watchEvent{Event: "backend_health_changed", Name: name, Health: health, Detail: &detail,
			line: fmt.Sprintf("BackendHealthChanged %s %s %q", name, health, detail)}, true
	case propertiesIface + ".PropertiesChanged":
		var iface string
		var changed map[string]dbus.Variant
		var invalidated []string
		if dbus.Store(sig.Body, &iface, &changed, &invalidated) != nil {
			return ev, false
		}
		ev := watchEvent{Changed: jsonProperties(changed)}
		for _, k := range invalidated {
			ev.Invalidated = append(ev.Invalidated, snakeCase(k))
		}
		slices.Sort(ev.Invalidated)
		switch iface {
		case dbusname.BackendIface:
			// Backend names are unique across services: the name is enough.
			if _, name, ok := dbusname.BackendName(sig.Path); ok {
				ev.Event, ev.Name, ev.line = "backend_changed", name, "PropertiesChanged "+name+formatChanged(changed, invalidated)
				return ev, true
			}
		case dbusname.ServiceIface:
			if name, ok := dbusname.ServiceName(sig.Path); ok {
				ev.Event, ev.Name, ev.line = "service_changed", name, "ServicePropertiesChanged "+name+formatChanged(changed, invalidated)
				return ev, true
			}
		}
		return ev, false
	case busDaemonName + ".NameOwnerChanged":
		var name, oldOwner, newOwner string
		if dbus.Store(sig.Body, &name, &oldOwner, &newOwner) != nil || name != dbusname.BusName {
			return ev, false
		}
		if newOwner == "" {
			return watchEvent{Event: "caplanced_stopped", line: "caplanced stopped"}, true
		}
		return watchEvent{Event: "caplanced_started", line: "caplanced started"}, true
	}
	return ev, false
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
