package config

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/model"
)

// TestCheckService is the table of a service's rules, which the
// configuration file and the registry's AddService and ChangeService
// share: a new service over ServiceDefaults, a change over the service as
// it is.
func TestCheckService(t *testing.T) {
	size := func(n int64) *int64 { return &n }
	a1, a2, a3 := addr("192.0.2.1"), addr("192.0.2.2"), addr("192.0.2.3")
	p80 := ports([2]uint16{80, 80})
	web := model.Service{Name: "web", Protocols: model.TCP, Hash: model.SourceIP, TableSize: 101, Check: "tcp://:80",
		VIPs: []model.VIP{{Addr: a1, Ports: p80}, {Addr: a2, Ports: p80}}}
	mixed := model.Service{Name: "mixed", Protocols: model.TCP, TableSize: 101,
		VIPs: []model.VIP{{Addr: a1, Ports: p80}, {Addr: a2}}}
	long := strings.Repeat("x", 1000)
	echo := `"` + strings.Repeat("x", 64) + `"…`
	tests := []struct {
		name  string
		spec  ServiceSpec
		base  model.Service
		want  model.Service
		probs []string // "field taken? message"
	}{
		{"new, defaults", ServiceSpec{Name: "web", VIPs: []string{"192.0.2.1"}}, ServiceDefaults(65537),
			model.Service{Name: "web", Protocols: model.TCP | model.UDP, Hash: model.FiveTuple, TableSize: 65537, VIPs: []model.VIP{{Addr: a1}}}, nil},
		{"new, every field", ServiceSpec{Name: "web", VIPs: []string{"192.0.2.1", "192.0.2.2"}, Protocols: []string{"tcp"}, Ports: "80",
			Hash: "source-ip", TableSize: size(101), Check: "tcp://:80"}, ServiceDefaults(65537), web, nil},
		{"new, nothing", ServiceSpec{}, ServiceDefaults(65537), ServiceDefaults(65537),
			[]string{"name false name: missing", "vips false vips: missing (at least one VIP is required)"}},
		{"change nothing", ServiceSpec{}, web, web, nil},
		{"change the name", ServiceSpec{Name: "www"}, web, web,
			[]string{"name false name: cannot be changed (remove the service and add it again)"}},
		{"repeat the name", ServiceSpec{Name: "web", Hash: "5-tuple"}, web,
			func() model.Service { s := web; s.Hash = model.FiveTuple; return s }(), nil},
		{"change the ports of every VIP", ServiceSpec{Ports: "443,8000-8099"}, web,
			func() model.Service {
				s := web
				s.VIPs = []model.VIP{{Addr: a1, Ports: ports([2]uint16{443, 443}, [2]uint16{8000, 8099})}, {Addr: a2, Ports: ports([2]uint16{443, 443}, [2]uint16{8000, 8099})}}
				return s
			}(), nil},
		{"change to every port", ServiceSpec{Ports: "all"}, web,
			func() model.Service { s := web; s.VIPs = []model.VIP{{Addr: a1}, {Addr: a2}}; return s }(), nil},
		{"new VIPs keep the ports", ServiceSpec{VIPs: []string{"192.0.2.3", "192.0.2.1"}}, web,
			func() model.Service {
				s := web
				s.VIPs = []model.VIP{{Addr: a3, Ports: p80}, {Addr: a1, Ports: p80}}
				return s
			}(), nil},
		{"new VIPs and ports", ServiceSpec{VIPs: []string{"192.0.2.3"}, Ports: "53"}, web,
			func() model.Service {
				s := web
				s.VIPs = []model.VIP{{Addr: a3, Ports: ports([2]uint16{53, 53})}}
				return s
			}(), nil},
		{"new VIPs of a service whose VIPs have different ports", ServiceSpec{VIPs: []string{"192.0.2.3"}}, mixed, mixed,
			[]string{"ports false ports: missing: the service's VIPs have different port lists, so give the new VIPs theirs"}},
		{"new VIPs and ports of such a service", ServiceSpec{VIPs: []string{"192.0.2.3"}, Ports: "all"}, mixed,
			func() model.Service { s := mixed; s.VIPs = []model.VIP{{Addr: a3}}; return s }(), nil},
		{"change protocols, table size, check", ServiceSpec{Protocols: []string{"tcp+udp"}, TableSize: size(65537), Check: "http://:80/"}, web,
			func() model.Service {
				s := web
				s.Protocols, s.TableSize, s.Check = model.TCP|model.UDP, 65537, "http://:80/"
				return s
			}(), nil},
		{"no VIPs", ServiceSpec{VIPs: []string{}}, web, web, []string{"vips false vips: at least one VIP is required"}},
		{"bad values keep the base's", ServiceSpec{VIPs: []string{long}, Protocols: []string{long}, Ports: "80," + long, Hash: long, TableSize: size(4), Check: "nope"}, web, web,
			[]string{
				"vips false vips: " + echo + ": not an IP address",
				"ports false ports: " + echo + ": not a port or a range first-last (e.g. 80 or 8000-8099)",
				"protocols false protocols: " + echo + ": not a protocol (want tcp, udp or tcp+udp)",
				"hash false hash " + echo + ": must be 5-tuple, source-ip or source-ip-port",
				"table_size false table_size 4: must be a prime between 101 and 16777213",
				`check false check "nope": not a check spec: want KIND://…, e.g. tcp://:443 or http://:80/healthz`,
			}},
		{"bad name", ServiceSpec{Name: long, VIPs: []string{"192.0.2.1"}}, ServiceDefaults(101),
			func() model.Service { s := ServiceDefaults(101); s.VIPs = []model.VIP{{Addr: a1}}; return s }(),
			[]string{"name false name: must be 1-64 characters of A-Z a-z 0-9 . _ -"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, probs := CheckService(tt.spec, tt.base)
			if diff := cmp.Diff(tt.probs, problemStrings(probs)); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, got, cmpConfig); diff != "" {
				t.Errorf("service (-want +got):\n%s", diff)
			}
		})
	}
}

