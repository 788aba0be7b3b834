package healthd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusname"
)

// follower is healthd's mirror of caplanced over D-Bus: whether it is on
// the bus and under which unique name, its encap port, the VIPs of each of
// its services, and the Service, Address, Check (the effective one: the
// backend's own, else its service's) and Source of each of its backends.
// It learns them from
// caplanced's signals and re-reads them all (GetManagedObjects) whenever
// caplanced comes back or a read failed, and tells events what changed.
// It knows nothing of probes or reports; its methods run on the daemon
// loop's goroutine, which calls events synchronously.
type follower struct {
	conn   *dbus.Conn
	log    *slog.Logger
	events followerEvents
	// retryIn is the delay before trying again a sync that failed.
	retryIn time.Duration
	// signals carries the signals of the match rules (and any other sent
	// to this connection); closed when the connection is lost.
	signals chan *dbus.Signal
	// retry fires when a failed sync is due again.
	retry *time.Timer

	// owner is the unique name of the connection that owns caplanced's
	// bus name, "" while none does: the only sender whose signals count.
	owner     string
	synced    bool // the last sync with caplanced succeeded
	encapPort uint16
	// vips is what tunnel checks need of each service's VIPs.
	vips     map[string]tunnelVIPs
	backends map[string]mirrored
}

// mirrored is what caplanced's D-Bus object says of one backend.
type mirrored struct {
	service string
	address netip.Addr
	spec    string // Check, "" for none
	source  string // "config" or "runtime"
}

// followerEvents receives what the follower learns about caplanced.
type followerEvents interface {
	// upsert: the backend name is new, or its service, address, check or
	// source changed. Backend names are unique across services.
	upsert(name, service string, addr netip.Addr, spec, source string)
	// remove: the backend name is gone.
	remove(name string)
	// setTunnel: the VIPs of tunnel checks of a service (vips, by service
	// name; the follower's own map, not to be changed) or the encap port
	// changed.
	setTunnel(vips map[string]tunnelVIPs, port uint16)
	// resynced: every backend of caplanced is known again, after an
	// upsert or remove for each one that changed.
	resynced()
}

// follow subscribes conn to caplanced's signals. Call it only once conn
// owns org.caplance.Health1: until then the bus policy that lets only
// caplanced's user send it signals does not apply. Nothing sent before the
// subscription reaches signals (godbus drops signals no channel takes);
// onSignal still checks every sender. close undoes the subscription.
func follow(conn *dbus.Conn, log *slog.Logger, events followerEvents, retryIn time.Duration) (*follower, error) {
	f := &follower{
		conn: conn, log: log, events: events, retryIn: retryIn,
		// The signals are ordered only as long as this buffer does not
		// fill (godbus delivers the overflow from goroutines).
		signals:  make(chan *dbus.Signal, 4096),
		retry:    time.NewTimer(time.Hour),
		vips:     map[string]tunnelVIPs{},
		backends: map[string]mirrored{},
	}
	f.retry.Stop()
	conn.Signal(f.signals)
	for i, rule := range matchRules {
		if err := conn.AddMatchSignal(rule...); err != nil {
			f.unsubscribe(i)
			return nil, fmt.Errorf("D-Bus: subscribing to caplanced's signals: %w", err)
		}
	}
	return f, nil
}

// close undoes follow's subscription.
func (f *follower) close() {
	f.retry.Stop()
	f.unsubscribe(len(matchRules))
}

// unsubscribe removes the first n match rules and the signal channel.
func (f *follower) unsubscribe(n int) {
	for _, rule := range matchRules[:n] {
		_ = f.conn.RemoveMatchSignal(rule...)
	}
	f.conn.RemoveSignal(f.signals)
}

