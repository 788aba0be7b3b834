package ctl

import (
	"maps"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
)

func TestOutput(t *testing.T) {
	running := map[string]fakeReply{
		"org.freedesktop.DBus.Properties.GetAll":                                                     {body: []any{managerProps}},
		"org.caplance.Caplance1.Manager.ListBackends":                                                {body: []any{backendRows}},
		"org.caplance.Caplance1.Manager.ListServices":                                                {body: []any{serviceRows}},
		"org.caplance.Caplance1.Manager.GetStats":                                                    {body: []any{stats}},
		"org.freedesktop.DBus.NameHasOwner":                                                          {body: []any{true}},
		"org.freedesktop.DBus.Properties.Get":                                                        {body: []any{dbus.MakeVariant("checking 2 backends")}},
		"/org/caplance/Caplance1/service/web/backend/web_2d1 org.freedesktop.DBus.Properties.GetAll": {body: []any{web1Props}},
		"/org/caplance/Caplance1/service/web org.freedesktop.DBus.Properties.GetAll":                 {body: []any{webProps}},
	}
	with := func(key string, r fakeReply) map[string]fakeReply {
		m := map[string]fakeReply{key: r}
		for k, v := range running {
			if _, ok := m[k]; !ok {
				m[k] = v
			}
		}
		return m
	}
	tests := []struct {
		name    string
		args    []string
		replies map[string]fakeReply
		want    string
		wantRE  string // instead of want, where the output holds a measured time
	}{
		{name: "status", args: []string{"status"}, replies: running, want: `Version:    1.2.3
APIVersion: 2
Roles:      balancer
State:      running
VIPs:       10.0.0.100, 10.0.0.101, 10.0.0.53
EncapPort:  5555
TableSize:  65537
Dataplane:  xdp (native)
LastReload: 2026-12-07T17:30:00Z refused: caplanced.toml: line 3: unknown key "colour"; caplanced.toml: line 4: weight 10001: must be between 0 and 10000
Services:   2
Backends:   3
caplance-healthd: checking 2 backends

SERVICE  BACKENDS  UP  DOWN  UNKNOWN  DRAINED
dns      1         0   0     1        0
web      2         1   1     0        1
`},
		{name: "status --json", args: []string{"status", "--json"}, replies: running, want: `{
  "api_version": 2,
  "dataplane": "xdp (native)",
  "encap_port": 5555,
  "healthd": {
    "running": true,
    "status": "checking 2 backends"
  },
  "last_reload": "2026-12-07T17:30:00Z",
  "last_reload_error": "caplanced.toml: line 3: unknown key \"colour\"\ncaplanced.toml: line 4: weight 10001: must be between 0 and 10000",
  "roles": [
    "balancer"
  ],
  "services": [
    {
      "name": "dns",
      "backends": 1,
      "up": 0,
      "down": 0,
      "unknown": 1,
      "drained": 0
    },
    {
      "name": "web",
      "backends": 2,
      "up": 1,
      "down": 1,
      "unknown": 0,
      "drained": 1
    }
  ],
  "state": "running",
  "table_size": 65537,
  "version": "1.2.3",
  "vips": [
    "10.0.0.100",
    "10.0.0.101",
    "10.0.0.53"
  ]
}
`},
		{name: "status of a routed balancer", args: []string{"status"},
			replies: with("org.freedesktop.DBus.Properties.GetAll", fakeReply{body: []any{routedProps(false, "10.0.0.100", "2001:db8::100")}}),
			want:    statusOf("routes: announced 10.0.0.100, 2001:db8::100 (table 100, protocol 252)")},
		{name: "status of a routed balancer in maintenance", args: []string{"status"},
			replies: with("org.freedesktop.DBus.Properties.GetAll", fakeReply{body: []any{routedProps(true)}}),
			want:    statusOf("routes: withdrawn (maintenance)")},
		{name: "status of a routed balancer with nothing servable", args: []string{"status"},
			replies: with("org.freedesktop.DBus.Properties.GetAll", fakeReply{body: []any{routedProps(false)}}),
			want:    statusOf("routes: none servable")},
		{name: "maintenance on when on", args: []string{"maintenance", "on"},
			replies: with("org.freedesktop.DBus.Properties.GetAll", fakeReply{body: []any{routedProps(true)}}),
			want:    "maintenance is already on\n"},
		{name: "maintenance off when off", args: []string{"maintenance", "off"},
			replies: with("org.freedesktop.DBus.Properties.GetAll", fakeReply{body: []any{routedProps(false, "10.0.0.100")}}),
			want:    "maintenance is already off\n"},
		{name: "status --json of a receiver", args: []string{"status", "--json"},
			replies: map[string]fakeReply{
				"org.freedesktop.DBus.Properties.GetAll": {body: []any{map[string]dbus.Variant{
					"Version": variant("1.2.3"), "Roles": variant([]string{"receiver"}), "LastReload": variant(uint64(0)), "LastReloadError": variant("")}}},
				"org.caplance.Caplance1.Manager.ListBackends": {err: dbusError(dbusname.ErrorPrefix+"NotSupported", "this caplanced has no balancer role")},
				"org.freedesktop.DBus.NameHasOwner":           {body: []any{false}},
			}, want: `{
  "healthd": {
    "running": false,
    "status": ""
  },
  "last_reload": null,
  "last_reload_error": "",
  "roles": [
    "receiver"
  ],
  "services": null,
  "version": "1.2.3"
}
`},
		{name: "status of a receiver without healthd", args: []string{"status"},
			replies: map[string]fakeReply{
				"org.freedesktop.DBus.Properties.GetAll": {body: []any{map[string]dbus.Variant{
					"Version": variant("1.2.3"), "Roles": variant([]string{"receiver"}), "State": variant("reloading"),
					"VIPs": variant([]string{}), "EncapPort": variant(uint16(5555)), "TableSize": variant(uint32(0)),
					"Future": variant("x")}}},
				"org.caplance.Caplance1.Manager.ListBackends": {err: dbusError(dbusname.ErrorPrefix+"NotSupported", "this caplanced has no balancer role")},
				"org.freedesktop.DBus.NameHasOwner":           {body: []any{false}},
			}, want: `Version:   1.2.3
Roles:     receiver
State:     reloading
VIPs:      -
EncapPort: 5555
TableSize: 0
Future:    x
caplance-healthd: not running
`},
		{name: "list", args: []string{"list"}, replies: running, want: `SERVICE  PROTO  HASH       TABLE  VIPS
  -> NAME   ADDRESS   WEIGHT  ADMIN    HEALTH   ACTIVE  INACTIVE  PACKETS  BYTES   REASON
dns      udp    5-tuple    251    10.0.0.53:53
  -> dns1   10.0.2.1  1       active   unknown  0       0         5        300     -
web      tcp    source-ip  65537  10.0.0.100:80,443,8000-8099 10.0.0.101:80,443
  -> web-1  10.0.1.1  100     active   up       12      3         3400     567890  -
  -> web2   10.0.1.2  0       drained  down     0       0         17       1020    connect: connection refused
`},
		{name: "list --service", args: []string{"list", "--service", "web"}, replies: running, want: `SERVICE  PROTO  HASH       TABLE  VIPS
  -> NAME   ADDRESS   WEIGHT  ADMIN    HEALTH  ACTIVE  INACTIVE  PACKETS  BYTES   REASON
web      tcp    source-ip  65537  10.0.0.100:80,443,8000-8099 10.0.0.101:80,443
  -> web-1  10.0.1.1  100     active   up      12      3         3400     567890  -
  -> web2   10.0.1.2  0       drained  down    0       0         17       1020    connect: connection refused
`},
		{name: "list of a service without backends", args: []string{"list", "--service", "dns"},
			replies: with("org.caplance.Caplance1.Manager.ListBackends", fakeReply{body: []any{backendRows[1:]}}), want: `SERVICE  PROTO  HASH     TABLE  VIPS
  -> NAME  ADDRESS  WEIGHT  ADMIN  HEALTH  ACTIVE  INACTIVE  PACKETS  BYTES  REASON
dns      udp    5-tuple  251    10.0.0.53:53
`},
		{name: "list of a backend whose service came after ListServices", args: []string{"list"},
			replies: with("org.caplance.Caplance1.Manager.ListServices", fakeReply{body: []any{serviceRows[:1]}}), want: `SERVICE  PROTO  HASH       TABLE  VIPS
  -> NAME   ADDRESS   WEIGHT  ADMIN    HEALTH   ACTIVE  INACTIVE  PACKETS  BYTES   REASON
dns      -      -          -      -
  -> dns1   10.0.2.1  1       active   unknown  0       0         5        300     -
web      tcp    source-ip  65537  10.0.0.100:80,443,8000-8099 10.0.0.101:80,443
  -> web-1  10.0.1.1  100     active   up       12      3         3400     567890  -
  -> web2   10.0.1.2  0       drained  down     0       0         17       1020    connect: connection refused
`},
		{name: "list of none", args: []string{"list"}, replies: with("org.caplance.Caplance1.Manager.ListBackends", fakeReply{body: []any{[][]any{}}}),
			want: `SERVICE  PROTO  HASH       TABLE  VIPS
  -> NAME  ADDRESS  WEIGHT  ADMIN  HEALTH  ACTIVE  INACTIVE  PACKETS  BYTES  REASON
dns      udp    5-tuple    251    10.0.0.53:53
web      tcp    source-ip  65537  10.0.0.100:80,443,8000-8099 10.0.0.101:80,443
`},
		{name: "list of a dual-stack service", args: []string{"list"}, replies: func() map[string]fakeReply {
			m := with("org.caplance.Caplance1.Manager.ListServices", fakeReply{body: []any{[][]any{
				{"v6", map[string]string{"2001:db8::1": "80,443", "10.0.0.100": "80", "2001:db8::2": "all"}, "tcp", "source-ip", uint32(251),
					"", "runtime", uint32(2), uint64(0), uint64(0), uint64(0)},
			}}})
			m["org.caplance.Caplance1.Manager.ListBackends"] = fakeReply{body: []any{[][]any{
				{"v6-a", "v6", "2001:db8:1::11", uint32(100), "active", "up", "", uint64(1), uint64(0), uint64(2), uint64(120)},
				{"v4-a", "v6", "10.0.1.1", uint32(100), "active", "up", "", uint64(0), uint64(0), uint64(0), uint64(0)},
			}}}
			return m
		}(),
			want: `SERVICE  PROTO  HASH       TABLE  VIPS
  -> NAME  ADDRESS         WEIGHT  ADMIN   HEALTH  ACTIVE  INACTIVE  PACKETS  BYTES  REASON
v6       tcp    source-ip  251    10.0.0.100:80 [2001:db8::1]:80,443 [2001:db8::2]:all
  -> v4-a  10.0.1.1        100     active  up      0       0         0        0      -
  -> v6-a  2001:db8:1::11  100     active  up      1       0         2        120    -
`},
		{name: "list without services", args: []string{"list"}, replies: map[string]fakeReply{
			"org.caplance.Caplance1.Manager.ListBackends": {body: []any{[][]any{}}},
			"org.caplance.Caplance1.Manager.ListServices": {body: []any{[][]any{}}},
		}, want: "SERVICE  PROTO  HASH  TABLE  VIPS\n  -> NAME  ADDRESS  WEIGHT  ADMIN  HEALTH  ACTIVE  INACTIVE  PACKETS  BYTES  REASON\n"},
		{name: "list --json", args: []string{"list", "--json", "--service", "web"}, replies: running, want: `[
  {
    "name": "web-1",
    "service": "web",
    "address": "10.0.1.1",
    "weight": 100,
    "admin_state": "active",
    "health": "up",
    "health_detail": "",
    "active_flows": 12,
    "inactive_flows": 3,
    "packets": 3400,
    "bytes": 567890
  },
  {
    "name": "web2",
    "service": "web",
    "address": "10.0.1.2",
    "weight": 0,
    "admin_state": "drained",
    "health": "down",
    "health_detail": "connect: connection refused",
    "active_flows": 0,
    "inactive_flows": 0,
    "packets": 17,
    "bytes": 1020
  }
]
`},
		{name: "list --json of none", args: []string{"list", "--json"}, replies: with("org.caplance.Caplance1.Manager.ListBackends", fakeReply{body: []any{[][]any{}}}),
			want: "[]\n"},
		{name: "services", args: []string{"services"}, replies: running, want: `NAME  PROTO  HASH       TABLE  BACKENDS  ACTIVE  PACKETS  BYTES   SOURCE   CHECK               VIPS
dns   udp    5-tuple    251    1         0       5        300     runtime  -                   10.0.0.53:53
web   tcp    source-ip  65537  2         12      3417     568910  config   http://:80/healthz  10.0.0.100:80,443,8000-8099 10.0.0.101:80,443
`},
		{name: "list-services of none", args: []string{"list-services"}, replies: with("org.caplance.Caplance1.Manager.ListServices", fakeReply{body: []any{[][]any{}}}),
			want: "NAME  PROTO  HASH  TABLE  BACKENDS  ACTIVE  PACKETS  BYTES  SOURCE  CHECK  VIPS\n"},
		{name: "services --json", args: []string{"services", "--json"}, replies: with("org.caplance.Caplance1.Manager.ListServices", fakeReply{body: []any{serviceRows[1:]}}), want: `[
  {
    "name": "dns",
    "vips": {
      "10.0.0.53": "53"
    },
    "protocols": "udp",
    "hash": "5-tuple",
    "table_size": 251,
    "check": "",
    "source": "runtime",
    "backends": 1,
    "packets": 5,
    "bytes": 300,
    "active_flows": 0
  }
]
`},
		{name: "services --json of none", args: []string{"services", "--json"}, replies: with("org.caplance.Caplance1.Manager.ListServices", fakeReply{body: []any{[][]any{}}}),
			want: "[]\n"},
		{name: "show-service", args: []string{"show-service", "web"}, replies: running, want: `Name:          web
VIPs:          10.0.0.100:80,443,8000-8099 10.0.0.101:80,443
Protocols:     tcp
Hash:          source-ip
TableSize:     65537
Check:         http://:80/healthz
Source:        config
Persistent:    yes
Packets:       3417
Bytes:         568910
NewFlows:      40
ActiveFlows:   12
InactiveFlows: 3
Drops:         2

NAME   ADDRESS   WEIGHT  ADMIN    HEALTH  ACTIVE  INACTIVE  PACKETS  BYTES   REASON
web-1  10.0.1.1  100     active   up      12      3         3400     567890  -
web2   10.0.1.2  0       drained  down    0       0         17       1020    connect: connection refused
`},
		{name: "show --json", args: []string{"show", "web-1", "--json"}, replies: running, want: `{
  "active_flows": 12,
  "address": "10.0.1.1",
  "admin_state": "active",
  "bytes": 567890,
  "check": "tcp://10.0.1.1:80",
  "health": "up",
  "health_detail": "",
  "inactive_flows": 3,
  "name": "web-1",
  "packets": 3400,
  "persistent": true,
  "service": "web",
  "source": "runtime",
  "weight": 100
}
`},
		{name: "show-service --json", args: []string{"show-service", "web", "--json"}, replies: running, want: `{
  "active_flows": 12,
  "backends": [
    {
      "name": "web-1",
      "service": "web",
      "address": "10.0.1.1",
      "weight": 100,
      "admin_state": "active",
      "health": "up",
      "health_detail": "",
      "active_flows": 12,
      "inactive_flows": 3,
      "packets": 3400,
      "bytes": 567890
    },
    {
      "name": "web2",
      "service": "web",
      "address": "10.0.1.2",
      "weight": 0,
      "admin_state": "drained",
      "health": "down",
      "health_detail": "connect: connection refused",
      "active_flows": 0,
      "inactive_flows": 0,
      "packets": 17,
      "bytes": 1020
    }
  ],
  "bytes": 568910,
  "check": "http://:80/healthz",
  "drops": 2,
  "hash": "source-ip",
  "inactive_flows": 3,
  "name": "web",
  "new_flows": 40,
  "packets": 3417,
  "persistent": true,
  "protocols": "tcp",
  "source": "config",
  "table_size": 65537,
  "vips": {
    "10.0.0.100": "80,443,8000-8099",
    "10.0.0.101": "80,443"
  }
}
`},
		{name: "show", args: []string{"show", "web-1"}, replies: running, want: `Name:          web-1
Service:       web
Address:       10.0.1.1
Weight:        100
AdminState:    active
Health:        up
HealthDetail:  -
Check:         tcp://10.0.1.1:80
Source:        runtime
Persistent:    yes
ActiveFlows:   12
InactiveFlows: 3
Packets:       3400
Bytes:         567890
`},
		{name: "stats", args: []string{"stats"}, replies: running, want: `conntrack_size 4
drop.no_backend 10
forwarded 90
received 100

SERVICE  PACKETS  BYTES  NEW_FLOWS  ACTIVE_FLOWS  INACTIVE_FLOWS  DROPS
dns.v2   10       700    10         4             0               0
web      80       9000   7          3             1               2
`},
		{name: "stats of a newer caplanced", args: []string{"stats"}, replies: with("org.caplance.Caplance1.Manager.GetStats", fakeReply{body: []any{map[string]uint64{
			"received": 5, "service.a.packets": 1, "service.a.zz_new": 9, "service.a.aa_new": 8, "service.b.bytes": 7, "service.": 1, "service.c.": 2,
		}}}), want: `received 5
service. 1
service.c. 2

SERVICE  PACKETS  BYTES  AA_NEW  ZZ_NEW
a        1        -      8       9
b        -        7      -       -
`},
		{name: "stats of services alone", args: []string{"stats"}, replies: with("org.caplance.Caplance1.Manager.GetStats", fakeReply{body: []any{map[string]uint64{
			"service.a.drops": 3,
		}}}), want: "SERVICE  DROPS\na        3\n"},
		{name: "stats --json", args: []string{"stats", "--json"}, replies: with("org.caplance.Caplance1.Manager.GetStats", fakeReply{body: []any{map[string]uint64{
			"received": 100, "forwarded": 90, "service.web.packets": 80, "service.web.active_flows": 3, "drop.no_backend": 4, "xdp_via_raw.too_big": 2,
		}}}), want: `{
  "drops": {
    "no_backend": 4
  },
  "forwarded": 90,
  "received": 100,
  "services": [
    {
      "active_flows": 3,
      "name": "web",
      "packets": 80
    }
  ],
  "xdp_via_raw": {
    "too_big": 2
  }
}
`},
		{name: "stats --rate: nothing moved, gauges as they are", args: []string{"stats", "--rate", "--interval", "10ms"},
			replies: with("org.caplance.Caplance1.Manager.GetStats", fakeReply{body: []any{map[string]uint64{
				"received": 100, "conntrack_size": 4, "service.web.packets": 80, "service.web.active_flows": 3,
			}}}), wantRE: `^per second over [0-9.]+m?s \(active_flows, inactive_flows, conntrack_size are current\)

conntrack_size 4
received/s 0

SERVICE  PACKETS/S  ACTIVE_FLOWS
web      0          3
$`},
		{name: "silent change", args: []string{"drain", "web1"}, replies: map[string]fakeReply{"org.caplance.Caplance1.Manager.Drain": {}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(t, &fakeConn{replies: tt.replies}, tt.args...)
			if code != cli.ExitOK || stderr != "" {
				t.Errorf("exit code %d, stderr %q", code, stderr)
			}
			if tt.wantRE != "" {
				if !regexp.MustCompile(tt.wantRE).MatchString(stdout) {
					t.Errorf("stdout %q does not match %q", stdout, tt.wantRE)
				}
			} else if diff := cmp.Diff(tt.want, stdout); diff != "" {

				t.Errorf("stdout (-want +got):\n%s", diff)
			}
		})
	}
}

