// Package dbusapi serves caplanced's D-Bus API, caplanced.dbus(7), API
// version 2: the manager object org.caplance.Caplance1.Manager with the
// ObjectManager, Properties, Introspectable and Peer interfaces, one object
// per service and, beneath its service's, one per backend, kept in step
// with the registry through registry.Watch. It owns what a change of the
// registry shows on the bus (which properties changed, which signals go
// out), the bus name org.caplance.Caplance1, the objects under
// /org/caplance/Caplance1 (and the Introspectable nodes above it), the
// in-daemon authorization of callers and the mapping of errors to
// org.caplance.Caplance1.Error.* names (errors.go, the one place).
//
// It changes services and backends only through the registry (the options
// of a service are checked by config's service rules, options.go) and reads
// counters only through the functions of Info; it must not touch the data
// path, the configuration or the state file itself, nor export anything
// outside its tree.
//
// # Authorization
//
// Every mutating method asks the bus for the caller's credentials
// (GetConnectionCredentials: UnixUserID, UnixGroupIDs, the groups of the
// connecting process) and refuses with AccessDenied, before changing
// anything, unless the caller is root or a member of the admin group
// (AddService, ChangeService, RemoveService, AddBackend, RemoveBackend,
// SetWeight, Drain, Undrain, Reload, SetMaintenance) or root or the health user
// (ReportHealth). The bus policy (packaging/dbus/org.caplance.Caplance1.conf)
// enforces the same rules first on the system bus; this check is what holds
// on a bus without that policy. The group and user are resolved when Export
// runs; when one does not exist only root is allowed, and Export logs it.
package dbusapi

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os/user"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/registry"
)

// The standard interfaces.
const (
	PropertiesIface     = "org.freedesktop.DBus.Properties"
	IntrospectableIface = "org.freedesktop.DBus.Introspectable"
	PeerIface           = "org.freedesktop.DBus.Peer"
)

// The default accounts of caplanced.dbus(7), AUTHORIZATION.
const (
	DefaultAdminGroup = "caplance-admin"
	DefaultHealthUser = "caplance-health"
)

// APIVersion is the manager's APIVersion property: caplanced.dbus(7),
// VERSIONS. Version 2 brought services.
const APIVersion uint32 = 2

// DefaultCounterInterval is how often the counters of services and
// backends are compared
// with the last announced ones, for Info.CounterInterval 0.
const DefaultCounterInterval = 5 * time.Second

// Counters are one backend's traffic counters. InactiveFlows are the TCP
// flows the client has closed (FIN or RST), still tracked for a few seconds;
// ActiveFlows all the others.
type Counters struct {
	ActiveFlows   uint64
	InactiveFlows uint64
	Packets       uint64
	Bytes         uint64
}

// Info is what the manager reports and the hooks it calls. Nil functions
// mean: no counters (zeros), no stats (an empty map), no reload
// (NotSupported).
type Info struct {
	// Version, Roles ("balancer", "receiver"), VIPs, EncapPort and
	// TableSize are the manager's properties of the same names. With a
	// registry, VIPs are its services' instead (and follow them).
	// TableSize is the default of services that set none.
	Version   string
	Roles     []string
	VIPs      []string
	EncapPort uint16
	TableSize uint32
	// State is the initial State property, "" for "running".
	State string
	// Dataplane is the property of the same name: how the balancer's
	// packets flow ("xdp (native)", "raw", …), "" without the balancer
	// role.
	Dataplane string

	// Stats returns GetStats' counters, but those of services: GetStats
	// adds them from ServiceCounters, as "service.<name>.<counter>".
	Stats func() map[string]uint64
	// Counters returns every backend's counters, by name.
	Counters func() map[string]Counters
	// ServiceCounters returns every service's counters, by name.
	ServiceCounters func() map[string]ServiceCounters
	// CounterInterval is how often changed counters are announced as
	// invalidated (PropertiesChanged); 0 is DefaultCounterInterval.
	CounterInterval time.Duration
	// Reload re-reads the configuration, as SIGHUP. Its error is returned
	// to the caller: one wrapping a registry sentinel gets that error's
	// name, any other Failed.
	Reload func() error

	// Routed, Maintenance and AnnouncedVIPs are the initial properties of
	// the same names (SetRoutes changes the last two). SetMaintenance
	// withdraws (on) or restores the routes; SetMaintenance answers
	// NotSupported without Routed.
	Routed         bool
	Maintenance    bool
	AnnouncedVIPs  []string
	SetMaintenance func(on bool) error
	// RouteTable and RouteProtocol are the properties of the same names:
	// where a routed balancer's routes go, 0 when not routed.
	RouteTable    uint32
	RouteProtocol uint8

	// AdminGroup and HealthUser override the accounts of AUTHORIZATION
	// (for a session bus or tests); "" means the default.
	AdminGroup string
	HealthUser string

	// Logger gets the warnings; nil discards them.
	Logger *slog.Logger
}

