package dbusconn_test

import (
	"path/filepath"
	"testing"

	"github.com/caplance/caplance/internal/dbusconn"
	"github.com/caplance/caplance/internal/dbustest"
)

func TestDial(t *testing.T) {
	bus := dbustest.Start(t, dbustest.Permissive())
	missing := "unix:path=" + filepath.Join(t.TempDir(), "none")
	tests := []struct {
		name, bus string
		env       map[string]string
		wantErr   string // "" for a working connection
	}{
		{name: "address", bus: bus.Address},
		{name: "system from the environment", bus: "system", env: map[string]string{"DBUS_SYSTEM_BUS_ADDRESS": bus.Address}},
		{name: "session from the environment", bus: "session", env: map[string]string{"DBUS_SESSION_BUS_ADDRESS": bus.Address}},
		{name: "missing socket", bus: missing,
			wantErr: "cannot connect to the bus " + missing + ": dial unix " + missing[len("unix:path="):] + ": connect: no such file or directory"},
		{name: "missing system bus", bus: "system", env: map[string]string{"DBUS_SYSTEM_BUS_ADDRESS": missing},
			wantErr: "cannot connect to the system bus: dial unix " + missing[len("unix:path="):] + ": connect: no such file or directory"},
		// No address: an error, never a launched bus.
		{name: "no session bus", bus: "session", env: map[string]string{"DBUS_SESSION_BUS_ADDRESS": "", "XDG_RUNTIME_DIR": t.TempDir()},
			wantErr: "cannot connect to the session bus: dbus: couldn't determine address of session bus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c, err := dbusconn.Dial(tt.bus)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Dial(%q): got %v, want %q", tt.bus, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Dial(%q): %v", tt.bus, err)
			}
			defer c.Close()
			if names := c.Names(); len(names) == 0 || names[0] == "" {
				t.Errorf("connection has no unique name: %v", names)
			}
		})
	}
}
