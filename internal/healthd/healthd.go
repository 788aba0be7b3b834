package healthd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os/signal"
	"slices"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/godbus/dbus/v5"
	"golang.org/x/sync/errgroup"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/dbusconn"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/metrics"
	"github.com/caplance/caplance/internal/probe"
	"github.com/caplance/caplance/internal/version"
	"github.com/caplance/caplance/internal/watchdog"
)

// Options are what Run needs besides the configuration.
type Options struct {
	Config *Config
	// Conn is the bus connection to serve on and talk to caplanced
	// through; nil dials Config.Bus. Run closes only a connection it
	// dialed.
	Conn *dbus.Conn
	// Logger gets the log; nil discards it.
	Logger *slog.Logger
	// Notify sends one sd_notify(3) message; nil sends it to
	// $NOTIFY_SOCKET.
	Notify func(state string)
	// Source returns this host's address towards a backend, for tunnel
	// checks; nil asks the kernel (netlink RTM_GETROUTE).
	Source func(backend netip.Addr) (netip.Addr, error)
	// StopTimeout bounds the stop after the context ends; 0 is
	// DefaultStopTimeout.
	StopTimeout time.Duration
	// SyncRetry is the delay before trying again a sync with caplanced
	// that failed; 0 is one second.
	SyncRetry time.Duration
	// Watchdog is how often WATCHDOG=1 is due while the main loop answers;
	// 0 sends none. Serve sets it from WATCHDOG_USEC.
	Watchdog time.Duration
	// TestWedge is the value of the test hook TestWedgeEnv, "" for none.
	TestWedge string
}

// DefaultStopTimeout bounds the stop: probes under way are canceled.
const DefaultStopTimeout = 5 * time.Second

// callTimeout bounds each call to caplanced while syncing.
const callTimeout = 5 * time.Second

// Daemon is a running caplance-healthd: the checks of the backends its
// follower reports (it is the follower's followerEvents), their probes and
// their reports. Its state belongs to the goroutine of Run; the other
// methods talk to it through channels.
type Daemon struct {
	opts Options
	cfg  *Config
	log  *slog.Logger
	// calls carries functions to run on Run's goroutine (Alive, tests).
	calls chan func()

	// Set up by Run.
	follow   *follower
	results  chan probeResult
	sched    *scheduler
	reporter *reporter
	health   *health1
	jobCtx   context.Context
	// metrics counts probes (never nil; served only when an endpoint is
	// configured or passed by systemd).
	metrics *metrics.Healthd

	// Owned by Run's goroutine.
	// vips (by service) and encapPort are the follower's, for tunnel
	// checks.
	vips      map[string]tunnelVIPs
	encapPort uint16
	backends  map[string]*backend
	jobs      map[string]*jobEntry
	status    string
}

// backend is what healthd knows of one of caplanced's backends.
type backend struct {
	name    string
	service string
	address netip.Addr
	spec    string // as caplanced has it, "" for none
	source  string // caplanced's Source: "config" or "runtime"
	// refused says why the check may not run (execRefusal), "" if it may:
	// the backend is reported down with it.
	refused string
	// The check, when spec is not "": parsed is nil when it cannot run
	// (info.Detail says why).
	parsed  *checkspec.Spec
	target  checkspec.Target
	key     string
	machine Machine
	info    checkInfo
}

// jobEntry is one running probe and the backends that take its results.
type jobEntry struct {
	job   *probeJob
	names map[string]bool
}

