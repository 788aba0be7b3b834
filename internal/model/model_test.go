package model

import (
	"net/netip"
	"testing"
)

// The names are a backend's State in stats.json (caplanced(8)), so they
// must not change.
func TestStateString(t *testing.T) {
	for _, tc := range []struct {
		s    State
		want string
	}{
		{Active, "active"},
		{Draining, "draining"},
		{Down, "down"},
		{State(7), "state(7)"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("State(%d).String() = %q, want %q", uint8(tc.s), got, tc.want)
		}
	}
}

// The names are the configuration file's, the D-Bus API's and caplancectl's.
func TestNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{TCP.String(), "tcp"},
		{UDP.String(), "udp"},
		{(TCP | UDP).String(), "tcp+udp"},
		{FiveTuple.String(), "5-tuple"},
		{SourceIP.String(), "source-ip"},
		{SourceIPPort.String(), "source-ip-port"},
		{FormatPorts(nil), "all"},
		{FormatPorts([]PortRange{{80, 80}, {443, 443}, {8000, 8099}}), "80,443,8000-8099"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestTakes(t *testing.T) {
	v := VIP{Ports: []PortRange{{80, 80}, {8000, 8099}}}
	for _, tc := range []struct {
		port uint16
		want bool
	}{{80, true}, {81, false}, {7999, false}, {8000, true}, {8099, true}, {8100, false}} {
		if got := v.Takes(tc.port); got != tc.want {
			t.Errorf("Takes(%d) = %v, want %v", tc.port, got, tc.want)
		}
	}
	if !(VIP{}).Takes(12345) {
		t.Error("a VIP without a port list does not take every port")
	}
}

func TestOverlap(t *testing.T) {
	a1, a2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	web := Service{Name: "web", Protocols: TCP, VIPs: []VIP{{Addr: a1, Ports: []PortRange{{80, 80}, {443, 443}}}}}
	for _, tc := range []struct {
		name      string
		other     Service
		ok        bool
		wantProto Protocols
		wantPort  uint16
	}{
		{"other VIP", Service{Protocols: TCP, VIPs: []VIP{{Addr: a2}}}, false, 0, 0},
		{"other protocol", Service{Protocols: UDP, VIPs: []VIP{{Addr: a1}}}, false, 0, 0},
		{"other ports", Service{Protocols: TCP | UDP, VIPs: []VIP{{Addr: a1, Ports: []PortRange{{81, 442}}}}}, false, 0, 0},
		{"every port", Service{Protocols: TCP | UDP, VIPs: []VIP{{Addr: a1}}}, true, TCP, 80},
		{"a range", Service{Protocols: TCP, VIPs: []VIP{{Addr: a2}, {Addr: a1, Ports: []PortRange{{400, 500}}}}}, true, TCP, 443},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, pair := range [][2]Service{{web, tc.other}, {tc.other, web}} {
				vip, proto, port, ok := Overlap(pair[0], pair[1])
				if ok != tc.ok || proto != tc.wantProto || port != tc.wantPort || (ok && vip != a1) {
					t.Errorf("Overlap = %v %v %d %v, want %v %v %d %v", vip, proto, port, ok, a1, tc.wantProto, tc.wantPort, tc.ok)
				}
			}
		})
	}
}
