// Package daemon is caplanced's lifecycle: it turns a configuration into a
// running balancer and/or receiver, tells systemd how far it got, and on
// SIGTERM or SIGINT takes everything down again in bounded time, leaving the
// host as it found it. It also cleans what a crashed run left behind.
//
// It wires the other packages together and owns the order of the steps; the
// packets, the kernel state and the rules are theirs.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/godbus/dbus/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/announce"
	"github.com/caplance/caplance/internal/balancer"
	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/conntrack"
	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusconn"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/metrics"
	"github.com/caplance/caplance/internal/nft"
	"github.com/caplance/caplance/internal/owner"
	"github.com/caplance/caplance/internal/receiver"
	"github.com/caplance/caplance/internal/registry"
	"github.com/caplance/caplance/internal/version"
	"github.com/caplance/caplance/internal/vip"
	"github.com/caplance/caplance/internal/watchdog"
	"github.com/caplance/caplance/internal/xdp"
)

// Options are caplanced's command-line settings.
type Options struct {
	Config *config.Config
	// ConfigPath is re-read on SIGHUP.
	ConfigPath string
	// StateDir holds what must survive a restart: backends.json.
	StateDir string
	// RuntimeDir holds the host-change journal, the stats file and the
	// health file.
	RuntimeDir string
	// Bus is where the D-Bus API is served: "system", "session", "none" or
	// a bus address.
	Bus string
	// StopTimeout bounds the shutdown after SIGTERM.
	StopTimeout time.Duration
	Logger      *slog.Logger
	// TestWedge is the value of the test hook TestWedgeEnv, "" for none.
	TestWedge string
}

// StatsFile is the name, in the runtime directory, of the counters file
// written every StatsInterval.
const StatsFile = "stats.json"

// HealthFile is the name, in the runtime directory, of caplance-healthd's
// last reports (see registry.HealthFile). It is kept at stop and by
// --cleanup, so that it bridges a restart; a reboot empties it.
const HealthFile = "health.json"

// BackendsFile is the name, in the state directory, of the run-time backend
// registrations and overrides (see package registry).
const BackendsFile = "backends.json"

// StatsInterval is how often the stats file is rewritten.
const StatsInterval = time.Second

// ErrForced is returned when a second signal cut the shutdown short.
var ErrForced = errors.New("stopped by a second signal before cleanup finished")

// running is what Run has set up, in the order it must come down.
type running struct {
	log *slog.Logger
	cfg *config.Config
	reg *registry.Registry
	bus *dbus.Conn
	api *dbusapi.Server
	// reloads carries Reload calls from the D-Bus API to the main loop,
	// which serialises them with SIGHUP.
	reloads chan chan error
	// backendsChanged tells the main loop that the registry changed, so
	// that it re-sends STATUS (which counts the backends).
	backendsChanged chan struct{}
	// loopChecks carries the watchdog's liveness checks to the main loop,
	// which answers by closing the channel.
	loopChecks chan chan struct{}
	// reloadErr is why the last reload was refused, nil after a successful
	// one; STATUS= shows it.
	reloadErr error
	owner     *owner.Owner
	// hostMu serialises the uses of host once the daemon serves: applySet
	// (the registry's goroutines), the Announcer's changes (maintenance
	// from D-Bus, readiness and the stop from the main goroutine).
	hostMu sync.Mutex
	host   *vip.Host
	// ann announces the VIPs of a routed balancer, nil when not routed;
	// maintenancePath is its maintenance flag.
	ann             *announce.Announcer
	maintenancePath string
	// nftOwned says the nft table exists, holding rules (setRules); tunnel
	// is the receiver's part of it, nil for none.
	nftOwned bool
	rules    nft.Rules
	tunnel   *nft.Tunnel
	// vips are the balancer's VIPs as attached, on iface ("": by subnet);
	// only applySet, which the registry serialises, uses them. iface is
	// fixed at start (a reload cannot change it), so applySet, called from
	// D-Bus goroutines too, never reads cfg, which a reload replaces.
	vips     []netip.Addr
	iface    string
	bal      *balancer.Balancer
	rcv      *receiver.Receiver
	userMode bool
	// metrics counts the table builds and reloads; metricsLn is where
	// they are served with the data path's counters (nil: nowhere), and
	// metricsReg what is served.
	metrics    *metrics.Caplanced
	metricsLn  net.Listener
	metricsReg *prometheus.Registry
}

