package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/spf13/pflag"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/quote"
)

// commands is caplancectl's command table, in the order of --help and
// caplancectl(8).
var commands = []command{
	{name: "status", synopsis: "[--json]", summary: "show caplanced's state, data plane, last reload, the backends of each service by health, and caplance-healthd's state", setup: setupStatus},
	{name: "services", aliases: []string{"list-services"}, synopsis: "[--json]", summary: "list the services with their VIPs, ports and counters", setup: setupServices},
	{name: "show-service", synopsis: "NAME [--json]", summary: "show every property of a service, and its backends", setup: setupShowService, nameArg: serviceName},
	{name: "add-service", synopsis: "NAME --vip ADDRESS [--vip ADDRESS] [--port PORTS] [--proto PROTO] [--hash HASH] [--table-size N] [--check SPEC] [--runtime]",
		summary: "add a service: the traffic of its VIPs and ports, and how it is spread", setup: setupAddService},
	{name: "change-service", synopsis: "NAME [--vip ADDRESS] [--port PORTS] [--proto PROTO] [--hash HASH] [--table-size N] [--check SPEC]",
		summary: "change what a service takes or how it spreads it", setup: setupChangeService, nameArg: serviceName},
	{name: "remove-service", synopsis: "NAME", summary: "take a service out, with its run-time backends", setup: nameMethod("RemoveService", serviceName), nameArg: serviceName},
	{name: "list", synopsis: "[--service NAME] [--json]", summary: "list the backends by service with their state and counters", setup: setupList},
	{name: "show", synopsis: "NAME [--service NAME] [--json]", summary: "show every property of a backend", setup: setupShow, nameArg: backendName},
	{name: "add-backend", synopsis: "NAME ADDRESS [--service NAME] [--weight N] [--check SPEC] [--runtime]", summary: "add a backend and put it in rotation", setup: setupAdd},
	{name: "remove-backend", synopsis: "NAME [--service NAME]", summary: "take a backend out", setup: nameMethod("RemoveBackend", backendName), nameArg: backendName},
	{name: "set-weight", synopsis: "NAME WEIGHT [--service NAME]", summary: "change a backend's share of new flows", setup: setupSetWeight, nameArg: backendName},
	{name: "drain", synopsis: "NAME [--service NAME]", summary: "send a backend no new flows", setup: nameMethod("Drain", backendName), nameArg: backendName},
	{name: "undrain", synopsis: "NAME [--service NAME]", summary: "send a drained backend new flows again", setup: nameMethod("Undrain", backendName), nameArg: backendName},
	{name: "reload", summary: "make caplanced re-read its configuration", setup: noFlags(managerCall("Reload"))},
	{name: "maintenance", synopsis: "on|off", summary: "withdraw a routed balancer's routes without stopping it (on), or announce them again (off)", setup: setupMaintenance},
	{name: "stats", synopsis: "[--json]", summary: "print the balancer's counters, global and per service", setup: setupStats},
	{name: "watch", synopsis: "[--json]", summary: "print service and backend changes as they happen, each with the time, until interrupted", setup: setupWatch, endless: true},
}

// noFlags is the setup of a command without flags or arguments.
func noFlags(act action) setupFunc {
	return func(*pflag.FlagSet) func([]string) (action, error) {
		return func(args []string) (action, error) {
			if err := wantArgs(args); err != nil {
				return nil, err
			}
			return act, nil
		}
	}
}

// nameMethod is the setup of a command that calls a manager method with a
// name as its only argument: a backend's, which --service may check, or a
// service's.
func nameMethod(method string, kind nameKind) setupFunc {
	return func(fs *pflag.FlagSet) func([]string) (action, error) {
		var service *string
		if kind == backendName {
			service = backendServiceFlag(fs)
		}
		return func(args []string) (action, error) {
			if err := wantArgs(args, "NAME"); err != nil {
				return nil, err
			}
			act := managerCall(method, args[0])
			if service != nil {
				act = inService(*service, args[0], act)
			}
			return act, nil
		}
	}
}

