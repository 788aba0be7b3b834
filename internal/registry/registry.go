// Package registry owns the live services and backends of a balancer: those
// of the configuration file and those added at run time over D-Bus; each
// service with its VIPs, ports, protocols, hashing and default health check,
// each backend in one service's pool with its weight, admin state (active or
// drained), health (unknown, up or down, with a detail), health check spec
// and origin; and the state file that makes run-time changes survive a
// restart.
//
// Backend names are unique across services, so a backend is named alone; a
// backend's address is unique within its service (one host may serve
// several services, under distinct names). A backend's check is its own,
// else its service's. Services never overlap: no (VIP, protocol, port) is
// taken by two. Services of the configuration file change only there (and a
// reload); their backends' weight and drain state can change at run time.
//
// Every change is validated, then applied to the data path through the
// apply callback given to Open, then written to the state file if it
// touches what the file keeps, and only then committed and announced to the
// watchers. A refused or failed change leaves the backend set, the data
// path and the state file exactly as they were.
//
// It must not touch D-Bus, sockets or the kernel: the apply callback and
// the watchers do that. The only files it touches are the state file and
// the health file (HealthFile).
//
// # What survives a restart
//
//   - Backends of the configuration file come from the file at every start
//     and reload; the registry never writes the configuration file.
//   - A backend added at run time without the runtime option is written to
//     the state file and restored at start; with the runtime option it lasts
//     until caplanced stops, and so does everything about it.
//   - Weight and drain changes (SetWeight, Drain, Undrain) are overrides, to
//     backends of the configuration file and run-time ones alike. Overrides
//     of backends that survive a restart are written to the state file and
//     re-applied at start and at every reload, over the configuration file's
//     weight. Setting a weight back to the backend's own (configured or
//     registered) weight removes the weight override, so the configuration
//     file governs it again; Undrain removes the drain override. An override
//     goes away with its backend: when the backend is removed, or when a
//     reload or start no longer has it.
//   - Health is not state: caplance-healthd reports it again. It starts as
//     unknown, which counts as up (a backend without a health checker is in
//     rotation), and goes back to unknown when the backend's address or
//     check changes. With HealthFile, the last reports are kept in a file
//     of the runtime directory and survive a restart of caplanced (not of
//     the host), so a backend reported down stays down until the next
//     report.
//
// # Precedence
//
// A backend of the configuration file wins over a run-time registration of
// the same name or the same address: the run-time one is dropped, with a
// warning, at start or at the reload that brings the configuration file's
// backend, and the state file is rewritten without it. Overrides are kept by
// name, so a drained run-time backend that moves into the configuration file
// stays drained.
//
// Remove refuses backends of the configuration file (remove them there and
// reload, or drain them, or set their weight to 0): a removal that the next
// reload or restart silently undid would surprise.
//
// # IDs
//
// Each backend name gets a data-path ID the first time the registry sees it
// and keeps it for the registry's life, across weight, drain, health and
// address changes and across removal and re-adding, so that connection
// tracking keeps established flows; an ID is never given to another name.
//
// # State file
//
// JSON, written atomically (a temporary file in the same directory, fsync,
// rename, fsync of the directory) and decoded strictly:
//
//	{
//	  "version": 2,
//	  "services": [
//	    {"name": "dns", "vips": ["192.0.2.53"], "ports": "53",
//	     "protocols": "udp", "hash": "5-tuple", "table_size": 65537}
//	  ],
//	  "backends": [
//	    {"name": "web9", "service": "default", "address": "10.0.1.19", "weight": 100, "check": "tcp://:80"}
//	  ],
//	  "overrides": {
//	    "web1": {"weight": 50, "drained": true}
//	  }
//	}
//
// It is created by the first change that needs it; a missing file is an
// empty one. A file that cannot be read, decoded or validated (unknown
// fields, a missing version or one other than 1 or 2, a malformed service,
// name, address, weight or check, a name listed twice or an address twice in
// one service) makes Open fail with an error naming the file: fix it, or move
// it away to start without it. Version 1, written before services, is read
// as backends of the service "default", which a configuration file of that
// time defines; the next change writes version 2.
//
// # Concurrency
//
// A Registry is safe for concurrent use. Changes are serialized: the apply
// callback is never called concurrently, and whenever no change is under
// way, the set it last installed is the set List returns. Watchers are
// called in commit order, one at a time, without the registry's locks held.
package registry

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/quote"
)

// AdminState is what the operator asked of a backend.
type AdminState string

// Admin states.
const (
	AdminActive  AdminState = "active"
	AdminDrained AdminState = "drained"
)

// Health is what caplance-healthd last reported of a backend.
type Health string

// Health values. HealthUnknown (nothing reported yet) counts as up.
const (
	HealthUnknown Health = "unknown"
	HealthUp      Health = "up"
	HealthDown    Health = "down"
)

// Source says where a backend was defined.
type Source string

// Sources.
const (
	SourceConfig  Source = "config"
	SourceRuntime Source = "runtime"
)