// matchRules are the signals healthd follows: caplanced's coming and
// going, its services and backends being added and removed, the services'
// VIPs, the backends' Address, Check and Source, and the manager's
// EncapPort.
var matchRules = [][]dbus.MatchOption{
	{dbus.WithMatchSender(busDriver), dbus.WithMatchInterface(busDriver),
		dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, dbusname.BusName)},
	{dbus.WithMatchSender(dbusname.BusName), dbus.WithMatchObjectPath(dbusname.ManagerPath), dbus.WithMatchInterface(dbusname.ObjectManagerIface)},
	{dbus.WithMatchSender(dbusname.BusName), dbus.WithMatchPathNamespace(servicesPath),
		dbus.WithMatchInterface(propertiesIface), dbus.WithMatchMember("PropertiesChanged"), dbus.WithMatchArg(0, dbusname.ServiceIface)},
	{dbus.WithMatchSender(dbusname.BusName), dbus.WithMatchPathNamespace(servicesPath),
		dbus.WithMatchInterface(propertiesIface), dbus.WithMatchMember("PropertiesChanged"), dbus.WithMatchArg(0, dbusname.BackendIface)},
	{dbus.WithMatchSender(dbusname.BusName), dbus.WithMatchObjectPath(dbusname.ManagerPath),
		dbus.WithMatchInterface(propertiesIface), dbus.WithMatchMember("PropertiesChanged"), dbus.WithMatchArg(0, dbusname.ManagerIface)},
}

// servicesPath is the parent of caplanced's services, and their backends
// beneath them.
var servicesPath = dbus.ObjectPath(strings.TrimSuffix(dbusname.ServicePathPrefix, "/"))

// busDriver is the sender of the bus's own signals (NameOwnerChanged),
// which no client can use.
const busDriver = "org.freedesktop.DBus"

// start asks the bus whether caplanced runs and, if it does, syncs with
// it. Call it after follow: a change of owner from then on comes as
// NameOwnerChanged.
func (f *follower) start(ctx context.Context) {
	owner, err := f.nameOwner(ctx)
	if err != nil {
		f.log.Warn("asking the bus whether caplanced runs", "err", err)
	}
	f.owner = owner
	if f.owner != "" {
		f.resync(ctx)
	}
}

// onRetry is due when retry fires: a sync that failed is tried again.
func (f *follower) onRetry(ctx context.Context) {
	if f.owner != "" {
		f.resync(ctx)
	}
}

// resync syncs now and, if that fails, again after retryIn.
func (f *follower) resync(ctx context.Context) {
	f.retry.Stop()
	if !f.sync(ctx) {
		f.retry.Reset(f.retryIn)
	}
}

// nameOwner asks the bus for the unique name of caplanced's connection, ""
// when it is not on the bus.
func (f *follower) nameOwner(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var owner string
	err := f.conn.BusObject().CallWithContext(ctx, busDriver+".GetNameOwner", 0, dbusname.BusName).Store(&owner)
	var e dbus.Error
	if errors.As(err, &e) && e.Name == busDriver+".Error.NameHasNoOwner" {
		return "", nil
	}
	return owner, err
}