// backendServiceFlag defines the --service of a command that names a
// backend.
func backendServiceFlag(fs *pflag.FlagSet) *string {
	return fs.String("service", "", "fail unless the backend is in service `NAME`")
}

// inService is act when service is "", else an action that runs act only
// when the backend called name is in service. Backend names are unique
// across services, so the methods take a name alone; --service is a check
// of what the user meant, made before anything changes.
func inService(service, name string, act action) action {
	if service == "" {
		return act
	}
	return func(ctx context.Context, c Conn, out io.Writer) error {
		if _, err := findBackend(ctx, c, service, name); err != nil {
			return err
		}
		return act(ctx, c, out)
	}
}

// findBackend returns the backend called name, from ListBackends; an error
// when there is none or when service is not "" and not its service.
func findBackend(ctx context.Context, c Conn, service, name string) (Backend, error) {
	rows, err := listBackends(ctx, c)
	if err != nil {
		return Backend{}, err
	}
	i := slices.IndexFunc(rows, func(b Backend) bool { return b.Name == name })
	switch {
	case i < 0:
		return Backend{}, fmt.Errorf("backend %s: no such backend", quote.Q(name))
	case service != "" && rows[i].Service != service:
		return Backend{}, fmt.Errorf("backend %s is in service %s, not in %s", quote.Q(name), quote.Q(rows[i].Service), quote.Q(service))
	}
	return rows[i], nil
}

func setupServices(fs *pflag.FlagSet) func([]string) (action, error) {
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	return func(args []string) (action, error) {
		if err := wantArgs(args); err != nil {
			return nil, err
		}
		return func(ctx context.Context, c Conn, out io.Writer) error {
			rows, err := listServices(ctx, c)
			if err != nil {
				return err
			}
			if *asJSON {
				return writeJSON(out, rows)
			}
			_, err = io.WriteString(out, formatServices(rows))
			return err
		}, nil
	}
}

func setupShowService(fs *pflag.FlagSet) func([]string) (action, error) {
	asJSON := fs.Bool("json", false, "print a JSON object instead of lines")
	return func(args []string) (action, error) {
		if err := wantArgs(args, "NAME"); err != nil {
			return nil, err
		}
		name := args[0]
		return func(ctx context.Context, c Conn, out io.Writer) error {
			props, err := getAll(ctx, c, dbusname.ServicePath(name), dbusname.ServiceIface)
			if noObjectNames[errorName(err)] {
				return fmt.Errorf("service %s: no such service", quote.Q(name))
			}
			if err != nil {
				return err
			}
			rows, err := listBackends(ctx, c)
			if err != nil {
				return err
			}
			rows = slices.DeleteFunc(rows, func(b Backend) bool { return b.Service != name })
			if *asJSON {
				obj := jsonProperties(props)
				obj["backends"] = rows
				return writeJSON(out, obj)
			}
			_, err = io.WriteString(out, formatProperties(props, serviceProperties)+"\n"+formatBackends(rows))
			return err
		}, nil
	}
}

func setupAddService(fs *pflag.FlagSet) func([]string) (action, error) {
	return setupServiceCall(fs, "AddService", true, func(opts map[string]dbus.Variant) error {
		if _, ok := opts["vips"]; !ok {
			return errors.New("missing --vip: a service needs at least one VIP")
		}
		return nil
	})
}

func setupChangeService(fs *pflag.FlagSet) func([]string) (action, error) {
	return setupServiceCall(fs, "ChangeService", false, func(opts map[string]dbus.Variant) error {
		if len(opts) == 0 {
			return errors.New("nothing to change: give at least one of --vip, --port, --proto, --hash, --table-size, --check")
		}
		return nil
	})
}

