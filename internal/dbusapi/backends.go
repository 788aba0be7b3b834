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

const backendParent = dbus.ObjectPath("/org/caplance/Caplance1/backend")

// The counter properties: read live, announced as invalidated.
var counterProps = []string{"ActiveFlows", "InactiveFlows", "Packets", "Bytes"}

// backendInterfaces are the interfaces of a backend object, as
// GetManagedObjects and InterfacesAdded/Removed list them.
var backendInterfaces = []string{dbusname.BackendIface, PropertiesIface, IntrospectableIface, PeerIface}

// backendObject is one exported backend.
type backendObject struct {
	path  dbus.ObjectPath
	b     registry.Backend
	props *prop.Properties
	// announced are the counters last announced as invalidated.
	announced Counters
}

// followed are the properties of a backend object that follow the
// registry's changes, sorted by name (upsert announces their changes in
// this order), each with its D-Bus value.
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
	p := func(v any, e prop.EmitType) *prop.Prop { return &prop.Prop{Value: v, Emit: e} }
	props := map[string]*prop.Prop{
		"Name":          p(b.Name, prop.EmitConst),
		"ActiveFlows":   p(c.ActiveFlows, prop.EmitInvalidates),
		"InactiveFlows": p(c.InactiveFlows, prop.EmitInvalidates),
		"Packets":       p(c.Packets, prop.EmitInvalidates),
		"Bytes":         p(c.Bytes, prop.EmitInvalidates),
	}
	for _, f := range followed {
		props[f.name] = p(f.value(b), prop.EmitTrue)
	}
	return props
}

// changedProps maps a change of a backend from before to after to the
// properties of its object that change, in the order upsert announces
// them. The name never changes (it names the object), and the ID is not a
// property.
func changedProps(before, after registry.Backend) []string {
	var names []string
	for _, f := range followed {
		if f.value(before) != f.value(after) {
			names = append(names, f.name)
		}
	}
	return names
}

// propValues are the values of backendProps, as GetAll returns them.
func propValues(b registry.Backend, c Counters) map[string]dbus.Variant {
	out := map[string]dbus.Variant{}
	for name, p := range backendProps(b, c) {
		out[name] = dbus.MakeVariant(p.Value)
	}
	return out
}

// interfacesOf is a backend object's entry of GetManagedObjects.
func interfacesOf(b registry.Backend, c Counters) map[string]map[string]dbus.Variant {
	out := map[string]map[string]dbus.Variant{}
	for _, iface := range backendInterfaces {
		out[iface] = map[string]dbus.Variant{}
	}
	out[dbusname.BackendIface] = propValues(b, c)
	return out
}

// liveProperties is org.freedesktop.DBus.Properties of a backend: prop's,
// with the counters read when asked.
type liveProperties struct {
	*prop.Properties
	s    *Server
	name string
}

func (p liveProperties) Get(iface, name string) (dbus.Variant, *dbus.Error) {
	v, err := p.Properties.Get(iface, name)
	if err != nil || iface != dbusname.BackendIface || !slices.Contains(counterProps, name) {
		return v, err
	}
	return propValues(registry.Backend{}, p.s.counters()[p.name])[name], nil
}

func (p liveProperties) GetAll(iface string) (map[string]dbus.Variant, *dbus.Error) {
	all, err := p.Properties.GetAll(iface)
	if err != nil || iface != dbusname.BackendIface {
		return all, err
	}
	live := propValues(registry.Backend{}, p.s.counters()[p.name])
	for _, name := range counterProps {
		all[name] = live[name]
	}
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
	if c.Kind == registry.Removed {
		s.remove(c.Old.Name, announce)
		return
	}
	s.upsert(c.New, announce)
}

// upsert exports b's object or brings it up to date: the properties that
// differ from the backend the object shows change, each with its own
// PropertiesChanged. The object's backend, rather than the change's Old,
// is the one to compare with: a change queued before the initial List
// (see Export) may already be in it. s.mu is held.
func (s *Server) upsert(b registry.Backend, announce bool) {
	obj, ok := s.objects[b.Name]
	if !ok {
		obj, err := s.exportBackend(b)
		if err != nil {
			s.log.Error("exporting a backend object", "backend", b.Name, "err", err)
			return
		}
		s.objects[b.Name] = obj
		if announce {
			// The counters of a new object are announced as zero (see
			// exportBackend).
			s.emit(dbusname.ManagerPath, dbusname.ObjectManagerIface+".InterfacesAdded", obj.path, interfacesOf(b, Counters{}))
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
	obj, ok := s.objects[name]
	if !ok {
		return
	}
	delete(s.objects, name)
	s.unexportBackend(obj)
	if announce {
		s.emit(dbusname.ManagerPath, dbusname.ObjectManagerIface+".InterfacesRemoved", obj.path, backendInterfaces)
		s.emit(dbusname.ManagerPath, dbusname.ManagerIface+".BackendRemoved", name, obj.path)
	}
}

func (s *Server) exportBackend(b registry.Backend) (*backendObject, error) {
	obj := &backendObject{path: dbusname.BackendPath(b.Name), b: b}
	m := prop.Map{dbusname.BackendIface: backendProps(b, Counters{})}
	for _, iface := range backendInterfaces[1:] {
		m[iface] = map[string]*prop.Prop{}
	}
	p, err := prop.Export(s.conn, obj.path, m)
	if err != nil {
		return nil, err
	}
	obj.props = p
	// Replace prop's own export with the one that reads counters live.
	err = s.conn.Export(liveProperties{Properties: p, s: s, name: b.Name}, obj.path, PropertiesIface)
	if err == nil {
		err = s.conn.Export(introspector{s}, obj.path, IntrospectableIface)
	}
	if err != nil {
		s.unexportBackend(obj)
		return nil, err
	}
	// obj.announced stays zero: reading the counters costs a pass over
	// every tracked flow (~40 ms at a million), which a reload adding a
	// thousand backends would pay a thousand times. The next counter tick
	// announces those that are not zero, and Get reads them live.
	return obj, nil
}

func (s *Server) unexportBackend(obj *backendObject) {
	_ = s.conn.Export(nil, obj.path, PropertiesIface)
	_ = s.conn.Export(nil, obj.path, IntrospectableIface)
}

// emit sends a signal; a failure (the connection is gone) is logged.
func (s *Server) emit(path dbus.ObjectPath, name string, args ...any) {
	if err := s.conn.Emit(path, name, args...); err != nil {
		s.log.Warn("sending a D-Bus signal", "signal", name, "err", err)
	}
}

// announceCounters announces, every CounterInterval, the counters that
// changed as invalidated, until s is closed.
func (s *Server) announceCounters() {
	defer close(s.done)
	if s.info.Counters == nil {
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
		counters := s.info.Counters()
		s.mu.Lock()
		for _, name := range slices.Sorted(maps.Keys(s.objects)) {
			obj := s.objects[name]
			c := counters[name]
			var changed []string
			if c.ActiveFlows != obj.announced.ActiveFlows {
				changed = append(changed, "ActiveFlows")
			}
			if c.InactiveFlows != obj.announced.InactiveFlows {
				changed = append(changed, "InactiveFlows")
			}
			if c.Packets != obj.announced.Packets {
				changed = append(changed, "Packets")
			}
			if c.Bytes != obj.announced.Bytes {
				changed = append(changed, "Bytes")
			}
			if len(changed) > 0 && !s.closed {
				obj.announced = c
				s.emit(obj.path, PropertiesIface+".PropertiesChanged", dbusname.BackendIface, map[string]dbus.Variant{}, changed)
			}
		}
		s.mu.Unlock()
	}
}
