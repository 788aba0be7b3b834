// Package dbusname holds the names of caplanced's D-Bus API
// (caplanced.dbus(7)), shared by the server (package dbusapi) and its
// clients (caplancectl, caplance-healthd), the escaping of service and
// backend names into object paths, what both daemons' introspection shares (the standard
// ObjectManager interface, the nodes above their root objects, rendering),
// and finding the D-Bus error in a call's error. It must hold nothing else.
package dbusname

import (
	"encoding/xml"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
)

// The names of caplanced.dbus(7).
const (
	BusName           = "org.caplance.Caplance1"
	ManagerPath       = dbus.ObjectPath("/org/caplance/Caplance1")
	ManagerIface      = BusName + ".Manager"
	ServiceIface      = BusName + ".Service"
	BackendIface      = BusName + ".Backend"
	ServicePathPrefix = "/org/caplance/Caplance1/service/"
	// ErrorPrefix starts the name of every error of the API.
	ErrorPrefix = BusName + ".Error."
	// HealthBusName is owned by caplance-healthd while it runs; its root
	// object HealthPath has the HealthManagerIface interface.
	HealthBusName      = "org.caplance.Health1"
	HealthPath         = dbus.ObjectPath("/org/caplance/Health1")
	HealthManagerIface = HealthBusName + ".Manager"
)

// ServicePath is the object path of the service called name: its name
// escaped as escape does.
func ServicePath(name string) dbus.ObjectPath {
	return dbus.ObjectPath(ServicePathPrefix + escape(name))
}

// BackendPath is the object path of backend name of service: beneath the
// service's object, its name escaped as escape does.
func BackendPath(service, name string) dbus.ObjectPath {
	return dbus.ObjectPath(string(ServicePath(service)) + "/backend/" + escape(name))
}

// ServiceName undoes ServicePath; ok is false when path is not a service's
// or is not escaped as ServicePath escapes.
func ServiceName(path dbus.ObjectPath) (name string, ok bool) {
	s, ok := strings.CutPrefix(string(path), ServicePathPrefix)
	if !ok || strings.Contains(s, "/") {
		return "", false
	}
	return unescape(s)
}

// BackendName undoes BackendPath; ok is false when path is not a
// backend's or is not escaped as BackendPath escapes.
func BackendName(path dbus.ObjectPath) (service, name string, ok bool) {
	s, ok := strings.CutPrefix(string(path), ServicePathPrefix)
	if !ok {
		return "", "", false
	}
	svc, b, ok := strings.Cut(s, "/backend/")
	if !ok || strings.Contains(b, "/") {
		return "", "", false
	}
	if service, ok = unescape(svc); !ok {
		return "", "", false
	}
	if name, ok = unescape(b); !ok {
		return "", "", false
	}
	return service, name, true
}

// escape writes every byte of name other than A-Z, a-z and 0-9 as "_" and
// two lower-case hex digits, as systemd escapes unit names; the empty name
// is "_".
func escape(name string) string {
	if name == "" {
		return "_"
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "_%02x", c)
	}
	return b.String()
}

// unescape undoes escape; ok is false for a string escape does not write.
func unescape(s string) (string, bool) {
	if s == "" {
		return "", false
	}
	if s == "_" {
		return "", true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '_' {
			b.WriteByte(s[i])
			continue
		}
		if i+3 > len(s) {
			return "", false
		}
		c, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", false
		}
		b.WriteByte(byte(c))
		i += 2
	}
	return b.String(), true
}

// ObjectManagerIface is the standard interface of an object tree's root.
const ObjectManagerIface = "org.freedesktop.DBus.ObjectManager"

// ObjectManagerIntrospection is org.freedesktop.DBus.ObjectManager as the
// D-Bus specification describes it.
var ObjectManagerIntrospection = introspect.Interface{
	Name: ObjectManagerIface,
	Methods: []introspect.Method{{
		Name: "GetManagedObjects",
		Args: []introspect.Arg{{Name: "object_paths_interfaces_and_properties", Type: "a{oa{sa{sv}}}", Direction: "out"}},
	}},
	Signals: []introspect.Signal{
		{Name: "InterfacesAdded", Args: []introspect.Arg{
			{Name: "object_path", Type: "o"}, {Name: "interfaces_and_properties", Type: "a{sa{sv}}"},
		}},
		{Name: "InterfacesRemoved", Args: []introspect.Arg{
			{Name: "object_path", Type: "o"}, {Name: "interfaces", Type: "as"},
		}},
	},
}

// AncestorNode is the introspection node of path when path is an ancestor
// of root ("/", "/org", … above "/org/caplance/Caplance1"): its one child is
// the next element towards root. ok is false for any other path.
func AncestorNode(path, root dbus.ObjectPath) (node introspect.Node, ok bool) {
	prefix := string(path)
	if prefix != "/" {
		prefix += "/"
	}
	rest, ok := strings.CutPrefix(string(root), prefix)
	if !ok || rest == "" {
		return introspect.Node{}, false
	}
	child, _, _ := strings.Cut(rest, "/")
	return introspect.Node{Children: []introspect.Node{{Name: child}}}, true
}

// RenderIntrospection is node as the reply of Introspect.
func RenderIntrospection(node introspect.Node) string {
	out, err := xml.MarshalIndent(node, "", "  ")
	if err != nil {
		panic(err) // the types are fixed: a bug
	}
	return strings.TrimSpace(introspect.IntrospectDeclarationString) + "\n" + string(out) + "\n"
}

// AsError finds the D-Bus error in err's chain: godbus returns a dbus.Error
// from some calls and a *dbus.Error from others.
func AsError(err error) (dbus.Error, bool) {
	var e dbus.Error
	if errors.As(err, &e) {
		return e, true
	}
	var p *dbus.Error
	if errors.As(err, &p) && p != nil {
		return *p, true
	}
	return dbus.Error{}, false
}
