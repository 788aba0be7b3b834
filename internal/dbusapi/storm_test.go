package dbusapi_test

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/registry"
)

// TestStorm: 1000 concurrent AddBackend, RemoveBackend, SetWeight,
// AddService, ChangeService and RemoveService calls from 8 connections
// leave the registry, GetManagedObjects, the exported objects and their
// properties in agreement, and Close leaks no goroutine.
func TestStorm(t *testing.T) {
	const (
		conns    = 8
		calls    = 1000
		names    = 40
		services = 4
	)
	bus := dbustest.Start(t)
	server := bus.Connect(t)
	dp := &dataPath{}
	reg, _, err := registry.Open(filepath.Join(t.TempDir(), "backends.json"), []model.Service{defaultService}, nil, dp.apply)
	if err != nil {
		t.Fatal(err)
	}
	baseline := runtime.NumGoroutine()
	srv, err := dbusapi.Export(server, reg, dbusapi.Info{Version: "storm"})
	if err != nil {
		t.Fatal(err)
	}

	clients := make([]*dbus.Conn, conns)
	for i := range clients {
		c, err := dbus.Connect(bus.Address)
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range calls {
		n, k := rng.IntN(names), rng.IntN(services)
		name, addr := fmt.Sprintf("s%02d", n), fmt.Sprintf("10.1.0.%d", n+1)
		// The service default (of the configuration file) or x0-x2.
		svc := "default"
		if k > 0 {
			svc = fmt.Sprintf("x%d", k-1)
		}
		var method string
		var args []any
		switch op := rng.IntN(10); op {
		case 0, 1, 2:
			method, args = "AddBackend", []any{name, addr, map[string]dbus.Variant{"service": dbus.MakeVariant(svc), "runtime": dbus.MakeVariant(i%2 == 0)}}
		case 3, 4:
			method, args = "RemoveBackend", []any{name}
		case 5, 6:
			method, args = "SetWeight", []any{name, uint32(rng.IntN(1000))}
		case 7:
			method, args = "AddService", []any{svc, map[string]dbus.Variant{"vips": dbus.MakeVariant([]string{fmt.Sprintf("10.2.0.%d", k+1)}), "runtime": dbus.MakeVariant(i%2 == 0)}}
		case 8:
			method, args = "ChangeService", []any{svc, map[string]dbus.Variant{"ports": dbus.MakeVariant(fmt.Sprint(1 + rng.IntN(1000)))}}
		default:
			method, args = "RemoveService", []any{svc}
		}
		conn := clients[i%conns]
		wg.Go(func() {
			err := call(conn, "", method, args...).Err
			switch {
			case err == nil, dbustest.ErrorName(err) == dbusapi.ErrorAlreadyExists, dbustest.ErrorName(err) == dbusapi.ErrorNotFound,
				dbustest.ErrorName(err) == dbusapi.ErrorUnchanged:
			case strings.Contains(err.Error(), "defined in the configuration file"): // default
			default:
				errs <- fmt.Errorf("%s%v: %v (%s)", method, args, err, dbustest.ErrorName(err))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// The registry, GetManagedObjects, the tree and every object agree.
	svcs, list := reg.Services(), reg.List()
	var objs dbusapi.ManagedObjects
	if err := call(clients[0], "", "org.freedesktop.DBus.ObjectManager.GetManagedObjects").Store(&objs); err != nil {
		t.Fatal(err)
	}
	introspect := func(path dbus.ObjectPath) string {
		t.Helper()
		var xml string
		if err := call(clients[0], path, "org.freedesktop.DBus.Introspectable.Introspect").Store(&xml); err != nil {
			t.Fatal(err)
		}
		return xml
	}
	inTree := 0
	for _, svc := range svcs {
		path := dbusname.ServicePath(svc.Name)
		props, ok := objs[path]
		if !ok {
			t.Errorf("GetManagedObjects lacks %s", path)
			continue
		}
		if got, want := props[dbusname.ServiceIface]["VIPs"].Value(), (map[string]string{svc.VIPs[0].Addr.String(): model.FormatPorts(svc.VIPs[0].Ports)}); !cmp.Equal(got, want) {
			t.Errorf("%s: GetManagedObjects has VIPs %v, the registry %v", svc.Name, got, want)
		}
		inTree += strings.Count(introspect(path+"/backend"), "<node name=")
	}
	if len(objs) != len(svcs)+len(list) || inTree != len(list) {
		t.Errorf("the registry has %d services and %d backends, GetManagedObjects %d objects, the tree %d backends", len(svcs), len(list), len(objs), inTree)
	}
	for _, b := range list {
		path := dbusname.BackendPath(b.Service, b.Name)
		props, ok := objs[path]
		if !ok {
			t.Errorf("GetManagedObjects lacks %s", path)
			continue
		}
		if w := props[dbusname.BackendIface]["Weight"].Value(); w != b.Weight {
			t.Errorf("%s: GetManagedObjects has weight %v, the registry %d", b.Name, w, b.Weight)
		}
		var w uint32
		if err := call(clients[0], path, "org.freedesktop.DBus.Properties.Get", dbusname.BackendIface, "Weight").Store(&w); err != nil || w != b.Weight {
			t.Errorf("%s: Weight property %d, %v; the registry has %d", b.Name, w, err, b.Weight)
		}
		if !strings.Contains(introspect(dbusname.ServicePath(b.Service)+"/backend"), fmt.Sprintf(`<node name="%s">`, string(path[strings.LastIndex(string(path), "/")+1:]))) {
			t.Errorf("the tree lacks %s", b.Name)
		}
	}
	var installed []string
	for _, b := range dp.installed().Backends {
		installed = append(installed, b.Name+"@"+b.Address.String())
	}
	var want []string
	for _, b := range list {
		want = append(want, b.Name+"@"+b.Address.String())
	}
	if !slices.Equal(installed, want) {
		t.Errorf("the data path has %v, the registry %v", installed, want)
	}
	t.Logf("%d services and %d backends after the storm", len(svcs), len(list))

	for _, c := range clients {
		c.Close()
	}
	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	// A change after Close is ignored.
	if _, err := reg.Add("late", "10.3.0.1", registry.AddOptions{Service: "default"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before Export:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}