// Backend is one backend as the registry knows it.
type Backend struct {
	// ID is the data path's ID of the name: see the package comment.
	ID   uint32
	Name string
	// Service is the name of the service whose pool the backend is in.
	Service      string
	Address      netip.Addr
	Weight       uint32
	Admin        AdminState
	Health       Health
	HealthDetail string
	// Check is the health check spec that applies, "" for none: the
	// backend's own, else its service's.
	Check  string
	Source Source
	// Persistent says whether the backend survives a restart of caplanced:
	// true for the configuration file's backends and for run-time ones
	// added without the runtime option.
	Persistent bool
}

// Service is one service as the registry knows it.
type Service struct {
	model.Service
	Source Source
	// Persistent says whether the service survives a restart: true for
	// the configuration file's services and for run-time ones added
	// without the runtime option.
	Persistent bool
}

// AddOptions are Add's optional settings.
type AddOptions struct {
	// Service is the name of the service to add the backend to; "" is the
	// only service, an error when there are several.
	Service string
	// Weight is nil for config.DefaultWeight.
	Weight *uint32
	// Check is a health check spec, "" for none.
	Check string
	// Runtime keeps the backend out of the state file: it lasts until
	// caplanced stops.
	Runtime bool
}

// The kinds of error. Every error the registry returns wraps exactly one of
// them (test with errors.Is); its message says what was wrong.
var (
	// ErrInvalidArgument: a malformed argument, or a change that makes no
	// sense in the backend's state.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: no backend or service of that name.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a backend of that name or address, or a service of
	// that name, exists already.
	ErrAlreadyExists = errors.New("already exists")
	// ErrUnchanged: the backend is already as asked (drained, not drained,
	// added with the same service, address, weight, check and persistence):
	// nothing changed, and a client that wanted that state has it.
	ErrUnchanged = errors.New("unchanged")
	// ErrFailed: the change was valid but could not be made (the data path
	// refused it, or the state file could not be written); nothing changed.
	// It wraps the cause as well.
	ErrFailed = errors.New("failed")
)

// regError is the registry's error: a kind (one of the Err* sentinels), a
// message for a person, and for ErrFailed the cause.
type regError struct {
	kind  error
	msg   string
	cause error
}

func (e *regError) Error() string { return e.msg }

// Unwrap gives the kind and the cause, for errors.Is and errors.As.
func (e *regError) Unwrap() []error {
	if e.cause != nil {
		return []error{e.kind, e.cause}
	}
	return []error{e.kind}
}