// Server is the exported API on one connection.
type Server struct {
	conn     *dbus.Conn
	reg      *registry.Registry // nil without the balancer role
	info     Info
	log      *slog.Logger
	auth     authorizer
	mgrProps *prop.Properties

	// mu guards the service and backend objects and serializes every
	// export, unexport and signal of them.
	mu       sync.Mutex
	services map[string]*serviceObject // by service name
	backends map[string]*backendObject // by backend name
	ready    bool                      // the initial lists are applied
	queued   []registry.Change         // changes seen before that
	closed   bool

	stop chan struct{}
	done chan struct{}
}

// Export exports the API on conn, then requests the bus name
// (DoNotQueue); it fails when conn does not become the name's primary
// owner. reg is nil for a caplanced without the balancer role: the backend
// methods then answer NotSupported. The Server stays in step with reg until
// Close.
func Export(conn *dbus.Conn, reg *registry.Registry, info Info) (*Server, error) {
	if info.State == "" {
		info.State = "running"
	}
	if info.CounterInterval <= 0 {
		info.CounterInterval = DefaultCounterInterval
	}
	s := &Server{
		conn:     conn,
		reg:      reg,
		info:     info,
		log:      info.Logger,
		services: map[string]*serviceObject{},
		backends: map[string]*backendObject{},
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.auth = newAuthorizer(cmp.Or(info.AdminGroup, DefaultAdminGroup), cmp.Or(info.HealthUser, DefaultHealthUser), s.log)

	if err := s.exportManager(); err != nil {
		s.unexportAll()
		return nil, err
	}
	if reg != nil {
		// Watch before the lists: a change committed in between is both in
		// a list and queued, and applying it twice is harmless because
		// each change carries the whole service or backend and the upserts
		// compare it with what the object shows.
		reg.Watch(s.onChange)
		services, list := reg.Services(), reg.List()
		s.mu.Lock()
		for _, svc := range services {
			s.upsertService(svc, false)
		}
		for _, b := range list {
			s.upsert(b, false)
		}
		for _, c := range s.queued {
			s.apply(c, false)
		}
		s.queued, s.ready = nil, true
		s.mu.Unlock()
	}
	go s.announceCounters()

	reply, err := conn.RequestName(dbusname.BusName, dbus.NameFlagDoNotQueue)
	if err == nil && reply != dbus.RequestNameReplyPrimaryOwner {
		err = fmt.Errorf("the name is owned by another connection (%v): is another caplanced running?", reply)
	}
	if err != nil {
		s.shutdown()
		return nil, fmt.Errorf("requesting the bus name %s: %w", dbusname.BusName, err)
	}
	return s, nil
}

// Close releases the bus name and unexports everything. Changes of the
// registry after Close are ignored.
func (s *Server) Close() error {
	_, err := s.conn.ReleaseName(dbusname.BusName)
	s.shutdown()
	return err
}

func (s *Server) shutdown() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	s.unexportAll()
}

// SetState sets the State property ("running", "reloading", "stopping").
func (s *Server) SetState(state string) { s.setManagerProp("State", state) }

// SetLastReload sets LastReload (when the last reload, by SIGHUP or Reload,
// ended, in Unix seconds) and LastReloadError (why it was refused, "" when
// it was applied), so that a client sees a refused reload after the fact.
func (s *Server) SetLastReload(at time.Time, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	s.setManagerProp("LastReload", uint64(at.Unix()))
	s.setManagerProp("LastReloadError", msg)
}

// SetRoutes sets the Maintenance and AnnouncedVIPs properties of a routed
// balancer.
func (s *Server) SetRoutes(maintenance bool, announced []string) {
	s.setManagerProp("Maintenance", maintenance)
	s.setManagerProp("AnnouncedVIPs", nonNil(announced))
}

// nonNil is list, or an empty list for nil: a property's type must not
// change.
func nonNil(list []string) []string {
	if list == nil {
		return []string{}
	}
	return slices.Clone(list)
}