// Run starts the configured roles, reports READY=1, serves until SIGTERM or
// SIGINT and then cleans up. A second signal during the cleanup makes it
// return ErrForced at once.
func Run(opts Options) error {
	log := opts.Logger
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(hups)

	holdStop := opts.TestWedge == holdStopWedge
	var wedge bool
	var wedgeAfter time.Duration
	if !holdStop {
		var err error
		if wedge, wedgeAfter, err = watchdog.ParseTestWedge(opts.TestWedge, "worker", "caplanced(8)"); err != nil {
			return err
		}
	}
	r := &running{log: log, cfg: opts.Config, reloads: make(chan chan error), loopChecks: make(chan chan struct{}),
		backendsChanged: make(chan struct{}, 1), metrics: metrics.NewCaplanced()}
	if err := r.start(opts); err != nil {
		r.stop()
		return err
	}
	// The goroutines that run beside the main loop, supervised as one
	// group: they all end when ctx does, and the first error of one of
	// them stops the daemon and is returned by Run.
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	if r.bal != nil {
		g.Go(func() error {
			if err := r.bal.Run(gctx); err != nil {
				return fmt.Errorf("balancer: %w", err)
			}
			return nil
		})
	}
	if r.rcv != nil {
		g.Go(func() error {
			if err := r.rcv.Run(gctx); err != nil {
				return fmt.Errorf("receiver: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error { r.writeStatsEvery(gctx, opts.RuntimeDir); return nil })
	if r.metricsLn != nil {
		g.Go(func() error { return metrics.Serve(gctx, r.metricsLn, r.metricsReg, log) })
	}

	status := r.status()
	notify(log, "READY=1\nSTATUS="+status)
	log.Info("ready", "status", status)
	// Routes only once ready; they re-send STATUS= through routesChanged.
	r.announceReady()
	if interval := watchdog.Interval(log); interval > 0 {
		log.Info("watchdog on", "ping_every", interval)
		g.Go(func() error { r.startWatchdog(gctx, interval); return nil })
	}
	if wedge {
		go watchdog.WedgeAfter(gctx, wedgeAfter, r.wedge)
	}

	sig := r.serve(opts.ConfigPath, sigs, hups, gctx.Done())
	if sig != nil {
		log.Info("stopping", "signal", sig.String(), "timeout", opts.StopTimeout)
	} else {
		log.Error("stopping: a supervised goroutine failed", "timeout", opts.StopTimeout)
	}
	r.setState("stopping")
	if r.ann != nil {
		// Withdraw first, stop later: the routers move the flows away
		// while this balancer still forwards them. A failed data path has
		// nothing to keep forwarding.
		delay := r.cfg.Balancer.WithdrawDelay
		if sig == nil {
			delay = 0
		}
		r.withdraw(delay, sigs, gctx.Done())
	}
	notify(log, "STOPPING=1\nSTATUS=stopping")

	// The stop order: the goroutines first (the workers finish their
	// batch), then the bus name, the sockets and the host changes.
	finished := make(chan error, 1)
	go func() {
		if holdStop {
			holdTheStop(log)
		}
		cancel()
		err := g.Wait()
		r.stop()
		if err := removeStats(opts.RuntimeDir); err != nil {
			log.Warn("removing the stats file", "err", err)
		}
		finished <- err
	}()
	select {
	case err := <-finished:
		if err != nil {
			log.Error("stopped after a failure", "err", err)
			return err
		}
		log.Info("stopped cleanly")
		return nil
	case <-time.After(opts.StopTimeout):
		return fmt.Errorf("cleanup did not finish within %s; run caplanced --cleanup", opts.StopTimeout)
	case sig := <-sigs:
		log.Warn("second signal: exiting before cleanup finished", "signal", sig.String())
		return ErrForced
	}
}

// serve is the main loop: it serialises reloads (SIGHUP and D-Bus) with
// the watchdog's liveness checks and the STATUS= updates until SIGTERM or
// SIGINT, or until failed is closed (a supervised goroutine ended with an
// error). It returns the signal, nil when failed was closed.
func (r *running) serve(configPath string, sigs, hups <-chan os.Signal, failed <-chan struct{}) os.Signal {
	// A routed balancer puts its table right every so often: a route
	// someone deleted, or one that failed to be added, comes back.
	var reannounce <-chan time.Time
	if r.ann != nil {
		t := time.NewTicker(announce.ReconcileInterval)
		defer t.Stop()
		reannounce = t.C
	}
	for {
		select {
		case <-reannounce:
			r.hostMu.Lock()
			_ = r.ann.Reconcile() // logged by the Announcer
			r.hostMu.Unlock()
		case sig := <-sigs:
			return sig
		case <-failed:
			return nil
		case <-hups:
			_ = r.reload(configPath)
		case reply := <-r.reloads:
			reply <- r.reload(configPath)
		case answered := <-r.loopChecks:
			close(answered)
		case <-r.backendsChanged:
			notify(r.log, "STATUS="+r.status())
		}
	}
}

// start performs every step up to READY, each announced in STATUS=, in an
// order that keeps the host's stack silent: the nft table before the VIPs,
// the VIPs before the sockets that bind to them.
func (r *running) start(opts Options) error {
	cfg := opts.Config
	step := func(s string) { notify(r.log, "STATUS="+s); r.log.Info(s) }

	// First of all: nothing on the host is touched while another caplanced
	// owns this network namespace.
	o, err := claim(opts.RuntimeDir)
	if err != nil {
		return err
	}
	r.owner = o
	// A state file the registry would refuse fails the start now, before
	// the host is touched, rather than after the VIPs went up.
	if cfg.Balancer != nil {
		if err := registry.CheckStateFile(filepath.Join(opts.StateDir, BackendsFile)); err != nil {
			return err
		}
	}

	step("cleaning up after earlier runs")
	host, err := cleanup(opts.RuntimeDir, r.log)
	if err != nil {
		return err
	}
	r.host = host

	if cfg.Receiver != nil {
		step("attaching receiver VIPs to lo")
		for _, a := range cfg.Receiver.VIPs {
			if err := host.AttachLoopback(a); err != nil {
				return err
			}
		}
		if err := host.ReceiverSysctls(); err != nil {
			return err
		}
		tunnel, err := r.startDecapsulation(cfg.Receiver)
		if err != nil {
			return err
		}
		if tunnel != nil {
			r.tunnel = tunnel
			step("installing nftables table " + nft.TableName)
			if err := r.setRules(nft.Rules{Tunnel: tunnel}); err != nil {
				return err
			}
		}
	}
	// A balancer's VIPs and their nft rules come with its services
	// (applySet), after the cleanup so that an earlier run's VIPs are gone.
	if cfg.Balancer != nil {
		if err := r.startBalancer(cfg, opts.StateDir, opts.RuntimeDir, step); err != nil {
			return err
		}
	}
	if err := r.startMetrics(cfg.Metrics.Listen, step); err != nil {
		return err
	}
	if opts.Bus != "none" {
		step("taking the bus name " + dbusname.BusName)
		if err := r.startAPI(opts.Bus); err != nil {
			return err
		}
	}
	return nil
}

// startMetrics opens the metrics endpoint, when there is one: the socket
// systemd passes (caplanced-metrics.socket), else metrics.listen. Run
// serves it once ready.
func (r *running) startMetrics(listen string, step func(string)) error {
	ln, err := metrics.Listen(listen, "metrics.listen")
	if err != nil || ln == nil {
		return err
	}
	r.metricsLn = ln
	step("opening the metrics endpoint on " + ln.Addr().String())
	src := metrics.Source{}
	if r.bal != nil {
		src.Balancer, src.Dataplane = r.bal.Stats, r.bal.Dataplane()
		src.ConntrackCapacity = r.cfg.Balancer.ConntrackSize
	}
	if r.reg != nil {
		src.Backends = r.reg.List
	}
	if r.rcv != nil {
		src.Receiver = r.rcv.Stats
	}
	r.metricsReg, err = r.metrics.Registry(src)
	return err
}

// startAPI serves the D-Bus API; the objects are exported before the name
// is taken, so a client that sees the name finds them.
func (r *running) startAPI(bus string) error {
	var err error
	r.bus, err = dbusconn.Dial(bus)
	if err != nil {
		return fmt.Errorf("D-Bus: %w (--bus=none runs without the API)", err)
	}
	info := dbusapi.Info{
		Version: version.Version,
		Stats:   r.apiStats,
		Reload: func() error {
			reply := make(chan error)
			r.reloads <- reply
			return <-reply
		},
		Logger: r.log,
	}
	if b := r.cfg.Balancer; b != nil {
		info.Roles = append(info.Roles, "balancer")
		info.EncapPort, info.TableSize = b.EncapPort, uint32(b.TableSize)
		info.Dataplane = r.bal.Dataplane()
		info.Counters = r.apiCounters
		info.ServiceCounters = r.apiServiceCounters
	}
	if r.ann != nil {
		st := r.ann.Status()
		info.Routed, info.Maintenance, info.AnnouncedVIPs = true, st.Maintenance, addrStrings(st.Announced)
		info.SetMaintenance = r.setMaintenance
		info.RouteTable, info.RouteProtocol = r.cfg.Balancer.RouteTable, r.cfg.Balancer.RouteProtocol
	}
	if rc := r.cfg.Receiver; rc != nil {
		info.Roles = append(info.Roles, "receiver")
		if info.EncapPort == 0 {
			info.EncapPort = rc.EncapPort
		}
	}
	r.api, err = dbusapi.Export(r.bus, r.reg, info)
	if err != nil {
		return fmt.Errorf("D-Bus: %w", err)
	}
	return nil
}

// apiStats is GetStats: the balancer's counters, flat.
func (r *running) apiStats() map[string]uint64 {
	out := map[string]uint64{}
	if r.bal == nil {
		return out
	}
	st := r.bal.Stats()
	out["received"], out["forwarded"] = st.Received, st.Forwarded
	out["conntrack_size"], out["conntrack_evictions"] = uint64(st.ConntrackSize), st.ConntrackEvictions
	for reason, n := range st.Drops {
		out["drop."+reason] = n
	}
	for reason, n := range st.ViaRaw {
		out["xdp_via_raw."+reason] = n
	}
	if r.bal.Dataplane() != "raw" {
		out["xdp_received"] = st.XDPReceived
	}
	for _, b := range st.Backends {
		out["active_flows"] += b.ActiveFlows
		out["inactive_flows"] += b.InactiveFlows
	}
	return out
}

// apiServiceCounters are the services' counters for their D-Bus properties
// and GetStats.
func (r *running) apiServiceCounters() map[string]dbusapi.ServiceCounters {
	out := map[string]dbusapi.ServiceCounters{}
	for _, s := range r.bal.Stats().Services {
		out[s.Name] = dbusapi.ServiceCounters{Packets: s.Packets, Bytes: s.Bytes, NewFlows: s.NewFlows,
			ActiveFlows: s.ActiveFlows, InactiveFlows: s.InactiveFlows, Drops: s.Drops}
	}
	return out
}

// apiCounters are the backends' counters for their D-Bus properties.
func (r *running) apiCounters() map[string]dbusapi.Counters {
	out := map[string]dbusapi.Counters{}
	for _, b := range r.bal.Stats().Backends {
		out[b.Name] = dbusapi.Counters{ActiveFlows: b.ActiveFlows, InactiveFlows: b.InactiveFlows,
			Packets: b.Packets, Bytes: b.Bytes}
	}
	return out
}

func (r *running) setState(state string) {
	if r.api != nil {
		r.api.SetState(state)
	}
}

func (r *running) startBalancer(cfg *config.Config, stateDir, runtimeDir string, step func(string)) error {
	b := cfg.Balancer
	r.iface = b.Interface
	step("opening the data path")
	ct, err := conntrack.New(b.ConntrackSize, conntrack.Timeouts{
		TCP: b.TCPTimeout, UDP: b.UDPTimeout, Other: conntrack.DefaultTimeouts.Other,
		TCPClosing: b.TCPClosingTimeout,
	})
	if err != nil {
		return fmt.Errorf("connection tracking: %w", err)
	}
	bal, err := r.openBalancer(cfg, ct)
	if err != nil {
		return err
	}
	r.bal = bal
	if b.Routed {
		step("preparing routed VIPs (on lo, announced in table " + fmt.Sprint(b.RouteTable) + ")")
		if err := r.startAnnouncer(b, stateDir); err != nil {
			return err
		}
	}
	step("attaching VIPs and building the Maglev tables")
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	reg, warnings, err := registry.Open(filepath.Join(stateDir, BackendsFile), cfg.Services, cfg.Backends, r.applySet,
		registry.HealthFile(filepath.Join(runtimeDir, HealthFile), r.log))
	for _, w := range warnings {
		r.log.Warn(w)
	}
	if err != nil {
		return err
	}
	r.reg = reg
	if err := r.followRoutes(b.MaxBackends); err != nil {
		return err
	}
	reg.Watch(func(registry.Change) {
		select {
		case r.backendsChanged <- struct{}{}:
		default: // one pending update covers any number of changes
		}
	})
	return nil
}

// openBalancer opens the balancer on the data plane that dataplane asks
// for: auto tries AF_XDP and falls back to raw sockets on any error,
// saying why; xdp fails the start when AF_XDP cannot be set up; raw never
// touches XDP.
func (r *running) openBalancer(cfg *config.Config, ct *conntrack.Table) (*balancer.Balancer, error) {
	b := cfg.Balancer
	bc := balancer.Config{EncapPort: b.EncapPort, Workers: b.Workers, Conntrack: ct, Logger: r.log,
		TableBuilt: r.metrics.TableBuilt}
	if b.Dataplane != config.DataplaneRaw {
		iface, err := xdpInterface(cfg)
		if err == nil {
			bc.XDP = &balancer.XDP{Interface: iface}
			var bal *balancer.Balancer
			if bal, err = balancer.Open(bc); err == nil {
				r.log.Info("data plane", "dataplane", bal.Dataplane(), "interface", iface)
				return bal, nil
			}
		}
		switch {
		case b.Dataplane == config.DataplaneXDP:
			return nil, fmt.Errorf("dataplane xdp: %w (dataplane auto would fall back to raw sockets)", err)
		case errors.Is(err, xdp.ErrUnsupported):
			r.log.Info("AF_XDP is not available here: using raw sockets", "reason", err)
		default:
			r.log.Warn("AF_XDP could not be set up: using raw sockets", "reason", err)
		}
		bc.XDP = nil
	}
	bal, err := balancer.Open(bc)
	if err != nil {
		return nil, err
	}
	r.log.Info("data plane", "dataplane", bal.Dataplane())
	return bal, nil
}

// xdpInterface is where AF_XDP attaches: balancer.interface, else the one
// interface the file's VIPs are attached to by subnet. A routed balancer's
// VIPs are on lo, its packets come in anywhere: it must name the interface.
func xdpInterface(cfg *config.Config) (string, error) {
	b := cfg.Balancer
	switch {
	case b.Interface != "":
		return b.Interface, nil
	case b.Routed:
		return "", errors.New("a routed balancer's packets may come in on any interface: set balancer.interface to the one AF_XDP takes them from")
	}
	iface := ""
	for _, a := range vipsOf(cfg.Services) {
		name, err := vip.InterfaceFor(a)
		if err != nil {
			return "", err
		}
		if iface != "" && name != iface {
			return "", fmt.Errorf("the VIPs are on several interfaces (%s and %s): set balancer.interface to the one AF_XDP takes packets from", iface, name)
		}
		iface = name
	}
	if iface == "" {
		return "", errors.New("no VIP in the configuration and no balancer.interface: set balancer.interface to the one AF_XDP takes packets from")
	}
	return iface, nil
}

// reload re-reads the configuration (SIGHUP) and applies new services and
// backends without a restart, as the D-Bus methods would: VIPs attached and
// detached, the nft table replaced, only the changed services' tables
// rebuilt; established flows of backends that stay keep their backend.
// Anything else that changed needs a restart and is refused, as is an
// invalid file: the running configuration stays.
func (r *running) reload(path string) error {
	notify(r.log, fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
	r.setState("reloading")
	defer func() {
		r.setState("running")
		notify(r.log, "READY=1\nSTATUS="+r.status())
	}()
	cfg, err := config.Load(path)
	if err == nil {
		err = r.applyReload(cfg)
	}
	r.reloadErr = err
	if r.api != nil {
		r.api.SetLastReload(time.Now(), err)
	}
	r.metrics.Reloaded(err)
	if err != nil {
		r.log.Error("reload refused; the running configuration stays", "err", err)
		return fmt.Errorf("reload refused, the running configuration stays: %w", err)
	}
	r.cfg = cfg
	r.log.Info("reloaded", "services", len(cfg.Services), "backends", len(cfg.Backends))
	return nil
}

func (r *running) applyReload(cfg *config.Config) error {
	old, next := *r.cfg, *cfg
	old.Services, next.Services, old.Backends, next.Backends = nil, nil, nil, nil
	if !reflect.DeepEqual(old, next) {
		return errors.New("only services and backends ([[service]], [[backend]], and vips and ports of [balancer]) can change without a restart")
	}
	if r.reg == nil {
		return nil
	}
	warnings, err := r.reg.Reload(cfg.Services, cfg.Backends)
	for _, w := range warnings {
		r.log.Warn(w)
	}
	return err
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano() / 1000
}

// startDecapsulation sets up kernel or user-space decapsulation as the mode
// says, and returns the nft filter kernel mode needs (nil in user space,
// where the decapsulator does the filtering).
func (r *running) startDecapsulation(rc *config.Receiver) (*nft.Tunnel, error) {
	unsupported := rc.KernelUnsupported()
	if unsupported != nil && rc.Mode == config.ModeAuto {
		// The configuration refuses mode kernel in this case.
		r.log.Info("decapsulating in user space", "reason", unsupported)
	}
	if rc.Mode != config.ModeUserspace && unsupported == nil {
		ports := kernelPorts(rc)
		devices, err := r.host.SetupFOU(ports)
		switch {
		case err == nil:
			for i, f := range ports {
				r.log.Info("decapsulating in the kernel", "fou", f.String(), "device", devices[i])
			}
			return &nft.Tunnel{Port: rc.EncapPort, Balancers: rc.Balancers, Devices: devices, VIPs: rc.VIPs}, nil
		case rc.Mode == config.ModeAuto && errors.Is(err, vip.ErrNoKernelFOU):
			r.log.Info("the kernel has no foo-over-UDP: decapsulating in user space", "reason", err)
		default:
			return nil, fmt.Errorf("receiver mode %s: %w", rc.Mode, err)
		}
	}
	rcv, err := receiver.Open(receiver.Config{
		VIPs: rc.VIPs, Balancers: rc.Balancers, Port: rc.EncapPort, Workers: rc.Workers,
	})
	if err != nil {
		return nil, err
	}
	r.rcv, r.userMode = rcv, true
	return nil, nil
}

// kernelPorts are the foo-over-UDP ports kernel decapsulation opens for
// rc, which KernelUnsupported accepts: one per family of its balancers, each
// carrying the family of its VIPs.
func kernelPorts(rc *config.Receiver) []vip.FOU {
	inner6 := rc.VIPs[0].Is6()
	var ports []vip.FOU
	for _, outer6 := range []bool{false, true} {
		if slices.ContainsFunc(rc.Balancers, func(a netip.Addr) bool { return a.Is6() == outer6 }) {
			ports = append(ports, vip.FOU{Port: rc.EncapPort, OuterIPv6: outer6, InnerIPv6: inner6})
		}
	}
	return ports
}

// status is the STATUS= line: what runs, after why the last reload was
// refused until a reload succeeds.
func (r *running) status() string {
	s := r.statusLine()
	if r.reloadErr != nil {
		s = "reload refused: " + oneLine(r.reloadErr) + " (the running configuration stays); " + s
	}
	return s
}

// statusLine says what runs; the backends counted are the registry's (the
// configuration file's and those added at run time).
func (r *running) statusLine() string {
	var parts []string
	if r.cfg.Balancer != nil && r.reg != nil {
		svcs := r.services()
		parts = append(parts, fmt.Sprintf("balancing %d service(s) on %d VIP(s) over %d backend(s)", len(svcs), len(vipsOf(svcs)), len(r.reg.List())),
			"dataplane "+r.bal.Dataplane())
	}
	if r.ann != nil {
		parts = append(parts, r.routesStatus())
	}
	if rc := r.cfg.Receiver; rc != nil {
		mode := "kernel"
		if r.userMode {
			mode = "userspace"
		}
		parts = append(parts, fmt.Sprintf("receiving for %d VIP(s), decapsulation: %s", len(rc.VIPs), mode))
	}
	return strings.Join(parts, "; ")
}

// stop closes the sockets and undoes every host change, newest first. It is
// safe on a partly started daemon.
func (r *running) stop() {
	if r.metricsLn != nil {
		_ = r.metricsLn.Close() // already closed when it was served
	}
	if r.api != nil {
		r.api.Close()
	}
	if r.bus != nil {
		r.bus.Close()
	}
	if r.bal != nil {
		r.bal.Close()
	}
	if r.rcv != nil {
		r.rcv.Close()
	}
	if r.nftOwned {
		if _, err := nft.Remove(nft.CurrentNetNS); err != nil {
			r.log.Error("removing the nftables table", "err", err)
		}
	}
	if r.host != nil {
		if err := r.host.Undo(); err != nil {
			r.log.Error("undoing host changes; run caplanced --cleanup", "err", err)
		}
		r.host.Close()
	}
	if r.owner != nil {
		r.owner.Close()
	}
}

// claim makes this process the owner of the network namespace's caplance
// state (package owner).
func claim(runtimeDir string) (*owner.Owner, error) {
	o, err := owner.Claim(runtimeDir)
	var held *owner.HeldError
	if errors.As(err, &held) {
		return nil, fmt.Errorf("%w: stop it first (one caplanced per network namespace, whatever its runtime directory)", err)
	}
	return o, err
}

// cleanup undoes what an earlier run left (host changes recorded in the
// journal, the nft table, a stale stats file) and returns the journal, ready
// for this run.
func cleanup(runtimeDir string, log *slog.Logger) (*vip.Host, error) {
	host, err := vip.Open(runtimeDir)
	if err != nil {
		return nil, err
	}
	if left := host.Leftovers(); len(left) > 0 {
		for _, c := range left {
			log.Warn("undoing a change left by an earlier run that did not stop cleanly", "change", c.String())
		}
		if err := host.Undo(); err != nil {
			host.Close()
			return nil, fmt.Errorf("cleaning up an earlier run: %w", err)
		}
	}
	existed, err := nft.Remove(nft.CurrentNetNS)
	if err != nil {
		host.Close()
		return nil, fmt.Errorf("removing a leftover nftables table: %w", err)
	}
	if existed {
		log.Warn("removed the nftables table left by an earlier run", "table", "inet "+nft.TableName)
	}
	// Counters of a run that is gone would look live to a reader.
	if err := removeStats(runtimeDir); err != nil {
		host.Close()
		return nil, fmt.Errorf("removing a stale %s: %w", StatsFile, err)
	}
	return host, nil
}

// Cleanup is `caplanced --cleanup`: undo what a run left behind, nothing
// else, and only while no caplanced owns the network namespace.
func Cleanup(runtimeDir string, log *slog.Logger) error {
	o, err := owner.Claim(runtimeDir)
	var held *owner.HeldError
	if errors.As(err, &held) {
		return fmt.Errorf("--cleanup refused, nothing changed: %w; its own stop cleans up", err)
	}
	if err != nil {
		return err
	}
	defer o.Close()
	host, err := cleanup(runtimeDir, log)
	if err != nil {
		return err
	}
	return host.Close()
}

func notify(log *slog.Logger, state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		log.Warn("sd_notify failed", "err", err)
	}
}