// statsRate: counters per second, gauges as they are, a counter that went
// down (a restarted caplanced) counted from 0.
func TestStatsRate(t *testing.T) {
	before := map[string]uint64{"received": 100, "forwarded": 1000, "conntrack_size": 9, "service.web.bytes": 5000, "service.web.active_flows": 7}
	later := map[string]uint64{"received": 300, "forwarded": 10, "conntrack_size": 4, "service.web.bytes": 9000, "service.web.active_flows": 2,
		"drop.no_backend": 6}
	want := map[string]uint64{"received": 100, "forwarded": 5, "conntrack_size": 4, "service.web.bytes": 2000, "service.web.active_flows": 2,
		"drop.no_backend": 3}
	if diff := cmp.Diff(want, statsRate(before, later, 2*time.Second)); diff != "" {
		t.Errorf("statsRate over 2s (-want +got):\n%s", diff)
	}
	obj := statsObject(want, 2*time.Second)
	if obj["interval_seconds"] != 2.0 {
		t.Errorf("statsObject of a rate: interval_seconds %v, want 2", obj["interval_seconds"])
	}
}

// A reply of the wrong shape is an error, not a panic or a Go dump.
func TestUnexpectedReply(t *testing.T) {
	for _, tt := range []struct {
		method string
		args   []string
	}{
		{"ListBackends", []string{"list"}},
		{"ListServices", []string{"list"}},
		{"ListServices", []string{"services"}},
		{"GetStats", []string{"stats"}},
	} {
		method := tt.method
		f := &fakeConn{replies: map[string]fakeReply{
			"org.caplance.Caplance1.Manager.ListServices": {body: []any{serviceRows}},
			"org.caplance.Caplance1.Manager.ListBackends": {body: []any{backendRows}},
			"org.caplance.Caplance1.Manager." + method:    {body: []any{"nonsense"}},
		}}
		code, _, stderr := run(t, f, tt.args...)
		if code != cli.ExitFailed || !strings.HasPrefix(stderr, "caplancectl: "+method+": unexpected reply: ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%s: exit code %d, stderr %q", method, code, stderr)
		}
	}
}

// routedProps are the manager's properties of a routed balancer.
func routedProps(maintenance bool, announced ...string) map[string]dbus.Variant {
	props := maps.Clone(managerProps)
	props["Routed"] = variant(true)
	props["Maintenance"] = variant(maintenance)
	props["AnnouncedVIPs"] = variant(append([]string{}, announced...))
	props["RouteTable"] = variant(uint32(100))
	props["RouteProtocol"] = variant(uint8(252))
	return props
}

// statusOf is status's output of the running fake with routes, a line.
func statusOf(routes string) string {
	return `Version:    1.2.3
APIVersion: 2
Roles:      balancer
State:      running
VIPs:       10.0.0.100, 10.0.0.101, 10.0.0.53
EncapPort:  5555
TableSize:  65537
Dataplane:  xdp (native)
LastReload: 2026-12-07T17:30:00Z refused: caplanced.toml: line 3: unknown key "colour"; caplanced.toml: line 4: weight 10001: must be between 0 and 10000
Services:   2
Backends:   3
` + routes + `
caplance-healthd: checking 2 backends

SERVICE  BACKENDS  UP  DOWN  UNKNOWN  DRAINED
dns      1         0   0     1        0
web      2         1   1     0        1
`
}
