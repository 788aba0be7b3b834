package healthd

import (
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"github.com/godbus/dbus/v5/prop"

	"github.com/caplance/caplance/internal/dbusname"
)

// The names of caplance-healthd's own D-Bus objects (caplance-healthd(8),
// D-BUS INTERFACE). The bus name is dbusname.HealthBusName.
const (
	CheckIface      = dbusname.HealthBusName + ".Check"
	CheckPathPrefix = "/org/caplance/Health1/backend/"
)

// The standard interfaces.
const (
	propertiesIface     = "org.freedesktop.DBus.Properties"
	introspectableIface = "org.freedesktop.DBus.Introspectable"
	peerIface           = "org.freedesktop.DBus.Peer"
)

const checkParent = dbus.ObjectPath("/org/caplance/Health1/backend")

// CheckPath is the object path of the check of the backend called name
// (unique across services), escaped as caplanced escapes it: the last
// element of its dbusname.BackendPath.
func CheckPath(name string) dbus.ObjectPath {
	p := string(dbusname.BackendPath("", name))
	return dbus.ObjectPath(CheckPathPrefix + p[strings.LastIndex(p, "/")+1:])
}

// checkName undoes CheckPath; ok is false when path is not a check's.
func checkName(path dbus.ObjectPath) (name string, ok bool) {
	elem, ok := strings.CutPrefix(string(path), CheckPathPrefix)
	if !ok {
		return "", false
	}
	_, name, ok = dbusname.BackendName(dbusname.ServicePath("") + "/backend/" + dbus.ObjectPath(elem))
	return name, ok
}

// checkInfo is what a check object shows: org.caplance.Health1.Check.
type checkInfo struct {
	Name string
	// Service is the name of the backend's service.
	Service string
	Address string
	// Check is the spec as caplanced has it.
	Check string
	// State is unknown, up, down or invalid (a spec caplance-healthd
	// cannot run; Detail says why).
	State string
	// Reason is the reason of the last transition, as reported.
	Reason string
	// Detail is the last probe's result.
	Detail        string
	LatencyUSec   uint64
	Successes     uint32
	Failures      uint32
	LastProbeUSec uint64
}

// values are the properties of c by name.
func (c checkInfo) values() map[string]dbus.Variant {
	return map[string]dbus.Variant{
		"Name":          dbus.MakeVariant(c.Name),
		"Service":       dbus.MakeVariant(c.Service),
		"Address":       dbus.MakeVariant(c.Address),
		"Check":         dbus.MakeVariant(c.Check),
		"State":         dbus.MakeVariant(c.State),
		"Reason":        dbus.MakeVariant(c.Reason),
		"Detail":        dbus.MakeVariant(c.Detail),
		"LatencyUSec":   dbus.MakeVariant(c.LatencyUSec),
		"Successes":     dbus.MakeVariant(c.Successes),
		"Failures":      dbus.MakeVariant(c.Failures),
		"LastProbeUSec": dbus.MakeVariant(c.LastProbeUSec),
	}
}

// announcedCheckProps change with transitions and configuration and are
// announced with PropertiesChanged; the others change with every probe and
// are only read (EmitsChangedSignal false).
var announcedCheckProps = []string{"Address", "Check", "State", "Reason"}

// managerInfo is org.caplance.Health1.Manager.
type managerInfo struct {
	Version string
	// Caplanced is "running" or "away".
	Caplanced string
	// Status is the STATUS= line.
	Status string
}

func (m managerInfo) values() map[string]dbus.Variant {
	return map[string]dbus.Variant{
		"Version":   dbus.MakeVariant(m.Version),
		"Caplanced": dbus.MakeVariant(m.Caplanced),
		"Status":    dbus.MakeVariant(m.Status),
	}
}

// health1 serves org.caplance.Health1's objects on conn: the manager at
// HealthPath (with the ObjectManager) and one object per backend with a
// check under CheckPathPrefix.
type health1 struct {
	conn *dbus.Conn
	// mu guards the values and orders the signals.
	mu     sync.Mutex
	mgr    managerInfo
	checks map[string]checkInfo
	closed bool
}

func exportHealth1(conn *dbus.Conn, mgr managerInfo) (*health1, error) {
	h := &health1{conn: conn, mgr: mgr, checks: map[string]checkInfo{}}
	in := health1Introspector{h}
	for _, p := range []dbus.ObjectPath{"/", "/org", "/org/caplance"} {
		if err := conn.Export(in, p, introspectableIface); err != nil {
			return nil, err
		}
	}
	if err := conn.ExportSubtree(in, dbusname.HealthPath, introspectableIface); err != nil {
		return nil, err
	}
	if err := conn.ExportSubtree(health1Props{h}, dbusname.HealthPath, propertiesIface); err != nil {
		return nil, err
	}
	if err := conn.Export(health1ObjectManager{h}, dbusname.HealthPath, dbusname.ObjectManagerIface); err != nil {
		return nil, err
	}
	return h, nil
}

