package dbusname

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"github.com/google/go-cmp/cmp"
)

func TestPaths(t *testing.T) {
	for name, want := range map[string]string{
		"web1":    "web1",
		"web-1.a": "web_2d1_2ea",
		"a_b":     "a_5fb",
		"":        "_",
		"Z9":      "Z9",
	} {
		svc := ServicePath(name)
		if string(svc) != ServicePathPrefix+want {
			t.Errorf("ServicePath(%q) = %s, want …%s", name, svc, want)
		}
		if back, ok := ServiceName(svc); !ok || back != name {
			t.Errorf("ServiceName(%s) = %q, %v; want %q", svc, back, ok, name)
		}
		got := BackendPath("web-x", name)
		if string(got) != ServicePathPrefix+"web_2dx/backend/"+want {
			t.Errorf("BackendPath(%q) = %s, want …/web_2dx/backend/%s", name, got, want)
		}
		if s, back, ok := BackendName(got); !ok || back != name || s != "web-x" {
			t.Errorf("BackendName(%s) = %q, %q, %v; want web-x, %q", got, s, back, ok, name)
		}
		if !got.IsValid() || !svc.IsValid() {
			t.Errorf("%s or %s is not a valid object path", svc, got)
		}
	}
}

func TestNamesRejects(t *testing.T) {
	for _, path := range []string{
		"/org/caplance/Caplance1",
		"/org/caplance/Caplance1/service/",
		"/org/caplance/Caplance1/service/a/b",
		"/org/caplance/Caplance1/service/web_2",
		"/org/caplance/Caplance1/service/web_zz",
		"/org/caplance/Caplance1/service/web/backend/",
		"/org/caplance/Caplance1/service/web/backend/a/b",
		"/org/caplance/Caplance1/service/web/backend/x_2",
		"/org/caplance/Caplance1/service//backend/x",
		"/org/caplance/Caplance1/backend/web1",
		"/elsewhere/web1",
	} {
		if s, name, ok := BackendName(dbus.ObjectPath(path)); ok {
			t.Errorf("BackendName(%s) = %q, %q, true; want false", path, s, name)
		}
		if path == "/org/caplance/Caplance1/service/a/b" || strings.Contains(path, "/backend/") {
			if name, ok := ServiceName(dbus.ObjectPath(path)); ok {
				t.Errorf("ServiceName(%s) = %q, true; want false", path, name)
			}
		}
	}
}

func TestAncestorNode(t *testing.T) {
	tests := []struct {
		path  dbus.ObjectPath
		child string // "" when path is no ancestor
	}{
		{"/", "org"},
		{"/org", "caplance"},
		{"/org/caplance", "Caplance1"},
		{ManagerPath, ""},
		{"/org/caplance/Caplance1/backend", ""},
		{"/org/capl", ""},
		{"/com", ""},
	}
	for _, tt := range tests {
		node, ok := AncestorNode(tt.path, ManagerPath)
		var want []introspect.Node
		if tt.child != "" {
			want = []introspect.Node{{Name: tt.child}}
		}
		if ok != (tt.child != "") || !cmp.Equal(want, node.Children) || node.Interfaces != nil {
			t.Errorf("AncestorNode(%q) = %+v, %v; want children %v", tt.path, node, ok, want)
		}
	}
}

func TestAsError(t *testing.T) {
	e := dbus.Error{Name: ErrorPrefix + "NotFound", Body: []any{"no backend"}}
	for _, err := range []error{e, &e, fmt.Errorf("call: %w", e), fmt.Errorf("call: %w", &e)} {
		if got, ok := AsError(err); !ok || got.Name != e.Name {
			t.Errorf("AsError(%v) = %v, %v; want %s", err, got.Name, ok, e.Name)
		}
	}
	for _, err := range []error{nil, errors.New("plain"), (*dbus.Error)(nil)} {
		if got, ok := AsError(err); ok {
			t.Errorf("AsError(%v) = %v, true; want false", err, got)
		}
	}
}