func errorf(kind error, format string, args ...any) error {
	return &regError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

func failed(cause error, format string, args ...any) error {
	return &regError{kind: ErrFailed, msg: fmt.Sprintf(format, args...), cause: cause}
}

// ChangeKind says what happened to a backend.
type ChangeKind int

// Change kinds.
const (
	Added ChangeKind = iota + 1
	Removed
	Updated
)

func (k ChangeKind) String() string {
	switch k {
	case Added:
		return "added"
	case Removed:
		return "removed"
	case Updated:
		return "updated"
	}
	return fmt.Sprintf("ChangeKind(%d)", int(k))
}

// Change is one committed change of one backend or one service, as it was
// and as it is. What a watcher shows of it is the watcher's business: the
// D-Bus API, for one, works out which of its properties changed. A
// service's Added comes before its backends' Added, their Removed before
// its Removed.
type Change struct {
	Kind ChangeKind
	// Old is the backend before the change; the zero Backend for Added.
	Old Backend
	// New is the backend after the change; the zero Backend for Removed.
	New Backend
	// IsService says the change is of a service: OldService and
	// NewService, not Old and New.
	IsService              bool
	OldService, NewService Service
}

// registration is a backend as defined, before overrides and health.
type registration struct {
	service string
	address netip.Addr
	weight  uint32
	check   string
	// persistent is only read for run-time backends.
	persistent bool
}

// override is a weight or drain change made at run time.
type override struct {
	weight    uint32
	hasWeight bool
	drained   bool
}

func (o override) empty() bool { return !o.hasWeight && !o.drained }

// serviceReg is a service as defined.
type serviceReg struct {
	svc        model.Service
	fromConfig bool
	// persistent is only read for run-time services.
	persistent bool
}

type healthReport struct {
	health Health
	detail string
}

// state is one version of everything the registry holds. A committed state
// is never modified: a change works on a clone. Write runtime, overrides
// and health only through the helpers of cow.go.
type state struct {
	// services holds every service, of the configuration file and of run
	// time. It is shared between states and never modified in place: a
	// change of services replaces it (setServices).
	services  map[string]serviceReg
	config    map[string]registration
	runtime   map[string]registration
	overrides map[string]override
	health    map[string]healthReport // absent: unknown
	// noRoute is derived with list: the backends without a route, and
	// why (see routes.go).
	noRoute map[string]string
	// base is the state this one was cloned from, until derive.
	base *state
	// own and dirty: see cow.go.
	own   owned
	dirty []string
	// list is derived from the rest by (*Registry).derive: every backend,
	// sorted by name. In a clone being changed it is still the original's
	// until derive runs. serviceList is derived likewise: every service,
	// sorted by name.
	list        []Backend
	serviceList []Service
}

func newState() *state {
	return &state{
		services:  map[string]serviceReg{},
		config:    map[string]registration{},
		runtime:   map[string]registration{},
		overrides: map[string]override{},
		health:    map[string]healthReport{},
		own:       owned{runtime: true, overrides: true, health: true},
	}
}

func (s *state) clone() *state {
	return &state{
		// Shared, never modified in place: setConfig replaces config, and
		// the others are copied at their first write (cow.go). Copying
		// thousands of backends at every change cost more than the rest
		// of the change but the Maglev build (docs/benchmarks.md).
		services:  s.services,
		config:    s.config,
		runtime:   s.runtime,
		overrides: s.overrides,
		health:    s.health,
		// Shared, never modified: derive replaces them.
		list:        s.list,
		serviceList: s.serviceList,
		noRoute:     s.noRoute,
		base:        s,
	}
}

// lookup returns a backend's registration and whether it comes from the
// configuration file.
func (s *state) lookup(name string) (reg registration, fromConfig, ok bool) {
	if reg, ok := s.config[name]; ok {
		return reg, true, true
	}
	reg, ok = s.runtime[name]
	return reg, false, ok
}

// get returns the derived backend of that name.
func (s *state) get(name string) (Backend, bool) {
	i, ok := slices.BinarySearchFunc(s.list, name, func(b Backend, n string) int { return strings.Compare(b.Name, n) })
	if !ok {
		return Backend{}, false
	}
	return s.list[i], true
}

// owner returns the backend of service svc using addr, if any.
func (s *state) owner(svc string, addr netip.Addr) (string, bool) {
	for _, b := range s.list {
		if b.Address == addr && b.Service == svc {
			return b.Name, true
		}
	}
	return "", false
}

// vips returns every service's VIPs: no backend may have one as its
// address, or its packets would come back to the balancer.
func (s *state) vips() []netip.Addr {
	var out []netip.Addr
	for _, sr := range s.services {
		for _, v := range sr.svc.VIPs {
			if !slices.Contains(out, v.Addr) {
				out = append(out, v.Addr)
			}
		}
	}
	return out
}

// check is the health check that applies to reg: its own, else its
// service's.
func (s *state) check(reg registration) string {
	if reg.check != "" {
		return reg.check
	}
	return s.services[reg.service].svc.Check
}

// event is a change waiting for delivery, with the watchers registered when
// it was committed.
type event struct {
	change   Change
	watchers []func(Change)
}

// Registry is the live backend set. It is safe for concurrent use.
type Registry struct {
	statePath string
	apply     func(model.Set) error

	// opMu serializes changes: validation, apply, the state file and the
	// commit. The fields below it are only used with it held.
	opMu   sync.Mutex
	ids    map[string]uint32
	nextID uint32
	// applied is the set the data path has; unknown after a failed
	// rollback, which makes the next change apply unconditionally.
	applied      model.Set
	appliedKnown bool
	// onDisk is the state file's content (canonical encoding), nil when the
	// file does not exist; diskUnknown is set when a failed rollback left it
	// unknown, which makes the next change write it unconditionally.
	onDisk      []byte
	diskUnknown bool
	// healthPath is the health file (HealthFile), "" for none; healthOnDisk
	// its content, nil when unknown.
	healthPath   string
	healthLog    *slog.Logger
	healthOnDisk []byte
	// routeErr, askRoutes and maxBackends: see routes.go.
	routeErr    func(netip.Addr) error
	askRoutes   bool
	maxBackends int
	// scratch is derive's reusable list (see sortedNames).
	scratch []named

	// mu guards cur, pending and watchers; it is held only briefly, never
	// across apply, the state file or a watcher.
	mu       sync.Mutex
	cur      *state
	pending  []event
	watchers []func(Change)

	// notifyMu makes one goroutine at a time deliver pending events.
	notifyMu sync.Mutex
}

// Open builds the registry from the configuration file's services and
// backends and the state file at statePath, applies the set once through
// apply, and returns it with warnings for the log (run-time services,
// registrations or overrides in the state file that no longer fit and were
// dropped).
//
// apply must install the set it is given in the data path, all or nothing:
// when it returns an error the data path must still have the previous set.
// It is called with the registry's change lock held, never concurrently; it
// may call List and Get (which return the previous set) but must not change
// the registry.
func Open(statePath string, services []model.Service, backends []config.Backend, apply func(model.Set) error, opts ...Option) (*Registry, []string, error) {
	if statePath == "" {
		return nil, nil, errorf(ErrInvalidArgument, "no state file path given")
	}
	r := &Registry{
		statePath: statePath,
		apply:     apply,
		ids:       map[string]uint32{},
		cur:       newState(),
	}
	for _, o := range opts {
		o(r)
	}
	r.cur.list = []Backend{}
	next := newState()
	if _, err := r.setConfig(next, services, backends); err != nil {
		return nil, nil, err
	}
	file, onDisk, err := readStateFile(statePath)
	if err != nil {
		return nil, nil, err
	}
	r.onDisk = onDisk
	warnings := r.restore(next, file)
	warnings = append(warnings, r.restoreHealth(next)...)
	r.derive(next)
	dp := dataSet(next)
	if err := apply(dp); err != nil {
		return nil, nil, failed(err, "applying the services and backends to the data path: %v", err)
	}
	r.applied, r.appliedKnown = dp, true
	if enc := encodeState(next); r.needWrite(enc) {
		if err := writeFileAtomic(statePath, enc); err != nil {
			warnings = append(warnings, fmt.Sprintf("state file %s: rewriting it without the dropped entries: %v (it will be rewritten at the next change)", statePath, err))
		} else {
			r.onDisk = enc
		}
	}
	r.writeHealth(nil, next)
	r.cur = next
	return r, warnings, nil
}

// setConfig validates the configuration file's services and backends and
// puts them in s, in place of the previous ones; s's run-time services stay
// (dropConflicts drops those the file now takes the name or traffic of).
// They went through config's validation already when they came from a
// file; the cross-checks apply again here for other callers.
func (r *Registry) setConfig(s *state, services []model.Service, backends []config.Backend) ([]string, error) {
	var problems, warnings []string
	svcs := make(map[string]serviceReg, len(services)+len(s.services))
	for name, sr := range s.services {
		if !sr.fromConfig {
			svcs[name] = sr
		}
	}
	var fileServices []model.Service
	for _, svc := range services {
		if prev, dup := svcs[svc.Name]; dup && prev.fromConfig {
			problems = append(problems, fmt.Sprintf("service %s: defined twice", quote.Q(svc.Name)))
			continue
		} else if dup {
			warnings = append(warnings, fmt.Sprintf("run-time service %s dropped: the configuration file defines a service of that name, which wins", quote.Q(svc.Name)))
		}
		for _, other := range fileServices {
			if vip, proto, port, ok := model.Overlap(svc, other); ok {
				problems = append(problems, overlapMessage(svc.Name, other.Name, vip, proto, port))
			}
		}
		fileServices = append(fileServices, svc)
		svcs[svc.Name] = serviceReg{svc: svc, fromConfig: true, persistent: true}
	}
	s.services = svcs
	vips := s.vips()
	s.config = make(map[string]registration, len(backends))
	set := config.NewBackendSet(vips)
	for _, b := range backends {
		place := fmt.Sprintf("backend %s", quote.Q(b.Name))
		if sr, ok := svcs[b.Service]; !ok || !sr.fromConfig {
			problems = append(problems, fmt.Sprintf("%s: no service %s in the configuration file", place, quote.Q(b.Service)))
			continue
		}
		w := int64(b.Weight)
		got, bad := set.Add(config.BackendSpec{Service: b.Service, Name: b.Name, Address: addrString(b.Address), Weight: &w, Check: b.Check})
		for _, p := range bad {
			problems = append(problems, fmt.Sprintf("%s: %v", place, p))
		}
		s.config[b.Name] = registration{service: b.Service, address: got.Address, weight: got.Weight, check: b.Check, persistent: true}
	}
	if len(problems) > 0 {
		return nil, errorf(ErrInvalidArgument, "configuration: %s", strings.Join(problems, "; "))
	}
	return warnings, nil
}

// overlapMessage says which traffic two services would both take.
func overlapMessage(a, b string, vip netip.Addr, proto model.Protocols, port uint16) string {
	where := fmt.Sprintf("%s port %d", proto, port)
	if port == 0 {
		where = fmt.Sprintf("every %s port", proto)
	}
	return fmt.Sprintf("services %s and %s both take %s of VIP %s", quote.Q(a), quote.Q(b), where, vip)
}

// addrString is a's text, "" (missing) for the zero Addr.
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// dropConflicts removes the run-time services and backends that the
// configuration file's (already in s) leave no room for, and says why.
func (r *Registry) dropConflicts(s *state) []string {
	var warnings []string
	for _, name := range slices.Sorted(maps.Keys(s.services)) {
		sr := s.services[name]
		if sr.fromConfig {
			continue
		}
		why := ""
		for _, other := range s.services {
			if !other.fromConfig {
				continue
			}
			if vip, proto, port, ok := model.Overlap(sr.svc, other.svc); ok {
				why = overlapMessage(name, other.svc.Name, vip, proto, port) + ", and the configuration file's wins"
				break
			}
		}
		if why == "" {
			continue
		}
		s.deleteService(name)
		warnings = append(warnings, fmt.Sprintf("run-time service %s dropped: %s", quote.Q(name), why))
	}
	vips := s.vips()
	cfgAddr := map[string]map[netip.Addr]string{}
	for name, reg := range s.config {
		if cfgAddr[reg.service] == nil {
			cfgAddr[reg.service] = map[netip.Addr]string{}
		}
		cfgAddr[reg.service][reg.address] = name
	}
	for _, name := range slices.Sorted(maps.Keys(s.runtime)) {
		reg := s.runtime[name]
		var why string
		if _, ok := s.config[name]; ok {
			why = "the configuration file defines a backend of that name, which wins"
		} else if _, ok := s.services[reg.service]; !ok {
			why = fmt.Sprintf("its service %s is gone", quote.Q(reg.service))
		} else if other, ok := cfgAddr[reg.service][reg.address]; ok {
			why = fmt.Sprintf("the configuration file gives its address to backend %q of the same service, which wins", other)
		} else if slices.Contains(vips, reg.address) {
			why = "its address is a VIP of this balancer"
		} else {
			continue
		}
		s.deleteRuntime(name)
		warnings = append(warnings, fmt.Sprintf("run-time backend %q (%s) dropped: %s", name, reg.address, why))
	}
	return warnings
}

// dropOrphans removes the overrides and health of backends that s no longer
// has, and names the dropped overrides.
func dropOrphans(s *state) []string {
	var warnings []string
	for _, name := range slices.Sorted(maps.Keys(s.overrides)) {
		if _, _, ok := s.lookup(name); !ok {
			warnings = append(warnings, fmt.Sprintf("override of backend %q (%s) dropped: no such backend any more", name, describe(s.overrides[name])))
			s.deleteOverride(name)
		}
	}
	for name := range s.health {
		if _, _, ok := s.lookup(name); !ok {
			s.deleteHealth(name)
		}
	}
	return warnings
}

func describe(o override) string {
	var parts []string
	if o.hasWeight {
		parts = append(parts, fmt.Sprintf("weight %d", o.weight))
	}
	if o.drained {
		parts = append(parts, "drained")
	}
	return strings.Join(parts, ", ")
}

// derive fills s.list, giving new names their IDs. When it can tell which
// backends the change touched, it derives only those (see patch).
func (r *Registry) derive(s *state) {
	base := s.base
	s.base = nil
	if base == nil || !sameMap(base.services, s.services) {
		s.serviceList = deriveServices(s)
	}
	if names, ok := r.touched(base, s); ok {
		r.patch(s, names)
		return
	}
	list := make([]Backend, 0, len(s.config)+len(s.runtime))
	noRoute := map[string]string{}
	r.scratch = sortedNames(s, r.scratch)
	for _, e := range r.scratch {
		list = append(list, r.backend(s, e, noRoute))
	}
	clear(r.scratch) // its pointers would keep the last list alive
	s.list, s.noRoute = list, noRoute
}

// backend derives e's backend in s, giving a new name its ID.
func (r *Registry) backend(s *state, e named, noRoute map[string]string) Backend {
	name, reg := e.name, e.reg
	src, persistent := SourceRuntime, reg.persistent
	if e.fromConfig {
		src, persistent = SourceConfig, true
	}
	b := Backend{
		Name: name, Service: reg.service, Address: reg.address, Weight: reg.weight,
		Admin: AdminActive, Health: HealthUnknown, Check: s.check(reg),
		Source: src, Persistent: persistent,
	}
	if o, ok := s.overrides[name]; ok {
		if o.hasWeight {
			b.Weight = o.weight
		}
		if o.drained {
			b.Admin = AdminDrained
		}
	}
	if h, ok := s.health[name]; ok {
		b.Health, b.HealthDetail = h.health, h.detail
	}
	r.routeDown(s, e, &b, noRoute)
	if e.prev != nil {
		b.ID = e.prev.ID // the ID of a name never changes
		return b
	}
	id, ok := r.ids[name]
	if !ok {
		r.nextID++
		id = r.nextID
		r.ids[name] = id
	}
	b.ID = id
	return b
}

// deriveServices lists s's services, sorted by name.
func deriveServices(s *state) []Service {
	out := make([]Service, 0, len(s.services))
	for _, name := range slices.Sorted(maps.Keys(s.services)) {
		sr := s.services[name]
		src, persistent := SourceRuntime, sr.persistent
		if sr.fromConfig {
			src, persistent = SourceConfig, true
		}
		out = append(out, Service{Service: sr.svc, Source: src, Persistent: persistent})
	}
	return out
}

// dataSet is the set the balancer gets: s's services and dataPath(s.list).
func dataSet(s *state) model.Set {
	set := model.Set{Services: make([]model.Service, len(s.serviceList)), Backends: dataPath(s.list)}
	for i, svc := range s.serviceList {
		set.Services[i] = svc.Service
	}
	return set
}

// dataPath is the backends as the balancer gets them: Down when reported
// down, else Draining when drained, else Active; weights as they are
// (Maglev gives weight 0 no slot).
func dataPath(list []Backend) []model.Backend {
	out := make([]model.Backend, len(list))
	for i, b := range list {
		st := model.Active
		switch {
		case b.Health == HealthDown:
			st = model.Down
		case b.Admin == AdminDrained:
			st = model.Draining
		}
		out[i] = model.Backend{ID: b.ID, Name: b.Name, Service: b.Service, Address: b.Address, Weight: b.Weight, State: st}
	}
	return out
}

// sameSet says whether the data path would get nothing new from b.
func sameSet(a, b model.Set) bool {
	return slices.Equal(a.Backends, b.Backends) && slices.EqualFunc(a.Services, b.Services, model.Service.Equal)
}

// diff lists the changes from old to next: services added or updated, then
// backends removed, updated and added, then services removed, each by name.
func diff(old, next *state) []Change {
	var removed, updated, added []Change
	i, j := 0, 0
	for i < len(old.list) || j < len(next.list) {
		switch {
		case j == len(next.list) || (i < len(old.list) && old.list[i].Name < next.list[j].Name):
			removed = append(removed, Change{Kind: Removed, Old: old.list[i]})
			i++
		case i == len(old.list) || next.list[j].Name < old.list[i].Name:
			added = append(added, Change{Kind: Added, New: next.list[j]})
			j++
		default:
			if old.list[i] != next.list[j] {
				updated = append(updated, Change{Kind: Updated, Old: old.list[i], New: next.list[j]})
			}
			i++
			j++
		}
	}
	var svcChanged, svcRemoved []Change
	if !sameMap(old.services, next.services) {
		was := map[string]Service{}
		for _, svc := range old.serviceList {
			was[svc.Name] = svc
		}
		for _, svc := range next.serviceList {
			prev, ok := was[svc.Name]
			delete(was, svc.Name)
			switch {
			case !ok:
				svcChanged = append(svcChanged, Change{Kind: Added, IsService: true, NewService: svc})
			case !prev.Service.Equal(svc.Service) || prev.Source != svc.Source || prev.Persistent != svc.Persistent:
				svcChanged = append(svcChanged, Change{Kind: Updated, IsService: true, OldService: prev, NewService: svc})
			}
		}
		for _, name := range slices.Sorted(maps.Keys(was)) {
			svcRemoved = append(svcRemoved, Change{Kind: Removed, IsService: true, OldService: was[name]})
		}
	}
	return slices.Concat(svcChanged, removed, updated, added, svcRemoved)
}

// change runs f on a clone of the current state and makes the result
// current: apply, state file, commit. f returns an error to refuse the
// change. what names the change in ErrFailed messages. It returns the
// committed state (the current one when refused or failed).
func (r *Registry) change(what string, f func(next *state) error) (*state, error) {
	r.opMu.Lock()
	s, err := r.changeLocked(what, f)
	r.opMu.Unlock()
	r.deliver()
	return s, err
}

func (r *Registry) changeLocked(what string, f func(next *state) error) (*state, error) {
	cur := r.cur
	next := cur.clone()
	if err := f(next); err != nil {
		return cur, err
	}
	settle(cur, next)
	r.derive(next)
	if err := r.checkLimit(what, cur, next); err != nil {
		return cur, err
	}
	changes := diff(cur, next)

	// The data path has cur's set unless a failed rollback left it unknown.
	oldDP, oldKnown := r.applied, r.appliedKnown
	dp := dataSet(next)
	applied := false
	if !r.appliedKnown || !sameSet(dp, r.applied) {
		if err := r.apply(dp); err != nil {
			return cur, failed(err, "%s: the data path refused the change: %v; nothing changed", what, err)
		}
		applied = true
		r.applied, r.appliedKnown = dp, true
	}
	if enc, ok := r.stateEncoding(cur, next); ok && r.needWrite(enc) {
		if err := r.writeState(enc); err != nil {
			msg := fmt.Sprintf("%s: writing the state file %s: %v; nothing changed", what, r.statePath, err)
			if r.diskUnknown {
				msg = fmt.Sprintf("%s: writing the state file %s: %v; the file may hold the change or not, the next change rewrites it", what, r.statePath, err)
			}
			if applied {
				if !oldKnown {
					oldDP = dataSet(cur)
				}
				if rerr := r.apply(oldDP); rerr != nil {
					r.appliedKnown = false
					msg = fmt.Sprintf("%s: writing the state file %s: %v; then restoring the previous backend set in the data path failed too: %v (the next change retries)", what, r.statePath, err, rerr)
					err = errors.Join(err, rerr)
				} else {
					r.applied = oldDP
				}
			}
			return cur, &regError{kind: ErrFailed, msg: msg, cause: err}
		}
	}

	r.writeHealth(cur, next)
	r.mu.Lock()
	r.cur = next
	if len(r.watchers) > 0 {
		for _, c := range changes {
			r.pending = append(r.pending, event{change: c, watchers: r.watchers})
		}
	}
	r.mu.Unlock()
	return next, nil
}

// needWrite says whether the state file must be written to hold enc.
func (r *Registry) needWrite(enc []byte) bool {
	if r.diskUnknown {
		return true
	}
	if r.onDisk == nil {
		return !bytes.Equal(enc, emptyEncoding)
	}
	return !bytes.Equal(enc, r.onDisk)
}

// writeState writes enc to the state file; when it fails after the rename
// it puts the previous content back, so a failed write changes nothing.
func (r *Registry) writeState(enc []byte) error {
	renamed, err := writeFile(r.statePath, enc)
	if err == nil {
		r.onDisk, r.diskUnknown = enc, false
		return nil
	}
	if renamed {
		var rerr error
		if r.onDisk == nil {
			rerr = removeFile(r.statePath)
		} else {
			rerr = writeFileAtomic(r.statePath, r.onDisk)
		}
		if rerr != nil {
			r.diskUnknown = true
			err = fmt.Errorf("%w; putting the previous content back: %w", err, rerr)
		}
	}
	return err
}

// deliver hands pending events to their watchers, in commit order, one
// goroutine at a time. Every change method calls it after releasing opMu,
// so its own events have been delivered (by it or by another goroutine)
// when it returns.
func (r *Registry) deliver() {
	r.notifyMu.Lock()
	defer r.notifyMu.Unlock()
	for {
		r.mu.Lock()
		q := r.pending
		r.pending = nil
		r.mu.Unlock()
		if len(q) == 0 {
			return
		}
		for _, e := range q {
			for _, fn := range e.watchers {
				fn(e.change)
			}
		}
	}
}

// Watch registers fn to be called with every change committed from now on
// (by every method, including Reload and ReportHealth), in commit order,
// never concurrently, and never with the registry's locks held, so fn may
// call List and Get. fn must not change the registry (that would
// deadlock). A change method returns only after fn has seen its changes.
// Open announces nothing: read the initial set with List.
func (r *Registry) Watch(fn func(Change)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// A new slice each time: queued events keep the watchers they had.
	r.watchers = append(slices.Clip(r.watchers), fn)
}

// List returns every backend, sorted by name.
func (r *Registry) List() []Backend {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.cur.list)
}