// unexport removes every object; later changes are ignored.
func (h *health1) unexport() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for _, p := range []dbus.ObjectPath{"/", "/org", "/org/caplance"} {
		_ = h.conn.Export(nil, p, introspectableIface)
	}
	_ = h.conn.Export(nil, dbusname.HealthPath, introspectableIface)
	_ = h.conn.Export(nil, dbusname.HealthPath, propertiesIface)
	_ = h.conn.Export(nil, dbusname.HealthPath, dbusname.ObjectManagerIface)
}

// setManager changes the manager's properties and announces those that
// changed.
func (h *health1) setManager(m managerInfo) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	old := h.mgr
	h.mgr = m
	if changed := changedValues(m.values(), old.values(), "Caplanced", "Status"); len(changed) > 0 {
		_ = h.conn.Emit(dbusname.HealthPath, propertiesIface+".PropertiesChanged", dbusname.HealthManagerIface, changed, []string{})
	}
}

// setCheck creates or updates the object of c.Name.
func (h *health1) setCheck(c checkInfo) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	old, ok := h.checks[c.Name]
	h.checks[c.Name] = c
	path := CheckPath(c.Name)
	if !ok {
		_ = h.conn.Emit(dbusname.HealthPath, dbusname.ObjectManagerIface+".InterfacesAdded", path, checkInterfaces(c))
		return
	}
	if changed := changedValues(c.values(), old.values(), announcedCheckProps...); len(changed) > 0 {
		_ = h.conn.Emit(path, propertiesIface+".PropertiesChanged", CheckIface, changed, []string{})
	}
}

// changedValues are the properties among names whose value differs
// between now and before, as PropertiesChanged carries them.
func changedValues(now, before map[string]dbus.Variant, names ...string) map[string]dbus.Variant {
	changed := map[string]dbus.Variant{}
	for _, name := range names {
		if now[name].String() != before[name].String() {
			changed[name] = now[name]
		}
	}
	return changed
}

// removeCheck removes the object of name.
func (h *health1) removeCheck(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.checks[name]; !ok || h.closed {
		return
	}
	delete(h.checks, name)
	_ = h.conn.Emit(dbusname.HealthPath, dbusname.ObjectManagerIface+".InterfacesRemoved", CheckPath(name), checkInterfaceNames)
}

var checkInterfaceNames = []string{CheckIface, propertiesIface, introspectableIface, peerIface}

// checkInterfaces is an object's entry in GetManagedObjects.
func checkInterfaces(c checkInfo) map[string]map[string]dbus.Variant {
	out := map[string]map[string]dbus.Variant{}
	for _, iface := range checkInterfaceNames {
		out[iface] = map[string]dbus.Variant{}
	}
	out[CheckIface] = c.values()
	return out
}

// lookup returns the values of the interface iface of the object at path.
// h.mu is held.
func (h *health1) lookup(path dbus.ObjectPath, iface string) (map[string]dbus.Variant, *dbus.Error) {
	switch {
	case path == dbusname.HealthPath:
		switch iface {
		case dbusname.HealthManagerIface:
			return h.mgr.values(), nil
		case dbusname.ObjectManagerIface, propertiesIface, introspectableIface, peerIface:
			return map[string]dbus.Variant{}, nil
		}
		return nil, prop.ErrIfaceNotFound
	case strings.HasPrefix(string(path), CheckPathPrefix):
		name, ok := checkName(path)
		c, exists := h.checks[name]
		if !ok || !exists {
			return nil, noObject(path)
		}
		switch iface {
		case CheckIface:
			return c.values(), nil
		case propertiesIface, introspectableIface, peerIface:
			return map[string]dbus.Variant{}, nil
		}
		return nil, prop.ErrIfaceNotFound
	}
	return nil, noObject(path)
}

func noObject(path dbus.ObjectPath) *dbus.Error {
	e := dbus.MakeNoObjectError(path)
	return &e
}

// health1Props is org.freedesktop.DBus.Properties of every object.
type health1Props struct{ h *health1 }

func pathOf(msg dbus.Message) dbus.ObjectPath {
	p, _ := msg.Headers[dbus.FieldPath].Value().(dbus.ObjectPath)
	return p
}

