package dbusname

import (
	"errors"
	"fmt"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"github.com/google/go-cmp/cmp"
)

func TestBackendPath(t *testing.T) {
	for name, want := range map[string]string{
		"web1":    "web1",
		"web-1.a": "web_2d1_2ea",
		"a_b":     "a_5fb",
		"":        "_",
		"Z9":      "Z9",
	} {
		got := BackendPath(name)
		if string(got) != BackendPathPrefix+want {
			t.Errorf("BackendPath(%q) = %s, want …%s", name, got, want)
		}
		if back, ok := BackendName(got); !ok || back != name {
			t.Errorf("BackendName(%s) = %q, %v; want %q", got, back, ok, name)
		}
	}
}

func TestBackendNameRejects(t *testing.T) {
	for _, path := range []string{
		"/org/caplance/Caplance1",
		"/org/caplance/Caplance1/backend/",
		"/org/caplance/Caplance1/backend/a/b",
		"/org/caplance/Caplance1/backend/web_2",
		"/org/caplance/Caplance1/backend/web_zz",
		"/elsewhere/web1",
	} {
		if name, ok := BackendName(dbus.ObjectPath(path)); ok {
			t.Errorf("BackendName(%s) = %q, true; want false", path, name)
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