// Get returns the backend of that name.
func (r *Registry) Get(name string) (Backend, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur.get(name)
}

// Add registers a run-time backend and puts it in rotation. Without
// opts.Runtime it is written to the state file and restored at start. A
// run-time backend added again as it is (same service, address, weight as
// added, check and persistence) is ErrUnchanged; one that differs, or a
// backend of the configuration file, is ErrAlreadyExists.
func (r *Registry) Add(name, address string, opts AddOptions) (Backend, error) {
	place := fmt.Sprintf("adding backend %s", quote.Q(name))
	spec := config.BackendSpec{Service: opts.Service, Name: name, Address: address, Check: opts.Check}
	if opts.Weight != nil {
		w := int64(*opts.Weight)
		spec.Weight = &w
	}
	s, err := r.change(place, func(next *state) error {
		svc, err := next.pickService(place, opts.Service)
		if err != nil {
			return err
		}
		// Every problem at once, as the configuration file reports them.
		got, problems := config.CheckBackend(spec, next.vips())
		if reg, fromConfig, ok := next.lookup(name); ok && !fromConfig && len(problems) == 0 {
			asked := registration{service: svc, address: got.Address, weight: got.Weight, check: opts.Check, persistent: !opts.Runtime}
			if reg == asked {
				return errorf(ErrUnchanged, "backend %s: already added, with that service, address, weight and check", quote.Q(name))
			}
			return errorf(ErrAlreadyExists, "%s: it exists already with %s (remove it first)", place, differences(reg, asked))
		}
		if _, _, ok := next.lookup(name); ok {
			problems = append(problems, config.NameTaken())
		}
		if other, ok := next.owner(svc, got.Address); ok && got.Address.IsValid() {
			problems = append(problems, config.AddressTaken(got.Address, other))
		}
		if len(problems) > 0 {
			return backendError(place, problems)
		}
		if n, size := next.poolSize(svc), next.services[svc].svc.TableSize; n >= size {
			return errorf(ErrInvalidArgument, "%s: service %s has %d backends, as many as its table_size (%d) has slots", place, quote.Q(svc), n, size)
		}
		next.setRuntime(name, registration{service: svc, address: got.Address, weight: got.Weight, check: opts.Check, persistent: !opts.Runtime})
		return nil
	})
	if err != nil {
		return Backend{}, err
	}
	b, _ := s.get(name)
	return b, nil
}

