package config

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestBackendSet is the table of a backend's rules, which the
// configuration file, the registry and the state file share.
func TestBackendSet(t *testing.T) {
	vip := netip.MustParseAddr("10.0.0.100")
	w := func(n int64) *int64 { return &n }
	long := strings.Repeat("n", 1000)
	echo := `"` + strings.Repeat("n", 64) + `"…`
	// web1 10.0.1.1 is in the set before each case.
	tests := []struct {
		name  string
		spec  BackendSpec
		want  Backend
		probs []string // "field taken? message"
	}{
		{"valid, default weight", BackendSpec{Name: "web2", Address: "10.0.1.2"},
			Backend{Name: "web2", Address: netip.MustParseAddr("10.0.1.2"), Weight: DefaultWeight}, nil},
		{"valid, all fields", BackendSpec{Name: "web2", Address: "2001:db8:1::2", Weight: w(0), Check: "tcp://:80"},
			Backend{Name: "web2", Address: netip.MustParseAddr("2001:db8:1::2"), Weight: 0, Check: "tcp://:80"}, nil},
		{"no name", BackendSpec{Address: "10.0.1.2"},
			Backend{Address: netip.MustParseAddr("10.0.1.2"), Weight: DefaultWeight},
			[]string{"name false name: missing"}},
		{"bad name", BackendSpec{Name: "a/b", Address: "10.0.1.2"},
			Backend{Name: "a/b", Address: netip.MustParseAddr("10.0.1.2"), Weight: DefaultWeight},
			[]string{"name false name: must be 1-64 characters of A-Z a-z 0-9 . _ -"}},
		{"name taken", BackendSpec{Name: "web1", Address: "10.0.1.2"},
			Backend{Name: "web1", Address: netip.MustParseAddr("10.0.1.2"), Weight: DefaultWeight},
			[]string{"name true name: already used by another backend"}},
		{"no address", BackendSpec{Name: "web2"}, Backend{Name: "web2", Weight: DefaultWeight},
			[]string{"address false address: missing"}},
		{"malformed address", BackendSpec{Name: "web2", Address: "10.0.1.300"}, Backend{Name: "web2", Weight: DefaultWeight},
			[]string{`address false address "10.0.1.300": not an IP address`}},
		{"long address", BackendSpec{Name: "web2", Address: long}, Backend{Name: "web2", Weight: DefaultWeight},
			[]string{"address false address " + echo + ": not an IP address"}},
		{"IPv4-mapped address", BackendSpec{Name: "web2", Address: "::ffff:10.0.1.2"}, Backend{Name: "web2", Weight: DefaultWeight},
			[]string{`address false address "::ffff:10.0.1.2": IPv4-mapped IPv6 address: write the IPv4 form 10.0.1.2`}},
		{"loopback address", BackendSpec{Name: "web2", Address: "127.0.0.1"}, Backend{Name: "web2", Weight: DefaultWeight},
			[]string{`address false address "127.0.0.1": loopback address, need one reachable from other hosts`}},
		{"VIP address", BackendSpec{Name: "web2", Address: "10.0.0.100"}, Backend{Name: "web2", Weight: DefaultWeight},
			[]string{"address false address 10.0.0.100: is a VIP of this balancer (packets would loop)"}},
		{"address taken", BackendSpec{Name: "web2", Address: "10.0.1.1"},
			Backend{Name: "web2", Address: netip.MustParseAddr("10.0.1.1"), Weight: DefaultWeight},
			[]string{`address true address 10.0.1.1: already used by backend "web1"`}},
		{"weight too big", BackendSpec{Name: "web2", Address: "10.0.1.2", Weight: w(MaxWeight + 1)},
			Backend{Name: "web2", Address: netip.MustParseAddr("10.0.1.2"), Weight: DefaultWeight},
			[]string{"weight false weight 10001: must be between 0 and 10000"}},
		{"weight negative", BackendSpec{Name: "web2", Address: "10.0.1.2", Weight: w(-1)},
			Backend{Name: "web2", Address: netip.MustParseAddr("10.0.1.2"), Weight: DefaultWeight},
			[]string{"weight false weight -1: must be between 0 and 10000"}},
		{"bad check", BackendSpec{Name: "web2", Address: "10.0.1.2", Check: "nope"},
			Backend{Name: "web2", Address: netip.MustParseAddr("10.0.1.2"), Weight: DefaultWeight, Check: "nope"},
			[]string{`check false check "nope": not a check spec: want KIND://…, e.g. tcp://:443 or http://:80/healthz`}},
		{"everything wrong, in field order", BackendSpec{Name: "web1", Address: "10.0.0.100", Weight: w(-5), Check: "nope"},
			Backend{Name: "web1", Weight: DefaultWeight, Check: "nope"},
			[]string{
				"address false address 10.0.0.100: is a VIP of this balancer (packets would loop)",
				"weight false weight -5: must be between 0 and 10000",
				`check false check "nope": not a check spec: want KIND://…, e.g. tcp://:443 or http://:80/healthz`,
				"name true name: already used by another backend",
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := NewBackendSet([]netip.Addr{vip})
			if _, probs := set.Add(BackendSpec{Name: "web1", Address: "10.0.1.1"}); len(probs) > 0 {
				t.Fatalf("adding web1: %v", probs)
			}
			got, probs := set.Add(tt.spec)
			var gotProbs []string
			for _, p := range probs {
				gotProbs = append(gotProbs, fmt.Sprintf("%s %t %v", p.Field, p.Taken, p))
			}
			if diff := cmp.Diff(tt.probs, gotProbs); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, got, cmpConfig); diff != "" {
				t.Errorf("backend (-want +got):\n%s", diff)
			}
		})
	}
}