// onSignal follows one signal, and syncs when caplanced has (re)appeared.
// Any connection can send this one signals, whatever the match rules say:
// only the bus's NameOwnerChanged and the signals of caplanced's current
// connection are believed.
func (f *follower) onSignal(ctx context.Context, sig *dbus.Signal) {
	f.log.Debug("signal", "sender", sig.Sender, "path", sig.Path, "name", sig.Name)
	if sig.Name == busDriver+".NameOwnerChanged" {
		if sig.Sender != busDriver {
			f.log.Debug("ignoring a NameOwnerChanged not sent by the bus", "sender", sig.Sender)
			return
		}
		var name, oldOwner, newOwner string
		if dbus.Store(sig.Body, &name, &oldOwner, &newOwner) != nil || name != dbusname.BusName {
			return
		}
		f.owner = newOwner
		if newOwner == "" {
			f.synced = false
			f.log.Warn("caplanced left the bus: probing on, reports wait until it returns", "backends", len(f.backends))
			return
		}
		f.log.Info("caplanced is on the bus: syncing", "owner", newOwner)
		f.resync(ctx)
		return
	}
	if f.owner == "" || sig.Sender != f.owner {
		f.log.Debug("ignoring a signal not sent by caplanced", "sender", sig.Sender, "caplanced", f.owner)
		return
	}
	switch sig.Name {
	case dbusname.ObjectManagerIface + ".InterfacesAdded":
		var path dbus.ObjectPath
		var ifaces map[string]map[string]dbus.Variant
		if dbus.Store(sig.Body, &path, &ifaces) != nil {
			return
		}
		if props, ok := ifaces[dbusname.ServiceIface]; ok {
			f.setServiceFromProps(path, props)
		}
		if props, ok := ifaces[dbusname.BackendIface]; ok {
			f.upsertFromProps(path, props)
		}
	case dbusname.ObjectManagerIface + ".InterfacesRemoved":
		var path dbus.ObjectPath
		var ifaces []string
		if dbus.Store(sig.Body, &path, &ifaces) != nil {
			return
		}
		if _, name, ok := dbusname.BackendName(path); ok && slices.Contains(ifaces, dbusname.BackendIface) {
			f.remove(name)
		}
		if name, ok := dbusname.ServiceName(path); ok && slices.Contains(ifaces, dbusname.ServiceIface) {
			f.removeService(name)
		}
	case propertiesIface + ".PropertiesChanged":
		var iface string
		var changed map[string]dbus.Variant
		var invalidated []string
		if dbus.Store(sig.Body, &iface, &changed, &invalidated) != nil {
			return
		}
		switch {
		case sig.Path == dbusname.ManagerPath && iface == dbusname.ManagerIface:
			if v, ok := changed["EncapPort"].Value().(uint16); ok {
				f.setEncapPort(v)
			}
		case iface == dbusname.ServiceIface:
			name, ok := dbusname.ServiceName(sig.Path)
			if _, known := f.vips[name]; ok && known {
				if v, ok := changed["VIPs"]; ok {
					f.setService(name, newTunnelVIPs(v))
				}
			}
		case iface == dbusname.BackendIface:
			_, name, ok := dbusname.BackendName(sig.Path)
			b, known := f.backends[name]
			if !ok || !known {
				return
			}
			if v, ok := changed["Address"].Value().(string); ok {
				b.address, _ = netip.ParseAddr(v)
			}
			if v, ok := changed["Check"].Value().(string); ok {
				b.spec = v
			}
			if v, ok := changed["Source"].Value().(string); ok {
				b.source = v
			}
			f.upsert(name, b)
		}
	}
}

// tunnelVIPs is what the tunnel checks of a service's backends that do not
// name a VIP need of the service's VIPs: the lowest of each family (its
// VIPs property, a map from VIP to ports, has no order); invalid when the
// service has none of that family.
type tunnelVIPs struct{ v4, v6 netip.Addr }

// newTunnelVIPs reads a service's VIPs property.
func newTunnelVIPs(v dbus.Variant) tunnelVIPs {
	vips, _ := v.Value().(map[string]string)
	var t tunnelVIPs
	for text := range vips {
		a, err := netip.ParseAddr(text)
		if err != nil {
			continue
		}
		low := &t.v6
		if a.Is4() {
			low = &t.v4
		}
		if !low.IsValid() || a.Less(*low) {
			*low = a
		}
	}
	return t
}

// forBackend is the VIP of the tunnel checks of the backend at addr: the
// lowest VIP of the backend's own family, so that a dual-stack service's
// IPv6 backends are probed 6-in-6 and its IPv4 ones 4-in-4, as its clients
// of each family reach them; the lowest of the other family when the
// service has none of the backend's (4-in-6, 6-in-4).
func (t tunnelVIPs) forBackend(addr netip.Addr) netip.Addr {
	own, other := t.v6, t.v4
	if addr.Is4() {
		own, other = t.v4, t.v6
	}
	if own.IsValid() {
		return own
	}
	return other
}