// setupServiceCall is add-service's and change-service's: NAME and the
// service flags (adding: with their defaults and --runtime) become a call
// of method, once check accepts the options given.
func setupServiceCall(fs *pflag.FlagSet, method string, adding bool, check func(map[string]dbus.Variant) error) func([]string) (action, error) {
	flags := defineServiceFlags(fs, adding)
	return func(args []string) (action, error) {
		if err := wantArgs(args, "NAME"); err != nil {
			return nil, err
		}
		opts, err := flags.options()
		if err == nil {
			err = check(opts)
		}
		if err != nil {
			return nil, err
		}
		return managerCall(method, args[0], opts), nil
	}
}

// serviceFlags are the flags of add-service and change-service; each
// given one is an option of AddService or ChangeService.
type serviceFlags struct {
	fs                                   *pflag.FlagSet
	vips                                 *[]string // each --vip, commas kept
	ports, protocols, hash, table, check *string
	runtime                              *bool // nil for change-service
}

func defineServiceFlags(fs *pflag.FlagSet, add bool) *serviceFlags {
	f := &serviceFlags{fs: fs}
	vip, dflt := "replace the VIPs with `ADDRESS` (repeat it for several)", func(string) string { return "" }
	if add {
		vip, dflt = "take traffic to `ADDRESS` (repeat it for several)", func(d string) string { return " (default " + d + ")" }
	}
	f.vips = fs.StringArray("vip", nil, vip)
	f.ports = fs.String("port", "", "the destination `PORTS` taken on every VIP: 80,443,8000-8099 or all"+dflt("all"))
	f.protocols = fs.String("proto", "", "the protocols (`PROTO`) taken: tcp, udp or tcp+udp"+dflt("tcp+udp"))
	f.hash = fs.String("hash", "", "the hash (`HASH`) that picks a flow's backend: 5-tuple, source-ip or source-ip-port"+dflt("5-tuple"))
	f.table = fs.String("table-size", "", "the prime size (`N`) of its Maglev table"+dflt("caplanced's table_size"))
	f.check = fs.String("check", "", "the health check `SPEC` of its backends that have none of their own")
	if add {
		f.runtime = fs.Bool("runtime", false, "register until caplanced stops instead of persistently")
	}
	return f
}

// options is the a{sv} of the flags given: vips as "as", table_size as
// "u", runtime as "b", the others as "s". A value caplanced would refuse
// for its form is a usage error here.
func (f *serviceFlags) options() (map[string]dbus.Variant, error) {
	opts := map[string]dbus.Variant{}
	var err error
	f.fs.Visit(func(fl *pflag.Flag) {
		if err != nil {
			return
		}
		switch fl.Name {
		case "vip":
			opts["vips"] = dbus.MakeVariant(*f.vips)
		case "port":
			err = checkServiceValue(fl.Name, *f.ports)
			opts["ports"] = dbus.MakeVariant(*f.ports)
		case "proto":
			err = checkServiceValue(fl.Name, *f.protocols)
			opts["protocols"] = dbus.MakeVariant(*f.protocols)
		case "hash":
			err = checkServiceValue(fl.Name, *f.hash)
			opts["hash"] = dbus.MakeVariant(*f.hash)
		case "table-size":
			var n uint32
			n, err = parseUint32("--table-size", *f.table)
			opts["table_size"] = dbus.MakeVariant(n)
		case "check":
			opts["check"] = dbus.MakeVariant(*f.check)
		case "runtime":
			opts["runtime"] = dbus.MakeVariant(*f.runtime)
		}
	})
	return opts, err
}

// checkServiceValue checks the value of --port, --proto or --hash with
// the parser caplanced uses, so that a typo is a usage error before any
// call. It is the one place ctl calls package config.
func checkServiceValue(flagName, value string) error {
	var err error
	switch flagName {
	case "port":
		_, err = config.ParsePorts(value)
	case "proto":
		_, err = config.ParseProtocols([]string{value})
	case "hash":
		_, err = config.ParseHash(value)
	}
	if err != nil {
		return fmt.Errorf("--%s: %w", flagName, err)
	}
	return nil
}

