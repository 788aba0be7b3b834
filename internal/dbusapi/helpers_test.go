package dbusapi_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/registry"
)

const (
	manager = dbusname.ManagerIface + "."
	vip     = "10.0.0.100"
)

var cmpOpts = cmp.Options{cmpopts.EquateComparable(netip.Addr{}), cmpopts.EquateEmpty()}

// dataPath records the registry's apply calls and fails them on demand.
type dataPath struct {
	mu    sync.Mutex
	calls []model.Set
	fail  error
}

func (d *dataPath) apply(set model.Set) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return d.fail
	}
	d.calls = append(d.calls, model.Set{Services: slices.Clone(set.Services), Backends: slices.Clone(set.Backends)})
	return nil
}

func (d *dataPath) setFail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail = err
}

func (d *dataPath) installed() model.Set {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.calls) == 0 {
		return model.Set{}
	}
	return d.calls[len(d.calls)-1]
}

// defaultService is the service of the configuration file of env: today's
// form, the implicit service "default" on the VIP, every port.
var defaultService = model.Service{
	Name: config.DefaultService, VIPs: []model.VIP{{Addr: netip.MustParseAddr(vip)}},
	Protocols: model.TCP | model.UDP, TableSize: 65537,
}

// env is a private system bus with caplanced's API on it: a real registry
// (the service default and its web1 from the configuration file, web2 added
// at run time) with a
// recording data path and a state file in a temporary directory.
type env struct {
	bus       *dbustest.Bus
	conn      *dbus.Conn // the server's
	reg       *registry.Registry
	dp        *dataPath
	statePath string
	srv       *dbusapi.Server
	reloads   atomic.Int64
	reloadErr atomic.Pointer[error]
	counters  atomic.Pointer[map[string]dbusapi.Counters]
	svcCounts atomic.Pointer[map[string]dbusapi.ServiceCounters]
	// maintenance is the routed balancer's flag, as SetMaintenance left
	// it.
	maintenance atomic.Bool
}

type envOptions struct {
	busOpts []dbustest.Option
	noReg   bool
	info    func(*dbusapi.Info)
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{bus: dbustest.Start(t, o.busOpts...), dp: &dataPath{}}
	e.conn = e.bus.Connect(t)
	if !o.noReg {
		e.statePath = filepath.Join(t.TempDir(), "backends.json")
		cfg := []config.Backend{{Service: config.DefaultService, Name: "web1", Address: netip.MustParseAddr("10.0.1.11"), Weight: 100, Check: "tcp://10.0.1.11:80"}}
		reg, _, err := registry.Open(e.statePath, []model.Service{defaultService}, cfg, e.dp.apply)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.Add("web2", "10.0.1.12", registry.AddOptions{}); err != nil {
			t.Fatal(err)
		}
		e.reg = reg
	}
	info := dbusapi.Info{
		Version:   "1.2.3",
		Roles:     []string{"balancer"},
		VIPs:      []string{vip},
		EncapPort: 5555,
		TableSize: 65537,
		Dataplane: "xdp (native)",
		Stats: func() map[string]uint64 {
			return map[string]uint64{"received": 10, "forwarded": 9, "drop.no_backend": 1}
		},
		Counters: func() map[string]dbusapi.Counters {
			if p := e.counters.Load(); p != nil {
				return *p
			}
			return nil
		},
		ServiceCounters: func() map[string]dbusapi.ServiceCounters {
			if p := e.svcCounts.Load(); p != nil {
				return *p
			}
			return nil
		},
		Reload: func() error {
			e.reloads.Add(1)
			if p := e.reloadErr.Load(); p != nil {
				return *p
			}
			return nil
		},
		// A routed balancer announcing its VIP: maintenance withdraws it.
		Routed:        true,
		AnnouncedVIPs: []string{vip},
		RouteTable:    100,
		RouteProtocol: 252,
		SetMaintenance: func(on bool) error {
			e.maintenance.Store(on)
			announced := []string{vip}
			if on {
				announced = nil
			}
			e.srv.SetRoutes(on, announced)
			return nil
		},
	}
	if o.noReg {
		info.Roles = []string{"receiver"}
	}
	if o.info != nil {
		o.info(&info)
	}
	var reg *registry.Registry
	if !o.noReg {
		reg = e.reg
	}
	srv, err := dbusapi.Export(e.conn, reg, info)
	if err != nil {
		t.Fatalf("Export: %v", err)
	}
	e.srv = srv
	t.Cleanup(func() { _ = srv.Close() })
	return e
}

