package registry

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/model"
)

// routeTable is a route cache's answers, which the test changes.
type routeTable struct {
	mu   sync.Mutex
	none map[netip.Addr]string
}

func (rt *routeTable) routeErr(a netip.Addr) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if why, ok := rt.none[a]; ok {
		return fmt.Errorf("no route to %s: %s", a, why)
	}
	return nil
}

func (rt *routeTable) set(a netip.Addr, why string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if why == "" {
		delete(rt.none, a)
	} else {
		rt.none[a] = why
	}
}

// TestUnroutableBackend: a backend without a route shows as down with the
// reason and is down in the data path, while every change of the others
// goes through; when its route is back it shows what healthd reported and
// is in rotation again.
func TestUnroutableBackend(t *testing.T) {
	f := newFixture(t, baseConfig())
	rt := &routeTable{none: map[netip.Addr]string{addr("10.0.1.12"): "network is unreachable"}}
	if err := f.r.UseRoutes(rt.routeErr); err != nil {
		t.Fatal(err)
	}
	web2, _ := f.r.Get("web2")
	if web2.Health != HealthDown || web2.HealthDetail != "no route to 10.0.1.12: network is unreachable" {
		t.Errorf("web2 shows %s %q, want down with the route's reason", web2.Health, web2.HealthDetail)
	}
	if diff := cmp.Diff([]Change{{Kind: Updated, Old: base()[1], New: web2}}, f.w.take(), cmpOpts); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}

	for _, step := range []struct {
		what string
		do   func() error
	}{
		{"ReportHealth(web1, down)", func() error { _, err := f.r.ReportHealth("web1", false, "refused"); return err }},
		{"Drain(web1)", func() error { return f.r.Drain("web1") }},
		{"Add(web3)", func() error { _, err := f.r.Add("web3", "10.0.1.13", AddOptions{}); return err }},
		{"ReportHealth(web2, up)", func() error { _, err := f.r.ReportHealth("web2", true, "200 OK"); return err }},
		{"Drain(web2)", func() error { return f.r.Drain("web2") }},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s with web2 unroutable: %v", step.what, err)
		}
	}
	web2, _ = f.r.Get("web2")
	if web2.Health != HealthDown || web2.Admin != AdminDrained || web2.HealthDetail != "no route to 10.0.1.12: network is unreachable" {
		t.Errorf("web2 shows %s %s %q, want drained, down with the route's reason", web2.Admin, web2.Health, web2.HealthDetail)
	}
	if err := f.r.Undrain("web2"); err != nil {
		t.Fatal(err)
	}
	states := func() map[string]model.State {
		out := map[string]model.State{}
		for _, b := range f.dp.installed() {
			out[b.Name] = b.State
		}
		return out
	}
	if diff := cmp.Diff(map[string]model.State{"web1": model.Down, "web2": model.Down, "web3": model.Active}, states()); diff != "" {
		t.Errorf("data path (-want +got):\n%s", diff)
	}

	f.w.take()
	rt.set(addr("10.0.1.12"), "")
	if err := f.r.RoutesChanged(); err != nil {
		t.Fatal(err)
	}
	web2, _ = f.r.Get("web2")
	if web2.Health != HealthUp || web2.HealthDetail != "200 OK" {
		t.Errorf("web2 with its route back shows %s %q, want healthd's up \"200 OK\"", web2.Health, web2.HealthDetail)
	}
	if diff := cmp.Diff([]Change{{Kind: Updated, Old: be(2, "web2", "10.0.1.12", 200, health(HealthDown, "no route to 10.0.1.12: network is unreachable")), New: web2}}, f.w.take(), cmpOpts); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if got := states()["web2"]; got != model.Active {
		t.Errorf("web2 in the data path: %v, want active", got)
	}
}

// TestMaxBackends: a change that grows the set past max_backends is refused
// and changes nothing; changes that do not grow it go through.
func TestMaxBackends(t *testing.T) {
	f := newFixture(t, baseConfig())
	f.r.SetMaxBackends(3)
	if _, err := f.r.Add("web3", "10.0.1.13", AddOptions{}); err != nil {
		t.Fatal(err)
	}
	f.w.take()
	before := f.snapshot(t)
	_, err := f.r.Add("web4", "10.0.1.14", AddOptions{})
	checkErr(t, err, ErrInvalidArgument, `adding backend "web4"`, "4 backends", "max_backends = 3")
	if diff := cmp.Diff(before, f.snapshot(t), cmpOpts); diff != "" {
		t.Errorf("a refused Add changed something (-before +after):\n%s", diff)
	}
	cfg := append(baseConfig(), config.Backend{Service: config.DefaultService, Name: "web5", Address: addr("10.0.1.15"), Weight: 1})
	_, err = f.r.Reload(services, cfg)
	checkErr(t, err, ErrInvalidArgument, "4 backends", "max_backends = 3")

	// At the limit, changes that keep the size go through; lowering the
	// limit below the size still lets the set shrink.
	if err := f.r.SetWeight("web3", 5); err != nil {
		t.Fatal(err)
	}
	f.r.SetMaxBackends(1)
	if err := f.r.Remove("web3"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.r.ReportHealth("web1", false, ""); err != nil {
		t.Fatal(err)
	}
	if err := f.r.Drain("web1"); err != nil {
		t.Fatal(err)
	}
}
