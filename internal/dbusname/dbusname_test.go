package dbusname

import (
	"testing"

	"github.com/godbus/dbus/v5"
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