// sync reads caplanced's encap port, services and backends, tells events
// what changed and then resynced. It reports whether it succeeded.
func (f *follower) sync(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	// Read from the connection whose signals are believed.
	obj := f.conn.Object(f.owner, dbusname.ManagerPath)
	var props map[string]dbus.Variant
	err := obj.CallWithContext(ctx, propertiesIface+".GetAll", dbus.FlagNoAutoStart, dbusname.ManagerIface).Store(&props)
	var objects map[dbus.ObjectPath]map[string]map[string]dbus.Variant
	if err == nil {
		err = obj.CallWithContext(ctx, dbusname.ObjectManagerIface+".GetManagedObjects", dbus.FlagNoAutoStart).Store(&objects)
	}
	if err != nil {
		f.synced = false
		f.log.Warn("reading caplanced's backends failed; will try again", "err", err, "retry_in", f.retryIn)
		return false
	}
	port, _ := props["EncapPort"].Value().(uint16)
	f.setEncapPort(port)
	// The services first: their VIPs aim their backends' tunnel checks.
	paths := slices.Sorted(maps.Keys(objects))
	services := map[string]bool{}
	for _, path := range paths {
		if p, ok := objects[path][dbusname.ServiceIface]; ok {
			if name := f.setServiceFromProps(path, p); name != "" {
				services[name] = true
			}
		}
	}
	seen := map[string]bool{}
	for _, path := range paths {
		if p, ok := objects[path][dbusname.BackendIface]; ok {
			if name := f.upsertFromProps(path, p); name != "" {
				seen[name] = true
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(f.backends)) {
		if !seen[name] {
			f.remove(name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(f.vips)) {
		if !services[name] {
			f.removeService(name)
		}
	}
	f.synced = true
	f.events.resynced()
	return true
}

// upsertFromProps applies a backend object's properties; it returns the
// backend's name, "" when they are not a backend's.
func (f *follower) upsertFromProps(path dbus.ObjectPath, props map[string]dbus.Variant) string {
	service, name, ok := dbusname.BackendName(path)
	if !ok {
		return ""
	}
	addrText, _ := props["Address"].Value().(string)
	addr, _ := netip.ParseAddr(addrText)
	spec, _ := props["Check"].Value().(string)
	source, _ := props["Source"].Value().(string)
	f.upsert(name, mirrored{service: service, address: addr, spec: spec, source: source})
	return name
}

// setServiceFromProps applies a service object's properties; it returns
// the service's name, "" when they are not a service's.
func (f *follower) setServiceFromProps(path dbus.ObjectPath, props map[string]dbus.Variant) string {
	name, ok := dbusname.ServiceName(path)
	if !ok {
		return ""
	}
	f.setService(name, newTunnelVIPs(props["VIPs"]))
	return name
}

// setService makes the tunnel VIPs of service name vips, and tells events
// if that changed them.
func (f *follower) setService(name string, vips tunnelVIPs) {
	if old, ok := f.vips[name]; ok && old == vips {
		return
	}
	f.vips[name] = vips
	f.events.setTunnel(f.vips, f.encapPort)
}

// removeService forgets the service name (its backends are gone before
// it), and tells events if it knew it.
func (f *follower) removeService(name string) {
	if _, ok := f.vips[name]; !ok {
		return
	}
	delete(f.vips, name)
	f.events.setTunnel(f.vips, f.encapPort)
}

// upsert makes the backend name be b, and tells events if that changed it.
func (f *follower) upsert(name string, b mirrored) {
	if old, ok := f.backends[name]; ok && old == b {
		return
	}
	f.backends[name] = b
	f.events.upsert(name, b.service, b.address, b.spec, b.source)
}

// remove forgets the backend name, and tells events if it knew it.
func (f *follower) remove(name string) {
	if _, ok := f.backends[name]; !ok {
		return
	}
	delete(f.backends, name)
	f.events.remove(name)
}

// setEncapPort makes the encap port port, and tells events if that
// changed it.
func (f *follower) setEncapPort(port uint16) {
	if port == f.encapPort {
		return
	}
	f.encapPort = port
	f.events.setTunnel(f.vips, port)
}
