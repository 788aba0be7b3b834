package ctl

import (
	"strings"
	"testing"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
)

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string // the first line of stderr after "caplancectl: "
	}{
		{nil, "missing command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"--bogus", "status"}, "flag provided but not defined: -bogus"},
		{[]string{"status", "x"}, `status: unexpected argument "x"`},
		{[]string{"status", "--json"}, "status: flag provided but not defined: -json"},
		{[]string{"list", "x"}, `list: unexpected argument "x"`},
		{[]string{"list", "--jsn"}, "list: flag provided but not defined: -jsn"},
		{[]string{"list", "--json=maybe"}, `list: invalid boolean value "maybe" for -json: parse error`},
		{[]string{"show"}, "show: missing NAME"},
		{[]string{"show", "a", "b"}, `show: unexpected argument "b"`},
		{[]string{"show", "--all", "a"}, "show: flag provided but not defined: -all"},
		{[]string{"add-backend"}, "add-backend: missing NAME"},
		{[]string{"add-backend", "web1"}, "add-backend: missing ADDRESS"},
		{[]string{"add-backend", "web1", "10.0.1.1", "x"}, `add-backend: unexpected argument "x"`},
		{[]string{"add-backend", "web1", "10.0.1.1", "--weight", "x"}, `add-backend: weight "x": not a number`},
		{[]string{"add-backend", "web1", "10.0.1.1", "--weight=-1"}, `add-backend: weight "-1": must not be negative`},
		{[]string{"add-backend", "web1", "10.0.1.1", "--weight", "4294967296"}, `add-backend: weight "4294967296": out of range`},
		{[]string{"add-backend", "web1", "10.0.1.1", "--weight"}, "add-backend: flag needs an argument: -weight"},
		{[]string{"add-backend", "web1", "10.0.1.1", "--check"}, "add-backend: flag needs an argument: -check"},
		{[]string{"add-backend", "web1", "10.0.1.1", "--runtime=sometimes"}, `add-backend: invalid boolean value "sometimes" for -runtime: parse error`},
		{[]string{"add-backend", "--persistent", "web1", "10.0.1.1"}, "add-backend: flag provided but not defined: -persistent"},
		{[]string{"remove-backend"}, "remove-backend: missing NAME"},
		{[]string{"remove-backend", "a", "b"}, `remove-backend: unexpected argument "b"`},
		{[]string{"remove-backend", "-f", "a"}, "remove-backend: flag provided but not defined: -f"},
		{[]string{"set-weight"}, "set-weight: missing NAME"},
		{[]string{"set-weight", "web1"}, "set-weight: missing WEIGHT"},
		{[]string{"set-weight", "web1", "x"}, `set-weight: weight "x": not a number`},
		{[]string{"set-weight", "web1", "1.5"}, `set-weight: weight "1.5": not a number`},
		{[]string{"set-weight", "web1", "-3"}, `set-weight: weight "-3": must not be negative`},
		{[]string{"set-weight", "web1", "99999999999"}, `set-weight: weight "99999999999": out of range`},
		{[]string{"set-weight", "web1", "5", "6"}, `set-weight: unexpected argument "6"`},
		{[]string{"set-weight", "--force", "web1", "5"}, "set-weight: flag provided but not defined: -force"},
		{[]string{"drain"}, "drain: missing NAME"},
		{[]string{"drain", "a", "b"}, `drain: unexpected argument "b"`},
		{[]string{"drain", "--now", "a"}, "drain: flag provided but not defined: -now"},
		{[]string{"undrain"}, "undrain: missing NAME"},
		{[]string{"undrain", "a", "b"}, `undrain: unexpected argument "b"`},
		{[]string{"undrain", "--now", "a"}, "undrain: flag provided but not defined: -now"},
		{[]string{"reload", "now"}, `reload: unexpected argument "now"`},
		{[]string{"reload", "--force"}, "reload: flag provided but not defined: -force"},
		{[]string{"stats", "drops"}, `stats: unexpected argument "drops"`},
		{[]string{"stats", "--yaml"}, "stats: flag provided but not defined: -yaml"},
		{[]string{"watch", "web1"}, `watch: unexpected argument "web1"`},
		{[]string{"watch", "--json"}, "watch: flag provided but not defined: -json"},
	}
	for _, tt := range tests {
		t.Run("caplancectl "+strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := run(t, nil, tt.args...)
			if code != cli.ExitUsage {
				t.Errorf("exit code %d, want %d", code, cli.ExitUsage)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			first, _, _ := strings.Cut(stderr, "\n")
			want := "caplancectl: " + tt.want
			if len(tt.args) > 0 && strings.HasPrefix(tt.args[0], "-") {
				want = tt.want // a global flag's error is printed by package flag
			}
			if diff := cmp.Diff(want, first); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

// Every command has a usage error above: the table cannot fall behind.
func TestUsageErrorsCoverEveryCommand(t *testing.T) {
	for _, c := range commands {
		code, _, _ := run(t, nil, c.name, "--no-such-flag")
		if code != cli.ExitUsage {
			t.Errorf("%s --no-such-flag: exit code %d, want %d", c.name, code, cli.ExitUsage)
		}
	}
}

func TestCommandHelp(t *testing.T) {
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := run(t, nil, c.name, "--help")
			if code != cli.ExitOK || stderr != "" {
				t.Errorf("exit code %d, stderr %q", code, stderr)
			}
			if !strings.HasPrefix(stdout, "Usage: caplancectl "+c.name) || !strings.Contains(stdout, c.summary) {
				t.Errorf("--help output:\n%s", stdout)
			}
		})
	}
}

// TestCalls checks what each command sends: object, method and the wire
// types of the arguments.
func TestCalls(t *testing.T) {
	const mgr = "org.caplance.Caplance1 /org/caplance/Caplance1 org.caplance.Caplance1.Manager."
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"add-backend", "web1", "10.0.1.1"}, mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{}"},
		{[]string{"add-backend", "web1", "10.0.1.1", "--weight", "50"}, mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{weight:u=50}"},
		{[]string{"add-backend", "--weight=0", "web1", "10.0.1.1"}, mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{weight:u=0}"},
		{[]string{"add-backend", "web1", "--check", "tcp://10.0.1.1:80", "10.0.1.1"}, mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{check:s=tcp://10.0.1.1:80}"},
		{[]string{"add-backend", "web1", "10.0.1.1", "--check="}, mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{check:s=}"},
		{[]string{"add-backend", "web1", "10.0.1.1", "--runtime"}, mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{runtime:b=true}"},
		{[]string{"add-backend", "web1", "10.0.1.1", "--runtime=false"}, mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{runtime:b=false}"},
		{[]string{"add-backend", "--runtime", "--weight", "7", "--check", "http://10.0.1.1/healthz", "web1", "10.0.1.1"},
			mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{check:s=http://10.0.1.1/healthz,runtime:b=true,weight:u=7}"},
		{[]string{"add-backend", "--", "-odd", "10.0.1.1"}, mgr + "AddBackend s(-odd) s(10.0.1.1) a{sv}{}"},
		{[]string{"add-backend", "web 1", "not-an-address"}, mgr + "AddBackend s(web 1) s(not-an-address) a{sv}{}"},
		{[]string{"remove-backend", "web1"}, mgr + "RemoveBackend s(web1)"},
		{[]string{"set-weight", "web1", "250"}, mgr + "SetWeight s(web1) u(250)"},
		{[]string{"set-weight", "web1", "99999"}, mgr + "SetWeight s(web1) u(99999)"}, // caplanced's range to refuse
		{[]string{"drain", "web1"}, mgr + "Drain s(web1)"},
		{[]string{"undrain", "web1"}, mgr + "Undrain s(web1)"},
		{[]string{"reload"}, mgr + "Reload"},
		{[]string{"--bus", "session", "reload"}, mgr + "Reload"},
		{[]string{"show", "web-1.a"}, "org.caplance.Caplance1 /org/caplance/Caplance1/backend/web_2d1_2ea org.freedesktop.DBus.Properties.GetAll s(org.caplance.Caplance1.Backend)"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			f := &fakeConn{replies: map[string]fakeReply{
				"org.caplance.Caplance1.Manager.AddBackend":    {body: []any{dbusname.BackendPath("web1")}},
				"org.caplance.Caplance1.Manager.SetWeight":     {},
				"org.caplance.Caplance1.Manager.Drain":         {},
				"org.caplance.Caplance1.Manager.Undrain":       {},
				"org.caplance.Caplance1.Manager.Reload":        {},
				"org.caplance.Caplance1.Manager.RemoveBackend": {},
				"org.freedesktop.DBus.Properties.GetAll":       {body: []any{web1Props}},
			}}
			code, _, stderr := run(t, f, tt.args...)
			if code != cli.ExitOK || stderr != "" {
				t.Errorf("exit code %d, stderr %q", code, stderr)
			}
			if diff := cmp.Diff([]string{tt.want}, f.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBusFlag(t *testing.T) {
	for _, bus := range []string{"system", "session", "unix:path=/run/other.sock"} {
		var got string
		app := &App{Dial: func(b string) (Conn, error) {
			got = b
			return &fakeConn{t: t, replies: map[string]fakeReply{"org.caplance.Caplance1.Manager.Reload": {}}}, nil
		}}
		args := []string{"--bus", bus, "reload"}
		if bus == "system" {
			args = args[2:] // the default
		}
		var out, errb strings.Builder
		if code := app.Execute(args, &out, &errb); code != 0 || got != bus {
			t.Errorf("%v: exit code %d, dialled %q, want %q (stderr %q)", args, code, got, bus, errb.String())
		}
	}
}

func TestBackendPath(t *testing.T) {
	tests := []struct {
		name string
		path dbus.ObjectPath
	}{
		{"web1", "/org/caplance/Caplance1/backend/web1"},
		{"web-1.a", "/org/caplance/Caplance1/backend/web_2d1_2ea"},
		{"a_b", "/org/caplance/Caplance1/backend/a_5fb"},
		{"ü", "/org/caplance/Caplance1/backend/_c3_bc"},
		{"", "/org/caplance/Caplance1/backend/_"},
	}
	for _, tt := range tests {
		if got := dbusname.BackendPath(tt.name); got != tt.path || !got.IsValid() {
			t.Errorf("BackendPath(%q) = %q, want %q", tt.name, got, tt.path)
		}
		if got, ok := dbusname.BackendName(tt.path); !ok || got != tt.name {
			t.Errorf("backendName(%q) = %q, %v, want %q", tt.path, got, ok, tt.name)
		}
	}
	for _, bad := range []dbus.ObjectPath{"/org/caplance/Caplance1", "/org/caplance/Caplance1/backend/", "/org/caplance/Caplance1/backend/a_2", "/org/caplance/Caplance1/backend/a_zz", "/org/caplance/Caplance1/backend/a/b"} {
		if got, ok := dbusname.BackendName(bad); ok {
			t.Errorf("backendName(%q) = %q, true; want false", bad, got)
		}
	}
}
