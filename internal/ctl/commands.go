package ctl

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusname"
)

// commands is caplancectl's command table, in the order of --help and
// caplancectl(8).
var commands = []command{
	{name: "status", summary: "show caplanced's state, roles, VIPs and backend count", setup: noFlags(statusAction)},
	{name: "list", synopsis: "[--json]", summary: "list the backends with their state and counters", setup: setupList},
	{name: "show", synopsis: "NAME", summary: "show every property of a backend", setup: setupShow},
	{name: "add-backend", synopsis: "NAME ADDRESS [--weight N] [--check SPEC] [--runtime]", summary: "add a backend and put it in rotation", setup: setupAdd, newName: true},
	{name: "remove-backend", synopsis: "NAME", summary: "take a backend out", setup: nameMethod("RemoveBackend")},
	{name: "set-weight", synopsis: "NAME WEIGHT", summary: "change a backend's share of new flows", setup: setupSetWeight},
	{name: "drain", synopsis: "NAME", summary: "send a backend no new flows", setup: nameMethod("Drain")},
	{name: "undrain", synopsis: "NAME", summary: "send a drained backend new flows again", setup: nameMethod("Undrain")},
	{name: "reload", summary: "make caplanced re-read its configuration", setup: noFlags(managerCall("Reload"))},
	{name: "stats", synopsis: "[--json]", summary: "print the balancer's counters", setup: setupStats},
	{name: "watch", summary: "print backend changes as they happen, until interrupted", setup: noFlags(watchAction), endless: true},
}

// noFlags is the setup of a command without flags or arguments.
func noFlags(act action) setupFunc {
	return func(*flag.FlagSet) func([]string) (action, error) {
		return func(args []string) (action, error) {
			if err := wantArgs(args); err != nil {
				return nil, err
			}
			return act, nil
		}
	}
}

// nameMethod is the setup of a command that calls a manager method with
// the backend name as its only argument.
func nameMethod(method string) setupFunc {
	return func(*flag.FlagSet) func([]string) (action, error) {
		return func(args []string) (action, error) {
			if err := wantArgs(args, "NAME"); err != nil {
				return nil, err
			}
			return managerCall(method, args[0]), nil
		}
	}
}

func setupList(fs *flag.FlagSet) func([]string) (action, error) {
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	return func(args []string) (action, error) {
		if err := wantArgs(args); err != nil {
			return nil, err
		}
		return func(ctx context.Context, c Conn, out io.Writer) error {
			rows, err := listBackends(ctx, c)
			if err != nil {
				return err
			}
			if *asJSON {
				return writeJSON(out, rows)
			}
			_, err = io.WriteString(out, formatList(rows))
			return err
		}, nil
	}
}

func setupShow(*flag.FlagSet) func([]string) (action, error) {
	return func(args []string) (action, error) {
		if err := wantArgs(args, "NAME"); err != nil {
			return nil, err
		}
		name := args[0]
		return func(ctx context.Context, c Conn, out io.Writer) error {
			props, err := getAll(ctx, c, dbusname.BackendPath(name), dbusname.BackendIface)
			if noObjectNames[errorName(err)] {
				return fmt.Errorf("backend %q: no such backend", name)
			}
			if err != nil {
				return err
			}
			_, err = io.WriteString(out, formatProperties(props, backendProperties))
			return err
		}, nil
	}
}

