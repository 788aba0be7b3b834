package ctl

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
)

// timeRE matches formatTime's times.
const timeRE = `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`

const (
	web1Path = dbus.ObjectPath("/org/caplance/Caplance1/service/web/backend/web_2d1")
	webPath  = dbus.ObjectPath("/org/caplance/Caplance1/service/web")
)

func propertiesChanged(path dbus.ObjectPath, iface string, changed map[string]dbus.Variant, invalidated []string) *dbus.Signal {
	return &dbus.Signal{Sender: ":1.5", Path: path, Name: "org.freedesktop.DBus.Properties.PropertiesChanged",
		Body: []any{iface, changed, invalidated}}
}

func managerSignal(member string, body ...any) *dbus.Signal {
	return &dbus.Signal{Sender: ":1.5", Path: dbusname.ManagerPath, Name: dbusname.ManagerIface + "." + member, Body: body}
}

func TestFormatSignal(t *testing.T) {
	tests := []struct {
		name string
		sig  *dbus.Signal
		want string // "" means not shown
	}{
		{"added", managerSignal("BackendAdded", "web-1", web1Path), "BackendAdded web-1 /org/caplance/Caplance1/service/web/backend/web_2d1"},
		{"removed", managerSignal("BackendRemoved", "web-1", web1Path), "BackendRemoved web-1 /org/caplance/Caplance1/service/web/backend/web_2d1"},
		{"health down", managerSignal("BackendHealthChanged", "web-1", false, "connect: connection refused"),
			`BackendHealthChanged web-1 down "connect: connection refused"`},
		{"health up", managerSignal("BackendHealthChanged", "web-1", true, ""), `BackendHealthChanged web-1 up ""`},
		{"weight and state", propertiesChanged(web1Path, dbusname.BackendIface,
			map[string]dbus.Variant{"Weight": variant(uint32(0)), "AdminState": variant("drained")}, nil),
			`PropertiesChanged web-1 AdminState="drained" Weight=0`},
		{"health with detail", propertiesChanged(web1Path, dbusname.BackendIface,
			map[string]dbus.Variant{"Health": variant("down"), "HealthDetail": variant("timeout after 2s")}, []string{}),
			`PropertiesChanged web-1 Health="down" HealthDetail="timeout after 2s"`},
		{"counters invalidated", propertiesChanged(web1Path, dbusname.BackendIface,
			map[string]dbus.Variant{}, []string{"Packets", "ActiveFlows", "Bytes"}),
			`PropertiesChanged web-1 invalidated=ActiveFlows,Bytes,Packets`},
		{"both", propertiesChanged(web1Path, dbusname.BackendIface,
			map[string]dbus.Variant{"Weight": variant(uint32(5))}, []string{"Packets"}),
			`PropertiesChanged web-1 Weight=5 invalidated=Packets`},
		{"daemon stopped", &dbus.Signal{Name: "org.freedesktop.DBus.NameOwnerChanged", Body: []any{dbusname.BusName, ":1.5", ""}}, "caplanced stopped"},
		{"daemon started", &dbus.Signal{Name: "org.freedesktop.DBus.NameOwnerChanged", Body: []any{dbusname.BusName, "", ":1.9"}}, "caplanced started"},
		{"other name", &dbus.Signal{Name: "org.freedesktop.DBus.NameOwnerChanged", Body: []any{"org.other", "", ":1.9"}}, ""},
		{"manager properties", propertiesChanged(dbusname.ManagerPath, dbusname.ManagerIface, map[string]dbus.Variant{"State": variant("reloading")}, nil), ""},
		{"other interface of a backend", propertiesChanged(web1Path, "org.other", map[string]dbus.Variant{"X": variant("y")}, nil), ""},
		{"badly escaped path", propertiesChanged("/org/caplance/Caplance1/service/web/backend/web_2", dbusname.BackendIface, map[string]dbus.Variant{"Weight": variant(uint32(5))}, nil), ""},
		{"old backend path", propertiesChanged("/org/caplance/Caplance1/backend/web_2d1", dbusname.BackendIface, map[string]dbus.Variant{"Weight": variant(uint32(5))}, nil), ""},
		{"service added", managerSignal("ServiceAdded", "web", webPath), "ServiceAdded web /org/caplance/Caplance1/service/web"},
		{"service removed", managerSignal("ServiceRemoved", "dns.v2", dbusname.ServicePath("dns.v2")), "ServiceRemoved dns.v2 /org/caplance/Caplance1/service/dns_2ev2"},
		{"service changed", propertiesChanged(webPath, dbusname.ServiceIface,
			map[string]dbus.Variant{"VIPs": variant(map[string]string{"10.0.0.101": "80", "10.0.0.100": "all"}), "Hash": variant("source-ip")}, nil),
			`ServicePropertiesChanged web Hash="source-ip" VIPs=10.0.0.100:all 10.0.0.101:80`},
		{"service counters", propertiesChanged(webPath, dbusname.ServiceIface, map[string]dbus.Variant{}, []string{"Packets", "Drops"}),
			`ServicePropertiesChanged web invalidated=Drops,Packets`},
		{"service interface on a backend's path", propertiesChanged(web1Path, dbusname.ServiceIface, map[string]dbus.Variant{"Hash": variant("source-ip")}, nil), ""},
		{"backend interface on a service's path", propertiesChanged(webPath, dbusname.BackendIface, map[string]dbus.Variant{"Weight": variant(uint32(5))}, nil), ""},
		{"malformed body", managerSignal("BackendAdded", uint32(1)), ""},
		{"NameAcquired", &dbus.Signal{Name: "org.freedesktop.DBus.NameAcquired", Body: []any{":1.7"}}, ""},
		{"InterfacesAdded", &dbus.Signal{Name: "org.freedesktop.DBus.ObjectManager.InterfacesAdded", Path: dbusname.ManagerPath}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, ok := parseSignal(tt.sig)
			if ok != (tt.want != "") {
				t.Errorf("shown = %v, want %v", ok, tt.want != "")
			}
			if diff := cmp.Diff(tt.want, ev.line); ok && diff != "" {
				t.Errorf("line (-want +got):\n%s", diff)
			}
		})
	}
}