// A ServiceSet holds the services a new or changed one is checked
// against: their names are taken and their (VIP, protocol, port) too.
func TestServiceSet(t *testing.T) {
	web := model.Service{Name: "web", Protocols: model.TCP, TableSize: 101,
		VIPs: []model.VIP{{Addr: addr("192.0.2.1"), Ports: ports([2]uint16{80, 80}, [2]uint16{443, 443})}}}
	tests := []struct {
		name  string
		spec  ServiceSpec
		probs []string
	}{
		{"another port", ServiceSpec{Name: "dns", VIPs: []string{"192.0.2.1"}, Ports: "53"}, nil},
		{"another protocol", ServiceSpec{Name: "quic", VIPs: []string{"192.0.2.1"}, Protocols: []string{"udp"}, Ports: "443"}, nil},
		{"a port in a range", ServiceSpec{Name: "alt", VIPs: []string{"192.0.2.9", "192.0.2.1"}, Ports: "400-500"},
			[]string{`vips true overlaps service "web": both would take tcp port 443 of 192.0.2.1 (a packet must belong to one service)`}},
		{"every port", ServiceSpec{Name: "all", VIPs: []string{"192.0.2.1"}},
			[]string{`vips true overlaps service "web": both would take tcp port 80 of 192.0.2.1 (a packet must belong to one service)`}},
		{"the name", ServiceSpec{Name: "web", VIPs: []string{"192.0.2.2"}},
			[]string{"name true name: already used by another service"}},
		{"an invalid service is not checked for overlaps", ServiceSpec{Name: "bad", VIPs: []string{"192.0.2.1"}, Hash: "x"},
			[]string{`hash false hash "x": must be 5-tuple, source-ip or source-ip-port`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := NewServiceSet([]model.Service{web})
			_, probs := set.Add(tt.spec, ServiceDefaults(101))
			if diff := cmp.Diff(tt.probs, problemStrings(probs)); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParsePorts(t *testing.T) {
	long := strings.Repeat("1", 1000)
	tests := []struct {
		in   string
		want []model.PortRange
		err  string
	}{
		{in: "all", want: nil},
		{in: "80", want: ports([2]uint16{80, 80})},
		{in: "80,443,8000-8099", want: ports([2]uint16{80, 80}, [2]uint16{443, 443}, [2]uint16{8000, 8099})},
		{in: " 443 , 81,80, 82-90,1-1,65535", want: ports([2]uint16{1, 1}, [2]uint16{80, 90}, [2]uint16{443, 443}, [2]uint16{65535, 65535})},
		{in: "", err: `empty list would drop every packet; leave ports out (or give "all") to take every port`},
		{in: "80,,81", err: `"": not a port or a range first-last (e.g. 80 or 8000-8099)`},
		{in: "80-", err: `"80-": not a port or a range first-last (e.g. 80 or 8000-8099)`},
		{in: "+80", err: `"+80": not a port or a range first-last (e.g. 80 or 8000-8099)`},
		{in: "-80", err: `"-80": not a port or a range first-last (e.g. 80 or 8000-8099)`},
		{in: "1-2-3", err: `"1-2-3": not a port or a range first-last (e.g. 80 or 8000-8099)`},
		{in: "0-80", err: "port 0: must be between 1 and 65535"},
		{in: "all,80", err: `"all" stands alone: it is every port`},
		{in: "80,80,8000-8099,8050,8099-9000", err: "port 80: listed twice\nport 8050: overlaps 8000-8099\nports 8099-9000: overlaps 8000-8099"},
		{in: long, err: `"` + strings.Repeat("1", 64) + `"…: not a port or a range first-last (e.g. 80 or 8000-8099)`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePorts(tt.in)
			if gotErr := fmt.Sprint(err); (err != nil || tt.err != "") && gotErr != tt.err {
				t.Errorf("error %q, want %q", gotErr, tt.err)
			}
			if diff := cmp.Diff(tt.want, got); err == nil && diff != "" {
				t.Errorf("ports (-want +got):\n%s", diff)
			}
			if err == nil && got != nil && model.FormatPorts(got) == "" {
				t.Errorf("FormatPorts(%v) is empty", got)
			}
		})
	}
}

func TestParseProtocolsAndHash(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want model.Protocols
		err  string
	}{
		{in: []string{"tcp"}, want: model.TCP},
		{in: []string{"udp"}, want: model.UDP},
		{in: []string{"tcp+udp"}, want: model.TCP | model.UDP},
		{in: []string{"udp", "tcp"}, want: model.TCP | model.UDP},
		{in: nil, err: "none given: want tcp, udp or both (leave the key out for both)"},
		{in: []string{"TCP"}, err: `"TCP": not a protocol (want tcp, udp or tcp+udp)`},
		{in: []string{"udp", "tcp+udp"}, err: "udp: listed twice"},
	} {
		got, err := ParseProtocols(tc.in)
		wantErr := tc.err
		if wantErr == "" {
			wantErr = "<nil>"
		}
		if fmt.Sprint(err) != wantErr || got != tc.want && err == nil {
			t.Errorf("ParseProtocols(%q) = %v, %v; want %v, %q", tc.in, got, err, tc.want, tc.err)
		}
		if err == nil {
			// The names round-trip: String is what D-Bus and caplancectl show.
			if back, err := ParseProtocols([]string{got.String()}); err != nil || back != got {
				t.Errorf("ParseProtocols(%q) = %v, %v", got.String(), back, err)
			}
		}
	}
	for _, h := range model.Hashes() {
		if got, err := ParseHash(h.String()); err != nil || got != h {
			t.Errorf("ParseHash(%q) = %v, %v", h.String(), got, err)
		}
	}
	if _, err := ParseHash("sh"); fmt.Sprint(err) != `"sh": must be 5-tuple, source-ip or source-ip-port` {
		t.Errorf("ParseHash(sh): %v", err)
	}
}

func problemStrings(probs []Problem) []string {
	var out []string
	for _, p := range probs {
		out = append(out, fmt.Sprintf("%s %t %v", p.Field, p.Taken, p))
	}
	return out
}
