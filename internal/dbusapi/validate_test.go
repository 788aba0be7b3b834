package dbusapi_test

import (
	"encoding/xml"
	"fmt"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"github.com/caplance/caplance/internal/dbusapi"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
)

// TestLongArguments: a 100 kB name is refused as InvalidArgument by every
// manager method that takes one (never NotFound: it is not looked up), and
// so are a 100 kB address, option key, check spec and health detail; the
// answer stays small, repeating only a short prefix of what it refuses, and
// nothing changes.
func TestLongArguments(t *testing.T) {
	e := newEnv(t, envOptions{})
	long := strings.Repeat("n", 100_000)
	echo := `"` + strings.Repeat("n", 64) + `"…`
	v := dbus.MakeVariant
	type opts = map[string]dbus.Variant
	tests := []struct {
		method string
		args   []any
		frag   string
	}{
		{"AddBackend", []any{long, "10.0.1.20", opts{}}, "adding backend " + echo + ": name: must be"},
		{"AddBackend", []any{"web9", long, opts{}}, "address " + echo},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{long: v(uint32(1))}}, "unknown option " + echo},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"check": v("tcp://:80?interval=" + long)}}, "100019 bytes long"},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"check": v("tcp://:80?interval=" + long[:8000])}}, `interval "` + strings.Repeat("n", 64) + `"…`},
		{"AddService", []any{long, opts{"vips": v([]string{"10.0.0.53"})}}, "adding service " + echo + ": name: must be"},
		{"AddService", []any{"dns", opts{long: v("x")}}, "unknown option " + echo},
		{"ChangeService", []any{long, opts{}}, "service name " + echo},
		{"RemoveService", []any{long}, "service name " + echo},
		{"AddBackend", []any{"web9", "10.0.1.20", opts{"service": v(long)}}, "service name " + echo},
		{"RemoveBackend", []any{long}, "backend name " + echo},
		{"SetWeight", []any{long, uint32(1)}, "backend name " + echo},
		{"Drain", []any{long}, "backend name " + echo},
		{"Undrain", []any{long}, "backend name " + echo},
		{"ReportHealth", []any{long, false, "x"}, "backend name " + echo},
		{"ReportHealth", []any{"web1", false, long}, fmt.Sprintf("detail %s: 100000 bytes, at most %d", echo, dbusapi.MaxHealthDetail)},
	}
	named := map[string]bool{}
	for i, tt := range tests {
		what := fmt.Sprintf("%s (case %d)", tt.method, i)
		if s, ok := tt.args[0].(string); ok && s == long {
			named[tt.method] = true
		}
		before := e.snapshot(t)
		err := call(e.conn, "", tt.method, tt.args...).Err
		checkError(t, what, err, dbusapi.ErrorInvalidArgument, tt.frag)
		if err != nil && len(err.Error()) > 256 {
			t.Errorf("%s: a %d-byte error message", what, len(err.Error()))
		}
		e.unchanged(t, before, what)
	}

	// Every method of the manager that takes a name is in the table.
	var data string
	if err := call(e.conn, "", "org.freedesktop.DBus.Introspectable.Introspect").Store(&data); err != nil {
		t.Fatal(err)
	}
	var node introspect.Node
	if err := xml.Unmarshal([]byte(data), &node); err != nil {
		t.Fatal(err)
	}
	for _, iface := range node.Interfaces {
		if iface.Name != dbusname.ManagerIface {
			continue
		}
		for _, m := range iface.Methods {
			if len(m.Args) > 0 && m.Args[0].Name == "name" && !named[m.Name] {
				t.Errorf("%s takes a name but is not called with a long one", m.Name)
			}
		}
	}
}

// TestLongArgumentsUnauthorized: a caller without the right is refused as
// such, whatever its arguments (the bus lets it through here, so the
// daemon's own check answers).
func TestLongArgumentsUnauthorized(t *testing.T) {
	e := newEnv(t, envOptions{busOpts: []dbustest.Option{dbustest.Permissive()}})
	conn := e.as(t, dbustest.Nobody(t))
	long := strings.Repeat("n", 100_000)
	for _, c := range []struct {
		method string
		args   []any
	}{
		{"Drain", []any{long}},
		{"AddService", []any{long, map[string]dbus.Variant{long: dbus.MakeVariant(long)}}},
		{"ChangeService", []any{long, map[string]dbus.Variant{}}},
		{"RemoveService", []any{long}},
		{"ReportHealth", []any{"web1", false, long}},
	} {
		checkError(t, c.method, call(conn, "", c.method, c.args...).Err, dbusapi.ErrorAccessDenied)
	}
}