// differences names what differs between a backend's registration and
// another: "weight 50, not 60; check none, not \"tcp://…\"".
func differences(have, asked registration) string {
	var d []string
	show := func(what string, have, asked any) {
		if have != asked {
			d = append(d, fmt.Sprintf("%s %v, not %v", what, have, asked))
		}
	}
	show("service", quote.Q(have.service), quote.Q(asked.service))
	show("address", have.address, asked.address)
	show("weight", have.weight, asked.weight)
	show("check", quote.Q(have.check), quote.Q(asked.check))
	show("persistence", persistence(have.persistent), persistence(asked.persistent))
	return strings.Join(d, "; ")
}

func persistence(persistent bool) string {
	if persistent {
		return "persistent"
	}
	return "run-time only"
}

// poolSize is how many backends service svc has.
func (s *state) poolSize(svc string) int {
	n := 0
	for _, b := range s.list {
		if b.Service == svc {
			n++
		}
	}
	return n
}

// pickService returns the service a backend is added to: name, or the
// only service when name is "".
func (s *state) pickService(place, name string) (string, error) {
	if name != "" {
		if _, ok := s.services[name]; !ok {
			return "", errorf(ErrNotFound, "%s: service %s: no such service", place, quote.Q(name))
		}
		return name, nil
	}
	switch len(s.services) {
	case 0:
		return "", errorf(ErrInvalidArgument, "%s: there is no service yet: add one first", place)
	case 1:
		for name := range s.services {
			return name, nil
		}
	}
	return "", errorf(ErrInvalidArgument, "%s: there are %d services: say which one (%s)", place, len(s.services),
		strings.Join(slices.Sorted(maps.Keys(s.services)), ", "))
}