// watch --json: a JSON object per line, snake_case throughout, the time
// first.
func TestWatchJSON(t *testing.T) {
	signals := make(chan *dbus.Signal, 8)
	signals <- managerSignal("BackendAdded", "web-1", web1Path)
	signals <- managerSignal("BackendHealthChanged", "web-1", false, "timeout")
	signals <- propertiesChanged(web1Path, dbusname.BackendIface,
		map[string]dbus.Variant{"AdminState": variant("drained"), "HealthDetail": variant("")}, []string{"ActiveFlows"})
	signals <- propertiesChanged(webPath, dbusname.ServiceIface,
		map[string]dbus.Variant{"VIPs": variant(map[string]string{"10.0.0.100": "80"})}, nil)
	signals <- &dbus.Signal{Name: "org.freedesktop.DBus.NameOwnerChanged", Body: []any{dbusname.BusName, ":1.5", ""}}
	close(signals)
	var out bytes.Buffer
	clock := func() time.Time { return time.Date(2026, 12, 7, 18, 30, 0, 0, time.FixedZone("CET", 3600)) }
	if err := watchLoop(context.Background(), signals, &out, true, clock); err == nil {
		t.Error("watchLoop after the connection closed: nil error")
	}
	want := `{"time":"2026-12-07T17:30:00Z","event":"backend_added","name":"web-1","path":"/org/caplance/Caplance1/service/web/backend/web_2d1"}
{"time":"2026-12-07T17:30:00Z","event":"backend_health_changed","name":"web-1","health":"down","detail":"timeout"}
{"time":"2026-12-07T17:30:00Z","event":"backend_changed","name":"web-1","changed":{"admin_state":"drained","health_detail":""},"invalidated":["active_flows"]}
{"time":"2026-12-07T17:30:00Z","event":"service_changed","name":"web","changed":{"vips":{"10.0.0.100":"80"}}}
{"time":"2026-12-07T17:30:00Z","event":"caplanced_stopped"}
`
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("watch --json (-want +got):\n%s", diff)
	}
}

func TestWatchCommand(t *testing.T) {
	signals := make(chan *dbus.Signal, 4)
	signals <- managerSignal("BackendAdded", "web-1", web1Path)
	signals <- &dbus.Signal{Name: "org.freedesktop.DBus.NameAcquired", Body: []any{":1.7"}}
	signals <- managerSignal("BackendHealthChanged", "web-1", true, "")
	close(signals) // as when the bus goes away
	f := &fakeConn{signals: signals, replies: map[string]fakeReply{"org.freedesktop.DBus.NameHasOwner": {body: []any{true}}}}
	code, stdout, stderr := run(t, f, "watch")
	if code != cli.ExitFailed {
		t.Errorf("exit code %d, want %d", code, cli.ExitFailed)
	}
	// Each line starts with the time it arrived.
	want := regexp.MustCompile(`^` + timeRE + ` BackendAdded web-1 /org/caplance/Caplance1/service/web/backend/web_2d1\n` +
		timeRE + ` BackendHealthChanged web-1 up ""\n$`)
	if !want.MatchString(stdout) {
		t.Errorf("stdout %q does not match %q", stdout, want)
	}
	if diff := cmp.Diff("caplancectl: the connection to the bus was closed\n", stderr); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
	if f.rules != len(watchRules) {
		t.Errorf("%d match rules added, want %d", f.rules, len(watchRules))
	}
}

func TestWatchNotRunning(t *testing.T) {
	f := &fakeConn{signals: make(chan *dbus.Signal), replies: map[string]fakeReply{"org.freedesktop.DBus.NameHasOwner": {body: []any{false}}}}
	code, _, stderr := run(t, f, "watch")
	want := "caplancectl: caplanced is not running: org.caplance.Caplance1 has no owner (is caplanced running? systemctl start caplanced)\n"
	if code != ExitNotRunning || stderr != want {
		t.Errorf("exit code %d, stderr %q; want %d, %q", code, stderr, ExitNotRunning, want)
	}
}

// Ctrl-C ends watch without an error.
func TestWatchLoopStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	signals := make(chan *dbus.Signal)
	var out bytes.Buffer
	clock := func() time.Time { return time.Date(2026, 12, 7, 17, 30, 5, 0, time.UTC) }
	go func() { done <- watchLoop(ctx, signals, &out, false, clock) }()
	signals <- managerSignal("BackendRemoved", "web-1", web1Path)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watchLoop after cancel: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watchLoop did not return after cancel")
	}
	if diff := cmp.Diff("2026-12-07T17:30:05Z BackendRemoved web-1 /org/caplance/Caplance1/service/web/backend/web_2d1\n", out.String()); diff != "" {
		t.Errorf("output (-want +got):\n%s", diff)
	}
}
