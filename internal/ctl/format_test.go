package ctl

import (
	"strings"
	"testing"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
)

func TestOutput(t *testing.T) {
	running := map[string]fakeReply{
		"org.freedesktop.DBus.Properties.GetAll":                                         {body: []any{managerProps}},
		"org.caplance.Caplance1.Manager.ListBackends":                                    {body: []any{backendRows}},
		"org.caplance.Caplance1.Manager.GetStats":                                        {body: []any{stats}},
		"org.freedesktop.DBus.NameHasOwner":                                              {body: []any{true}},
		"org.freedesktop.DBus.Properties.Get":                                            {body: []any{dbus.MakeVariant("checking 2 backends")}},
		"/org/caplance/Caplance1/backend/web_2d1 org.freedesktop.DBus.Properties.GetAll": {body: []any{web1Props}},
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
	}{
		{name: "status", args: []string{"status"}, replies: running, want: `Version:   1.2.3
Roles:     balancer
State:     running
VIPs:      10.0.0.100, 10.0.0.101
EncapPort: 5555
TableSize: 65537
Backends:  2
caplance-healthd: checking 2 backends
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
`},
		{name: "list", args: []string{"list"}, replies: running, want: `NAME   ADDRESS   WEIGHT  ADMIN    HEALTH  ACTIVE  INACTIVE  PACKETS  REASON
web-1  10.0.1.1  100     active   up      12      3         3400     -
web2   10.0.1.2  0       drained  down    0       0         17       connect: connection refused
`},
		{name: "list of none", args: []string{"list"}, replies: with("org.caplance.Caplance1.Manager.ListBackends", fakeReply{body: []any{[][]any{}}}),
			want: "NAME  ADDRESS  WEIGHT  ADMIN  HEALTH  ACTIVE  INACTIVE  PACKETS  REASON\n"},
		{name: "list --json", args: []string{"list", "--json"}, replies: running, want: `[
  {
    "name": "web-1",
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
		{name: "show", args: []string{"show", "web-1"}, replies: running, want: `Name:          web-1
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
`},
		{name: "stats --json", args: []string{"stats", "--json"}, replies: running, want: `{
  "conntrack_size": 4,
  "drop.no_backend": 10,
  "forwarded": 90,
  "received": 100
}
`},
		{name: "silent change", args: []string{"drain", "web1"}, replies: map[string]fakeReply{"org.caplance.Caplance1.Manager.Drain": {}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(t, &fakeConn{replies: tt.replies}, tt.args...)
			if code != cli.ExitOK || stderr != "" {
				t.Errorf("exit code %d, stderr %q", code, stderr)
			}
			if diff := cmp.Diff(tt.want, stdout); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
		})
	}
}

// A reply of the wrong shape is an error, not a panic or a Go dump.
func TestUnexpectedReply(t *testing.T) {
	for _, method := range []string{"ListBackends", "GetStats"} {
		args := map[string][]string{"ListBackends": {"list"}, "GetStats": {"stats"}}[method]
		f := &fakeConn{replies: map[string]fakeReply{"org.caplance.Caplance1.Manager." + method: {body: []any{"nonsense"}}}}
		code, _, stderr := run(t, f, args...)
		if code != cli.ExitFailed || !strings.HasPrefix(stderr, "caplancectl: "+method+": unexpected reply: ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%s: exit code %d, stderr %q", method, code, stderr)
		}
	}
}