// backendError is the error of a backend's problems after place: kind
// ErrAlreadyExists when all of them are a name or address taken, else
// ErrInvalidArgument.
func backendError(place string, problems []config.Problem) error {
	kind := ErrAlreadyExists
	msgs := make([]string, len(problems))
	for i, p := range problems {
		if !p.Taken {
			kind = ErrInvalidArgument
		}
		msgs[i] = p.Error()
	}
	return errorf(kind, "%s: %s", place, strings.Join(msgs, "; "))
}

// Remove takes a run-time backend out, with its overrides. Backends of the
// configuration file are refused with ErrInvalidArgument.
func (r *Registry) Remove(name string) error {
	_, err := r.change(fmt.Sprintf("removing backend %q", name), func(next *state) error {
		_, fromConfig, ok := next.lookup(name)
		switch {
		case !ok:
			return notFound(name)
		case fromConfig:
			return errorf(ErrInvalidArgument, "backend %q is defined in the configuration file: remove it there and reload (or drain it, or set its weight to 0)", name)
		}
		next.deleteRuntime(name)
		next.deleteOverride(name)
		return nil
	})
	return err
}

func notFound(name string) error {
	return errorf(ErrNotFound, "backend %s: no such backend", quote.Q(name))
}

// SetWeight changes a backend's weight (0-10000; 0 behaves like drain).
// The change is an override: see the package comment.
func (r *Registry) SetWeight(name string, weight int64) error {
	if err := config.CheckWeight(weight); err != nil {
		return errorf(ErrInvalidArgument, "backend %q: %v", name, err)
	}
	_, err := r.change(fmt.Sprintf("setting the weight of backend %q", name), func(next *state) error {
		reg, _, ok := next.lookup(name)
		if !ok {
			return notFound(name)
		}
		o := next.overrides[name]
		o.weight, o.hasWeight = uint32(weight), uint32(weight) != reg.weight
		if !o.hasWeight {
			o.weight = 0
		}
		setOverride(next, name, o)
		return nil
	})
	return err
}

