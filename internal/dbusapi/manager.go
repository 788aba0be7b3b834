package dbusapi

import (
	"cmp"
	"maps"
	"slices"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/maglev"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/quote"
	"github.com/caplance/caplance/internal/registry"
)

// manager is org.caplance.Caplance1.Manager. Its exported methods are the
// interface's (introspection is built from them), so it has no others.
type manager struct{ s *Server }

// BackendRow is one element of ListBackends' a(sssussstttt).
type BackendRow struct {
	Name          string
	Service       string
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

// ServiceRow is one element of ListServices' a(sa{ss}ssussuttt).
type ServiceRow struct {
	Name string
	// VIPs maps each VIP to its port list ("80,443,8000-8099", "all").
	VIPs      map[string]string
	Protocols string
	Hash      string
	TableSize uint32
	Check     string
	Source    string
	// Backends is how many backends the service has.
	Backends    uint32
	Packets     uint64
	Bytes       uint64
	ActiveFlows uint64
}

// argNames names the arguments of every method of manager, in order, in
// then out; introspection fails to build when one is missing.
var argNames = map[string][]string{
	"AddService":     {"name", "options", "path"},
	"ChangeService":  {"name", "options"},
	"RemoveService":  {"name"},
	"ListServices":   {"services"},
	"AddBackend":     {"name", "address", "options", "path"},
	"RemoveBackend":  {"name"},
	"SetWeight":      {"name", "weight"},
	"Drain":          {"name"},
	"Undrain":        {"name"},
	"ListBackends":   {"backends"},
	"GetStats":       {"stats"},
	"Reload":         {},
	"ReportHealth":   {"name", "healthy", "detail"},
	"SetMaintenance": {"on"},
}

func (m manager) AddService(msg dbus.Message, name string, options map[string]dbus.Variant) (dbus.ObjectPath, *dbus.Error) {
	s := m.s
	if err := cmp.Or(s.mutable(msg, "AddService", adminRight), checkOptions(options, addServiceOptions, nil)); err != nil {
		return "", dbusError(err)
	}
	o := parseServiceOptions(options)
	// Info.TableSize is the configuration's table_size, the default.
	svc, err := checkService(o, name, config.ServiceDefaults(cmp.Or(int(s.info.TableSize), maglev.DefaultSize)))
	if err != nil {
		return "", dbusError(errorf(registry.ErrInvalidArgument, "adding service %s: %v", quote.Q(name), err))
	}
	runtime, _ := options["runtime"].Value().(bool)
	if _, err := s.reg.AddService(svc, runtime); err != nil {
		return "", dbusError(err)
	}
	return dbusname.ServicePath(name), nil
}

// runtimeFixed explains why ChangeService refuses the runtime option.
var runtimeFixed = map[string]string{"runtime": "whether a service survives a restart is set when it is added and cannot change"}

func (m manager) ChangeService(msg dbus.Message, name string, options map[string]dbus.Variant) *dbus.Error {
	s := m.s
	if err := cmp.Or(s.mutable(msg, "ChangeService", adminRight), checkServiceName(name), checkOptions(options, changeServiceOptions, runtimeFixed)); err != nil {
		return dbusError(err)
	}
	o := parseServiceOptions(options)
	_, err := s.reg.ChangeService(name, func(cur model.Service) (model.Service, error) {
		return checkService(o, "", cur)
	})
	return dbusError(err)
}

func (m manager) RemoveService(msg dbus.Message, name string) *dbus.Error {
	if err := cmp.Or(m.s.mutable(msg, "RemoveService", adminRight), checkServiceName(name)); err != nil {
		return dbusError(err)
	}
	return dbusError(m.s.reg.RemoveService(name))
}

func (m manager) ListServices() ([]ServiceRow, *dbus.Error) {
	s := m.s
	if s.reg == nil {
		return nil, dbusError(noBalancer("ListServices"))
	}
	counters := s.serviceCounters()
	backends := map[string]uint32{}
	for _, b := range s.reg.List() {
		backends[b.Service]++
	}
	services := s.reg.Services()
	rows := make([]ServiceRow, len(services))
	for i, svc := range services {
		c := counters[svc.Name]
		rows[i] = ServiceRow{
			Name: svc.Name, VIPs: vipPorts(svc.Service), Protocols: svc.Protocols.String(), Hash: svc.Hash.String(),
			TableSize: uint32(svc.TableSize), Check: svc.Check, Source: string(svc.Source), Backends: backends[svc.Name],
			Packets: c.Packets, Bytes: c.Bytes, ActiveFlows: c.ActiveFlows,
		}
	}
	return rows, nil
}

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
	return dbusname.BackendPath(b.Service, b.Name), nil
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

// SetMaintenance withdraws every route of a routed balancer (on) or
// announces its servable VIPs again (off), and persists the choice.
func (m manager) SetMaintenance(msg dbus.Message, on bool) *dbus.Error {
	s := m.s
	if err := s.authorize(msg, "SetMaintenance", adminRight); err != nil {
		return dbusError(err)
	}
	if !s.info.Routed || s.info.SetMaintenance == nil {
		return dbusError(errorf(errNotSupported, "SetMaintenance: maintenance withdraws routes; this balancer is not routed (caplanced.toml(5): routed)"))
	}
	return dbusError(s.info.SetMaintenance(on))
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
			Name: b.Name, Service: b.Service, Address: b.Address.String(), Weight: b.Weight,
			AdminState: string(b.Admin), Health: string(b.Health), HealthDetail: b.HealthDetail,
			ActiveFlows: c.ActiveFlows, InactiveFlows: c.InactiveFlows, Packets: c.Packets, Bytes: c.Bytes,
		}
	}
	return rows, nil
}