// New returns a daemon for opts; Run starts it.
func New(opts Options) *Daemon {
	if opts.Config == nil {
		opts.Config = DefaultConfig()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Notify == nil {
		log := opts.Logger
		opts.Notify = func(state string) {
			if _, err := sd.SdNotify(false, state); err != nil {
				log.Warn("sd_notify failed", "err", err)
			}
		}
	}
	if opts.Source == nil {
		opts.Source = kernelSource
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.SyncRetry <= 0 {
		opts.SyncRetry = time.Second
	}
	return &Daemon{
		opts:     opts,
		cfg:      opts.Config,
		log:      opts.Logger,
		calls:    make(chan func()),
		backends: map[string]*backend{},
		jobs:     map[string]*jobEntry{},
		metrics:  metrics.NewHealthd(),
	}
}

// Alive is the liveness hook for the watchdog: it returns nil when Run's
// loop has answered within ctx, which it does only between two events
// (a sync with caplanced, a probe result, a signal).
func (d *Daemon) Alive(ctx context.Context) error {
	if err := d.inLoop(ctx, func() {}); err != nil {
		return fmt.Errorf("the main loop did not answer: %w", err)
	}
	return nil
}

// inLoop runs f on Run's goroutine and waits for it, or for ctx.
func (d *Daemon) inLoop(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case d.calls <- func() { f(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Serve is caplance-healthd: Run until SIGTERM or SIGINT. A second signal
// during the stop kills the process (the default action is restored).
func Serve(opts Options) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		stop()
	}()
	d := New(opts)
	if d.opts.Watchdog == 0 {
		d.opts.Watchdog = watchdog.Interval(d.log)
	}
	return d.Run(ctx)
}

// Run serves until ctx ends, then stops within StopTimeout and returns nil;
// it returns an error when it cannot start (no bus, the name
// org.caplance.Health1 taken) or when the bus connection is lost.
func (d *Daemon) Run(ctx context.Context) error {
	wedge, wedgeAfter, err := watchdog.ParseTestWedge(d.opts.TestWedge, "loop", "caplance-healthd(8)")
	if err != nil {
		return err
	}
	conn := d.opts.Conn
	if conn == nil {
		var err error
		conn, err = dial(d.cfg.Bus)
		if err != nil {
			return err
		}
		defer conn.Close()
	}
	// The name first, and only then the signals: until the connection
	// owns org.caplance.Health1, the bus policy that lets only caplanced's
	// user send it signals does not apply, and any local user could send
	// it InterfacesAdded with an exec check.
	stopMetrics, err := d.serveMetrics()
	if err != nil {
		return err
	}
	defer stopMetrics()
	health, release, err := serveHealth1(conn)
	if err != nil {
		return err
	}
	defer release()
	d.health = health
	d.follow, err = follow(conn, d.log, d, d.opts.SyncRetry)
	if err != nil {
		return err
	}
	defer d.follow.close()

	jobCtx, stopJobs := context.WithCancel(context.Background())
	defer stopJobs()
	d.jobCtx = jobCtx
	d.results = make(chan probeResult, 64)
	d.sched = newScheduler(d.cfg.MaxConcurrentProbes, d.results)
	// The reporter outlives the loop: it delivers what is pending while
	// the probes stop.
	d.reporter = newReporter(dbusReporter(conn, d.cfg.ReportTimeout), d.cfg.RetryMin, d.cfg.RetryMax, d.log)
	repCtx, stopReporter := context.WithCancel(context.Background())
	var reporting errgroup.Group
	reporting.Go(func() error { d.reporter.run(repCtx); return nil })
	defer func() { stopReporter(); _ = reporting.Wait() }()

	d.follow.start(ctx)
	d.refreshStatus()
	d.opts.Notify("READY=1\nSTATUS=" + d.status)
	d.log.Info("ready", "status", d.status)
	loopErr := d.loop(ctx, wedge, wedgeAfter)
	d.opts.Notify("STOPPING=1\nSTATUS=stopping")
	d.log.Info("stopping")
	stopJobs()
	if !d.sched.wait(d.opts.StopTimeout) {
		d.log.Warn("probes did not end within the stop timeout", "timeout", d.opts.StopTimeout)
	}
	return loopErr
}

// serveMetrics serves the metrics on the socket systemd passes
// (caplance-healthd-metrics.socket), else on metrics.listen, else nowhere;
// stop ends it. A failure of the server once it runs is logged: the
// checks go on without it.
func (d *Daemon) serveMetrics() (stop func(), err error) {
	ln, err := metrics.Listen(d.cfg.MetricsListen, "metrics.listen")
	if err != nil || ln == nil {
		return func() {}, err
	}
	reg, err := d.metrics.Registry()
	if err != nil {
		ln.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error {
		if err := metrics.Serve(ctx, ln, reg, d.log); err != nil {
			d.log.Error("metrics endpoint failed", "err", err)
		}
		return nil
	})
	return func() { cancel(); _ = g.Wait() }, nil
}

// serveHealth1 exports org.caplance.Health1's objects and takes its name;
// release gives both back.
func serveHealth1(conn *dbus.Conn) (h *health1, release func(), err error) {
	h, err = exportHealth1(conn, managerInfo{Version: version.Version, Caplanced: "away", Status: "starting"})
	if err != nil {
		return nil, nil, fmt.Errorf("D-Bus: exporting %s: %w", dbusname.HealthPath, err)
	}
	reply, err := conn.RequestName(dbusname.HealthBusName, dbus.NameFlagDoNotQueue)
	if err == nil && reply != dbus.RequestNameReplyPrimaryOwner {
		err = fmt.Errorf("the name is owned by another connection (%v): is another caplance-healthd running?", reply)
	}
	if err != nil {
		h.unexport()
		return nil, nil, fmt.Errorf("D-Bus: requesting the bus name %s: %w", dbusname.HealthBusName, err)
	}
	return h, func() {
		_, _ = conn.ReleaseName(dbusname.HealthBusName)
		h.unexport()
	}, nil
}

// loop is the main loop: the follower's signals and retries, the probes'
// results and the calls of Alive, one at a time, until ctx ends or the bus
// connection is lost. The watchdog and the test hook run beside it, and
// end with it.
func (d *Daemon) loop(ctx context.Context, wedge bool, wedgeAfter time.Duration) error {
	loopCtx, endLoop := context.WithCancel(ctx)
	var helpers errgroup.Group
	defer func() { endLoop(); _ = helpers.Wait() }()
	if d.opts.Watchdog > 0 {
		d.log.Info("watchdog on", "ping_every", d.opts.Watchdog)
		wd := watchdog.Watchdog{
			Interval:      d.opts.Watchdog,
			RoundTrip:     d.Alive,
			RoundTripName: "the main loop",
			Notify:        d.opts.Notify,
			Log:           d.log,
		}
		helpers.Go(func() error { wd.Run(loopCtx); return nil })
	}
	if wedge {
		helpers.Go(func() error { watchdog.WedgeAfter(loopCtx, wedgeAfter, func() { d.wedge(loopCtx) }); return nil })
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig, ok := <-d.follow.signals:
			if !ok {
				return errors.New("D-Bus: the connection to the bus was closed")
			}
			d.follow.onSignal(ctx, sig)
		case <-d.follow.retry.C:
			d.follow.onRetry(ctx)
		case r := <-d.results:
			d.onResult(r)
		case f := <-d.calls:
			f()
		}
		if d.refreshStatus() {
			d.opts.Notify("STATUS=" + d.status)
		}
	}
}

// dial connects to the bus of --bus/bus=, with signals delivered in order.
func dial(bus string) (*dbus.Conn, error) {
	c, err := dbusconn.Dial(bus, dbus.WithSignalHandler(dbus.NewSequentialSignalHandler()))
	if err != nil {
		return nil, fmt.Errorf("D-Bus: %w", err)
	}
	return c, nil
}

// resynced reports again everything decided, after a sync with caplanced.
func (d *Daemon) resynced() {
	all := map[string]report{}
	for name, b := range d.backends {
		if r, ok := b.current(); ok {
			all[name] = r
		}
	}
	d.reporter.replaceAll(all)
	d.log.Info("synced with caplanced", "backends", len(d.backends), "reporting", len(all))
}

// current is the report of b's state, false while it is unknown.
func (b *backend) current() (report, bool) {
	if b.refused != "" {
		return report{healthy: false, detail: b.refused}, true
	}
	if b.parsed == nil || b.machine.State() == checkspec.StateUnknown {
		return report{}, false
	}
	return report{healthy: b.machine.State() == checkspec.StateUp, detail: b.info.Reason}, true
}

// upsert makes the backend name have this service, address, check spec
// and source (the follower calls it only when one of them changed). A
// change of any starts its check afresh, as caplanced resets its health.
// Backend names are unique across services, so health is kept by name:
// two services' backends on one address are checked and reported apart
// (they share a probe only when their checks are the same).
func (d *Daemon) upsert(name, service string, addr netip.Addr, spec, source string) {
	if b, ok := d.backends[name]; ok {
		d.detach(b)
		if b.service != service {
			d.metrics.Forget(b.service, name)
		}
	}
	b := &backend{name: name, service: service, address: addr, spec: spec, source: source}
	d.backends[name] = b
	if spec == "" {
		d.health.removeCheck(name)
		d.reporter.forget(name)
		return
	}
	b.info = checkInfo{Name: name, Service: service, Address: addr.String(), Check: spec, State: "unknown"}
	parsed, err := d.cfg.Defaults.ParseSpec(spec)
	if err != nil {
		b.info.State, b.info.Detail = "invalid", err.Error()
		d.log.Error("cannot run the check of a backend", "backend", name, "err", err)
		d.health.setCheck(b.info)
		d.reporter.forget(name)
		return
	}
	// Any member of caplance-admin may add a backend over D-Bus: its exec
	// check runs only a program root installed in exec_dir. What root
	// wrote in caplanced.toml runs as it is.
	if parsed.Kind() == checkspec.KindExec && source != sourceConfig {
		if why := execRefusal(d.cfg.ExecDir, parsed.Program()); why != "" {
			b.refused = why
			b.info.State, b.info.Detail, b.info.Reason = checkspec.StateDown.String(), why, why
			d.log.Warn("not running the exec check of a backend added over D-Bus", "backend", name, "why", why)
			d.health.setCheck(b.info)
			d.reporter.forget(name)
			if d.follow.synced {
				r, _ := b.current()
				d.reporter.enqueue(name, r)
			}
			return
		}
	}
	b.parsed = parsed
	var initial *Transition
	b.machine, initial = NewMachine(Thresholds{Rise: parsed.Rise, Fall: parsed.Fall, Initial: parsed.Initial})
	b.info.State = b.machine.State().String()
	d.reporter.forget(name)
	if initial != nil {
		b.info.Reason = initial.Reason
		if d.follow.synced {
			r, _ := b.current()
			d.reporter.enqueue(name, r)
		}
	}
	d.health.setCheck(b.info)
	d.attach(b)
	d.log.Info("checking backend", "backend", name, "address", addr, "check", parsed.String())
}

// remove forgets the backend name.
func (d *Daemon) remove(name string) {
	b, ok := d.backends[name]
	if !ok {
		return
	}
	d.detach(b)
	d.metrics.Forget(b.service, name)
	delete(d.backends, name)
	d.health.removeCheck(name)
	d.reporter.forget(name)
	d.log.Info("backend removed", "backend", name)
}

// target is what b's probe is aimed at.
func (d *Daemon) target(b *backend) checkspec.Target {
	t := checkspec.Target{Name: b.name, Address: b.address}
	if b.parsed.Kind() == checkspec.KindTunnel {
		t.VIP, t.EncapPort = d.vips[b.service].forBackend(b.address), d.encapPort
		src, err := d.opts.Source(b.address)
		if err != nil {
			d.log.Warn("no source address towards the backend: the probe asks the kernel itself", "backend", b.name, "err", err)
		}
		t.Source = src
	}
	return t
}

// attach subscribes b to the job of its probe, starting it if needed.
func (d *Daemon) attach(b *backend) {
	b.target = d.target(b)
	b.key = b.parsed.Key(b.target)
	e, ok := d.jobs[b.key]
	if !ok {
		spec, t := b.parsed, b.target
		j := &probeJob{
			key: b.key, interval: spec.Interval, jitter: spec.Jitter,
			probe: func(ctx context.Context) probe.Result { return probe.Run(ctx, spec, t) },
		}
		d.sched.start(d.jobCtx, j)
		e = &jobEntry{job: j, names: map[string]bool{}}
		d.jobs[b.key] = e
	}
	e.names[b.name] = true
}

// detach unsubscribes b from its job, stopping it when b was its last.
func (d *Daemon) detach(b *backend) {
	e, ok := d.jobs[b.key]
	if !ok || b.parsed == nil {
		return
	}
	delete(e.names, b.name)
	if len(e.names) == 0 {
		d.sched.stop(e.job)
		delete(d.jobs, b.key)
	}
}

// setTunnel changes the VIPs (by service) and encap port of tunnel checks
// and re-aims them.
func (d *Daemon) setTunnel(vips map[string]tunnelVIPs, port uint16) {
	d.vips, d.encapPort = vips, port
	for _, name := range slices.Sorted(maps.Keys(d.backends)) {
		b := d.backends[name]
		if b.parsed != nil && b.parsed.Kind() == checkspec.KindTunnel {
			d.detach(b)
			d.attach(b)
		}
	}
}

// onResult feeds a probe's result to the checks that share it.
func (d *Daemon) onResult(r probeResult) {
	e, ok := d.jobs[r.job.key]
	if !ok || e.job != r.job {
		return // a job stopped since
	}
	for _, name := range slices.Sorted(maps.Keys(e.names)) {
		b := d.backends[name]
		d.metrics.Probed(b.service, name, r.result.Up, r.result.Latency)
		tr, moved := b.machine.Observe(r.result.Up, r.result.Detail)
		b.info.State = b.machine.State().String()
		b.info.Detail = r.result.Detail
		b.info.LatencyUSec = uint64(r.result.Latency.Microseconds())
		b.info.Successes, b.info.Failures = uint32(b.machine.Successes()), uint32(b.machine.Failures())
		b.info.LastProbeUSec = uint64(r.start.Add(r.result.Latency).UnixMicro())
		if moved {
			b.info.Reason = tr.Reason
			d.log.Info("backend health changed", "backend", name, "from", tr.From, "to", tr.To, "reason", tr.Reason)
			rep, _ := b.current()
			d.reporter.enqueue(name, rep)
		}
		d.health.setCheck(b.info)
	}
}

// refreshStatus sets the status line (and the manager's properties); it
// reports whether it changed.
func (d *Daemon) refreshStatus() bool {
	checked := 0
	for _, b := range d.backends {
		if b.parsed != nil {
			checked++
		}
	}
	s := fmt.Sprintf("checking %d backend%s", checked, plural(checked))
	switch {
	case d.follow.owner == "":
		s = fmt.Sprintf("caplanced not running: probing %d backend%s, will report when it returns", checked, plural(checked))
	case !d.follow.synced:
		s = fmt.Sprintf("caplanced not answering: probing %d backend%s, will report when it answers", checked, plural(checked))
	}
	if s == d.status {
		return false
	}
	d.status = s
	caplanced := "away"
	if d.follow.owner != "" {
		caplanced = "running"
	}
	d.health.setManager(managerInfo{Version: version.Version, Caplanced: caplanced, Status: s})
	return true
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