func (p health1Props) Get(msg dbus.Message, iface, name string) (dbus.Variant, *dbus.Error) {
	p.h.mu.Lock()
	defer p.h.mu.Unlock()
	all, err := p.h.lookup(pathOf(msg), iface)
	if err != nil {
		return dbus.Variant{}, err
	}
	v, ok := all[name]
	if !ok {
		return dbus.Variant{}, prop.ErrPropNotFound
	}
	return v, nil
}

func (p health1Props) GetAll(msg dbus.Message, iface string) (map[string]dbus.Variant, *dbus.Error) {
	p.h.mu.Lock()
	defer p.h.mu.Unlock()
	return p.h.lookup(pathOf(msg), iface)
}

func (p health1Props) Set(msg dbus.Message, iface, name string, _ dbus.Variant) *dbus.Error {
	p.h.mu.Lock()
	defer p.h.mu.Unlock()
	all, err := p.h.lookup(pathOf(msg), iface)
	if err != nil {
		return err
	}
	if _, ok := all[name]; !ok {
		return prop.ErrPropNotFound
	}
	return prop.ErrReadOnly
}

// health1ObjectManager is org.freedesktop.DBus.ObjectManager at HealthPath.
type health1ObjectManager struct{ h *health1 }

func (o health1ObjectManager) GetManagedObjects() (map[dbus.ObjectPath]map[string]map[string]dbus.Variant, *dbus.Error) {
	o.h.mu.Lock()
	defer o.h.mu.Unlock()
	out := map[dbus.ObjectPath]map[string]map[string]dbus.Variant{}
	for name, c := range o.h.checks {
		out[CheckPath(name)] = checkInterfaces(c)
	}
	return out, nil
}

// health1Introspector is org.freedesktop.DBus.Introspectable of every node.
type health1Introspector struct{ h *health1 }

func (in health1Introspector) Introspect(msg dbus.Message) (string, *dbus.Error) {
	path := pathOf(msg)
	h := in.h
	h.mu.Lock()
	defer h.mu.Unlock()
	node, ancestor := dbusname.AncestorNode(path, dbusname.HealthPath)
	switch {
	case ancestor:
	case path == dbusname.HealthPath:
		node.Interfaces = []introspect.Interface{
			{Name: dbusname.HealthManagerIface, Properties: managerPropData},
			dbusname.ObjectManagerIntrospection, prop.IntrospectData, introspect.IntrospectData, introspect.PeerData,
		}
		if len(h.checks) > 0 {
			node.Children = []introspect.Node{{Name: "backend"}}
		}
	case path == checkParent:
		for _, name := range slices.Sorted(maps.Keys(h.checks)) {
			node.Children = append(node.Children, introspect.Node{Name: strings.TrimPrefix(string(CheckPath(name)), CheckPathPrefix)})
		}
	default:
		if _, err := h.lookup(path, CheckIface); err != nil {
			return "", err
		}
		node.Interfaces = []introspect.Interface{
			{Name: CheckIface, Properties: checkPropData},
			prop.IntrospectData, introspect.IntrospectData, introspect.PeerData,
		}
	}
	return dbusname.RenderIntrospection(node), nil
}

var noSignal = []introspect.Annotation{{Name: "org.freedesktop.DBus.Property.EmitsChangedSignal", Value: "false"}}
var constant = []introspect.Annotation{{Name: "org.freedesktop.DBus.Property.EmitsChangedSignal", Value: "const"}}

var managerPropData = []introspect.Property{
	{Name: "Caplanced", Type: "s", Access: "read"},
	{Name: "Status", Type: "s", Access: "read"},
	{Name: "Version", Type: "s", Access: "read", Annotations: constant},
}

var checkPropData = []introspect.Property{
	{Name: "Address", Type: "s", Access: "read"},
	{Name: "Check", Type: "s", Access: "read"},
	{Name: "Detail", Type: "s", Access: "read", Annotations: noSignal},
	{Name: "Failures", Type: "u", Access: "read", Annotations: noSignal},
	{Name: "LastProbeUSec", Type: "t", Access: "read", Annotations: noSignal},
	{Name: "LatencyUSec", Type: "t", Access: "read", Annotations: noSignal},
	{Name: "Name", Type: "s", Access: "read", Annotations: constant},
	{Name: "Reason", Type: "s", Access: "read"},
	{Name: "Service", Type: "s", Access: "read", Annotations: constant},
	{Name: "State", Type: "s", Access: "read"},
	{Name: "Successes", Type: "u", Access: "read", Annotations: noSignal},
}