// SetConfig sets the properties a reload may change. vips counts only
// without a registry: with one, VIPs follow its services.
func (s *Server) SetConfig(vips []string, encapPort uint16, tableSize uint32) {
	if s.reg == nil {
		s.setManagerProp("VIPs", slices.Clone(vips))
	}
	s.setManagerProp("EncapPort", encapPort)
	s.setManagerProp("TableSize", tableSize)
}

// setManagerProp sets a property and announces it only when it changed.
func (s *Server) setManagerProp(name string, v any) {
	if reflect.DeepEqual(s.mgrProps.GetMust(dbusname.ManagerIface, name), v) {
		return
	}
	s.mgrProps.SetMust(dbusname.ManagerIface, name, v)
}

// authorizer knows who may do what.
type authorizer struct {
	adminGroup string
	adminGID   uint32
	hasAdmin   bool
	healthUser string
	healthUID  uint32
	hasHealth  bool
}

func newAuthorizer(adminGroup, healthUser string, log *slog.Logger) authorizer {
	a := authorizer{adminGroup: adminGroup, healthUser: healthUser}
	if g, err := user.LookupGroup(adminGroup); err != nil {
		log.Warn("admin group not found: only root may change the backend set over D-Bus", "group", adminGroup, "err", err)
	} else if gid, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
		a.adminGID, a.hasAdmin = uint32(gid), true
	}
	if u, err := user.Lookup(healthUser); err != nil {
		log.Warn("health user not found: only root may call ReportHealth", "user", healthUser, "err", err)
	} else if uid, err := strconv.ParseUint(u.Uid, 10, 32); err == nil {
		a.healthUID, a.hasHealth = uint32(uid), true
	}
	return a
}

// right is what a method needs.
type right int

const (
	adminRight  right = iota // root or the admin group
	healthRight              // root or the health user
)

// caller is who called, as the bus reports it.
type caller struct {
	uid    uint32
	groups []uint32
}

// authorize refuses the call of method unless its arguments have the
// method's signature (godbus converts between integer types) and the
// caller has the right. It returns an error wrapping errInvalidArgs or
// errAccessDenied.
func (s *Server) authorize(msg dbus.Message, method string, r right) error {
	if err := checkSignature(msg, method); err != nil {
		return err
	}
	sender, _ := msg.Headers[dbus.FieldSender].Value().(string)
	c, err := s.callerOf(sender)
	if err != nil {
		return errorf(errAccessDenied, "%s: cannot tell who is calling: %v", method, err)
	}
	a := s.auth
	switch {
	case c.uid == 0:
		return nil
	case r == adminRight && a.hasAdmin && slices.Contains(c.groups, a.adminGID):
		return nil
	case r == healthRight && a.hasHealth && c.uid == a.healthUID:
		return nil
	case r == adminRight && a.hasAdmin:
		return errorf(errAccessDenied, "%s needs root or membership in the group %s (the caller is uid %d)", method, a.adminGroup, c.uid)
	case r == adminRight:
		return errorf(errAccessDenied, "%s needs root: the group %s does not exist on this system (the caller is uid %d)", method, a.adminGroup, c.uid)
	case a.hasHealth:
		return errorf(errAccessDenied, "%s may be called only by root or the user %s (the caller is uid %d)", method, a.healthUser, c.uid)
	default:
		return errorf(errAccessDenied, "%s needs root: the user %s does not exist on this system (the caller is uid %d)", method, a.healthUser, c.uid)
	}
}

func (s *Server) callerOf(sender string) (caller, error) {
	if sender == "" {
		return caller{}, errors.New("the message has no sender (not a bus connection)")
	}
	var creds map[string]dbus.Variant
	err := s.conn.BusObject().Call("org.freedesktop.DBus.GetConnectionCredentials", 0, sender).Store(&creds)
	if err != nil {
		return caller{}, err
	}
	uid, ok := creds["UnixUserID"].Value().(uint32)
	if !ok {
		return caller{}, fmt.Errorf("the bus reports no UnixUserID (it has %v)", slices.Sorted(maps.Keys(creds)))
	}
	c := caller{uid: uid}
	if gids, ok := creds["UnixGroupIDs"].Value().([]uint32); ok {
		c.groups = gids
		return c, nil
	}
	// A bus without UnixGroupIDs: the user's groups from the group
	// database.
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return c, nil
	}
	ids, _ := u.GroupIds()
	for _, id := range ids {
		if g, err := strconv.ParseUint(id, 10, 32); err == nil {
			c.groups = append(c.groups, uint32(g))
		}
	}
	return c, nil
}
