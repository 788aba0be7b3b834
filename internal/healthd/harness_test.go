package healthd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/registry"
)

// testVIP is the VIP of the test caplanced.
const testVIP = "10.0.0.100"

// env is a private system bus with the shipped policies (caplanced's and
// packaging/dbus/org.caplance.Health1.conf), the real caplanced API on it (a
// real registry, a data path that only records) and caplance-healthd
// connected as the health user.
type env struct {
	t     *testing.T
	bus   *dbustest.Bus
	calls *monitor

	// caplanced; nil while it is away.
	mu      sync.Mutex
	reg     *registry.Registry
	srv     *dbusapi.Server
	srvConn *dbus.Conn

	d      *Daemon
	notes  *notes
	cancel context.CancelFunc
	done   chan error
}

// testConfig probes every 100ms with a 100ms timeout (a local connection
// refused fails at once; a shorter timeout expired now and then under load,
// making the reason a timeout), rise 2, fall 2, no
// start-up jitter, and retries reports quickly.
func testConfig() *Config {
	cfg := DefaultConfig()
	cfg.Defaults = Defaults{Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 2, Fall: 2, HasJitter: true}
	cfg.RetryMin, cfg.RetryMax, cfg.ReportTimeout = 50*time.Millisecond, 200*time.Millisecond, time.Second
	return cfg
}

// newEnv starts the bus and a monitor of ReportHealth calls; caplanced and
// healthd are started by the test.
func newEnv(t *testing.T) *env {
	t.Helper()
	bus := dbustest.Start(t) // both shipped policies: caplanced's and ours
	e := &env{t: t, bus: bus}
	e.calls = monitorReports(t, bus)
	return e
}

// defaultService is the service of the test caplanced's configuration
// file: today's form, the implicit service "default" on testVIP.
var defaultService = model.Service{
	Name: config.DefaultService, VIPs: []model.VIP{{Addr: netip.MustParseAddr(testVIP)}},
	Protocols: model.TCP | model.UDP, TableSize: 65537,
}

// inDefault puts backends without a service in the service default.
func inDefault(backends []config.Backend) []config.Backend {
	out := slices.Clone(backends)
	for i := range out {
		if out[i].Service == "" {
			out[i].Service = config.DefaultService
		}
	}
	return out
}

// startCaplanced starts caplanced's API with a fresh registry (as a
// restarted caplanced has: every health unknown) holding the service
// default and backends (in default unless they name another service of
// services), connected as caplanced's user.
func (e *env) startCaplanced(backends ...config.Backend) {
	e.startCaplancedServices(nil, backends...)
}

// startCaplancedServices is startCaplanced with services beside default.
func (e *env) startCaplancedServices(services []model.Service, backends ...config.Backend) {
	t := e.t
	t.Helper()
	reg, _, err := registry.Open(filepath.Join(t.TempDir(), "backends.json"), append([]model.Service{defaultService}, services...),
		inDefault(backends), func(model.Set) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	conn, err := e.bus.DialAs(dbustest.User(t, dbustest.DaemonUser))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dbusapi.Export(conn, reg, dbusapi.Info{
		Version: "test", Roles: []string{"balancer"}, VIPs: []string{testVIP}, EncapPort: 5555, TableSize: 65537,
	})
	if err != nil {
		conn.Close()
		t.Fatalf("Export: %v", err)
	}
	e.mu.Lock()
	e.reg, e.srv, e.srvConn = reg, srv, conn
	e.mu.Unlock()
	t.Cleanup(e.stopCaplanced)
}

// stopCaplanced takes caplanced off the bus, as a crash does.
func (e *env) stopCaplanced() {
	e.mu.Lock()
	srv, conn := e.srv, e.srvConn
	e.reg, e.srv, e.srvConn = nil, nil, nil
	e.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
		_ = conn.Close()
	}
}

func (e *env) registry() *registry.Registry {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.reg
}

// startHealthd runs caplance-healthd on a connection of the health user.
func (e *env) startHealthd(cfg *Config, opts ...func(*Options)) {
	t := e.t
	t.Helper()
	conn, err := e.bus.DialAs(dbustest.Health(t))
	if err != nil {
		t.Fatal(err)
	}
	e.notes = &notes{}
	o := Options{
		Config: cfg, Conn: conn, Notify: e.notes.add,
		Logger: testLogger(t),
		Source: func(netip.Addr) (netip.Addr, error) { return netip.MustParseAddr("10.0.1.1"), nil },
	}
	for _, f := range opts {
		f(&o)
	}
	e.d = New(o)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel, e.done = cancel, make(chan error, 1)
	go func() { e.done <- e.d.Run(ctx) }()
	t.Cleanup(func() {
		e.stopHealthd()
		conn.Close()
	})
	e.waitFor("READY=1", 5*time.Second, func() bool { return e.notes.has("READY=1") })
}

// stopHealthd cancels Run and waits for it.
func (e *env) stopHealthd() error {
	if e.cancel == nil {
		return nil
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.done:
		return err
	case <-time.After(10 * time.Second):
		e.t.Fatal("Run did not return within 10s of its context's end")
		return nil
	}
}

