package announce_test

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/caplance/caplance/internal/announce"
	"github.com/caplance/caplance/internal/model"
)

var equateAddrs = cmp.Options{cmpopts.EquateComparable(netip.Addr{}), cmpopts.EquateEmpty()}

func svc(name string, vips ...string) model.Service {
	s := model.Service{Name: name, Protocols: model.TCP | model.UDP}
	for _, v := range vips {
		s.VIPs = append(s.VIPs, model.VIP{Addr: netip.MustParseAddr(v)})
	}
	return s
}

func backend(service string, weight uint32, st model.State) model.Backend {
	return model.Backend{Name: service + "-b", Service: service, Weight: weight, State: st}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestWant(t *testing.T) {
	ready := announce.State{Ready: true}
	web := svc("web", "2001:db8::100", "10.0.0.100")
	tests := []struct {
		name string
		st   announce.State
		set  model.Set
		min  int
		want []netip.Addr
	}{
		{"a servable service's VIPs, sorted", ready,
			model.Set{Services: []model.Service{web}, Backends: []model.Backend{backend("web", 100, model.Active)}}, 1,
			addrs("10.0.0.100", "2001:db8::100")},
		{"not ready yet", announce.State{},
			model.Set{Services: []model.Service{web}, Backends: []model.Backend{backend("web", 100, model.Active)}}, 1, nil},
		{"maintenance", announce.State{Ready: true, Maintenance: true},
			model.Set{Services: []model.Service{web}, Backends: []model.Backend{backend("web", 100, model.Active)}}, 1, nil},
		{"stopping", announce.State{Ready: true, Stopping: true},
			model.Set{Services: []model.Service{web}, Backends: []model.Backend{backend("web", 100, model.Active)}}, 1, nil},
		{"no backend", ready, model.Set{Services: []model.Service{web}}, 1, nil},
		{"weight 0", ready,
			model.Set{Services: []model.Service{web}, Backends: []model.Backend{backend("web", 0, model.Active)}}, 1, nil},
		{"drained", ready,
			model.Set{Services: []model.Service{web}, Backends: []model.Backend{backend("web", 100, model.Draining)}}, 1, nil},
		{"health down", ready,
			model.Set{Services: []model.Service{web}, Backends: []model.Backend{backend("web", 100, model.Down)}}, 1, nil},
		{"fewer than route_min_backends", ready,
			model.Set{Services: []model.Service{web}, Backends: []model.Backend{backend("web", 100, model.Active), backend("web", 100, model.Down)}}, 2, nil},
		{"route_min_backends reached", ready,
			model.Set{Services: []model.Service{web}, Backends: []model.Backend{backend("web", 100, model.Active), backend("web", 1, model.Active)}}, 2,
			addrs("10.0.0.100", "2001:db8::100")},
		{"another service's backends do not count", ready,
			model.Set{Services: []model.Service{web, svc("dns", "10.0.0.53")}, Backends: []model.Backend{backend("dns", 100, model.Active)}}, 1,
			addrs("10.0.0.53")},
		{"a shared VIP stays while any of its services is servable", ready,
			model.Set{Services: []model.Service{svc("dns", "10.0.0.100"), web}, Backends: []model.Backend{backend("web", 100, model.Active)}}, 1,
			addrs("10.0.0.100", "2001:db8::100")},
		{"no services", ready, model.Set{}, 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := announce.Want(tt.st, tt.set, tt.min)
			if diff := cmp.Diff(tt.want, got, equateAddrs); diff != "" {
				t.Errorf("Want (-want +got):\n%s", diff)
			}
		})
	}
}
