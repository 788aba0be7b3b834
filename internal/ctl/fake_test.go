package ctl

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
)

// fakeConn answers calls from a table and records them. It stands in for
// caplanced in unit tests; the real daemon is tested end to end elsewhere.
type fakeConn struct {
	// replies by "PATH METHOD", or by "METHOD" for any path. A call
	// without a reply fails the test.
	replies map[string]fakeReply
	signals chan *dbus.Signal

	t      *testing.T
	calls  []string
	rules  int
	closed bool
}

type fakeReply struct {
	body []any
	err  error
}

func (f *fakeConn) Call(_ context.Context, dest string, path dbus.ObjectPath, method string, args ...any) ([]any, error) {
	f.calls = append(f.calls, describeCall(dest, path, method, args))
	r, ok := f.replies[string(path)+" "+method]
	if !ok {
		r, ok = f.replies[method]
	}
	if !ok {
		f.t.Errorf("unexpected call %s", f.calls[len(f.calls)-1])
		return nil, dbus.Error{Name: "org.freedesktop.DBus.Error.UnknownMethod", Body: []any{"no reply in the fake"}}
	}
	return r.body, r.err
}

func (f *fakeConn) Subscribe(_ context.Context, rules ...[]dbus.MatchOption) (<-chan *dbus.Signal, error) {
	f.rules += len(rules)
	if f.signals == nil {
		f.signals = make(chan *dbus.Signal)
		close(f.signals)
	}
	return f.signals, nil
}

func (f *fakeConn) Close() error {
	f.closed = true
	return nil
}

// describeCall renders a call with the D-Bus signature of each argument,
// and the signature of each variant, so that tests compare wire types.
func describeCall(dest string, path dbus.ObjectPath, method string, args []any) string {
	parts := []string{dest, string(path), method}
	for _, a := range args {
		parts = append(parts, describeValue(a))
	}
	return strings.Join(parts, " ")
}

func describeValue(v any) string {
	sig := dbus.SignatureOf(v).String()
	if opts, ok := v.(map[string]dbus.Variant); ok {
		var kv []string
		for k, o := range opts {
			kv = append(kv, fmt.Sprintf("%s:%s=%v", k, o.Signature(), o.Value()))
		}
		slices.Sort(kv)
		return sig + "{" + strings.Join(kv, ",") + "}"
	}
	return fmt.Sprintf("%s(%v)", sig, v)
}

// run executes caplancectl with args against f and returns the exit code,
// stdout and stderr. A nil f means the test must not connect.
func run(t *testing.T, f *fakeConn, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	app := &App{Dial: func(bus string) (Conn, error) {
		if f == nil {
			t.Errorf("connected to %q, want no connection", bus)
			return nil, fmt.Errorf("no bus in this test")
		}
		f.t = t
		return f, nil
	}}
	var out, errb bytes.Buffer
	code = app.Execute(args, &out, &errb)
	if f != nil && len(f.calls) > 0 && !f.closed {
		t.Errorf("connection left open")
	}
	return code, out.String(), errb.String()
}

func variant(v any) dbus.Variant { return dbus.MakeVariant(v) }

func dbusError(name, msg string) error { return dbus.Error{Name: name, Body: []any{msg}} }

// The replies of a running balancer with two services: web with two
// backends, dns with one.
var (
	managerProps = map[string]dbus.Variant{
		"Version":    variant("1.2.3"),
		"Roles":      variant([]string{"balancer"}),
		"State":      variant("running"),
		"APIVersion": variant(uint32(2)),
		"VIPs":       variant([]string{"10.0.0.100", "10.0.0.101", "10.0.0.53"}),
		"EncapPort":  variant(uint16(5555)),
		"TableSize":  variant(uint32(65537)),
		"Dataplane":  variant("xdp (native)"),
		// 2026-12-07T17:30:00Z
		"LastReload":      variant(uint64(1796664600)),
		"LastReloadError": variant("caplanced.toml: line 3: unknown key \"colour\"\ncaplanced.toml: line 4: weight 10001: must be between 0 and 10000"),
	}
	backendRows = [][]any{
		{"dns1", "dns", "10.0.2.1", uint32(1), "active", "unknown", "", uint64(0), uint64(0), uint64(5), uint64(300)},
		{"web-1", "web", "10.0.1.1", uint32(100), "active", "up", "", uint64(12), uint64(3), uint64(3400), uint64(567890)},
		{"web2", "web", "10.0.1.2", uint32(0), "drained", "down", "connect: connection refused", uint64(0), uint64(0), uint64(17), uint64(1020)},
	}
	serviceRows = [][]any{
		{"web", map[string]string{"10.0.0.101": "80,443", "10.0.0.100": "80,443,8000-8099"}, "tcp", "source-ip", uint32(65537),
			"http://:80/healthz", "config", uint32(2), uint64(3417), uint64(568910), uint64(12)},
		{"dns", map[string]string{"10.0.0.53": "53"}, "udp", "5-tuple", uint32(251), "", "runtime", uint32(1), uint64(5), uint64(300), uint64(0)},
	}
	webProps = map[string]dbus.Variant{
		"Name":          variant("web"),
		"VIPs":          variant(map[string]string{"10.0.0.101": "80,443", "10.0.0.100": "80,443,8000-8099"}),
		"Protocols":     variant("tcp"),
		"Hash":          variant("source-ip"),
		"TableSize":     variant(uint32(65537)),
		"Check":         variant("http://:80/healthz"),
		"Source":        variant("config"),
		"Persistent":    variant(true),
		"Packets":       variant(uint64(3417)),
		"Bytes":         variant(uint64(568910)),
		"NewFlows":      variant(uint64(40)),
		"ActiveFlows":   variant(uint64(12)),
		"InactiveFlows": variant(uint64(3)),
		"Drops":         variant(uint64(2)),
	}
	web1Props = map[string]dbus.Variant{
		"Name":          variant("web-1"),
		"Service":       variant("web"),
		"Address":       variant("10.0.1.1"),
		"Weight":        variant(uint32(100)),
		"AdminState":    variant("active"),
		"Health":        variant("up"),
		"HealthDetail":  variant(""),
		"Check":         variant("tcp://10.0.1.1:80"),
		"Source":        variant("runtime"),
		"Persistent":    variant(true),
		"ActiveFlows":   variant(uint64(12)),
		"InactiveFlows": variant(uint64(3)),
		"Packets":       variant(uint64(3400)),
		"Bytes":         variant(uint64(567890)),
	}
	stats = map[string]uint64{"received": 100, "forwarded": 90, "drop.no_backend": 10, "conntrack_size": 4,
		"service.web.packets": 80, "service.web.bytes": 9000, "service.web.new_flows": 7, "service.web.active_flows": 3,
		"service.web.inactive_flows": 1, "service.web.drops": 2,
		"service.dns.v2.packets": 10, "service.dns.v2.bytes": 700, "service.dns.v2.new_flows": 10, "service.dns.v2.active_flows": 4,
		"service.dns.v2.inactive_flows": 0, "service.dns.v2.drops": 0}
)

// failingConn fails every call with err.
type failingConn struct{ err error }

func (f *failingConn) Call(context.Context, string, dbus.ObjectPath, string, ...any) ([]any, error) {
	return nil, f.err
}

func (f *failingConn) Subscribe(context.Context, ...[]dbus.MatchOption) (<-chan *dbus.Signal, error) {
	return make(chan *dbus.Signal), nil
}

func (f *failingConn) Close() error { return nil }

func errorWithoutMessage(name string) error { return &dbus.Error{Name: name} }
