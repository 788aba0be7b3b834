package dbusapi

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"github.com/godbus/dbus/v5/prop"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/registry"
)

// introspector is org.freedesktop.DBus.Introspectable of every node of the
// package: it answers by the path called.
type introspector struct{ s *Server }

func (in introspector) Introspect(msg dbus.Message) (string, *dbus.Error) {
	path, _ := msg.Headers[dbus.FieldPath].Value().(dbus.ObjectPath)
	s := in.s
	node, ancestor := dbusname.AncestorNode(path, dbusname.ManagerPath)
	if ancestor {
		return dbusname.RenderIntrospection(node), nil
	}
	if path == dbusname.ManagerPath {
		node.Interfaces = managerInterfaces(s.mgrProps)
	}
	// The children are the next elements of the objects' paths below
	// path: "service" under the manager, the services under it, "backend"
	// under a service with backends, its backends under that.
	prefix := string(path) + "/"
	children := map[string]bool{}
	s.mu.Lock()
	add := func(p dbus.ObjectPath) {
		if p == path {
			return
		}
		if rest, ok := strings.CutPrefix(string(p), prefix); ok {
			child, _, _ := strings.Cut(rest, "/")
			children[child] = true
		}
	}
	for _, obj := range s.services {
		add(obj.path)
		if obj.path == path {
			node.Interfaces = objectInterfaceData(dbusname.ServiceIface, serviceProps(registry.Service{}, ServiceCounters{}))
		}
	}
	for _, obj := range s.backends {
		add(obj.path)
		if obj.path == path {
			node.Interfaces = objectInterfaceData(dbusname.BackendIface, backendProps(registry.Backend{}, Counters{}))
		}
	}
	s.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(children)) {
		node.Children = append(node.Children, introspect.Node{Name: name})
	}
	return dbusname.RenderIntrospection(node), nil
}

// managerInterfaces are the manager's interfaces, as introspection
// describes them.
func managerInterfaces(props *prop.Properties) []introspect.Interface {
	return []introspect.Interface{
		{
			Name:       dbusname.ManagerIface,
			Methods:    namedMethods(manager{}, argNames),
			Signals:    managerSignals,
			Properties: sortedProps(props.Introspection(dbusname.ManagerIface)),
		},
		dbusname.ObjectManagerIntrospection,
		prop.IntrospectData,
		introspect.IntrospectData,
		introspect.PeerData,
	}
}

// objectInterfaceData are the interfaces of a service or backend object
// (iface with props), as introspection describes them: the same for every
// object of the kind.
func objectInterfaceData(iface string, props map[string]*prop.Prop) []introspect.Interface {
	var ps []introspect.Property
	for name, p := range props {
		ps = append(ps, p.Introspection(name))
	}
	return []introspect.Interface{
		{Name: iface, Properties: sortedProps(ps)},
		prop.IntrospectData,
		introspect.IntrospectData,
		introspect.PeerData,
	}
}

func sortedProps(props []introspect.Property) []introspect.Property {
	slices.SortFunc(props, func(a, b introspect.Property) int { return strings.Compare(a.Name, b.Name) })
	return props
}

// namedMethods is introspect.Methods(v) with the arguments named from
// names. It panics when a method or an argument has no name: a bug the
// tests catch.
func namedMethods(v any, names map[string][]string) []introspect.Method {
	methods := introspect.Methods(v)
	for i := range methods {
		m := &methods[i]
		n, ok := names[m.Name]
		if !ok || len(n) != len(m.Args) {
			panic(fmt.Sprintf("dbusapi: argNames of %s: %v for %d arguments", m.Name, n, len(m.Args)))
		}
		for j := range m.Args {
			m.Args[j].Name = n[j]
		}
		m.Annotations = nil
	}
	if len(methods) != len(names) {
		panic(fmt.Sprintf("dbusapi: argNames has %v, the methods are %v", slices.Sorted(maps.Keys(names)), methods))
	}
	return methods
}

// inSignatures are the signatures of the manager's methods' arguments.
var inSignatures = func() map[string]string {
	out := map[string]string{}
	for _, m := range namedMethods(manager{}, argNames) {
		var sig strings.Builder
		for _, a := range m.Args {
			if a.Direction == "in" {
				sig.WriteString(a.Type)
			}
		}
		out[m.Name] = sig.String()
	}
	return out
}()

// checkSignature refuses a call of method whose arguments do not have the
// signature of its introspection.
func checkSignature(msg dbus.Message, method string) error {
	got, _ := msg.Headers[dbus.FieldSignature].Value().(dbus.Signature)
	if want := inSignatures[method]; got.String() != want {
		return errorf(errInvalidArgs, "%s takes arguments of type %q, not %q", method, want, got.String())
	}
	return nil
}

var managerSignals = []introspect.Signal{
	{Name: "ServiceAdded", Args: []introspect.Arg{{Name: "name", Type: "s"}, {Name: "path", Type: "o"}}},
	{Name: "ServiceRemoved", Args: []introspect.Arg{{Name: "name", Type: "s"}, {Name: "path", Type: "o"}}},
	{Name: "BackendAdded", Args: []introspect.Arg{{Name: "name", Type: "s"}, {Name: "path", Type: "o"}}},
	{Name: "BackendRemoved", Args: []introspect.Arg{{Name: "name", Type: "s"}, {Name: "path", Type: "o"}}},
	{Name: "BackendHealthChanged", Args: []introspect.Arg{{Name: "name", Type: "s"}, {Name: "healthy", Type: "b"}, {Name: "detail", Type: "s"}}},
}