// inLoop runs f on healthd's loop.
func (e *env) inLoop(f func()) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.d.inLoop(ctx, f); err != nil {
		e.t.Fatal(err)
	}
}

// waitFor polls cond until it holds or timeout passes.
func (e *env) waitFor(what string, timeout time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("waited %v for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// health is caplanced's view of a backend: "up: DETAIL", "down: DETAIL",
// "unknown: ", or "absent".
func (e *env) health(name string) string {
	reg := e.registry()
	if reg == nil {
		return "absent"
	}
	b, ok := reg.Get(name)
	if !ok {
		return "absent"
	}
	return fmt.Sprintf("%s: %s", b.Health, b.HealthDetail)
}

// waitHealth waits until caplanced's view of name is want.
func (e *env) waitHealth(name, want string, timeout time.Duration) {
	e.t.Helper()
	e.waitFor(fmt.Sprintf("%s to be %q (it is %q)", name, want, e.health(name)), timeout, func() bool { return e.health(name) == want })
}

// tcpCheck is a config backend whose check probes a local listener.
func tcpCheck(name, address string, l *listener) config.Backend {
	return config.Backend{Name: name, Address: netip.MustParseAddr(address), Weight: 100, Check: "tcp://" + l.addr}
}

// listener is a local TCP server that accepts and closes connections and
// can be closed and opened again on the same port.
type listener struct {
	t    *testing.T
	addr string
	mu   sync.Mutex
	ln   net.Listener
}

func listen(t *testing.T) *listener {
	t.Helper()
	l := &listener{t: t, addr: "127.0.0.1:0"}
	l.open()
	l.addr = l.ln.Addr().String()
	t.Cleanup(l.close)
	return l
}

func (l *listener) open() {
	l.t.Helper()
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		l.t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	l.mu.Lock()
	l.ln = ln
	l.mu.Unlock()
}

func (l *listener) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		l.ln.Close()
		l.ln = nil
	}
}

// refused is the reason a closed listener is reported down for.
func (l *listener) refused(tries int) string {
	return fmt.Sprintf("tcp: %s: connection refused after %d tries", l.addr, tries)
}

// connected is the reason an open listener is reported up for.
func (l *listener) connected(tries int) string {
	return fmt.Sprintf("tcp: %s: connected after %d tries", l.addr, tries)
}

// monitor records every ReportHealth call on the bus.
type monitor struct {
	mu    sync.Mutex
	calls []string
}

func monitorReports(t *testing.T, bus *dbustest.Bus) *monitor {
	t.Helper()
	conn := bus.Connect(t)
	rule := "type='method_call',interface='" + dbusname.ManagerIface + "',member='ReportHealth'"
	if err := conn.BusObject().Call("org.freedesktop.DBus.Monitoring.BecomeMonitor", 0, []string{rule}, uint32(0)).Err; err != nil {
		t.Fatalf("BecomeMonitor: %v", err)
	}
	ch := make(chan *dbus.Message, 1024)
	conn.Eavesdrop(ch)
	m := &monitor{}
	go func() {
		for msg := range ch {
			if msg.Type != dbus.TypeMethodCall || len(msg.Body) != 3 {
				continue
			}
			word := "down"
			if healthy, _ := msg.Body[1].(bool); healthy {
				word = "up"
			}
			m.mu.Lock()
			m.calls = append(m.calls, fmt.Sprintf("%v %s: %v", msg.Body[0], word, msg.Body[2]))
			m.mu.Unlock()
		}
	}()
	return m
}

// of returns the calls for name, in order.
func (m *monitor) of(name string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, c := range m.calls {
		if strings.HasPrefix(c, name+" ") {
			out = append(out, strings.TrimPrefix(c, name+" "))
		}
	}
	return out
}

// notes records sd_notify messages.
type notes struct {
	mu   sync.Mutex
	msgs []string
}

func (n *notes) add(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.msgs = append(n.msgs, s)
}

// lines is every line sent, in order.
func (n *notes) lines() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, m := range n.msgs {
		out = append(out, strings.Split(m, "\n")...)
	}
	return out
}

func (n *notes) has(line string) bool { return slices.Contains(n.lines(), line) }

// lastStatus is the last STATUS= line.
func (n *notes) lastStatus() string {
	lines := n.lines()
	for i := len(lines) - 1; i >= 0; i-- {
		if s, ok := strings.CutPrefix(lines[i], "STATUS="); ok {
			return s
		}
	}
	return ""
}

// getAll reads the properties of iface at path of caplance-healthd, as
// conn.
func getAll(conn *dbus.Conn, path dbus.ObjectPath, iface string) (map[string]dbus.Variant, error) {
	var out map[string]dbus.Variant
	err := conn.Object(dbusname.HealthBusName, path).Call(propertiesIface+".GetAll", 0, iface).Store(&out)
	return out, err
}

// errorName is the D-Bus error name of err.
func errorName(err error) string {
	var e dbus.Error
	if errors.As(err, &e) {
		return e.Name
	}
	return ""
}

// testLogger keeps the log and shows it when the test fails or runs with
// -v.
func testLogger(t *testing.T) *slog.Logger {
	buf := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("caplance-healthd's log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
