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

	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/registry"
)

// TestStorm: 1000 concurrent AddBackend, RemoveBackend and SetWeight calls
// from 8 connections leave the registry, GetManagedObjects, the exported
// objects and their properties in agreement, and Close leaks no goroutine.
func TestStorm(t *testing.T) {
	const (
		conns = 8
		calls = 1000
		names = 40
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
		n := rng.IntN(names)
		name, addr := fmt.Sprintf("s%02d", n), fmt.Sprintf("10.1.0.%d", n+1)
		var method string
		var args []any
		switch op := rng.IntN(3); op {
		case 0:
			method, args = "AddBackend", []any{name, addr, map[string]dbus.Variant{"runtime": dbus.MakeVariant(i%2 == 0)}}
		case 1:
			method, args = "RemoveBackend", []any{name}
		default:
			method, args = "SetWeight", []any{name, uint32(rng.IntN(1000))}
		}
		conn := clients[i%conns]
		wg.Go(func() {
			err := call(conn, "", method, args...).Err
			switch dbustest.ErrorName(err) {
			case "", dbusapi.ErrorAlreadyExists, dbusapi.ErrorNotFound:
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
	list := reg.List()
	var objs dbusapi.ManagedObjects
	if err := call(clients[0], "", "org.freedesktop.DBus.ObjectManager.GetManagedObjects").Store(&objs); err != nil {
		t.Fatal(err)
	}
	var xml string
	if err := call(clients[0], dbusname.ServicePath("default")+"/backend", "org.freedesktop.DBus.Introspectable.Introspect").Store(&xml); err != nil {
		t.Fatal(err)
	}
	if len(objs) != len(list)+1 || strings.Count(xml, "<node name=") != len(list) {
		t.Errorf("the registry has %d backends, GetManagedObjects %d, the tree %d", len(list), len(objs), strings.Count(xml, "<node name="))
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
		if !strings.Contains(xml, fmt.Sprintf(`<node name="%s">`, string(path[strings.LastIndex(string(path), "/")+1:]))) {
			t.Errorf("the tree lacks %s: %s", b.Name, xml)
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
	t.Logf("%d backends after the storm", len(list))

	for _, c := range clients {
		c.Close()
	}
	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	// A change after Close is ignored.
	if _, err := reg.Add("late", "10.2.0.1", registry.AddOptions{}); err != nil {
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
