package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/caplance/caplance/internal/maglev"
	"github.com/caplance/caplance/internal/model"
)

var addr = netip.MustParseAddr

// cmpConfig compares netip.Addr by value.
var cmpConfig = cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmpopts.EquateEmpty()}

// defaultBalancer is [balancer] with every key at its default.
func defaultBalancer() *Balancer {
	return &Balancer{EncapPort: 5555, TableSize: 65537, MaxBackends: 4096, Dataplane: DataplaneAuto, ConntrackSize: 1 << 20, TCPTimeout: 15 * time.Minute, UDPTimeout: 5 * time.Minute, TCPClosingTimeout: 10 * time.Second,
		RouteTable: 100, RouteProtocol: 252, RouteMinBackends: 1, WithdrawDelay: 5 * time.Second}
}

// singlePool is the service "default" of a file in the single-pool form.
func singlePool(tableSize int, vips ...model.VIP) []model.Service {
	return []model.Service{{Name: "default", VIPs: vips, Protocols: model.TCP | model.UDP, Hash: model.FiveTuple, TableSize: tableSize}}
}

// ports is a port list of single ports and first-last pairs.
func ports(rs ...[2]uint16) []model.PortRange {
	out := []model.PortRange{}
	for _, r := range rs {
		out = append(out, model.PortRange{First: r[0], Last: r[1]})
	}
	return out
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		environ []string
		want    *Config
	}{
		{
			name: "single pool, defaults",
			doc: `
[balancer]
vips = ["10.0.0.100"]
[[backend]]
name = "web1"
address = "10.0.1.11"
`,
			want: &Config{
				Balancer:   defaultBalancer(),
				Services:   singlePool(65537, model.VIP{Addr: addr("10.0.0.100")}),
				Backends:   []Backend{{Name: "web1", Service: "default", Address: addr("10.0.1.11"), Weight: 100}},
				SinglePool: true,
			},
		},
		{
			name: "single pool, every key",
			doc: `
[balancer]
vips = ["10.0.0.100", "10.0.0.101"]
interface = "eth1"
encap_port = 6000
table_size = 101
max_backends = 3
workers = 2
dataplane = "xdp"
conntrack_size = 4096
tcp_timeout = "1h"
udp_timeout = "90s"
tcp_closing_timeout = "2s"
routed = true
route_table = 1000
route_protocol = 99
route_min_backends = 3
withdraw_delay = "1m30s"
[balancer.ports]
"10.0.0.101" = [443, 80, 81]
[[backend]]
name = "web-1.a_b"
address = "10.0.1.11"
weight = 0
check = "tcp://:80"
[[backend]]
name = "web2"
address = "10.0.1.12"
weight = 10000
`,
			want: &Config{
				Balancer: &Balancer{
					Interface: "eth1", EncapPort: 6000, TableSize: 101, MaxBackends: 3,
					Workers: 2, Dataplane: DataplaneXDP, ConntrackSize: 4096, TCPTimeout: time.Hour, UDPTimeout: 90 * time.Second,
					TCPClosingTimeout: 2 * time.Second,
					Routed:            true, RouteTable: 1000, RouteProtocol: 99, RouteMinBackends: 3, WithdrawDelay: 90 * time.Second,
				},
				Services: singlePool(101, model.VIP{Addr: addr("10.0.0.100")}, model.VIP{Addr: addr("10.0.0.101"), Ports: ports([2]uint16{80, 81}, [2]uint16{443, 443})}),
				Backends: []Backend{
					{Name: "web-1.a_b", Service: "default", Address: addr("10.0.1.11"), Weight: 0, Check: "tcp://:80"},
					{Name: "web2", Service: "default", Address: addr("10.0.1.12"), Weight: 10000},
				},
				SinglePool: true,
			},
		},
		{
			name: "single pool without backends is valid (they come at run time)",
			doc:  "[balancer]\nvips = [\"10.0.0.100\"]\n",
			want: &Config{Balancer: defaultBalancer(), Services: singlePool(65537, model.VIP{Addr: addr("10.0.0.100")}), SinglePool: true},
		},
		{
			name: "a balancer without services is valid (they come at run time)",
			doc:  "[balancer]\nencap_port = 6000\n",
			want: &Config{Balancer: func() *Balancer { b := defaultBalancer(); b.EncapPort = 6000; return b }()},
		},
		{
			name: "services, every key",
			doc: `
[balancer]
table_size = 101

[[service]]
name = "web"
vips = ["192.0.2.100", "2001:db8::101"]
protocols = ["tcp"]
ports = [443, "8000-8099", 80, "8100", "81-82"]
hash = "source-ip"
table_size = 65537
check = "http://:80/healthz"

[[service.backend]]
name = "web1"
address = "198.51.100.11"
weight = 200
check = "tcp://:80"

[[service.backend]]
name = "web2"
address = "198.51.100.12"

[[service]]
name = "dns"
vips = ["192.0.2.100"]
protocols = ["udp"]
ports = [53]

[[service.backend]]
name = "dns1"
address = "198.51.100.11"

[[service]]
name = "dns-tcp"
vips = ["192.0.2.100"]
protocols = ["tcp"]
ports = ["53"]
hash = "source-ip-port"

[[service]]
name = "other"
vips = ["192.0.2.200"]
protocols = ["udp", "tcp"]
ports = ["all"]
`,
			want: &Config{
				Balancer: func() *Balancer { b := defaultBalancer(); b.TableSize, b.MaxBackends = 101, 101; return b }(),
				Services: []model.Service{
					{Name: "web", Protocols: model.TCP, Hash: model.SourceIP, TableSize: 65537, Check: "http://:80/healthz",
						VIPs: []model.VIP{
							{Addr: addr("192.0.2.100"), Ports: ports([2]uint16{80, 82}, [2]uint16{443, 443}, [2]uint16{8000, 8100})},
							{Addr: addr("2001:db8::101"), Ports: ports([2]uint16{80, 82}, [2]uint16{443, 443}, [2]uint16{8000, 8100})},
						}},
					{Name: "dns", Protocols: model.UDP, Hash: model.FiveTuple, TableSize: 101,
						VIPs: []model.VIP{{Addr: addr("192.0.2.100"), Ports: ports([2]uint16{53, 53})}}},
					{Name: "dns-tcp", Protocols: model.TCP, Hash: model.SourceIPPort, TableSize: 101,
						VIPs: []model.VIP{{Addr: addr("192.0.2.100"), Ports: ports([2]uint16{53, 53})}}},
					{Name: "other", Protocols: model.TCP | model.UDP, Hash: model.FiveTuple, TableSize: 101,
						VIPs: []model.VIP{{Addr: addr("192.0.2.200")}}},
				},
				Backends: []Backend{
					{Name: "web1", Service: "web", Address: addr("198.51.100.11"), Weight: 200, Check: "tcp://:80"},
					{Name: "web2", Service: "web", Address: addr("198.51.100.12"), Weight: 100},
					{Name: "dns1", Service: "dns", Address: addr("198.51.100.11"), Weight: 100},
				},
			},
		},
		{
			name:    "environment overrides [balancer] under services: the table size they default to",
			doc:     "[balancer]\n[[service]]\nname = \"web\"\nvips = [\"192.0.2.100\"]\n",
			environ: []string{"CAPLANCED_BALANCER_TABLE_SIZE=101"},
			want: &Config{
				Balancer: func() *Balancer { b := defaultBalancer(); b.TableSize, b.MaxBackends = 101, 101; return b }(),
				Services: []model.Service{{Name: "web", Protocols: model.TCP | model.UDP, TableSize: 101, VIPs: []model.VIP{{Addr: addr("192.0.2.100")}}}},
			},
		},
		{
			name: "receiver",
			doc: `
[receiver]
vips = ["10.0.0.100"]
balancers = ["10.0.1.1", "10.0.1.2"]
mode = "userspace"
encap_port = 7000
workers = 3
`,
			want: &Config{Receiver: &Receiver{
				VIPs: []netip.Addr{addr("10.0.0.100")}, Balancers: []netip.Addr{addr("10.0.1.1"), addr("10.0.1.2")},
				EncapPort: 7000, Mode: ModeUserspace, Workers: 3,
			}},
		},
		{
			name: "receiver defaults; both families",
			doc:  "[receiver]\nvips = [\"10.0.0.100\", \"2001:db8::100\"]\nbalancers = [\"2001:db8:1::1\", \"10.0.1.1\"]\n",
			want: &Config{Receiver: &Receiver{
				VIPs:      []netip.Addr{addr("10.0.0.100"), addr("2001:db8::100")},
				Balancers: []netip.Addr{addr("2001:db8:1::1"), addr("10.0.1.1")},
				EncapPort: 5555, Mode: ModeAuto,
			}},
		},
		{
			name: "receiver in kernel mode: IPv6 in IPv6",
			doc:  "[receiver]\nvips = [\"2001:db8::100\"]\nbalancers = [\"2001:db8:1::1\"]\nmode = \"kernel\"\n",
			want: &Config{Receiver: &Receiver{
				VIPs: []netip.Addr{addr("2001:db8::100")}, Balancers: []netip.Addr{addr("2001:db8:1::1")},
				EncapPort: 5555, Mode: ModeKernel,
			}},
		},
		{
			name: "receiver in kernel mode: IPv4 in both families",
			doc:  "[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"2001:db8:1::1\", \"10.0.1.1\"]\nmode = \"kernel\"\n",
			want: &Config{Receiver: &Receiver{
				VIPs: []netip.Addr{addr("10.0.0.100")}, Balancers: []netip.Addr{addr("2001:db8:1::1"), addr("10.0.1.1")},
				EncapPort: 5555, Mode: ModeKernel,
			}},
		},
		{
			name: "environment overrides file",
			doc:  "[balancer]\nvips = [\"10.0.0.100\"]\nencap_port = 6000\n",
			environ: []string{
				"CAPLANCED_BALANCER_VIPS=10.0.0.1, 10.0.0.2",
				"CAPLANCED_BALANCER_ENCAP_PORT=7000",
				"CAPLANCED_BALANCER_INTERFACE=br0",
				"PATH=/usr/bin",
			},
			want: &Config{
				Balancer:   func() *Balancer { b := defaultBalancer(); b.Interface, b.EncapPort = "br0", 7000; return b }(),
				Services:   singlePool(65537, model.VIP{Addr: addr("10.0.0.1")}, model.VIP{Addr: addr("10.0.0.2")}),
				SinglePool: true,
			},
		},
		{
			name: "routed, every route key",
			doc:  "[balancer]\nrouted = true\nroute_table = 4294967295\nroute_protocol = 5\nroute_min_backends = 2\nwithdraw_delay = \"0s\"\n",
			want: &Config{Balancer: func() *Balancer {
				b := defaultBalancer()
				b.Routed, b.RouteTable, b.RouteProtocol, b.RouteMinBackends, b.WithdrawDelay = true, 4294967295, 5, 2, 0
				return b
			}()},
		},
		{
			name:    "route keys without routed are kept (one file can flip routed); routed from the environment",
			doc:     "[balancer]\nroute_table = 7\nwithdraw_delay = \"5m\"\n",
			environ: []string{"CAPLANCED_BALANCER_ROUTED=true", "CAPLANCED_BALANCER_ROUTE_PROTOCOL=200"},
			want: &Config{Balancer: func() *Balancer {
				b := defaultBalancer()
				b.Routed, b.RouteTable, b.RouteProtocol, b.WithdrawDelay = true, 7, 200, 5*time.Minute
				return b
			}()},
		},
		{
			name:    "metrics.listen from the file, overridden by the environment",
			doc:     "[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"10.0.1.1\"]\n[metrics]\nlisten = \"127.0.0.1:9469\"\n",
			environ: []string{"CAPLANCED_METRICS_LISTEN=[::1]:9000"},
			want: &Config{
				Receiver: &Receiver{EncapPort: DefaultEncapPort, Mode: ModeAuto, VIPs: []netip.Addr{addr("10.0.0.100")}, Balancers: []netip.Addr{addr("10.0.1.1")}},
				Metrics:  Metrics{Listen: "[::1]:9000"},
			},
		},
		{
			name:    "environment creates a section",
			doc:     "",
			environ: []string{"CAPLANCED_RECEIVER_VIPS=10.0.0.100", "CAPLANCED_RECEIVER_BALANCERS=10.0.1.1", "CAPLANCED_RECEIVER_MODE=kernel"},
			want: &Config{Receiver: &Receiver{
				VIPs: []netip.Addr{addr("10.0.0.100")}, Balancers: []netip.Addr{addr("10.0.1.1")},
				EncapPort: 5555, Mode: ModeKernel,
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("test.toml", []byte(tt.doc), tt.environ)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpConfig); diff != "" {
				t.Errorf("Parse mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		environ []string
		want    []string // every line of the error, in order
	}{
		{
			name: "syntax error has line and column",
			doc:  "[balancer]\nvips = [\"10.0.0.1\"\n",
			want: []string{`test.toml: line 2, column 19: expected a comma (',') or array terminator (']'), but got end of file`},
		},
		{
			name:    "a syntax error stops the file, not the environment",
			doc:     "[balancer\n",
			environ: []string{"CAPLANCED_BALANCER_VIP=10.0.0.1"},
			want: []string{
				`test.toml: line 2, column 10: expected '.' or ']' to end table name, but got '\n' instead`,
				`environment CAPLANCED_BALANCER_VIP: no such setting (see ENVIRONMENT VARIABLES in caplanced.toml(5))`,
			},
		},
		{
			name: "unknown keys have path and line",
			doc:  "[balancer]\nvips = [\"10.0.0.100\"]\nvipz = 1\n\n[[backend]]\nname = \"a\"\naddress = \"10.0.1.1\"\n[[backend]]\nname = \"b\"\naddress = \"10.0.1.2\"\nwieght = 3\n[extra]\nx = 1\n",
			want: []string{
				`test.toml: line 3: unknown key "balancer.vipz"`,
				`test.toml: line 11: unknown key "backend.wieght"`,
				`test.toml: line 12: unknown key "extra"`,
			},
		},
		{
			name: "wrong types, in the project's words, and the rest is still checked",
			doc: `[balancer]
vips = "10.0.0.100"
encap_port = "5555"
workers = 2.5
table_size = 97
tcp_timeout = 90
[balancer.ports]
"10.0.0.100" = [80, "443"]
[[backend]]
name = "a"
address = 10
weight = true
[receiver]
vips = [1]
balancers = ["10.0.1.1"]
mode = ["auto"]
`,
			want: []string{
				`test.toml: line 2: balancer.vips: must be an array, not a string`,
				`test.toml: line 3: balancer.encap_port: must be an integer, not a string`,
				`test.toml: line 4: balancer.workers: must be an integer, not a float`,
				`test.toml: line 5: balancer: table_size 97: must be a prime between 101 and 16777213`,
				`test.toml: line 6: balancer.tcp_timeout: must be a string, not an integer`,
				`test.toml: line 8: balancer.ports."10.0.0.100": element 2: must be an integer, not a string`,
				`test.toml: line 11: backend.address: must be a string, not an integer`,
				`test.toml: line 12: backend.weight: must be an integer, not a boolean`,
				`test.toml: line 14: receiver.vips: element 1: must be a string, not an integer`,
				`test.toml: line 16: receiver.mode: must be a string, not an array`,
			},
		},
		{
			name: "a section of the wrong type",
			doc:  "balancer = 5\n[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"10.0.1.1\"]\n",
			want: []string{`test.toml: line 1: balancer: must be a table, not an integer`},
		},
		{
			name: "unknown key, wrong type, invalid value and bad environment at once",
			doc: `# caplanced
[balancer]
vips = ["10.0.0.100"]
encap_port = "5555"
table_size = 100
colour = "blue"

[[backend]]
name = "web1"
address = "10.0.1.300"
`,
			environ: []string{"CAPLANCED_BALANCER_WORKERS=many", "CAPLANCED_RECEIVER_MODES=kernel"},
			want: []string{
				`test.toml: line 4: balancer.encap_port: must be an integer, not a string`,
				`test.toml: line 5: balancer: table_size 100: must be a prime between 101 and 16777213`,
				`test.toml: line 6: unknown key "balancer.colour"`,
				`test.toml: line 10: backend "web1": address "10.0.1.300": not an IP address`,
				`environment CAPLANCED_BALANCER_WORKERS: "many": not an integer`,
				`environment CAPLANCED_RECEIVER_MODES: no such setting (see ENVIRONMENT VARIABLES in caplanced.toml(5))`,
			},
		},
		{
			name: "route keys",
			doc: `[balancer]
routed = "yes"
route_table = 254
route_protocol = 12
route_min_backends = 0
withdraw_delay = "6m"
`,
			want: []string{
				`test.toml: line 2: balancer.routed: must be true or false, not a string`,
				`test.toml: line 3: balancer: route_table 254: is the kernel's main table; give a table of caplanced's own (e.g. 100)`,
				`test.toml: line 4: balancer: route_protocol 12: is BIRD's; give a protocol of caplanced's own (e.g. 252)`,
				`test.toml: line 5: balancer: route_min_backends 0: must be from 1 to max_backends (4096): no service has more backends`,
				`test.toml: line 6: balancer: withdraw_delay "6m": must be between 0s and 5m`,
			},
		},
		{
			name:    "route keys out of range",
			doc:     "[balancer]\nroute_table = 0\nroute_protocol = 2\nwithdraw_delay = \"soon\"\n",
			environ: []string{"CAPLANCED_BALANCER_ROUTED=maybe"},
			want: []string{
				`test.toml: line 2: balancer: route_table 0: must be between 1 and 4294967295`,
				`test.toml: line 3: balancer: route_protocol 2: is the kernel's own (kernel); give a protocol of caplanced's own (e.g. 252)`,
				`test.toml: line 4: balancer: withdraw_delay "soon": not a duration (write e.g. "5s" or "0s")`,
				`environment CAPLANCED_BALANCER_ROUTED: "maybe": not a boolean (true or false)`,
			},
		},
		{
			name: "route numbers past the top",
			doc:  "[balancer]\nroute_table = 4294967296\nroute_protocol = 256\nmax_backends = 3\nroute_min_backends = 4\n",
			want: []string{
				`test.toml: line 2: balancer: route_table 4294967296: must be between 1 and 4294967295`,
				`test.toml: line 3: balancer: route_protocol 256: must be between 5 and 255 (not 12)`,
				`test.toml: line 5: balancer: route_min_backends 4: must be from 1 to max_backends (3): no service has more backends`,
			},
		},
		{
			name: "no role",
			doc:  "# nothing\n",
			want: []string{`test.toml: neither a [balancer] nor a [receiver] section: caplanced has nothing to do`},
		},
		{
			name: "every balancer and backend problem at once",
			doc: `
[balancer]
vips = ["10.0.0.300", "10.0.0.100", "10.0.0.100", "::ffff:10.0.0.7", "fe80::1", "224.0.0.1", "127.0.0.1", "0.0.0.0", "255.255.255.255"]
interface = "a/b"
encap_port = 0
table_size = 65536
[balancer.ports]
"10.0.0.9" = [80]
"10.0.0.100" = [0, 80, 80, 70000]
[[backend]]
name = "web1"
address = "10.0.0.300"
[[backend]]
name = "web1"
address = "10.0.1.2"
weight = 10001
[[backend]]
name = "bad/name"
address = "10.0.1.2"
weight = -1
check = "ftp://x"
[[backend]]
address = "10.0.0.100"
[[backend]]
name = "nameiswaytoolong-nameiswaytoolong-nameiswaytoolong-nameiswaytoolo"
`,
			want: []string{
				`test.toml: line 3: balancer: vips: "10.0.0.300": not an IP address`,
				`test.toml: line 3: balancer: vips: 10.0.0.100: listed twice`,
				`test.toml: line 3: balancer: vips: "::ffff:10.0.0.7": IPv4-mapped IPv6 address: write the IPv4 form 10.0.0.7`,
				`test.toml: line 3: balancer: vips: "fe80::1": link-local address, need a global or unique local one`,
				`test.toml: line 3: balancer: vips: "224.0.0.1": multicast address, need unicast`,
				`test.toml: line 3: balancer: vips: "127.0.0.1": loopback address, need one reachable from other hosts`,
				`test.toml: line 3: balancer: vips: "0.0.0.0": not a unicast address`,
				`test.toml: line 3: balancer: vips: "255.255.255.255": not a unicast address`,
				`test.toml: line 4: balancer: interface "a/b": not a valid interface name (1-15 characters, no '/', ':' or white space)`,
				`test.toml: line 5: balancer: encap_port 0: must be between 1 and 65535`,
				`test.toml: line 6: balancer: table_size 65536: not a prime (Maglev needs a prime table size; the default is 65537)`,
				`test.toml: line 8: balancer: ports: "10.0.0.9": not one of balancer.vips`,
				`test.toml: line 9: balancer: ports: "10.0.0.100": port 0: must be between 1 and 65535`,
				`test.toml: line 9: balancer: ports: "10.0.0.100": port 80: listed twice`,
				`test.toml: line 9: balancer: ports: "10.0.0.100": port 70000: must be between 1 and 65535`,
				`test.toml: line 12: backend "web1": address "10.0.0.300": not an IP address`,
				`test.toml: line 14: backend "web1": name: already used by another backend`,
				`test.toml: line 16: backend "web1": weight 10001: must be between 0 and 10000`,
				`test.toml: line 18: backend "bad/name": name: must be 1-64 characters of A-Z a-z 0-9 . _ -`,
				`test.toml: line 19: backend "bad/name": address 10.0.1.2: already used by backend "web1"`,
				`test.toml: line 20: backend "bad/name": weight -1: must be between 0 and 10000`,
				`test.toml: line 21: backend "bad/name": check "ftp://x": unknown kind "ftp" (want tcp, http, https, udp, exec or tunnel)`,
				`test.toml: line 22: backend #4: name: missing`,
				`test.toml: line 23: backend #4: address 10.0.0.100: is a VIP of this balancer (packets would loop)`,
				// A name is repeated up to quote.Max bytes.
				`test.toml: line 24: backend "nameiswaytoolong-nameiswaytoolong-nameiswaytoolong-nameiswaytool"…: address: missing`,
				`test.toml: line 25: backend "nameiswaytoolong-nameiswaytoolong-nameiswaytoolong-nameiswaytool"…: name: must be 1-64 characters of A-Z a-z 0-9 . _ -`,
			},
		},
		{
			name: "numeric bounds",
			doc:  "[balancer]\nvips = [\"10.0.0.100\"]\ntable_size = 97\nworkers = 65\nconntrack_size = 10\ntcp_timeout = \"15\"\nudp_timeout = \"25h\"\ntcp_closing_timeout = \"500ms\"\n[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"10.0.1.1\"]\nworkers = -1\n",
			want: []string{
				`test.toml: line 3: balancer: table_size 97: must be a prime between 101 and 16777213`,
				`test.toml: line 4: balancer: workers 65: must be between 0 and 64`,
				`test.toml: line 5: balancer: conntrack_size 10: must be between 1024 and 16777216`,
				`test.toml: line 6: balancer: tcp_timeout "15": not a duration (write e.g. "90s", "15m" or "1h")`,
				`test.toml: line 7: balancer: udp_timeout "25h": must be between 1s and 24h`,
				`test.toml: line 8: balancer: tcp_closing_timeout "500ms": must be between 1s and 24h`,
				`test.toml: line 12: receiver: workers -1: must be between 0 and 64`,
			},
		},
		{
			name: "unknown dataplane",
			doc:  "[balancer]\nvips = [\"10.0.0.100\"]\ndataplane = \"dpdk\"\n",
			want: []string{`test.toml: line 3: balancer: dataplane "dpdk": must be auto, xdp or raw`},
		},
		{
			name: "empty lists",
			doc:  "[balancer]\nvips = []\n[balancer.ports]\n\"10.0.0.1\" = []\n[receiver]\nvips = []\nbalancers = []\nmode = \"fast\"\nencap_port = 65536\n",
			want: []string{
				`test.toml: line 2: balancer: vips: at least one VIP is required`,
				`test.toml: line 4: balancer: ports: "10.0.0.1": not one of balancer.vips`,
				`test.toml: line 6: receiver: vips: at least one VIP is required`,
				`test.toml: line 7: receiver: balancers: at least one balancer address is required (the receiver accepts tunnelled packets only from these)`,
				`test.toml: line 8: receiver: mode "fast": must be auto, kernel or userspace`,
				`test.toml: line 9: receiver: encap_port 65536: must be between 1 and 65535`,
			},
		},
		{
			name: "kernel mode with VIPs of both families",
			doc:  "[receiver]\nvips = [\"10.0.0.100\", \"2001:db8:f::100\"]\nbalancers = [\"2001:db8:1::1\"]\nmode = \"kernel\"\n",
			want: []string{`test.toml: line 4: receiver: mode kernel: the kernel's fou gives a receive port one inner protocol, and the VIPs 10.0.0.100 and 2001:db8:f::100 are of both families: use auto or userspace`},
		},
		{
			name: "kernel mode with IPv6 in IPv4",
			doc:  "[receiver]\nvips = [\"2001:db8:f::100\"]\nbalancers = [\"2001:db8:1::1\", \"10.0.1.1\"]\nmode = \"kernel\"\n",
			want: []string{`test.toml: line 4: receiver: mode kernel: the kernel does not decapsulate IPv6 in IPv4 here (sit), and the IPv6 VIP 2001:db8:f::100 would come from the IPv4 balancer 10.0.1.1: use auto or userspace`},
		},
		{
			name: "backends without a balancer",
			doc:  "[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"10.0.1.1\"]\n[[backend]]\nname = \"a\"\naddress = \"10.0.1.2\"\n",
			want: []string{`test.toml: line 4: [[backend]] entries need a [balancer] section`},
		},
		{
			name: "every service problem at once",
			doc: `[balancer]
table_size = 101
[[service]]
vips = []
protocols = []
ports = []
[[service]]
name = "bad/name"
vips = ["192.0.2.300", "192.0.2.1", "192.0.2.1", "127.0.0.1"]
protocols = ["tcp", "sctp"]
ports = [0, 80, 80, "x", 1.5, "90-85", "75-85", "all", 70000, "` + strings.Repeat("9", 100) + `"]
hash = "round-robin"
table_size = 100
check = "nope"
colour = "blue"
[[service]]
name = "web"
protocols = ["tcp", "tcp+udp"]
table_size = 65536
[[service]]
name = "web"
vips = ["192.0.2.2"]
`,
			want: []string{
				`test.toml: line 3: service #1: name: missing`,
				`test.toml: line 4: service #1: vips: at least one VIP is required`,
				`test.toml: line 5: service #1: protocols: none given: want tcp, udp or both (leave the key out for both)`,
				`test.toml: line 6: service #1: ports: empty list would drop every packet; leave ports out (or give "all") to take every port`,
				`test.toml: line 8: service "bad/name": name: must be 1-64 characters of A-Z a-z 0-9 . _ -`,
				`test.toml: line 9: service "bad/name": vips: "192.0.2.300": not an IP address`,
				`test.toml: line 9: service "bad/name": vips: 192.0.2.1: listed twice`,
				`test.toml: line 9: service "bad/name": vips: "127.0.0.1": loopback address, need one reachable from other hosts`,
				`test.toml: line 10: service "bad/name": protocols: "sctp": not a protocol (want tcp, udp or tcp+udp)`,
				`test.toml: line 11: service "bad/name": ports: port 0: must be between 1 and 65535`,
				`test.toml: line 11: service "bad/name": ports: port 80: listed twice`,
				`test.toml: line 11: service "bad/name": ports: "x": not a port or a range first-last (e.g. 80 or 8000-8099)`,
				`test.toml: line 11: service "bad/name": ports: element 5: must be a port (an integer) or a range (a string "first-last"), not a float`,
				`test.toml: line 11: service "bad/name": ports: ports 90-85: the first is above the last`,
				`test.toml: line 11: service "bad/name": ports: ports 75-85: overlaps 80`,
				`test.toml: line 11: service "bad/name": ports: "all" stands alone: it is every port`,
				`test.toml: line 11: service "bad/name": ports: port 70000: must be between 1 and 65535`,
				`test.toml: line 11: service "bad/name": ports: "` + strings.Repeat("9", 64) + `"…: not a port or a range first-last (e.g. 80 or 8000-8099)`,
				`test.toml: line 12: service "bad/name": hash "round-robin": must be 5-tuple, source-ip or source-ip-port`,
				`test.toml: line 13: service "bad/name": table_size 100: must be a prime between 101 and 16777213`,
				`test.toml: line 14: service "bad/name": check "nope": not a check spec: want KIND://…, e.g. tcp://:443 or http://:80/healthz`,
				`test.toml: line 15: unknown key "service.colour"`,
				`test.toml: line 16: service "web": vips: missing (at least one VIP is required)`,
				`test.toml: line 18: service "web": protocols: tcp: listed twice`,
				`test.toml: line 19: service "web": table_size 65536: not a prime (Maglev needs a prime table size; the default is 65537)`,
				`test.toml: line 21: service "web": name: already used by another service`,
			},
		},
		{
			name: "overlapping services name both, the VIP, the protocol and the port",
			doc: `[balancer]
[[service]]
name = "web"
vips = ["192.0.2.1", "192.0.2.2"]
protocols = ["tcp"]
ports = [80, 443]
[[service]]
name = "dns"
vips = ["192.0.2.3", "192.0.2.2"]
ports = [53, "400-500"]
[[service]]
name = "all-a"
vips = ["192.0.2.9"]
[[service]]
name = "all-b"
vips = ["192.0.2.9"]
protocols = ["udp"]
`,
			want: []string{
				`test.toml: line 9: service "dns": overlaps service "web": both would take tcp port 443 of 192.0.2.2 (a packet must belong to one service)`,
				`test.toml: line 16: service "all-b": overlaps service "all-a": both would take every udp port of 192.0.2.9 (a packet must belong to one service)`,
			},
		},
		{
			name: "backends of services",
			doc: `[balancer]
max_backends = 4
[[service]]
name = "web"
vips = ["192.0.2.1"]
table_size = 101
[[service.backend]]
name = "b1"
address = "198.51.100.1"
[[service.backend]]
name = "b2"
address = "198.51.100.1"
[[service.backend]]
name = "b3"
address = "192.0.2.2"
wieght = 5
[[service]]
name = "dns"
vips = ["192.0.2.2"]
[[service.backend]]
name = "b1"
address = "198.51.100.1"
[[service.backend]]
address = "192.0.2.1"
weight = -1
`,
			want: []string{
				`test.toml: line 2: 5 [[service.backend]] entries: more than balancer.max_backends = 4 allows`,
				`test.toml: line 12: service "web": backend "b2": address 198.51.100.1: already used by backend "b1"`,
				`test.toml: line 15: service "web": backend "b3": address 192.0.2.2: is a VIP of this balancer (packets would loop)`,
				`test.toml: line 16: unknown key "service.backend.wieght"`,
				`test.toml: line 21: service "dns": backend "b1": name: already used by another backend`,
				`test.toml: line 23: service "dns": backend #2: name: missing`,
				`test.toml: line 24: service "dns": backend #2: address 192.0.2.1: is a VIP of this balancer (packets would loop)`,
				`test.toml: line 25: service "dns": backend #2: weight -1: must be between 0 and 10000`,
			},
		},
		{
			name: "a service's backends need a slot each in its table",
			doc: "[balancer]\n[[service]]\nname = \"web\"\nvips = [\"192.0.2.1\"]\ntable_size = 101\n" +
				strings.Repeat("[[service.backend]]\nname = \"b\"\naddress = \"198.51.100.1\"\n", 102),
			want: func() []string {
				want := []string{`test.toml: line 2: service "web": 102 backends: more than its table_size (101) has slots`}
				for i := 1; i < 102; i++ {
					want = append(want, fmt.Sprintf(`test.toml: line %d: service "web": backend "b": name: already used by another backend`, 7+3*i),
						fmt.Sprintf(`test.toml: line %d: service "web": backend "b": address 198.51.100.1: already used by backend "b"`, 8+3*i))
				}
				return want
			}(),
		},
		{
			name: "the two forms mixed",
			doc: `[balancer]
vips = ["192.0.2.1"]
[balancer.ports]
"192.0.2.1" = [80]
[[backend]]
name = "a"
address = "198.51.100.1"
[[service]]
name = "web"
vips = ["192.0.2.2"]
`,
			want: []string{
				`test.toml: line 2: balancer.vips cannot be used together with [[service]]: a file has either [[service]] entries or the single pool of balancer.vips, [balancer.ports] and [[backend]]; give each service its vips`,
				`test.toml: line 3: [balancer.ports] cannot be used together with [[service]]: a file has either [[service]] entries or the single pool of balancer.vips, [balancer.ports] and [[backend]]; give each service its ports`,
				`test.toml: line 5: [[backend]] cannot be used together with [[service]]: a file has either [[service]] entries or the single pool of balancer.vips, [balancer.ports] and [[backend]]; list each service's backends as [[service.backend]]`,
			},
		},
		{
			name:    "CAPLANCED_BALANCER_VIPS is of the single-pool form",
			doc:     "[balancer]\n[[service]]\nname = \"web\"\nvips = [\"192.0.2.2\"]\n",
			environ: []string{"CAPLANCED_BALANCER_VIPS=192.0.2.1"},
			want: []string{
				`environment CAPLANCED_BALANCER_VIPS: balancer.vips cannot be used together with [[service]]: a file has either [[service]] entries or the single pool of balancer.vips, [balancer.ports] and [[backend]]; give each service its vips`,
			},
		},
		{
			name: "services without a balancer",
			doc:  "[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"10.0.1.1\"]\n[[service]]\nname = \"web\"\nvips = [\"192.0.2.2\"]\n",
			want: []string{`test.toml: line 4: [[service]] entries need a [balancer] section`},
		},
		{
			name: "services and backends without a balancer",
			doc:  "[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"10.0.1.1\"]\n[[service]]\nname = \"web\"\nvips = [\"192.0.2.2\"]\n[[backend]]\nname = \"a\"\naddress = \"10.0.1.2\"\n",
			want: []string{
				`test.toml: line 4: [[service]] entries need a [balancer] section`,
				`test.toml: line 7: [[backend]] cannot be used together with [[service]]: a file has either [[service]] entries or the single pool of balancer.vips, [balancer.ports] and [[backend]]; list each service's backends as [[service.backend]]`,
			},
		},
		{
			name: "ports of the wrong type",
			doc:  "[balancer]\n[[service]]\nname = \"web\"\nvips = [\"192.0.2.2\"]\nports = 80\n",
			want: []string{`test.toml: line 5: service.ports: must be an array, not an integer`},
		},
		{
			name: "single pool: backends or ports need VIPs",
			doc:  "[balancer]\n[[backend]]\nname = \"a\"\naddress = \"198.51.100.1\"\n",
			want: []string{`test.toml: line 1: balancer: vips: at least one VIP is required`},
		},
		{
			name:    "bad environment",
			doc:     "[balancer]\nvips = [\"10.0.0.100\"]\n",
			environ: []string{"CAPLANCED_BALANCER_ENCAP_PORT=abc", "CAPLANCED_BALANCER_VIP=10.0.0.1", "CAPLANCED_BALANCER_PORTS=80", "CAPLANCED_BALANCER_WORKERS=" + strings.Repeat("9", 100)},
			want: []string{
				`environment CAPLANCED_BALANCER_ENCAP_PORT: "abc": not an integer`,
				`environment CAPLANCED_BALANCER_PORTS: no such setting (see ENVIRONMENT VARIABLES in caplanced.toml(5))`,
				`environment CAPLANCED_BALANCER_VIP: no such setting (see ENVIRONMENT VARIABLES in caplanced.toml(5))`,
				`environment CAPLANCED_BALANCER_WORKERS: "` + strings.Repeat("9", 64) + `"…: not an integer`,
			},
		},
		{
			name:    "environment value validated like the file, and named",
			doc:     "[balancer]\nvips = [\"10.0.0.100\"]\ntable_size = 101\n",
			environ: []string{"CAPLANCED_BALANCER_TABLE_SIZE=100"},
			want:    []string{`environment CAPLANCED_BALANCER_TABLE_SIZE: balancer: table_size 100: must be a prime between 101 and 16777213`},
		},
		{
			name:    "max_backends above table_size",
			doc:     "[balancer]\nvips = [\"10.0.0.100\"]\ntable_size = 101\nmax_backends = 102\n",
			environ: []string{},
			want:    []string{`test.toml: line 4: balancer: max_backends 102: must be from 1 to table_size (101): every backend needs a slot`},
		},
		{
			name:    "bad metrics.listen, in the file and in the environment",
			doc:     "[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"10.0.1.1\"]\n[metrics]\nlisten = \"localhost:9469\"\n",
			environ: []string{},
			want:    []string{`test.toml: line 5: metrics: listen "localhost:9469": "localhost" is not an IP address (names are not accepted)`},
		},
		{
			name: "metrics.listen without a port",
			doc:  "[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"10.0.1.1\"]\n[metrics]\nlisten = \"127.0.0.1\"\n",
			want: []string{`test.toml: line 5: metrics: listen "127.0.0.1": want IP:PORT, such as 127.0.0.1:9469 or [::1]:9469`},
		},
		{
			name:    "metrics.listen port out of range from the environment",
			doc:     "[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"10.0.1.1\"]\n",
			environ: []string{"CAPLANCED_METRICS_LISTEN=127.0.0.1:0"},
			want:    []string{`environment CAPLANCED_METRICS_LISTEN: metrics: listen "127.0.0.1:0": port "0": want a number from 1 to 65535`},
		},
		{
			name: "more backends than max_backends",
			doc: "[balancer]\nvips = [\"10.0.0.100\"]\nmax_backends = 1\n" +
				"[[backend]]\nname = \"a\"\naddress = \"10.0.1.2\"\n[[backend]]\nname = \"b\"\naddress = \"10.0.1.3\"\n",
			want: []string{`test.toml: line 3: 2 [[backend]] entries: more than balancer.max_backends = 1 allows`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("test.toml", []byte(tt.doc), tt.environ)
			if err == nil {
				t.Fatalf("Parse succeeded with %+v, want an error", got)
			}
			if got != nil {
				t.Errorf("Parse returned a config with an error: %+v", got)
			}
			if diff := cmp.Diff(tt.want, strings.Split(err.Error(), "\n")); diff != "" {
				t.Errorf("errors mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// The shipped configs are what operators copy: they must stay valid.
func TestShippedConfigs(t *testing.T) {
	files, err := filepath.Glob("../../contrib/caplanced*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("found %v, want the receiver, reference and services configs", files)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(f)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if cfg.Balancer == nil && cfg.Receiver == nil {
				t.Errorf("no role configured")
			}
		})
	}
}

// The reference config documents every key: each one must be set in it,
// in the services form.
func TestReferenceConfigSetsEveryKey(t *testing.T) {
	cfg, err := Load("../../contrib/caplanced.reference.toml")
	if err != nil {
		t.Fatal(err)
	}
	b, r := cfg.Balancer, cfg.Receiver
	if b == nil || r == nil || len(cfg.Services) == 0 || len(cfg.Backends) == 0 || cfg.SinglePool {
		t.Fatalf("reference config lacks a section or is not in the services form: %+v", cfg)
	}
	svc := cfg.Services[0]
	if b.Interface == "" || svc.VIPs[0].Ports == nil || svc.Protocols != model.TCP || svc.Hash == model.FiveTuple || svc.Check == "" || cfg.Backends[0].Check == "" {
		t.Errorf("reference config leaves out interface, or a service's ports, protocols, hash or check, or a backend's check: %+v", cfg)
	}
	text, err := os.ReadFile("../../contrib/caplanced.reference.toml")
	if err != nil {
		t.Fatal(err)
	}
	// Every key of the services form, set (the single-pool form's
	// top-level [[backend]] and vips are left to --check-config).
	for _, section := range []any{rawBalancer{}, rawService{}, rawBackend{}, rawReceiver{}, rawMetrics{}} {
		typ := reflect.TypeOf(section)
		for i := range typ.NumField() {
			name := typ.Field(i).Tag.Get("toml")
			if (name == "vips" || name == "ports") && typ == reflect.TypeOf(rawBalancer{}) || name == "backend" {
				continue // the single-pool form's, and [[service.backend]] itself
			}
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` = `).Match(text) {
				t.Errorf("the reference config does not set %s (%s)", name, typ.Name())
			}
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.toml"))
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("Load of a missing file: got %v, want a 'no such file' error", err)
	}
}

func TestEnvNames(t *testing.T) {
	want := []string{
		"CAPLANCED_BALANCER_CONNTRACK_SIZE",
		"CAPLANCED_BALANCER_DATAPLANE",
		"CAPLANCED_BALANCER_ENCAP_PORT",
		"CAPLANCED_BALANCER_INTERFACE",
		"CAPLANCED_BALANCER_MAX_BACKENDS",
		"CAPLANCED_BALANCER_ROUTED",
		"CAPLANCED_BALANCER_ROUTE_MIN_BACKENDS",
		"CAPLANCED_BALANCER_ROUTE_PROTOCOL",
		"CAPLANCED_BALANCER_ROUTE_TABLE",
		"CAPLANCED_BALANCER_TABLE_SIZE",
		"CAPLANCED_BALANCER_TCP_CLOSING_TIMEOUT",
		"CAPLANCED_BALANCER_TCP_TIMEOUT",
		"CAPLANCED_BALANCER_UDP_TIMEOUT",
		"CAPLANCED_BALANCER_VIPS",
		"CAPLANCED_BALANCER_WITHDRAW_DELAY",
		"CAPLANCED_BALANCER_WORKERS",
		"CAPLANCED_METRICS_LISTEN",
		"CAPLANCED_RECEIVER_BALANCERS",
		"CAPLANCED_RECEIVER_ENCAP_PORT",
		"CAPLANCED_RECEIVER_MODE",
		"CAPLANCED_RECEIVER_VIPS",
		"CAPLANCED_RECEIVER_WORKERS",
	}
	if diff := cmp.Diff(want, EnvNames()); diff != "" {
		t.Errorf("EnvNames mismatch (-want +got):\n%s", diff)
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"[balancer]\nvips = [\"10.0.0.100\"]\n[[backend]]\nname = \"a\"\naddress = \"10.0.1.1\"\nweight = 5\n",
		"[receiver]\nvips = [\"10.0.0.100\"]\nbalancers = [\"10.0.1.1\"]\nmode = \"kernel\"\n",
		"[balancer]\nvips = [\"10.0.0.1\"]\n[balancer.ports]\n\"10.0.0.1\" = [1, 65535]\n",
		"[balancer]\nvips = [\"10.0.0.1\"\n",
		"[x]\ny.z = 1\n\"a.b\" = 2\n",
		"[balancer]\n[[service]]\nname = \"web\"\nvips = [\"10.0.0.1\"]\nports = [80, \"90-99\"]\nprotocols = [\"tcp\"]\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.1.1\"\n[[service]]\nname = \"dns\"\nvips = [\"10.0.0.1\"]\nprotocols = [\"udp\"]\nhash = \"source-ip\"\n",
		"[balancer]\nvips = [\"10.0.0.1\", \"10.0.0.2\"]\n[balancer.ports]\n\"10.0.0.2\" = [53]\n[[backend]]\nname = \"a\"\naddress = \"10.0.1.1\"\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		cfg, err := Parse("fuzz.toml", []byte(doc), nil)
		if (cfg == nil) == (err == nil) {
			t.Fatalf("Parse returned cfg=%v err=%v: want exactly one", cfg, err)
		}
		if err != nil {
			return
		}
		services := map[string]bool{}
		for i, svc := range cfg.Services {
			if !backendName.MatchString(svc.Name) || len(svc.VIPs) == 0 || svc.Protocols == 0 || svc.Protocols > model.TCP|model.UDP || !maglev.IsPrime(svc.TableSize) {
				t.Errorf("invalid service accepted: %+v", svc)
			}
			for _, other := range cfg.Services[:i] {
				if _, _, _, ok := model.Overlap(svc, other); ok || svc.Name == other.Name {
					t.Errorf("services %+v and %+v overlap", other, svc)
				}
			}
			services[svc.Name] = true
		}
		for _, b := range cfg.Backends {
			if !b.Address.Is4() || b.Weight > MaxWeight || !backendName.MatchString(b.Name) || !services[b.Service] {
				t.Errorf("invalid backend accepted: %+v", b)
			}
		}
		if cfg.SinglePool {
			text := ServicesForm(cfg)
			again, err := Parse("services.toml", []byte(text), nil)
			if err != nil {
				t.Fatalf("the services form of a valid file is invalid: %v\n%s", err, text)
			}
			if len(cfg.Services) == len(again.Services) {
				want := *cfg
				want.SinglePool = false
				if diff := cmp.Diff(&want, again, cmpConfig); diff != "" {
					t.Errorf("the services form reads differently (-want +got):\n%s\n%s", diff, text)
				}
			}
		}
	})
}

// The man page's example is a valid file of two services.
func TestManPageExample(t *testing.T) {
	page, err := os.ReadFile("../../man/caplanced.toml.5.md")
	if err != nil {
		t.Fatal(err)
	}
	_, example, _ := strings.Cut(string(page), "\n# EXAMPLE\n")
	var doc strings.Builder
	for _, line := range strings.Split(example, "\n") {
		if strings.HasPrefix(line, "# ") {
			break
		}
		if rest, ok := strings.CutPrefix(line, "    "); ok || line == "" {
			doc.WriteString(rest + "\n")
		}
	}
	cfg, err := Parse("EXAMPLE", []byte(doc.String()), nil)
	if err != nil {
		t.Fatalf("%v\n%s", err, doc.String())
	}
	if len(cfg.Services) != 2 || len(cfg.Backends) != 3 {
		t.Errorf("the example has %d services and %d backends, want 2 and 3:\n%s", len(cfg.Services), len(cfg.Backends), doc.String())
	}
}

// The man page must describe every key and environment variable the code knows.
func TestManPageDocumentsEveryKey(t *testing.T) {
	page, err := os.ReadFile("../../man/caplanced.toml.5.md")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, section := range []any{rawConfig{}, rawBalancer{}, rawService{}, rawBackend{}, rawReceiver{}, rawMetrics{}} {
		typ := reflect.TypeOf(section)
		for i := range typ.NumField() {
			names = append(names, typ.Field(i).Tag.Get("toml"))
		}
	}
	names = append(names, EnvNames()...)
	for _, name := range names {
		// A key is documented in bold (**vips**) or as a table ([receiver], [balancer.ports]).
		documented := regexp.MustCompile(`(\*\*|\[|\.)` + regexp.QuoteMeta(name) + `(\*\*|\])`)
		if !documented.Match(page) {
			t.Errorf("caplanced.toml(5) does not document %s", name)
		}
	}
}