func setupList(fs *pflag.FlagSet) func([]string) (action, error) {
	service := fs.String("service", "", "list only the backends of service `NAME`")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	return func(args []string) (action, error) {
		if err := wantArgs(args); err != nil {
			return nil, err
		}
		return func(ctx context.Context, c Conn, out io.Writer) error {
			// The JSON of every backend needs no service: one call, as
			// the shell completions make on each TAB.
			var services []Service
			if *service != "" || !*asJSON {
				var err error
				if services, err = listServices(ctx, c); err != nil {
					return err
				}
			}
			rows, err := listBackends(ctx, c)
			if err != nil {
				return err
			}
			if *service != "" {
				if !slices.ContainsFunc(services, func(s Service) bool { return s.Name == *service }) {
					return fmt.Errorf("service %s: no such service", quote.Q(*service))
				}
				services = slices.DeleteFunc(services, func(s Service) bool { return s.Name != *service })
				rows = slices.DeleteFunc(rows, func(b Backend) bool { return b.Service != *service })
			}
			if *asJSON {
				return writeJSON(out, rows)
			}
			_, err = io.WriteString(out, formatList(services, rows))
			return err
		}, nil
	}
}

func setupShow(fs *pflag.FlagSet) func([]string) (action, error) {
	service := backendServiceFlag(fs)
	asJSON := fs.Bool("json", false, "print a JSON object instead of lines")
	return func(args []string) (action, error) {
		if err := wantArgs(args, "NAME"); err != nil {
			return nil, err
		}
		name := args[0]
		return func(ctx context.Context, c Conn, out io.Writer) error {
			// The backend's object is beneath its service's.
			b, err := findBackend(ctx, c, *service, name)
			if err != nil {
				return err
			}
			props, err := getAll(ctx, c, dbusname.BackendPath(b.Service, name), dbusname.BackendIface)
			if noObjectNames[errorName(err)] { // removed meanwhile
				return fmt.Errorf("backend %s: no such backend", quote.Q(name))
			}
			if err != nil {
				return err
			}
			if *asJSON {
				return writeJSON(out, jsonProperties(props))
			}
			_, err = io.WriteString(out, formatProperties(props, backendProperties))
			return err
		}, nil
	}
}

func setupAdd(fs *pflag.FlagSet) func([]string) (action, error) {
	service := fs.String("service", "", "add it to service `NAME` (needed only when there are several)")
	weight := fs.String("weight", "", "the backend's weight (`N`) (caplanced's default when absent)")
	check := fs.String("check", "", "the backend's health check `SPEC` (its service's when absent), see caplanced.toml(5)")
	runtime := fs.Bool("runtime", false, "register until caplanced stops instead of persistently")
	return func(args []string) (action, error) {
		if err := wantArgs(args, "NAME", "ADDRESS"); err != nil {
			return nil, err
		}
		// Only the options given: the others are caplanced's defaults.
		opts := map[string]dbus.Variant{}
		var err error
		fs.Visit(func(f *pflag.Flag) {
			switch f.Name {
			case "service":
				opts["service"] = dbus.MakeVariant(*service)
			case "weight":
				var w uint32
				w, err = parseUint32("weight", *weight)
				opts["weight"] = dbus.MakeVariant(w)
			case "check":
				opts["check"] = dbus.MakeVariant(*check)
			case "runtime":
				opts["runtime"] = dbus.MakeVariant(*runtime)
			}
		})
		if err != nil {
			return nil, err
		}
		return managerCall("AddBackend", args[0], args[1], opts), nil
	}
}

