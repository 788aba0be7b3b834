package dbusapi

import (
	"maps"
	"slices"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/registry"
)

// The counter properties of a backend, in the order their invalidation is
// announced: read live, announced as invalidated.
var counterProps = []string{"ActiveFlows", "InactiveFlows", "Packets", "Bytes"}

// values are c's counters in the order of counterProps.
func (c Counters) values() []uint64 {
	return []uint64{c.ActiveFlows, c.InactiveFlows, c.Packets, c.Bytes}
}

// backendInterfaces are the interfaces of a backend object, as
// GetManagedObjects and InterfacesAdded/Removed list them.
var backendInterfaces = []string{dbusname.BackendIface, PropertiesIface, IntrospectableIface, PeerIface}

// backendObject is one exported backend.
type backendObject struct {
	path  dbus.ObjectPath
	b     registry.Backend
	props *prop.Properties
	// announced are the counters last announced as invalidated (nil:
	// zeros).
	announced []uint64
}

// followed are the properties of a backend object that follow the
// registry's changes, sorted by name (upsert announces their changes in
// this order), each with its D-Bus value. Name and Service are not among
// them: they name the object, and a backend that moves to another service
// (a reload) is a new object.
var followed = []struct {
	name  string
	value func(registry.Backend) any
}{
	{"Address", func(b registry.Backend) any { return b.Address.String() }},
	{"AdminState", func(b registry.Backend) any { return string(b.Admin) }},
	{"Check", func(b registry.Backend) any { return b.Check }},
	{"Health", func(b registry.Backend) any { return string(b.Health) }},
	{"HealthDetail", func(b registry.Backend) any { return b.HealthDetail }},
	{"Persistent", func(b registry.Backend) any { return b.Persistent }},
	{"Source", func(b registry.Backend) any { return string(b.Source) }},
	{"Weight", func(b registry.Backend) any { return b.Weight }},
}

// backendProps returns the properties of b (counters c) and how each is
// announced.
func backendProps(b registry.Backend, c Counters) map[string]*prop.Prop {
	props := map[string]*prop.Prop{
		"Name":    {Value: b.Name, Emit: prop.EmitConst},
		"Service": {Value: b.Service, Emit: prop.EmitConst},
	}
	addCounterProps(props, counterProps, c.values())
	for _, f := range followed {
		props[f.name] = &prop.Prop{Value: f.value(b), Emit: prop.EmitTrue}
	}
	return props
}

// addCounterProps adds the counters names (values vals) to props,
// announced as invalidated.
func addCounterProps(props map[string]*prop.Prop, names []string, vals []uint64) {
	for i, name := range names {
		props[name] = &prop.Prop{Value: vals[i], Emit: prop.EmitInvalidates}
	}
}

// changedProps maps a change of a backend from before to after to the
// properties of its object that change, in the order upsert announces
// them. The ID is not a property.
func changedProps(before, after registry.Backend) []string {
	var names []string
	for _, f := range followed {
		if f.value(before) != f.value(after) {
			names = append(names, f.name)
		}
	}
	return names
}

// values are the values of props, as GetAll returns them.
func values(props map[string]*prop.Prop) map[string]dbus.Variant {
	out := map[string]dbus.Variant{}
	for name, p := range props {
		out[name] = dbus.MakeVariant(p.Value)
	}
	return out
}

// managedEntry is an object's entry of GetManagedObjects: its interfaces
// (the first with props, the others with none).
func managedEntry(ifaces []string, props map[string]dbus.Variant) map[string]map[string]dbus.Variant {
	out := map[string]map[string]dbus.Variant{}
	for _, iface := range ifaces {
		out[iface] = map[string]dbus.Variant{}
	}
	out[ifaces[0]] = props
	return out
}

// counterVariants are the counters names with values vals, as variants.
func counterVariants(names []string, vals []uint64) map[string]dbus.Variant {
	out := make(map[string]dbus.Variant, len(names))
	for i, name := range names {
		out[name] = dbus.MakeVariant(vals[i])
	}
	return out
}

