package dbusapi

import (
	"net/netip"
	"reflect"
	"slices"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/registry"
)

// ServiceCounters are one service's traffic counters: what was classified
// to it (Packets, Bytes), the flows it tracks (as Counters), the flows it
// got since caplanced started (NewFlows), and what was classified to it
// and then dropped (Drops).
type ServiceCounters struct {
	Packets       uint64
	Bytes         uint64
	NewFlows      uint64
	ActiveFlows   uint64
	InactiveFlows uint64
	Drops         uint64
}

// The counter properties of a service, in the order their invalidation is
// announced; statKeys are their GetStats keys after "service.<name>.".
var (
	serviceCounterProps = []string{"Packets", "Bytes", "NewFlows", "ActiveFlows", "InactiveFlows", "Drops"}
	serviceStatKeys     = []string{"packets", "bytes", "new_flows", "active_flows", "inactive_flows", "drops"}
)

// values are c's counters in the order of serviceCounterProps.
func (c ServiceCounters) values() []uint64 {
	return []uint64{c.Packets, c.Bytes, c.NewFlows, c.ActiveFlows, c.InactiveFlows, c.Drops}
}

// serviceInterfaces are the interfaces of a service object.
var serviceInterfaces = []string{dbusname.ServiceIface, PropertiesIface, IntrospectableIface, PeerIface}

// serviceObject is one exported service.
type serviceObject struct {
	path      dbus.ObjectPath
	svc       registry.Service
	props     *prop.Properties
	announced []uint64 // as backendObject's
}

// serviceFollowed are the properties of a service object that follow the
// registry's changes, sorted by name, each with its D-Bus value.
var serviceFollowed = []struct {
	name  string
	value func(registry.Service) any
}{
	{"Check", func(s registry.Service) any { return s.Check }},
	{"Hash", func(s registry.Service) any { return s.Hash.String() }},
	{"Persistent", func(s registry.Service) any { return s.Persistent }},
	{"Protocols", func(s registry.Service) any { return s.Protocols.String() }},
	{"Source", func(s registry.Service) any { return string(s.Source) }},
	{"TableSize", func(s registry.Service) any { return uint32(s.TableSize) }},
	{"VIPs", func(s registry.Service) any { return vipPorts(s.Service) }},
}

// vipPorts is a service's VIPs property: each VIP with its port list.
func vipPorts(svc model.Service) map[string]string {
	out := make(map[string]string, len(svc.VIPs))
	for _, v := range svc.VIPs {
		out[v.Addr.String()] = model.FormatPorts(v.Ports)
	}
	return out
}

// serviceProps returns the properties of svc (counters c) and how each is
// announced.
func serviceProps(svc registry.Service, c ServiceCounters) map[string]*prop.Prop {
	props := map[string]*prop.Prop{"Name": {Value: svc.Name, Emit: prop.EmitConst}}
	addCounterProps(props, serviceCounterProps, c.values())
	for _, f := range serviceFollowed {
		props[f.name] = &prop.Prop{Value: f.value(svc), Emit: prop.EmitTrue}
	}
	return props
}

// changedServiceProps are the properties of a service object that a
// change from before to after changes, in the order they are announced.
func changedServiceProps(before, after registry.Service) []string {
	var names []string
	for _, f := range serviceFollowed {
		if !reflect.DeepEqual(f.value(before), f.value(after)) {
			names = append(names, f.name)
		}
	}
	return names
}

// upsertService exports svc's object or brings it up to date, as upsert
// does a backend's, and keeps the manager's VIPs in step. s.mu is held.
func (s *Server) upsertService(svc registry.Service, announce bool) {
	defer s.updateVIPs()
	obj, ok := s.services[svc.Name]
	if !ok {
		path := dbusname.ServicePath(svc.Name)
		name := svc.Name
		p, err := s.exportObject(path, serviceInterfaces, serviceProps(svc, ServiceCounters{}), func() map[string]dbus.Variant {
			live := counterVariants(serviceCounterProps, s.serviceCounters()[name].values())
			s.mu.Lock()
			if obj, ok := s.services[name]; ok {
				live["VIPs"] = dbus.MakeVariant(vipPorts(obj.svc.Service))
			}
			s.mu.Unlock()
			return live
		})
		if err != nil {
			s.log.Error("exporting a service object", "service", svc.Name, "err", err)
			return
		}
		s.services[svc.Name] = &serviceObject{path: path, svc: svc, props: p}
		if announce {
			s.emit(dbusname.ManagerPath, dbusname.ObjectManagerIface+".InterfacesAdded", path, managedEntry(serviceInterfaces, values(serviceProps(svc, ServiceCounters{}))))
			s.emit(dbusname.ManagerPath, dbusname.ManagerIface+".ServiceAdded", svc.Name, path)
		}
		return
	}
	old := obj.svc
	obj.svc = svc
	next := serviceProps(svc, ServiceCounters{})
	for _, name := range changedServiceProps(old, svc) {
		if name == "VIPs" {
			// prop would merge the new map into the old one (dbus.Store):
			// VIPs is read live from obj.svc instead, and announced here.
			s.emit(obj.path, PropertiesIface+".PropertiesChanged", dbusname.ServiceIface, map[string]dbus.Variant{name: dbus.MakeVariant(next[name].Value)}, []string{})
			continue
		}
		obj.props.SetMust(dbusname.ServiceIface, name, next[name].Value) // PropertiesChanged
	}
}

// removeService unexports the object of the service name. s.mu is held.
func (s *Server) removeService(name string, announce bool) {
	obj, ok := s.services[name]
	if !ok {
		return
	}
	delete(s.services, name)
	s.unexportObject(obj.path)
	if announce {
		s.emit(dbusname.ManagerPath, dbusname.ObjectManagerIface+".InterfacesRemoved", obj.path, serviceInterfaces)
		s.emit(dbusname.ManagerPath, dbusname.ManagerIface+".ServiceRemoved", name, obj.path)
	}
	s.updateVIPs()
}

// updateVIPs sets the manager's VIPs to every service's, sorted and each
// once. s.mu is held.
func (s *Server) updateVIPs() {
	var addrs []netip.Addr
	for _, obj := range s.services {
		for _, v := range obj.svc.VIPs {
			addrs = append(addrs, v.Addr)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	vips := make([]string, len(addrs))
	for i, a := range addrs {
		vips[i] = a.String()
	}
	s.setManagerProp("VIPs", vips)
}

func (s *Server) serviceCounters() map[string]ServiceCounters {
	if s.info.ServiceCounters == nil {
		return nil
	}
	return s.info.ServiceCounters()
}