func (m manager) GetStats() (map[string]uint64, *dbus.Error) {
	s := m.s
	st := map[string]uint64{}
	if s.info.Stats != nil {
		maps.Copy(st, s.info.Stats())
	}
	if s.reg != nil {
		counters := s.serviceCounters()
		for _, svc := range s.reg.Services() {
			for i, v := range counters[svc.Name].values() {
				st["service."+svc.Name+"."+serviceStatKeys[i]] = v
			}
		}
	}
	return st, nil
}

// mutable refuses a change of the services or backends unless the arguments have
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
	return errorf(errNotSupported, "%s: this caplanced has no balancer role, so no services or backends", method)
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
	svcCounters := s.serviceCounters()
	out := make(ManagedObjects, len(s.services)+len(s.backends))
	for name, obj := range s.services {
		out[obj.path] = managedEntry(serviceInterfaces, values(serviceProps(obj.svc, svcCounters[name])))
	}
	for name, obj := range s.backends {
		out[obj.path] = managedEntry(backendInterfaces, values(backendProps(obj.b, counters[name])))
	}
	return out, nil
}

// exportManager exports the manager and the Introspectable nodes above and
// below it.
func (s *Server) exportManager() error {
	vips := slices.Clone(s.info.VIPs)
	if vips == nil || s.reg != nil {
		vips = []string{} // with a registry, its services' (updateVIPs)
	}
	roles := s.info.Roles
	if roles == nil {
		roles = []string{}
	}
	props := prop.Map{
		dbusname.ManagerIface: {
			"APIVersion":    {Value: APIVersion, Emit: prop.EmitConst},
			"Version":       {Value: s.info.Version, Emit: prop.EmitConst},
			"Roles":         {Value: slices.Clone(roles), Emit: prop.EmitConst},
			"State":         {Value: s.info.State, Emit: prop.EmitTrue},
			"VIPs":          {Value: vips, Emit: prop.EmitTrue},
			"EncapPort":     {Value: s.info.EncapPort, Emit: prop.EmitTrue},
			"TableSize":     {Value: s.info.TableSize, Emit: prop.EmitTrue},
			"Routed":        {Value: s.info.Routed, Emit: prop.EmitConst},
			"Maintenance":   {Value: s.info.Maintenance, Emit: prop.EmitTrue},
			"AnnouncedVIPs": {Value: nonNil(s.info.AnnouncedVIPs), Emit: prop.EmitTrue},
			"RouteTable":    {Value: s.info.RouteTable, Emit: prop.EmitConst},
			"RouteProtocol": {Value: s.info.RouteProtocol, Emit: prop.EmitConst},
			"Dataplane":     {Value: s.info.Dataplane, Emit: prop.EmitConst},
			// 0 and "" until the first reload: see SetLastReload.
			"LastReload":      {Value: uint64(0), Emit: prop.EmitTrue},
			"LastReloadError": {Value: "", Emit: prop.EmitTrue},
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
	// Every node from / to the manager introspects as this package says;
	// the nodes under /org/caplance/Caplance1 that are not objects (the
	// parents of services and backends, a removed backend) too, as
	// subtrees.
	in := introspector{s}
	if err := s.conn.Export(in, "/", IntrospectableIface); err != nil {
		return err
	}
	for _, path := range []dbus.ObjectPath{"/org", "/org/caplance", dbusname.ManagerPath} {
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
	for name, obj := range s.backends {
		s.unexportObject(obj.path)
		delete(s.backends, name)
	}
	for name, obj := range s.services {
		s.unexportObject(obj.path)
		delete(s.services, name)
	}
	for _, iface := range []string{dbusname.ManagerIface, dbusname.ObjectManagerIface, PropertiesIface, IntrospectableIface} {
		_ = s.conn.Export(nil, dbusname.ManagerPath, iface)
	}
	for _, path := range []dbus.ObjectPath{"/", "/org", "/org/caplance"} {
		_ = s.conn.Export(nil, path, IntrospectableIface)
	}
}