func setupSetWeight(fs *pflag.FlagSet) func([]string) (action, error) {
	service := backendServiceFlag(fs)
	return func(args []string) (action, error) {
		if err := wantArgs(args, "NAME", "WEIGHT"); err != nil {
			return nil, err
		}
		w, err := parseUint32("weight", args[1])
		if err != nil {
			return nil, err
		}
		return inService(*service, args[0], managerCall("SetWeight", args[0], w)), nil
	}
}

func setupStats(fs *pflag.FlagSet) func([]string) (action, error) {
	asJSON := fs.Bool("json", false, "print a JSON object instead of lines")
	rate := fs.Bool("rate", false, "print the counters per second over --interval instead of since caplanced started")
	interval := fs.Duration("interval", time.Second, "how long --rate measures (`DURATION`, up to 20s)")
	return func(args []string) (action, error) {
		if err := wantArgs(args); err != nil {
			return nil, err
		}
		if *interval <= 0 || *interval > maxRateInterval {
			return nil, fmt.Errorf("--interval %v: want more than 0 and at most %v", *interval, maxRateInterval)
		}
		return func(ctx context.Context, c Conn, out io.Writer) error {
			stats, err := getStats(ctx, c)
			if err != nil {
				return err
			}
			var over time.Duration
			if *rate {
				start := time.Now()
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(*interval):
				}
				later, err := getStats(ctx, c)
				if err != nil {
					return err
				}
				over = time.Since(start)
				stats = statsRate(stats, later, over)
			}
			if *asJSON {
				return writeJSON(out, statsObject(stats, over))
			}
			_, err = io.WriteString(out, formatStats(stats, over))
			return err
		}, nil
	}
}

// maxRateInterval keeps stats --rate well within callTimeout.
const maxRateInterval = 20 * time.Second

func getStats(ctx context.Context, c Conn) (map[string]uint64, error) {
	body, err := c.Call(ctx, dbusname.BusName, dbusname.ManagerPath, dbusname.ManagerIface+".GetStats")
	if err != nil {
		return nil, callError("GetStats", err)
	}
	stats := map[string]uint64{}
	if err := dbus.Store(body, &stats); err != nil {
		return nil, fmt.Errorf("GetStats: unexpected reply: %w", err)
	}
	return stats, nil
}

func setupStatus(fs *pflag.FlagSet) func([]string) (action, error) {
	asJSON := fs.Bool("json", false, "print a JSON object instead of lines")
	return func(args []string) (action, error) {
		if err := wantArgs(args); err != nil {
			return nil, err
		}
		return func(ctx context.Context, c Conn, out io.Writer) error {
			st, err := getStatus(ctx, c)
			if err != nil {
				return err
			}
			if *asJSON {
				return writeJSON(out, statusObject(st))
			}
			_, err = io.WriteString(out, formatStatus(st))
			return err
		}, nil
	}
}

// status is what status shows.
type status struct {
	props map[string]dbus.Variant // the manager's
	// services are the counts of each service's backends, nil without the
	// balancer role.
	services []serviceHealth
	// healthd is caplance-healthd's own status line, "running" when it
	// holds its name but does not answer, "" when it does not.
	healthd string
}

// serviceHealth counts a service's backends by health and admin state.
type serviceHealth struct {
	Name     string `json:"name"`
	Backends int    `json:"backends"`
	Up       int    `json:"up"`
	Down     int    `json:"down"`
	Unknown  int    `json:"unknown"`
	Drained  int    `json:"drained"`
}