// changedCounters are the counters names whose value differs between
// before (nil: zeros) and after.
func changedCounters(names []string, before, after []uint64) []string {
	var out []string
	for i, name := range names {
		var b uint64
		if before != nil {
			b = before[i]
		}
		if b != after[i] {
			out = append(out, name)
		}
	}
	return out
}

// liveProperties is org.freedesktop.DBus.Properties of an object with
// counters: prop's, with the counters of iface (and a service's VIPs) read
// when asked.
type liveProperties struct {
	*prop.Properties
	iface string
	live  func() map[string]dbus.Variant
}

func (p liveProperties) Get(iface, name string) (dbus.Variant, *dbus.Error) {
	v, err := p.Properties.Get(iface, name)
	if err != nil || iface != p.iface {
		return v, err
	}
	if c, ok := p.live()[name]; ok {
		return c, nil
	}
	return v, nil
}

func (p liveProperties) GetAll(iface string) (map[string]dbus.Variant, *dbus.Error) {
	all, err := p.Properties.GetAll(iface)
	if err != nil || iface != p.iface {
		return all, err
	}
	maps.Copy(all, p.live())
	return all, nil
}

// onChange is the registry's watcher.
func (s *Server) onChange(c registry.Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
	case !s.ready:
		s.queued = append(s.queued, c)
	default:
		s.apply(c, true)
	}
}

// apply makes the objects follow c; announce sends the signals. s.mu is
// held.
func (s *Server) apply(c registry.Change, announce bool) {
	switch {
	case c.IsService && c.Kind == registry.Removed:
		s.removeService(c.OldService.Name, announce)
	case c.IsService:
		s.upsertService(c.NewService, announce)
	case c.Kind == registry.Removed:
		s.remove(c.Old.Name, announce)
	default:
		s.upsert(c.New, announce)
	}
}

// upsert exports b's object or brings it up to date: the properties that
// differ from the backend the object shows change, each with its own
// PropertiesChanged. The object's backend, rather than the change's Old,
// is the one to compare with: a change queued before the initial List
// (see Export) may already be in it. A backend moved to another service
// gets a new object (its path names the service). s.mu is held.
func (s *Server) upsert(b registry.Backend, announce bool) {
	obj, ok := s.backends[b.Name]
	if ok && obj.b.Service != b.Service {
		s.remove(b.Name, announce)
		ok = false
	}
	if !ok {
		obj, err := s.exportBackend(b)
		if err != nil {
			s.log.Error("exporting a backend object", "backend", b.Name, "err", err)
			return
		}
		s.backends[b.Name] = obj
		if announce {
			// The counters of a new object are announced as zero (see
			// exportBackend).
			s.emit(dbusname.ManagerPath, dbusname.ObjectManagerIface+".InterfacesAdded", obj.path, managedEntry(backendInterfaces, values(backendProps(b, Counters{}))))
			s.emit(dbusname.ManagerPath, dbusname.ManagerIface+".BackendAdded", b.Name, obj.path)
		}
		return
	}
	old := obj.b
	obj.b = b
	next := backendProps(b, Counters{})
	for _, name := range changedProps(old, b) {
		obj.props.SetMust(dbusname.BackendIface, name, next[name].Value) // PropertiesChanged
	}
	// healthy is false only for down: unknown (nothing reported, or the
	// address or check changed) counts as up, as in the data path.
	if announce && old.Health != b.Health {
		s.emit(dbusname.ManagerPath, dbusname.ManagerIface+".BackendHealthChanged", b.Name, b.Health != registry.HealthDown, b.HealthDetail)
	}
}

// remove unexports the object of the backend name. s.mu is held.
func (s *Server) remove(name string, announce bool) {
	obj, ok := s.backends[name]
	if !ok {
		return
	}
	delete(s.backends, name)
	s.unexportObject(obj.path)
	if announce {
		s.emit(dbusname.ManagerPath, dbusname.ObjectManagerIface+".InterfacesRemoved", obj.path, backendInterfaces)
		s.emit(dbusname.ManagerPath, dbusname.ManagerIface+".BackendRemoved", name, obj.path)
	}
}

