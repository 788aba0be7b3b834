// Package announce owns a routed balancer's announcements: it decides which
// VIPs are servable (Want, a pure function of the data path's set and the
// balancer's state) and keeps caplanced's routing table in step with that
// decision (Announcer), adding and deleting routes through package vip,
// which journals them. The host's routing daemon (BIRD, FRR) exports the
// table; nothing here speaks a routing protocol.
//
// It touches only routes of its own protocol in its own table, never a
// route of another protocol; addresses, sysctls, files, D-Bus and systemd
// belong to other packages.
package announce

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/vip"
)

// State is what decides the announcements besides the backends.
type State struct {
	// Ready is set once caplanced has told systemd READY=1.
	Ready bool
	// Maintenance withdraws every route without stopping.
	Maintenance bool
	// Stopping is set at the start of the stop: routes are withdrawn
	// first, and never come back.
	Stopping bool
}

// Servable returns the VIPs of set that have a servable service, sorted:
// one with at least minBackends backends that take new flows (active, with
// a weight above 0). A VIP shared by services is servable while any of
// them is.
func Servable(set model.Set, minBackends int) []netip.Addr {
	taking := map[string]int{}
	for _, b := range set.Backends {
		if b.State == model.Active && b.Weight > 0 {
			taking[b.Service]++
		}
	}
	var out []netip.Addr
	for _, s := range set.Services {
		if taking[s.Name] < minBackends {
			continue
		}
		for _, v := range s.VIPs {
			if !slices.Contains(out, v.Addr) {
				out = append(out, v.Addr)
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Want returns the VIPs to announce: the servable ones while the balancer
// is ready, not in maintenance and not stopping; none otherwise.
func Want(st State, set model.Set, minBackends int) []netip.Addr {
	if !st.Ready || st.Maintenance || st.Stopping {
		return nil
	}
	return Servable(set, minBackends)
}

// Config is an Announcer's fixed settings.
type Config struct {
	// Table and Protocol are where the routes go and what marks them
	// caplanced's.
	Table    uint32
	Protocol uint8
	// MinBackends is config.Balancer.RouteMinBackends.
	MinBackends int
	// Changed, if set, is called after every change of the announced VIPs
	// or of the State, without the Announcer's lock held.
	Changed func()
	// Logger nil means discard.
	Logger *slog.Logger
}

// Status is what an Announcer announces now, and why.
type Status struct {
	State
	// Announced are the VIPs whose routes are in the table, sorted.
	Announced []netip.Addr
	// Servable are the VIPs that would be announced were the balancer
	// ready, out of maintenance and not stopping.
	Servable []netip.Addr
}

// Announcer keeps the routing table holding a route for each VIP Want
// returns. Its changing methods (SetSet, SetReady, SetMaintenance,
// Withdraw) use the vip.Host, so the caller serialises them with its other
// uses of that Host; Status may be called at any time.
type Announcer struct {
	host *vip.Host
	cfg  Config
	log  *slog.Logger

	mu        sync.Mutex // guards the fields below
	st        State
	set       model.Set
	announced []netip.Addr
}

// New returns an Announcer that announces nothing until SetReady.
func New(host *vip.Host, cfg Config) *Announcer {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Announcer{host: host, cfg: cfg, log: log}
}

// SetSet takes the data path's new set (the registry's apply callback) and
// reconciles. A route that cannot be added or deleted is logged, not
// returned: the set is in the data path already.
func (a *Announcer) SetSet(set model.Set) {
	a.mu.Lock()
	a.set = set
	a.mu.Unlock()
	_ = a.reconcile(false)
}

// Reconcile puts the table right again without any change of set or state:
// a route that someone deleted (`ip route flush table 100`), or one that
// failed to be added (a netlink error at ready), is added back. The daemon
// calls it every ReconcileInterval.
func (a *Announcer) Reconcile() error { return a.reconcile(false) }

// ReconcileInterval is how often the daemon calls Reconcile.
const ReconcileInterval = 10 * time.Second

// SetReady starts the announcements (after READY=1).
func (a *Announcer) SetReady() error {
	return a.update(func(st *State) { st.Ready = true })
}

// SetMaintenance withdraws every route (on) or announces the servable VIPs
// again (off).
func (a *Announcer) SetMaintenance(on bool) error {
	return a.update(func(st *State) { st.Maintenance = on })
}

// Withdraw deletes every route for good: the first step of the stop.
func (a *Announcer) Withdraw() error {
	return a.update(func(st *State) { st.Stopping = true })
}

// Status returns what is announced now.
func (a *Announcer) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return Status{State: a.st, Announced: slices.Clone(a.announced), Servable: Servable(a.set, a.cfg.MinBackends)}
}

func (a *Announcer) update(f func(*State)) error {
	a.mu.Lock()
	old := a.st
	f(&a.st)
	changed := a.st != old
	a.mu.Unlock()
	return a.reconcile(changed)
}

// reconcile makes the table hold exactly the routes Want returns, of the
// Announcer's protocol: it adds the missing ones and deletes the others of
// its protocol, including any that an earlier run left; routes of another
// protocol are not even looked at. It keeps going past a failure and
// returns the failures joined. It calls Changed when the announced VIPs
// changed, or stateChanged says the State did.
func (a *Announcer) reconcile(stateChanged bool) error {
	a.mu.Lock()
	want := Want(a.st, a.set, a.cfg.MinBackends)
	before := a.announced
	a.mu.Unlock()

	have, err := vip.Routes(a.cfg.Table, a.cfg.Protocol)
	if err != nil {
		a.log.Error("listing the announced routes", "err", err)
		if stateChanged && a.cfg.Changed != nil {
			a.cfg.Changed()
		}
		return err
	}
	var errs []error
	now := slices.Clone(have)
	for _, v := range want {
		if slices.Contains(have, v) {
			continue
		}
		if err := a.host.AddRoute(a.route(v)); err != nil {
			a.log.Error("announcing a VIP", "vip", v, "err", err)
			errs = append(errs, err)
			continue
		}
		a.log.Info("VIP announced", "vip", v, "table", a.cfg.Table, "protocol", a.cfg.Protocol)
		now = append(now, v)
	}
	for _, v := range have {
		if slices.Contains(want, v) {
			continue
		}
		if err := a.host.DeleteRoute(a.route(v)); err != nil {
			a.log.Error("withdrawing a VIP", "vip", v, "err", err)
			errs = append(errs, err)
			continue
		}
		a.log.Info("VIP withdrawn", "vip", v, "table", a.cfg.Table, "protocol", a.cfg.Protocol)
		now = slices.DeleteFunc(now, func(x netip.Addr) bool { return x == v })
	}
	slices.SortFunc(now, netip.Addr.Compare)
	a.mu.Lock()
	a.announced = now
	a.mu.Unlock()
	if a.cfg.Changed != nil && (stateChanged || !slices.Equal(before, now)) {
		a.cfg.Changed()
	}
	if len(errs) > 0 {
		return fmt.Errorf("routes: %w", errors.Join(errs...))
	}
	return nil
}

func (a *Announcer) route(v netip.Addr) vip.Route {
	return vip.Route{VIP: v, Table: a.cfg.Table, Protocol: a.cfg.Protocol}
}