func setupAdd(fs *flag.FlagSet) func([]string) (action, error) {
	weight := fs.String("weight", "", "the backend's `weight` (caplanced's default when absent)")
	check := fs.String("check", "", "the backend's health check `spec`, see caplanced.toml(5)")
	runtime := fs.Bool("runtime", false, "register until caplanced stops instead of persistently")
	return func(args []string) (action, error) {
		if err := wantArgs(args, "NAME", "ADDRESS"); err != nil {
			return nil, err
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		var w uint32
		if set["weight"] {
			var err error
			if w, err = parseWeight(*weight); err != nil {
				return nil, err
			}
		}
		opts := addOptions(set["weight"], w, set["check"], *check, set["runtime"], *runtime)
		return managerCall("AddBackend", args[0], args[1], opts), nil
	}
}

// addOptions builds AddBackend's a{sv}: only the options given, weight as
// "u", check as "s", runtime as "b".
func addOptions(hasWeight bool, weight uint32, hasCheck bool, check string, hasRuntime, runtime bool) map[string]dbus.Variant {
	opts := map[string]dbus.Variant{}
	if hasWeight {
		opts["weight"] = dbus.MakeVariant(weight)
	}
	if hasCheck {
		opts["check"] = dbus.MakeVariant(check)
	}
	if hasRuntime {
		opts["runtime"] = dbus.MakeVariant(runtime)
	}
	return opts
}

func setupSetWeight(*flag.FlagSet) func([]string) (action, error) {
	return func(args []string) (action, error) {
		if err := wantArgs(args, "NAME", "WEIGHT"); err != nil {
			return nil, err
		}
		w, err := parseWeight(args[1])
		if err != nil {
			return nil, err
		}
		return managerCall("SetWeight", args[0], w), nil
	}
}

func setupStats(fs *flag.FlagSet) func([]string) (action, error) {
	asJSON := fs.Bool("json", false, "print a JSON object instead of lines")
	return func(args []string) (action, error) {
		if err := wantArgs(args); err != nil {
			return nil, err
		}
		return func(ctx context.Context, c Conn, out io.Writer) error {
			body, err := c.Call(ctx, dbusname.BusName, dbusname.ManagerPath, dbusname.ManagerIface+".GetStats")
			if err != nil {
				return callError("GetStats", err)
			}
			stats := map[string]uint64{}
			if err := dbus.Store(body, &stats); err != nil {
				return fmt.Errorf("GetStats: unexpected reply: %w", err)
			}
			if *asJSON {
				return writeJSON(out, stats)
			}
			_, err = io.WriteString(out, formatStats(stats))
			return err
		}, nil
	}
}

func statusAction(ctx context.Context, c Conn, out io.Writer) error {
	props, err := getAll(ctx, c, dbusname.ManagerPath, dbusname.ManagerIface)
	if err != nil {
		return err
	}
	count := -1 // a caplanced without the balancer role has no backends
	rows, err := listBackends(ctx, c)
	switch {
	case err == nil:
		count = len(rows)
	case errorName(err) != dbusname.ErrorPrefix+"NotSupported":
		return err
	}
	running, err := nameHasOwner(ctx, c, dbusname.HealthBusName)
	if err != nil {
		return err
	}
	healthd := ""
	if running {
		healthd = "running"
		// Its own status line, when it answers (it may be starting).
		body, err := c.Call(ctx, dbusname.HealthBusName, dbusname.HealthPath, propertiesIface+".Get",
			dbusname.HealthManagerIface, "Status")
		var v dbus.Variant
		if err == nil && dbus.Store(body, &v) == nil {
			if s, ok := v.Value().(string); ok && s != "" {
				healthd = s
			}
		}
	}
	_, err = io.WriteString(out, formatStatus(props, count, healthd))
	return err
}

// managerCall is the action that calls a manager method whose reply is
// not shown.
func managerCall(method string, args ...any) action {
	return func(ctx context.Context, c Conn, _ io.Writer) error {
		_, err := c.Call(ctx, dbusname.BusName, dbusname.ManagerPath, dbusname.ManagerIface+"."+method, args...)
		return callError(method, err)
	}
}

func listBackends(ctx context.Context, c Conn) ([]Backend, error) {
	body, err := c.Call(ctx, dbusname.BusName, dbusname.ManagerPath, dbusname.ManagerIface+".ListBackends")
	if err != nil {
		return nil, callError("ListBackends", err)
	}
	rows := []Backend{}
	if err := dbus.Store(body, &rows); err != nil {
		return nil, fmt.Errorf("ListBackends: unexpected reply: %w", err)
	}
	return rows, nil
}

func getAll(ctx context.Context, c Conn, path dbus.ObjectPath, iface string) (map[string]dbus.Variant, error) {
	body, err := c.Call(ctx, dbusname.BusName, path, propertiesIface+".GetAll", iface)
	if err != nil {
		return nil, callError("GetAll", err)
	}
	props := map[string]dbus.Variant{}
	if err := dbus.Store(body, &props); err != nil {
		return nil, fmt.Errorf("GetAll: unexpected reply: %w", err)
	}
	return props, nil
}

func nameHasOwner(ctx context.Context, c Conn, name string) (bool, error) {
	body, err := c.Call(ctx, busDaemonName, busDaemonPath, busDaemonName+".NameHasOwner", name)
	if err != nil {
		return false, callError("NameHasOwner", err)
	}
	var owned bool
	if err := dbus.Store(body, &owned); err != nil {
		return false, fmt.Errorf("NameHasOwner: unexpected reply: %w", err)
	}
	return owned, nil
}