func setOverride(s *state, name string, o override) {
	if o.empty() {
		s.deleteOverride(name)
	} else {
		s.putOverride(name, o)
	}
}

// Drain stops new flows to a backend; its established flows continue.
// Draining a drained backend changes nothing: ErrUnchanged.
func (r *Registry) Drain(name string) error {
	return r.setDrained(name, true)
}

// Undrain puts a drained backend back in rotation. Undraining one that is
// not drained changes nothing: ErrUnchanged.
func (r *Registry) Undrain(name string) error {
	return r.setDrained(name, false)
}

func (r *Registry) setDrained(name string, drained bool) error {
	verb := "draining"
	if !drained {
		verb = "undraining"
	}
	_, err := r.change(fmt.Sprintf("%s backend %q", verb, name), func(next *state) error {
		if _, _, ok := next.lookup(name); !ok {
			return notFound(name)
		}
		o := next.overrides[name]
		switch {
		case drained && o.drained:
			return errorf(ErrUnchanged, "backend %s: already drained", quote.Q(name))
		case !drained && !o.drained:
			return errorf(ErrUnchanged, "backend %s: already undrained (not drained)", quote.Q(name))
		}
		o.drained = drained
		setOverride(next, name, o)
		return nil
	})
	return err
}

// ReportHealth records caplance-healthd's verdict on a backend. changed is
// false when the backend already had that health and detail; then nothing
// is applied or announced.
func (r *Registry) ReportHealth(name string, healthy bool, detail string) (changed bool, err error) {
	h := healthReport{health: HealthDown, detail: detail}
	word := "down"
	if healthy {
		h.health, word = HealthUp, "up"
	}
	_, err = r.change(fmt.Sprintf("marking backend %q %s", name, word), func(next *state) error {
		if _, _, ok := next.lookup(name); !ok {
			return notFound(name)
		}
		if old, ok := next.health[name]; ok && old == h {
			return nil
		}
		next.setHealth(name, h)
		changed = true
		return nil
	})
	return changed && err == nil, err
}

// Reload replaces the configuration file's services and backends (validated
// again here). Run-time services and backends stay, except those that the
// file now takes the name or traffic (services) or name or address
// (backends) of, and the backends of services that are gone; overrides stay
// for the names that still exist; IDs and health stay for the names that
// stay (health is reset when the address or check changed). It returns
// warnings for what was dropped.
func (r *Registry) Reload(services []model.Service, backends []config.Backend) ([]string, error) {
	var warnings []string
	_, err := r.change("reloading the configuration", func(next *state) error {
		var err error
		if warnings, err = r.setConfig(next, services, backends); err != nil {
			return err
		}
		warnings = append(warnings, r.dropConflicts(next)...)
		warnings = append(warnings, dropOrphans(next)...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return warnings, nil
}