func getStatus(ctx context.Context, c Conn) (status, error) {
	var st status
	var err error
	if st.props, err = getAll(ctx, c, dbusname.ManagerPath, dbusname.ManagerIface); err != nil {
		return st, err
	}
	// A caplanced without the balancer role has no services or backends.
	rows, err := listBackends(ctx, c)
	switch {
	case err == nil:
		svcs, err := listServices(ctx, c)
		if err != nil {
			return st, err
		}
		st.services = countBackends(svcs, rows)
	case errorName(err) != dbusname.ErrorPrefix+"NotSupported":
		return st, err
	}
	running, err := nameHasOwner(ctx, c, dbusname.HealthBusName)
	if err != nil {
		return st, err
	}
	if running {
		st.healthd = "running"
		// Its own status line, when it answers (it may be starting).
		body, err := c.Call(ctx, dbusname.HealthBusName, dbusname.HealthPath, propertiesIface+".Get",
			dbusname.HealthManagerIface, "Status")
		var v dbus.Variant
		if err == nil && dbus.Store(body, &v) == nil {
			if s, ok := v.Value().(string); ok && s != "" {
				st.healthd = s
			}
		}
	}
	return st, nil
}

// countBackends counts each service's backends, by name; a backend of a
// service missing from services (added between the two calls) counts
// under its service's name.
func countBackends(services []Service, backends []Backend) []serviceHealth {
	by := map[string]*serviceHealth{}
	for _, s := range services {
		by[s.Name] = &serviceHealth{Name: s.Name}
	}
	for _, b := range backends {
		h := by[b.Service]
		if h == nil {
			h = &serviceHealth{Name: b.Service}
			by[b.Service] = h
		}
		h.Backends++
		switch b.Health {
		case "up":
			h.Up++
		case "down":
			h.Down++
		default:
			h.Unknown++
		}
		if b.AdminState == "drained" {
			h.Drained++
		}
	}
	out := []serviceHealth{}
	for _, name := range slices.Sorted(maps.Keys(by)) {
		out = append(out, *by[name])
	}
	return out
}

func setupMaintenance(*pflag.FlagSet) func([]string) (action, error) {
	return func(args []string) (action, error) {
		if err := wantArgs(args, "on|off"); err != nil {
			return nil, err
		}
		var on bool
		switch args[0] {
		case "on":
			on = true
		case "off":
		default:
			return nil, fmt.Errorf("%s: want on or off", quote.Q(args[0]))
		}
		return func(ctx context.Context, c Conn, out io.Writer) error {
			props, err := getAll(ctx, c, dbusname.ManagerPath, dbusname.ManagerIface)
			if err != nil {
				return err
			}
			routed, _ := props["Routed"].Value().(bool)
			if cur, ok := props["Maintenance"].Value().(bool); ok && routed && cur == on {
				_, err := fmt.Fprintf(out, "maintenance is already %s\n", args[0])
				return err
			}
			// A balancer that is not routed refuses it, saying why.
			return managerCall("SetMaintenance", on)(ctx, c, out)
		}, nil
	}
}

// managerCall is the action that calls a manager method whose reply is
// not shown. caplanced's Unchanged (a backend already drained, undrained
// or added as it is) is success: its message goes to stdout.
func managerCall(method string, args ...any) action {
	return func(ctx context.Context, c Conn, out io.Writer) error {
		_, err := c.Call(ctx, dbusname.BusName, dbusname.ManagerPath, dbusname.ManagerIface+"."+method, args...)
		err = callError(method, err)
		if errorName(err) == dbusname.ErrorPrefix+"Unchanged" {
			_, err = fmt.Fprintln(out, err.Error())
		}
		return err
	}
}

func listBackends(ctx context.Context, c Conn) ([]Backend, error) {
	return listRows[Backend](ctx, c, "ListBackends")
}

func listServices(ctx context.Context, c Conn) ([]Service, error) {
	return listRows[Service](ctx, c, "ListServices")
}

// listRows calls a Manager method that returns an array of rows of type T.
func listRows[T any](ctx context.Context, c Conn, method string) ([]T, error) {
	body, err := c.Call(ctx, dbusname.BusName, dbusname.ManagerPath, dbusname.ManagerIface+"."+method)
	if err != nil {
		return nil, callError(method, err)
	}
	rows := []T{}
	if err := dbus.Store(body, &rows); err != nil {
		return nil, fmt.Errorf("%s: unexpected reply: %w", method, err)
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
