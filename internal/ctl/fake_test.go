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

// The replies of a running balancer with two backends.
var (
	managerProps = map[string]dbus.Variant{
		"Version":   variant("1.2.3"),
		"Roles":     variant([]string{"balancer"}),
		"State":     variant("running"),
		"VIPs":      variant([]string{"10.0.0.100", "10.0.0.101"}),
		"EncapPort": variant(uint16(5555)),
		"TableSize": variant(uint32(65537)),
	}
	backendRows = [][]any{
		{"web-1", "10.0.1.1", uint32(100), "active", "up", "", uint64(12), uint64(3), uint64(3400), uint64(567890)},
		{"web2", "10.0.1.2", uint32(0), "drained", "down", "connect: connection refused", uint64(0), uint64(0), uint64(17), uint64(1020)},
	}
	web1Props = map[string]dbus.Variant{
		"Name":          variant("web-1"),
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
	stats = map[string]uint64{"received": 100, "forwarded": 90, "drop.no_backend": 10, "conntrack_size": 4}
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