func (s *Server) exportBackend(b registry.Backend) (*backendObject, error) {
	obj := &backendObject{path: dbusname.BackendPath(b.Service, b.Name), b: b}
	name := b.Name
	p, err := s.exportObject(obj.path, backendInterfaces, backendProps(b, Counters{}), func() map[string]dbus.Variant {
		return counterVariants(counterProps, s.counters()[name].values())
	})
	if err != nil {
		return nil, err
	}
	obj.props = p
	// obj.announced stays zero: reading the counters costs a pass over
	// every tracked flow (~40 ms at a million), which a reload adding a
	// thousand backends would pay a thousand times. The next counter tick
	// announces those that are not zero, and Get reads them live.
	return obj, nil
}

// exportObject exports an object at path with the interfaces ifaces, the
// first with props, whose counters live reads when asked.
func (s *Server) exportObject(path dbus.ObjectPath, ifaces []string, props map[string]*prop.Prop, live func() map[string]dbus.Variant) (*prop.Properties, error) {
	m := prop.Map{ifaces[0]: props}
	for _, iface := range ifaces[1:] {
		m[iface] = map[string]*prop.Prop{}
	}
	p, err := prop.Export(s.conn, path, m)
	if err != nil {
		return nil, err
	}
	// Replace prop's own export with the one that reads counters live.
	err = s.conn.Export(liveProperties{Properties: p, iface: ifaces[0], live: live}, path, PropertiesIface)
	if err == nil {
		// As a subtree: the nodes below a service's object that are no
		// objects ("backend", a removed backend) are found through it.
		err = s.conn.ExportSubtree(introspector{s}, path, IntrospectableIface)
	}
	if err != nil {
		s.unexportObject(path)
		return nil, err
	}
	return p, nil
}

func (s *Server) unexportObject(path dbus.ObjectPath) {
	_ = s.conn.Export(nil, path, PropertiesIface)
	_ = s.conn.Export(nil, path, IntrospectableIface)
}

// emit sends a signal; a failure (the connection is gone) is logged.
func (s *Server) emit(path dbus.ObjectPath, name string, args ...any) {
	if err := s.conn.Emit(path, name, args...); err != nil {
		s.log.Warn("sending a D-Bus signal", "signal", name, "err", err)
	}
}

// announceCounters announces, every CounterInterval, the counters of
// services and backends that changed as invalidated, until s is closed.
func (s *Server) announceCounters() {
	defer close(s.done)
	if s.info.Counters == nil && s.info.ServiceCounters == nil {
		<-s.stop
		return
	}
	tick := time.NewTicker(s.info.CounterInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		counters, svcCounters := s.counters(), s.serviceCounters()
		s.mu.Lock()
		if !s.closed {
			for _, name := range slices.Sorted(maps.Keys(s.services)) {
				obj := s.services[name]
				obj.announced = s.announce(obj.path, dbusname.ServiceIface, serviceCounterProps, obj.announced, svcCounters[name].values())
			}
			for _, name := range slices.Sorted(maps.Keys(s.backends)) {
				obj := s.backends[name]
				obj.announced = s.announce(obj.path, dbusname.BackendIface, counterProps, obj.announced, counters[name].values())
			}
		}
		s.mu.Unlock()
	}
}

// announce announces the counters names of the object at path that
// differ from those last announced as invalidated, and returns the ones
// now announced. s.mu is held.
func (s *Server) announce(path dbus.ObjectPath, iface string, names []string, before, now []uint64) []uint64 {
	changed := changedCounters(names, before, now)
	if len(changed) == 0 {
		return before
	}
	s.emit(path, PropertiesIface+".PropertiesChanged", iface, map[string]dbus.Variant{}, changed)
	return now
}
