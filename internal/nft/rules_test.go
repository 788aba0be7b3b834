package nft

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/model"
)

func TestValidate(t *testing.T) {
	v4 := []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	tunnel := func(edit func(*Tunnel)) Rules {
		tun := &Tunnel{Port: 5555, Balancers: v4, Devices: []string{"caplance0"}, VIPs: v4}
		edit(tun)
		return Rules{Tunnel: tun}
	}
	tests := []struct {
		name    string
		rules   Rules
		wantErr string // substring; "" = valid
	}{
		{"silence only", Rules{SilenceVIPs: v4}, ""},
		{"tunnel only", tunnel(func(*Tunnel) {}), ""},
		{"both", Rules{SilenceVIPs: v4, Tunnel: tunnel(func(*Tunnel) {}).Tunnel}, ""},
		{"nothing", Rules{}, "no rules"},
		{"empty slice", Rules{SilenceVIPs: []netip.Addr{}}, "no rules"},
		{"ipv6 vip", Rules{SilenceVIPs: []netip.Addr{v4[0], netip.MustParseAddr("2001:db8::1")}}, ""},
		{"4in6 vip", Rules{SilenceVIPs: []netip.Addr{netip.MustParseAddr("::ffff:192.0.2.1")}},
			"SilenceVIPs[0]: ::ffff:192.0.2.1 is IPv4-mapped; give the IPv4 address"},
		{"vip with a zone", Rules{SilenceVIPs: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}},
			"SilenceVIPs[0]: fe80::1%eth0 has a zone"},
		{"zero vip", Rules{SilenceVIPs: []netip.Addr{{}}}, "SilenceVIPs[0]: invalid"},
		{"forward only", Rules{Forward: []Forward{{VIP: v4[0], Protocols: model.TCP}}}, ""},
		{"forward with ports", Rules{Forward: []Forward{{VIP: v4[0], Protocols: model.UDP, Ports: []model.PortRange{{First: 443, Last: 443}, {First: 80, Last: 90}}}}}, ""},
		{"forward ipv6 vip", Rules{Forward: []Forward{{VIP: v4[0], Protocols: model.TCP}, {VIP: netip.MustParseAddr("2001:db8::1"), Protocols: model.TCP}}}, ""},
		{"forward 4in6 vip", Rules{Forward: []Forward{{VIP: netip.MustParseAddr("::ffff:192.0.2.1"), Protocols: model.TCP}}},
			"Forward[0].VIP: ::ffff:192.0.2.1 is IPv4-mapped"},
		{"forward zero vip", Rules{Forward: []Forward{{Protocols: model.TCP}}}, "Forward[0].VIP: invalid"},
		{"forward no protocol", Rules{Forward: []Forward{{VIP: v4[0]}}}, "Forward[0].Protocols: protocols(0): must be TCP, UDP or both"},
		{"forward port 0", Rules{Forward: []Forward{{VIP: v4[0], Protocols: model.TCP, Ports: []model.PortRange{{First: 0, Last: 80}}}}}, "Forward[0].Ports: 0-80: not a port range"},
		{"forward range backwards", Rules{Forward: []Forward{{VIP: v4[0], Protocols: model.TCP, Ports: []model.PortRange{{First: 90, Last: 80}}}}}, "Forward[0].Ports: 90-80: not a port range"},
		{"one VIP in two services", Rules{Forward: []Forward{{VIP: v4[0], Protocols: model.TCP}, {VIP: v4[0], Protocols: model.UDP, Ports: []model.PortRange{{First: 53, Last: 53}}}}}, ""},
		{"port 0", tunnel(func(tun *Tunnel) { tun.Port = 0 }), "Tunnel.Port"},
		{"no balancers", tunnel(func(tun *Tunnel) { tun.Balancers = nil }), "Tunnel.Balancers: empty"},
		{"ipv6 balancer", tunnel(func(tun *Tunnel) { tun.Balancers = []netip.Addr{netip.MustParseAddr("2001:db8::1")} }), ""},
		{"4in6 balancer", tunnel(func(tun *Tunnel) { tun.Balancers = []netip.Addr{netip.MustParseAddr("::ffff:192.0.2.1")} }),
			"Tunnel.Balancers[0]: ::ffff:192.0.2.1 is IPv4-mapped"},
		{"no device", tunnel(func(tun *Tunnel) { tun.Devices = nil }), "Tunnel.Devices: empty"},
		{"empty device", tunnel(func(tun *Tunnel) { tun.Devices = []string{"tunl0", ""} }), `Tunnel.Devices[1]: "" is not an interface name`},
		{"long device", tunnel(func(tun *Tunnel) { tun.Devices = []string{"sixteen-chars-xx"} }), "Tunnel.Devices[0]"},
		{"15-byte device", tunnel(func(tun *Tunnel) { tun.Devices = []string{"fifteen-chars-x"} }), ""},
		{"two devices", tunnel(func(tun *Tunnel) { tun.Devices = []string{"tunl0", "caplance-ip6tnl"} }), ""},
		{"no vips", tunnel(func(tun *Tunnel) { tun.VIPs = nil }), "Tunnel.VIPs: empty"},
		{"ipv6 tunnel vip", tunnel(func(tun *Tunnel) { tun.VIPs = []netip.Addr{netip.MustParseAddr("2001:db8::100")} }), ""},
		{"tunnel vip with a zone", tunnel(func(tun *Tunnel) { tun.VIPs = []netip.Addr{v4[0], netip.MustParseAddr("fe80::1%eth0")} }),
			"Tunnel.VIPs[1]: fe80::1%eth0 has a zone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.rules.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
	if err := (Rules{}).Validate(); !errors.Is(err, ErrNoRules) {
		t.Errorf("Rules{}.Validate() = %v, want ErrNoRules", err)
	}
}

func TestElements(t *testing.T) {
	in := []netip.Addr{
		netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"),
	}
	var got [][]byte
	for _, e := range elements(in) {
		got = append(got, e.Key)
	}
	want := [][]byte{{10, 0, 0, 1}, {10, 0, 0, 2}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("elements (-want +got):\n%s", diff)
	}
	got = nil
	for _, e := range elements([]netip.Addr{netip.MustParseAddr("2001:db8::1")}) {
		got = append(got, e.Key)
	}
	want = [][]byte{{0x20, 0x01, 0x0d, 0xb8, 15: 1}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("elements (-want +got):\n%s", diff)
	}
	if in[0] != netip.MustParseAddr("10.0.0.2") {
		t.Error("elements sorted its argument in place")
	}
}
