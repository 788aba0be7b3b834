package registry

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/model"
)

// dnsVIP is the VIP of the run-time service of these tests.
var dnsVIP = netip.MustParseAddr("10.0.0.53")

func dnsService() model.Service {
	return model.Service{Name: "dns", VIPs: []model.VIP{{Addr: dnsVIP, Ports: []model.PortRange{{First: 53, Last: 53}}}},
		Protocols: model.UDP, TableSize: 251, Check: "tcp://:53"}
}

func names(svcs []Service) []string {
	var out []string
	for _, s := range svcs {
		out = append(out, s.Name)
	}
	return out
}

func modelNames(svcs []model.Service) []string {
	var out []string
	for _, s := range svcs {
		out = append(out, s.Name)
	}
	return out
}

func TestServiceLifecycle(t *testing.T) {
	f := newFixture(t, baseConfig())
	svc, err := f.r.AddService(dnsService(), false)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Service{Service: dnsService(), Source: SourceRuntime, Persistent: true}, svc, cmpOpts); diff != "" {
		t.Errorf("AddService (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"default", "dns"}, modelNames(f.dp.installedServices())); diff != "" {
		t.Errorf("data path services (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Change{{Kind: Added, IsService: true, NewService: svc}}, f.w.take(), cmpOpts); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}

	// With two services, a backend must say which.
	_, err = f.r.Add("ns1", "10.0.2.1", AddOptions{})
	checkErr(t, err, ErrInvalidArgument, "there are 2 services: say which one (default, dns)")
	_, err = f.r.Add("ns1", "10.0.2.1", AddOptions{Service: "nope"})
	checkErr(t, err, ErrNotFound, `service "nope": no such service`)
	// The same host in two services, under distinct names; one name is one backend.
	_, err = f.r.Add("web1", "10.0.1.11", AddOptions{Service: "dns"})
	checkErr(t, err, ErrAlreadyExists, "name: already used")
	ns1, err := f.r.Add("ns1", "10.0.1.11", AddOptions{Service: "dns"})
	if err != nil {
		t.Fatal(err)
	}
	want := be(3, "ns1", "10.0.1.11", 100, fromRuntime(true), func(b *Backend) { b.Service, b.Check = "dns", "tcp://:53" })
	if diff := cmp.Diff(want, ns1, cmpOpts); diff != "" {
		t.Errorf("backend of dns (-want +got):\n%s", diff)
	}
	_, err = f.r.Add("ns2", "10.0.1.11", AddOptions{Service: "dns"})
	checkErr(t, err, ErrAlreadyExists, `address 10.0.1.11: already used by backend "ns1"`)
	if err := f.r.Drain("ns1"); err != nil {
		t.Fatal(err)
	}
	f.w.take()

	// It survives a restart, with its backend and the override.
	wantFile := `{"version":2,"services":[{"name":"dns","vips":["10.0.0.53"],"ports":"53","protocols":"udp","hash":"5-tuple","table_size":251,"check":"tcp://:53"}],` +
		`"backends":[{"name":"ns1","service":"dns","address":"10.0.1.11","weight":100}],"overrides":{"ns1":{"drained":true}}}`
	if diff := cmp.Diff(wantFile, compactState(t, f.path)); diff != "" {
		t.Errorf("state file (-want +got):\n%s", diff)
	}
	if w := f.open(t, baseConfig()); len(w) != 0 {
		t.Errorf("warnings at restart: %q", w)
	}
	if diff := cmp.Diff([]string{"default", "dns"}, names(f.r.Services())); diff != "" {
		t.Errorf("services after a restart (-want +got):\n%s", diff)
	}
	if b, _ := f.r.Get("ns1"); b.Service != "dns" || b.Admin != AdminDrained || b.Check != "tcp://:53" {
		t.Errorf("ns1 after a restart: %+v", b)
	}

	// A change of the service's check is its backends' that have none.
	if _, err := f.r.ReportHealth("ns1", false, "timeout"); err != nil {
		t.Fatal(err)
	}
	f.w.take()
	changed, err := f.r.ChangeService("dns", func(s model.Service) (model.Service, error) {
		s.Check, s.Hash = "tcp://:5353", model.SourceIP
		return s, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if changed.Check != "tcp://:5353" || changed.Hash != model.SourceIP {
		t.Errorf("ChangeService returned %+v", changed)
	}
	b, _ := f.r.Get("ns1")
	if b.Check != "tcp://:5353" || b.Health != HealthUnknown {
		t.Errorf("ns1 after its service's check changed: check %q, health %s; want the new check, health unknown (a report is about a check)", b.Check, b.Health)
	}
	kinds := []string{}
	for _, c := range f.w.take() {
		kinds = append(kinds, fmt.Sprintf("%s %v %s%s", c.Kind, c.IsService, c.NewService.Name, c.New.Name))
	}
	if diff := cmp.Diff([]string{"updated true dns", "updated false ns1"}, kinds); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}

	// Removing it takes its backends and their overrides along.
	if err := f.r.RemoveService("dns"); err != nil {
		t.Fatal(err)
	}
	kinds = nil
	for _, c := range f.w.take() {
		kinds = append(kinds, fmt.Sprintf("%s %v %s%s", c.Kind, c.IsService, c.OldService.Name, c.Old.Name))
	}
	if diff := cmp.Diff([]string{"removed false ns1", "removed true dns"}, kinds); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(file("", ""), compactState(t, f.path)); diff != "" {
		t.Errorf("state file (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"default"}, modelNames(f.dp.installedServices())); diff != "" {
		t.Errorf("data path services (-want +got):\n%s", diff)
	}
}

func TestServiceRefused(t *testing.T) {
	overlapping := dnsService()
	overlapping.Name = "dns2"
	overlapping.Protocols = model.TCP | model.UDP
	onBackend := dnsService()
	onBackend.Name = "loop"
	onBackend.VIPs = []model.VIP{{Addr: netip.MustParseAddr("10.0.1.12")}}
	tests := []struct {
		name  string
		op    func(r *Registry) error
		want  error
		frags []string
	}{
		{"same name", func(r *Registry) error { _, err := r.AddService(dnsService(), false); return err },
			ErrAlreadyExists, []string{`adding service "dns": a service of that name exists already`}},
		{"overlap", func(r *Registry) error { _, err := r.AddService(overlapping, false); return err },
			ErrAlreadyExists, []string{`services "dns2" and "dns" both take udp port 53 of VIP 10.0.0.53`}},
		{"overlap with the configuration file's", func(r *Registry) error {
			s := overlapping
			s.VIPs = []model.VIP{{Addr: theVIP, Ports: []model.PortRange{{First: 80, Last: 80}}}}
			_, err := r.AddService(s, false)
			return err
		}, ErrAlreadyExists, []string{`services "dns2" and "default" both take tcp port 80 of VIP 10.0.0.100`}},
		{"a backend's address as VIP", func(r *Registry) error { _, err := r.AddService(onBackend, false); return err },
			ErrInvalidArgument, []string{`VIP 10.0.1.12 is the address of backend "web2"`}},
		{"change the configuration file's", func(r *Registry) error {
			_, err := r.ChangeService("default", func(s model.Service) (model.Service, error) { return s, nil })
			return err
		}, ErrInvalidArgument, []string{`service "default" is defined in the configuration file: change it there and reload`}},
		{"remove the configuration file's", func(r *Registry) error { return r.RemoveService("default") },
			ErrInvalidArgument, []string{`service "default" is defined in the configuration file`}},
		{"remove a missing one", func(r *Registry) error { return r.RemoveService("nope") },
			ErrNotFound, []string{`service "nope": no such service`}},
		{"change into an overlap", func(r *Registry) error {
			_, err := r.ChangeService("dns", func(s model.Service) (model.Service, error) {
				s.VIPs = append(s.VIPs, model.VIP{Addr: theVIP})
				return s, nil
			})
			return err
		}, ErrAlreadyExists, []string{`services "dns" and "default" both take every udp port of VIP 10.0.0.100`}},
		{"rename", func(r *Registry) error {
			_, err := r.ChangeService("dns", func(s model.Service) (model.Service, error) { s.Name = "x"; return s, nil })
			return err
		}, ErrInvalidArgument, []string{"cannot be renamed"}},
		{"edit refuses", func(r *Registry) error {
			_, err := r.ChangeService("dns", func(s model.Service) (model.Service, error) { return s, fmt.Errorf("ports: bad") })
			return err
		}, ErrInvalidArgument, []string{`changing service "dns": ports: bad`}},
		{"a backend on a VIP of another service", func(r *Registry) error {
			_, err := r.Add("x", dnsVIP.String(), AddOptions{Service: "default"})
			return err
		}, ErrInvalidArgument, []string{"address 10.0.0.53: is a VIP"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, baseConfig())
			if _, err := f.r.AddService(dnsService(), false); err != nil {
				t.Fatal(err)
			}
			f.w.take()
			before := f.snapshot(t)
			svcs := f.r.Services()
			checkErr(t, tt.op(f.r), tt.want, tt.frags...)
			if diff := cmp.Diff(before, f.snapshot(t), cmpOpts); diff != "" {
				t.Errorf("a refused change changed something (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(svcs, f.r.Services(), cmpOpts); diff != "" {
				t.Errorf("a refused change changed the services (-before +after):\n%s", diff)
			}
		})
	}
}

// A run-time service not kept (the runtime option) goes with caplanced,
// and so do its backends, even those added without the option.
func TestRuntimeService(t *testing.T) {
	f := newFixture(t, baseConfig())
	if _, err := f.r.AddService(dnsService(), true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.r.Add("ns1", "10.0.2.1", AddOptions{Service: "dns"}); err != nil {
		t.Fatal(err)
	}
	if got := compactState(t, f.path); got != "(missing)" {
		t.Errorf("state file: %s", got)
	}
	f.open(t, baseConfig())
	if diff := cmp.Diff([]string{"default"}, names(f.r.Services())); diff != "" {
		t.Errorf("services after a restart (-want +got):\n%s", diff)
	}
}

// The configuration file wins: a reload that brings a service of the same
// name or the same traffic drops the run-time one with its backends.
func TestReloadServices(t *testing.T) {
	f := newFixture(t, baseConfig())
	if _, err := f.r.AddService(dnsService(), false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.r.Add("ns1", "10.0.2.1", AddOptions{Service: "dns"}); err != nil {
		t.Fatal(err)
	}
	fileDNS := dnsService()
	fileDNS.Name = "resolver"
	warnings, err := f.r.Reload(append(services, fileDNS), baseConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`run-time service "dns" dropped: services "dns" and "resolver" both take udp port 53 of VIP 10.0.0.53, and the configuration file's wins`,
		`run-time backend "ns1" (10.0.2.1) dropped: its service "dns" is gone`,
	}
	if diff := cmp.Diff(want, warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"default", "resolver"}, names(f.r.Services())); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}

	// Overlapping services in the file itself are refused, naming both.
	bad := fileDNS
	bad.Name = "other"
	_, err = f.r.Reload(append(services, fileDNS, bad), baseConfig())
	checkErr(t, err, ErrInvalidArgument, `services "other" and "resolver" both take udp port 53 of VIP 10.0.0.53`)
}

// A state file of version 1 (before services) is read as backends of the
// service "default", which today's configuration files define.
func TestStateFileVersion1(t *testing.T) {
	dir := t.TempDir()
	f := &fixture{dir: dir, path: dir + "/backends.json"}
	writeState(t, f.path, `{"version": 1, "backends": [{"name": "web9", "address": "10.0.1.19", "weight": 100}], "overrides": {"web9": {"drained": true}}}`)
	f.open(t, baseConfig())
	b, ok := f.r.Get("web9")
	if !ok || b.Service != config.DefaultService || b.Admin != AdminDrained {
		t.Errorf("web9 from a version 1 file: %+v, %v", b, ok)
	}
	// The next change writes version 2.
	if err := f.r.SetWeight("web9", 5); err != nil {
		t.Fatal(err)
	}
	if got := compactState(t, f.path); !strings.HasPrefix(got, `{"version":2,"backends":[{"name":"web9","service":"default"`) {
		t.Errorf("state file after a change: %s", got)
	}
}

// Every backend needs a slot in its service's table.
func TestPoolFitsTable(t *testing.T) {
	f := newFixture(t, baseConfig())
	small := dnsService()
	small.TableSize = 3 // not a size config accepts: a small pool for the test
	if _, err := f.r.AddService(small, false); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := f.r.Add(fmt.Sprintf("ns%d", i), fmt.Sprintf("10.0.2.%d", i+1), AddOptions{Service: "dns"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := f.r.Add("ns3", "10.0.2.9", AddOptions{Service: "dns"})
	checkErr(t, err, ErrInvalidArgument, `service "dns" has 3 backends, as many as its table_size (3) has slots`)
}

// A stream of AddService calls stops at MaxServices.
func TestMaxServices(t *testing.T) {
	f := newFixture(t, baseConfig())
	add := func(i int) error {
		s := dnsService()
		s.Name = fmt.Sprintf("s%d", i)
		s.VIPs = []model.VIP{{Addr: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})}}
		_, err := f.r.AddService(s, true)
		return err
	}
	for i := range MaxServices - 1 { // and the configuration file's default
		if err := add(i); err != nil {
			t.Fatalf("service %d: %v", i, err)
		}
	}
	checkErr(t, add(MaxServices), ErrInvalidArgument, "there are 1000 services already")
}
