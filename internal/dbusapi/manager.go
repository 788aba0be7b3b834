package dbusapi

import (
	"cmp"
	"maps"
	"slices"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/quote"
	"github.com/caplance/caplance/internal/registry"
)

// manager is org.caplance.Caplance1.Manager. Its exported methods are the
// interface's (introspection is built from them), so it has no others.
type manager struct{ s *Server }

// BackendRow is one element of ListBackends' a(ssussstttt).
type BackendRow struct {
	Name          string
	Address       string
	Weight        uint32
	AdminState    string
	Health        string
	HealthDetail  string
	ActiveFlows   uint64
	InactiveFlows uint64
	Packets       uint64
	Bytes         uint64
}

// argNames names the arguments of every method of manager, in order, in
// then out; introspection fails to build when one is missing.
var argNames = map[string][]string{
	"AddBackend":    {"name", "address", "options", "path"},
	"RemoveBackend": {"name"},
	"SetWeight":     {"name", "weight"},
	"Drain":         {"name"},
	"Undrain":       {"name"},
	"ListBackends":  {"backends"},
	"GetStats":      {"stats"},
	"Reload":        {},
	"ReportHealth":  {"name", "healthy", "detail"},
}

// The options of AddBackend and their D-Bus types.
var addOptionTypes = map[string]string{"weight": "u", "check": "s", "runtime": "b"}

func (m manager) AddBackend(msg dbus.Message, name, address string, options map[string]dbus.Variant) (dbus.ObjectPath, *dbus.Error) {
	s := m.s
	if err := s.mutable(msg, "AddBackend", adminRight); err != nil {
		return "", dbusError(err)
	}
	// The name and address are the registry's to check (config's backend
	// rules), so that AddBackend refuses a bad backend with the words the
	// configuration file and the state file use.
	opts, err := parseAddOptions(options)
	if err != nil {
		return "", dbusError(err)
	}
	b, err := s.reg.Add(name, address, opts)
	if err != nil {
		return "", dbusError(err)
	}
	return dbusname.BackendPath(b.Name), nil
}

// parseAddOptions checks AddBackend's options: known keys with values of
// the right type. It names the first bad key in sorted order.
func parseAddOptions(options map[string]dbus.Variant) (registry.AddOptions, error) {
	var opts registry.AddOptions
	known := "weight (u), check (s), runtime (b)"
	for _, key := range slices.Sorted(maps.Keys(options)) {
		v := options[key]
		want, ok := addOptionTypes[key]
		if !ok {
			return opts, errorf(registry.ErrInvalidArgument, "options: unknown option %s (the options are %s)", quote.Q(key), known)
		}
		if got := v.Signature().String(); got != want {
			return opts, errorf(registry.ErrInvalidArgument, "options: %q must be of type %s, not %s", key, want, got)
		}
		switch key {
		case "weight":
			w := v.Value().(uint32)
			opts.Weight = &w
		case "check":
			opts.Check = v.Value().(string)
		case "runtime":
			opts.Runtime = v.Value().(bool)
		}
	}
	return opts, nil
}

func (m manager) RemoveBackend(msg dbus.Message, name string) *dbus.Error {
	if err := cmp.Or(m.s.mutable(msg, "RemoveBackend", adminRight), checkName(name)); err != nil {
		return dbusError(err)
	}
	return dbusError(m.s.reg.Remove(name))
}

func (m manager) SetWeight(msg dbus.Message, name string, weight uint32) *dbus.Error {
	if err := cmp.Or(m.s.mutable(msg, "SetWeight", adminRight), checkName(name)); err != nil {
		return dbusError(err)
	}
	return dbusError(m.s.reg.SetWeight(name, int64(weight)))
}

func (m manager) Drain(msg dbus.Message, name string) *dbus.Error {
	if err := cmp.Or(m.s.mutable(msg, "Drain", adminRight), checkName(name)); err != nil {
		return dbusError(err)
	}
	return dbusError(m.s.reg.Drain(name))
}

func (m manager) Undrain(msg dbus.Message, name string) *dbus.Error {
	if err := cmp.Or(m.s.mutable(msg, "Undrain", adminRight), checkName(name)); err != nil {
		return dbusError(err)
	}
	return dbusError(m.s.reg.Undrain(name))
}

func (m manager) ReportHealth(msg dbus.Message, name string, healthy bool, detail string) *dbus.Error {
	if err := cmp.Or(m.s.mutable(msg, "ReportHealth", healthRight), checkName(name), checkDetail(detail)); err != nil {
		return dbusError(err)
	}
	_, err := m.s.reg.ReportHealth(name, healthy, detail)
	return dbusError(err)
}

func (m manager) Reload(msg dbus.Message) *dbus.Error {
	s := m.s
	if err := s.authorize(msg, "Reload", adminRight); err != nil {
		return dbusError(err)
	}
	if s.info.Reload == nil {
		return dbusError(errorf(errNotSupported, "Reload: this caplanced cannot reload"))
	}
	return dbusError(s.info.Reload())
}