// as connects as cred.
func (e *env) as(t *testing.T, cred dbustest.Credential) *dbus.Conn {
	t.Helper()
	return e.bus.ConnectAs(t, cred)
}

// call calls method of the manager ("AddBackend", or a full
// "interface.Member") on path ("" for the manager).
func call(conn *dbus.Conn, path dbus.ObjectPath, method string, args ...any) *dbus.Call {
	if path == "" {
		path = dbusname.ManagerPath
	}
	if !strings.Contains(method, ".") {
		method = manager + method
	}
	return conn.Object(dbusname.BusName, path).Call(method, 0, args...)
}

// mustCall fails t when the call fails.
func mustCall(t *testing.T, conn *dbus.Conn, path dbus.ObjectPath, method string, args ...any) *dbus.Call {
	t.Helper()
	c := call(conn, path, method, args...)
	if c.Err != nil {
		t.Fatalf("%s%v: %v (%s)", method, args, c.Err, dbustest.ErrorName(c.Err))
	}
	return c
}

// snapshot is everything a refused call must leave alone.
type snapshot struct {
	Services    []registry.Service
	List        []registry.Backend
	StateFile   string
	Installed   model.Set
	Reloads     int64
	Maintenance bool
	Objects     string
}

func (e *env) snapshot(t *testing.T) snapshot {
	t.Helper()
	s := snapshot{Installed: e.dp.installed(), Reloads: e.reloads.Load(), Maintenance: e.maintenance.Load(), Objects: managedObjects(t, e.conn)}
	if e.reg != nil {
		s.Services = e.reg.Services()
		s.List = e.reg.List()
		b, err := os.ReadFile(e.statePath)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		s.StateFile = string(b)
	}
	return s
}

// managedObjects is GetManagedObjects as text (fmt sorts map keys).
func managedObjects(t *testing.T, conn *dbus.Conn) string {
	t.Helper()
	var objs dbusapi.ManagedObjects
	if err := call(conn, "", "org.freedesktop.DBus.ObjectManager.GetManagedObjects").Store(&objs); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(objs)
}

// unchanged fails t when the state differs from before.
func (e *env) unchanged(t *testing.T, before snapshot, what string) {
	t.Helper()
	if diff := cmp.Diff(before, e.snapshot(t), cmpOpts); diff != "" {
		t.Errorf("%s changed the state (-before +after):\n%s", what, diff)
	}
}

// checkError fails t unless err is the D-Bus error name and its message
// contains every fragment.
func checkError(t *testing.T, what string, err error, name string, fragments ...string) {
	t.Helper()
	if got := dbustest.ErrorName(err); got != name {
		t.Errorf("%s: error %q (%v), want %s", what, got, err, name)
		return
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("%s: message %q does not contain %q", what, err.Error(), f)
		}
	}
}

// signals collects the signals of caplanced's objects on a connection.
type signals struct{ ch chan *dbus.Signal }

func subscribe(t *testing.T, conn *dbus.Conn) *signals {
	t.Helper()
	if err := conn.AddMatchSignal(dbus.WithMatchSender(dbusname.BusName)); err != nil {
		t.Fatal(err)
	}
	s := &signals{ch: make(chan *dbus.Signal, 1024)}
	conn.Signal(s.ch)
	return s
}

// take returns the next n signals of caplanced's objects as text, then
// fails t if another one comes within a short while.
func (s *signals) take(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	timeout := time.After(5 * time.Second)
	for len(got) < n {
		select {
		case sig := <-s.ch:
			if strings.HasPrefix(string(sig.Path), string(dbusname.ManagerPath)) {
				got = append(got, formatSignal(sig))
			}
		case <-timeout:
			t.Fatalf("got %d signals, want %d:\n%s", len(got), n, strings.Join(got, "\n"))
		}
	}
	select {
	case sig := <-s.ch:
		t.Errorf("unexpected signal %s", formatSignal(sig))
	case <-time.After(50 * time.Millisecond):
	}
	return got
}

func formatSignal(sig *dbus.Signal) string {
	body := make([]string, len(sig.Body))
	for i, v := range sig.Body {
		body[i] = fmt.Sprint(v)
	}
	return fmt.Sprintf("%s %s(%s)", sig.Path, sig.Name, strings.Join(body, ", "))
}
