package config

import (
	"net/netip"
	"testing"
)

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // the address, or the error
	}{
		{"10.0.0.1", "10.0.0.1"},
		{"192.0.2.7", "192.0.2.7"},
		{"2001:db8::1", "2001:db8::1"},
		{"2001:DB8:0:0::10", "2001:db8::10"},
		{"fd00:1::5", "fd00:1::5"},
		{"2a00:1450:4001:82a::200e", "2a00:1450:4001:82a::200e"},
		{"10.0.0.300", "not an IP address"},
		{"2001:db8::1::2", "not an IP address"},
		{"[2001:db8::1]", "not an IP address"},
		{"2001:db8::1/128", "not an IP address"},
		{"", "not an IP address"},
		{"0.0.0.0", "not a unicast address"},
		{"255.255.255.255", "not a unicast address"},
		{"::", "not a unicast address"},
		{"224.0.0.1", "multicast address, need unicast"},
		{"ff02::1", "multicast address, need unicast"},
		{"ff0e::1234", "multicast address, need unicast"},
		{"127.0.0.1", "loopback address, need one reachable from other hosts"},
		{"::1", "loopback address, need one reachable from other hosts"},
		{"fe80::1", "link-local address, need a global or unique local one"},
		{"fe80::1%eth0", `has a zone "eth0": give a global address without one`},
		{"2001:db8::1%eth0", `has a zone "eth0": give a global address without one`},
		{"::ffff:10.0.0.1", "IPv4-mapped IPv6 address: write the IPv4 form 10.0.0.1"},
		{"::ffff:0a00:0001", "IPv4-mapped IPv6 address: write the IPv4 form 10.0.0.1"},
	} {
		a, err := ParseAddress(tc.in)
		got := a.String()
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("ParseAddress(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if err == nil && a != netip.MustParseAddr(tc.want) {
			t.Errorf("ParseAddress(%q) = %v, not the canonical address", tc.in, a)
		}
	}
}
