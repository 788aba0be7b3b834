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
	switch {
	case ancestor:
	case path == dbusname.ManagerPath:
		node.Interfaces = managerInterfaces(s.mgrProps)
		s.mu.Lock()
		if len(s.objects) > 0 {
			node.Children = []introspect.Node{{Name: "backend"}}
		}
		s.mu.Unlock()
	case path == backendParent:
		s.mu.Lock()
		for _, obj := range s.objects {
			node.Children = append(node.Children, introspect.Node{Name: strings.TrimPrefix(string(obj.path), dbusname.BackendPathPrefix)})
		}
		s.mu.Unlock()
		slices.SortFunc(node.Children, func(a, b introspect.Node) int { return strings.Compare(a.Name, b.Name) })
	case strings.HasPrefix(string(path), dbusname.BackendPathPrefix):
		s.mu.Lock()
		exists := false
		for _, obj := range s.objects {
			exists = exists || obj.path == path
		}
		s.mu.Unlock()
		if exists {
			node.Interfaces = backendInterfaceData()
		}
	}
	return dbusname.RenderIntrospection(node), nil
}

// render is the XML of node, with the DOCTYPE of the introspection format.
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

// backendInterfaceData are a backend's interfaces, as introspection
// describes them (the same for every backend).
func backendInterfaceData() []introspect.Interface {
	var props []introspect.Property
	for name, p := range backendProps(registry.Backend{}, Counters{}) {
		props = append(props, p.Introspection(name))
	}
	return []introspect.Interface{
		{Name: dbusname.BackendIface, Properties: sortedProps(props)},
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
	{Name: "BackendAdded", Args: []introspect.Arg{{Name: "name", Type: "s"}, {Name: "path", Type: "o"}}},
	{Name: "BackendRemoved", Args: []introspect.Arg{{Name: "name", Type: "s"}, {Name: "path", Type: "o"}}},
	{Name: "BackendHealthChanged", Args: []introspect.Arg{{Name: "name", Type: "s"}, {Name: "healthy", Type: "b"}, {Name: "detail", Type: "s"}}},
}