func (m manager) ListBackends() ([]BackendRow, *dbus.Error) {
	s := m.s
	if s.reg == nil {
		return nil, dbusError(noBalancer("ListBackends"))
	}
	counters := s.counters()
	list := s.reg.List()
	rows := make([]BackendRow, len(list))
	for i, b := range list {
		c := counters[b.Name]
		rows[i] = BackendRow{
			Name: b.Name, Address: b.Address.String(), Weight: b.Weight,
			AdminState: string(b.Admin), Health: string(b.Health), HealthDetail: b.HealthDetail,
			ActiveFlows: c.ActiveFlows, InactiveFlows: c.InactiveFlows, Packets: c.Packets, Bytes: c.Bytes,
		}
	}
	return rows, nil
}

func (m manager) GetStats() (map[string]uint64, *dbus.Error) {
	st := map[string]uint64{}
	if m.s.info.Stats != nil {
		maps.Copy(st, m.s.info.Stats())
	}
	return st, nil
}

// mutable refuses a change of the backend set unless the arguments have
// the method's signature, the caller has the right and this caplanced has
// backends.
func (s *Server) mutable(msg dbus.Message, method string, r right) error {
	if err := s.authorize(msg, method, r); err != nil {
		return err
	}
	if s.reg == nil {
		return noBalancer(method)
	}
	return nil
}

func noBalancer(method string) error {
	return errorf(errNotSupported, "%s: this caplanced has no balancer role, so no backends", method)
}

func (s *Server) counters() map[string]Counters {
	if s.info.Counters == nil {
		return nil
	}
	return s.info.Counters()
}

// objectManager is org.freedesktop.DBus.ObjectManager on the manager.
type objectManager struct{ s *Server }

// ManagedObjects is GetManagedObjects' a{oa{sa{sv}}}.
type ManagedObjects = map[dbus.ObjectPath]map[string]map[string]dbus.Variant

func (o objectManager) GetManagedObjects() (ManagedObjects, *dbus.Error) {
	s := o.s
	counters := s.counters()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(ManagedObjects, len(s.objects))
	for name, obj := range s.objects {
		out[obj.path] = interfacesOf(obj.b, counters[name])
	}
	return out, nil
}

// exportManager exports the manager and the Introspectable nodes above and
// below it.
func (s *Server) exportManager() error {
	vips := s.info.VIPs
	if vips == nil {
		vips = []string{}
	}
	roles := s.info.Roles
	if roles == nil {
		roles = []string{}
	}
	props := prop.Map{
		dbusname.ManagerIface: {
			"Version":   {Value: s.info.Version, Emit: prop.EmitConst},
			"Roles":     {Value: slices.Clone(roles), Emit: prop.EmitConst},
			"State":     {Value: s.info.State, Emit: prop.EmitTrue},
			"VIPs":      {Value: slices.Clone(vips), Emit: prop.EmitTrue},
			"EncapPort": {Value: s.info.EncapPort, Emit: prop.EmitTrue},
			"TableSize": {Value: s.info.TableSize, Emit: prop.EmitTrue},
		},
		// GetAll of an interface without properties is an empty dict.
		dbusname.ObjectManagerIface: {}, PropertiesIface: {}, IntrospectableIface: {}, PeerIface: {},
	}
	p, err := prop.Export(s.conn, dbusname.ManagerPath, props)
	if err != nil {
		return err
	}
	s.mgrProps = p
	if err := s.conn.Export(manager{s}, dbusname.ManagerPath, dbusname.ManagerIface); err != nil {
		return err
	}
	if err := s.conn.Export(objectManager{s}, dbusname.ManagerPath, dbusname.ObjectManagerIface); err != nil {
		return err
	}
	// Every node from / to the backends' parent introspects as this
	// package says; the nodes under /org/caplance/Caplance1 that are not
	// objects (a removed backend) too, as subtrees.
	in := introspector{s}
	if err := s.conn.Export(in, "/", IntrospectableIface); err != nil {
		return err
	}
	for _, path := range []dbus.ObjectPath{"/org", "/org/caplance", dbusname.ManagerPath, backendParent} {
		if err := s.conn.ExportSubtree(in, path, IntrospectableIface); err != nil {
			return err
		}
	}
	return nil
}

// unexportAll removes every object of s from the connection.
func (s *Server) unexportAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, obj := range s.objects {
		s.unexportBackend(obj)
		delete(s.objects, name)
	}
	for _, iface := range []string{dbusname.ManagerIface, dbusname.ObjectManagerIface, PropertiesIface, IntrospectableIface} {
		_ = s.conn.Export(nil, dbusname.ManagerPath, iface)
	}
	for _, path := range []dbus.ObjectPath{"/", "/org", "/org/caplance", backendParent} {
		_ = s.conn.Export(nil, path, IntrospectableIface)
	}
}
