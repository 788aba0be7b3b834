package config

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/model"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// The files of before services — testdata holds the contrib files as
// they were shipped (commit 40881d8), unchanged — still load, each as one
// service "default" with every backend in it.
func TestSinglePoolFiles(t *testing.T) {
	balancer := func(iface string) *Balancer { b := defaultBalancer(); b.Interface = iface; return b }
	tests := []struct {
		file string
		want *Config
	}{
		{"single-pool.minimal.toml", &Config{
			Balancer: balancer(""),
			Services: singlePool(65537, model.VIP{Addr: addr("192.0.2.100")}),
			Backends: []Backend{
				{Name: "web1", Service: "default", Address: addr("198.51.100.11"), Weight: 100},
				{Name: "web2", Service: "default", Address: addr("198.51.100.12"), Weight: 100},
			},
			SinglePool: true,
		}},
		{"single-pool.reference.toml", &Config{
			Balancer: balancer("eth0"),
			Services: singlePool(65537,
				model.VIP{Addr: addr("192.0.2.100"), Ports: ports([2]uint16{80, 80}, [2]uint16{443, 443})},
				model.VIP{Addr: addr("192.0.2.101")}),
			Backends: []Backend{
				{Name: "web1", Service: "default", Address: addr("198.51.100.11"), Weight: 100, Check: "http://:80/healthz"},
				{Name: "web2", Service: "default", Address: addr("198.51.100.12"), Weight: 200},
			},
			Receiver:   &Receiver{VIPs: []netip.Addr{addr("192.0.2.100")}, Balancers: []netip.Addr{addr("198.51.100.1")}, EncapPort: 5555, Mode: ModeAuto},
			SinglePool: true,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := Load(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpConfig); diff != "" {
				t.Errorf("Load mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// ServicesForm writes a single-pool configuration in the services form:
// the text is a valid file whose configuration is the same (or, when the
// VIPs' port lists differ, the same split into one service per list, the
// backends in the first).
func TestServicesForm(t *testing.T) {
	tests := []struct {
		name    string
		doc     string // "" reads testdata/<name>
		environ []string
		golden  string // testdata file of the expected text, "" for none
		// split is the services expected instead of the original's.
		split []model.Service
	}{
		{name: "single-pool.minimal.toml", golden: "single-pool.minimal.services.toml"},
		{name: "single-pool.reference.toml", golden: "single-pool.reference.services.toml", split: []model.Service{
			{Name: "default", Protocols: model.TCP | model.UDP, TableSize: 65537,
				VIPs: []model.VIP{{Addr: addr("192.0.2.100"), Ports: ports([2]uint16{80, 80}, [2]uint16{443, 443})}}},
			{Name: "default-2", Protocols: model.TCP | model.UDP, TableSize: 65537,
				VIPs: []model.VIP{{Addr: addr("192.0.2.101")}}},
		}},
		{name: "every key away from its default, and the environment", doc: `
[balancer]
vips = ["10.0.0.100", "10.0.0.101", "10.0.0.102"]
interface = "eth1"
table_size = 101
max_backends = 3
workers = 2
conntrack_size = 4096
tcp_timeout = "1h"
udp_timeout = "90s"
tcp_closing_timeout = "2s"
routed = true
route_table = 7
route_protocol = 200
route_min_backends = 2
withdraw_delay = "0s"
[balancer.ports]
"10.0.0.100" = [443, 80, 81, 82]
"10.0.0.102" = [82, 443, 81, 80]
"10.0.0.101" = [80, 81, 82, 443]
[[backend]]
name = "web-1.a_b"
address = "10.0.1.11"
weight = 0
check = "exec:///usr/bin/check \"a b\" \\ c"
[[backend]]
name = "web2"
address = "10.0.1.12"
weight = 10000
[receiver]
vips = ["10.0.0.100"]
balancers = ["10.0.1.1", "10.0.1.2"]
mode = "userspace"
encap_port = 7000
workers = 3
`, environ: []string{"CAPLANCED_BALANCER_ENCAP_PORT=6000", "CAPLANCED_BALANCER_UDP_TIMEOUT=1h30m", "CAPLANCED_BALANCER_DATAPLANE=raw"}},
		{name: "no backends", doc: "[balancer]\nvips = [\"10.0.0.100\"]\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := []byte(tt.doc)
			if tt.doc == "" {
				var err error
				if data, err = os.ReadFile(filepath.Join("testdata", tt.name)); err != nil {
					t.Fatal(err)
				}
			}
			cfg, err := Parse("old.toml", data, tt.environ)
			if err != nil {
				t.Fatal(err)
			}
			text := ServicesForm(cfg)
			if tt.golden != "" {
				golden(t, filepath.Join("testdata", tt.golden), text)
			}
			again, err := Parse("new.toml", []byte(text), nil)
			if err != nil {
				t.Fatalf("the services form does not load: %v\n%s", err, text)
			}
			if again.SinglePool {
				t.Errorf("the services form is read as the single-pool form:\n%s", text)
			}
			want := *cfg
			want.SinglePool = false
			if tt.split != nil {
				want.Services = tt.split
				if !strings.Contains(text, "NOT EQUIVALENT") || !strings.Contains(text, "# No backends yet") {
					t.Errorf("a split pool is not said to need its backends split:\n%s", text)
				}
			} else if strings.Contains(text, "NOT EQUIVALENT") || !strings.Contains(text, "equivalent file") {
				t.Errorf("an equivalent file is not said to be:\n%s", text)
			}
			if diff := cmp.Diff(&want, again, cmpConfig); diff != "" {
				t.Errorf("the services form reads differently (-want +got):\n%s\n%s", diff, text)
			}
		})
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour: "1h", 15 * time.Minute: "15m", 90 * time.Second: "1m30s", 10 * time.Second: "10s",
		90 * time.Minute: "1h30m", time.Hour + time.Second: "1h0m1s", 1500 * time.Millisecond: "1.5s",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
		if back, err := time.ParseDuration(formatDuration(d)); err != nil || back != d {
			t.Errorf("%q reads as %v, %v", formatDuration(d), back, err)
		}
	}
}

// golden compares got with the file at path, or rewrites it with -update.
func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run the test with -update to write it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}
