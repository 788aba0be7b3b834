package ctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/google/go-cmp/cmp"
)

func TestErrors(t *testing.T) {
	const hint = " (is caplanced running? systemctl start caplanced)\n"
	tests := []struct {
		name     string
		args     []string
		err      error // of every call
		dialErr  error
		wantCode int
		want     string
	}{
		{name: "NotFound", args: []string{"drain", "web9"}, err: dbusError(dbusname.ErrorPrefix+"NotFound", `backend "web9": no such backend`),
			wantCode: cli.ExitFailed, want: "caplancectl: backend \"web9\": no such backend\n"},
		{name: "InvalidArgument", args: []string{"set-weight", "web1", "20000"}, err: dbusError(dbusname.ErrorPrefix+"InvalidArgument", "weight 20000: must be between 0 and 10000"),
			wantCode: cli.ExitFailed, want: "caplancectl: weight 20000: must be between 0 and 10000\n"},
		{name: "AlreadyExists", args: []string{"add-backend", "web1", "10.0.1.1"}, err: dbusError(dbusname.ErrorPrefix+"AlreadyExists", `backend "web1": exists already`),
			wantCode: cli.ExitFailed, want: "caplancectl: backend \"web1\": exists already\n"},
		{name: "Failed", args: []string{"remove-backend", "web1"}, err: dbusError(dbusname.ErrorPrefix+"Failed", "state: write /var/lib/caplance/backends.json: no space left on device"),
			wantCode: cli.ExitFailed, want: "caplancectl: state: write /var/lib/caplance/backends.json: no space left on device\n"},
		{name: "NotSupported", args: []string{"list"}, err: dbusError(dbusname.ErrorPrefix+"NotSupported", "this caplanced has no balancer role"),
			wantCode: cli.ExitFailed, want: "caplancectl: this caplanced has no balancer role\n"},
		{name: "a reload refused names every problem", args: []string{"reload"},
			err:      dbusError(dbusname.ErrorPrefix+"InvalidArgument", "/etc/caplance/caplanced.toml: a: bad\n/etc/caplance/caplanced.toml: b: worse"),
			wantCode: cli.ExitFailed, want: "caplancectl: /etc/caplance/caplanced.toml: a: bad\ncaplancectl: /etc/caplance/caplanced.toml: b: worse\n"},
		{name: "AccessDenied by caplanced", args: []string{"undrain", "web1"}, err: dbusError(dbusname.ErrorPrefix+"AccessDenied", "uid 1000 may not call Undrain"),
			wantCode: cli.ExitFailed, want: "caplancectl: uid 1000 may not call Undrain (run as root or a member of caplance-admin)\n"},
		{name: "AccessDenied by the bus policy", args: []string{"reload"}, err: dbusError("org.freedesktop.DBus.Error.AccessDenied", `Rejected send message, 2 matched rules; type="method_call", sender=":1.23" (uid=65534 …)`),
			wantCode: cli.ExitFailed, want: "caplancectl: Reload: refused by the D-Bus policy (run as root or a member of caplance-admin)\n"},
		{name: "error without a message", args: []string{"reload"}, err: errorWithoutMessage("org.caplance.Caplance1.Error.Failed"),
			wantCode: cli.ExitFailed, want: "caplancectl: org.caplance.Caplance1.Error.Failed\n"},
		{name: "show-service of no service", args: []string{"show-service", "dns"}, err: dbusError("org.freedesktop.DBus.Error.UnknownObject", "Unknown object '/org/caplance/Caplance1/service/dns'."),
			wantCode: cli.ExitFailed, want: "caplancectl: service \"dns\": no such service\n"},
		{name: "a refused service", args: []string{"remove-service", "web"},
			err:      dbusError(dbusname.ErrorPrefix+"InvalidArgument", `service "web" is defined in the configuration file: change it there and reload`),
			wantCode: cli.ExitFailed, want: "caplancectl: service \"web\" is defined in the configuration file: change it there and reload\n"},
		{name: "an overlap", args: []string{"add-service", "web2", "--vip", "10.0.0.100", "--port", "80"},
			err:      dbusError(dbusname.ErrorPrefix+"InvalidArgument", `service "web2": VIP 10.0.0.100 tcp port 80 is taken by service "web"`),
			wantCode: cli.ExitFailed, want: "caplancectl: service \"web2\": VIP 10.0.0.100 tcp port 80 is taken by service \"web\"\n"},
		{name: "no such service of a backend", args: []string{"add-backend", "web9", "10.0.1.9", "--service", "nope"},
			err:      dbusError(dbusname.ErrorPrefix+"NotFound", `service "nope": no such service`),
			wantCode: cli.ExitFailed, want: "caplancectl: service \"nope\": no such service\n"},
		{name: "several services", args: []string{"add-backend", "web9", "10.0.1.9"},
			err:      dbusError(dbusname.ErrorPrefix+"InvalidArgument", `there are 2 services: say which with the option "service"`),
			wantCode: cli.ExitFailed, want: "caplancectl: there are 2 services: say which with the option \"service\"\n"},
		{name: "no reply in time", args: []string{"reload"}, err: fmt.Errorf("call: %w", context.DeadlineExceeded),
			wantCode: cli.ExitFailed, want: "caplancectl: Reload: no reply from caplanced within 30s\n"},
		{name: "ServiceUnknown", args: []string{"reload"}, err: dbusError("org.freedesktop.DBus.Error.ServiceUnknown", "The name org.caplance.Caplance1 was not provided by any .service files"),
			wantCode: ExitNotRunning, want: "caplancectl: caplanced is not running: The name org.caplance.Caplance1 was not provided by any .service files" + hint},
		{name: "NameHasNoOwner", args: []string{"status"}, err: dbusError("org.freedesktop.DBus.Error.NameHasNoOwner", "Could not get owner of name 'org.caplance.Caplance1': no such name"),
			wantCode: ExitNotRunning, want: "caplancectl: caplanced is not running: Could not get owner of name 'org.caplance.Caplance1': no such name" + hint},
		{name: "ServiceUnknown of show", args: []string{"show", "web1"}, err: dbusError("org.freedesktop.DBus.Error.ServiceUnknown", "The name is not activatable"),
			wantCode: ExitNotRunning, want: "caplancectl: caplanced is not running: The name is not activatable" + hint},
		// A bus that cannot be reached is no "caplanced not running" (see
		// TestDialBusFailure for DialBus's messages).
		{name: "no bus", args: []string{"list"}, dialErr: errors.New(`no system bus at "unix:path=/run/dbus/system_bus_socket" (dial unix /run/dbus/system_bus_socket: connect: no such file or directory)`),
			wantCode: cli.ExitFailed, want: "caplancectl: no system bus at \"unix:path=/run/dbus/system_bus_socket\" (dial unix /run/dbus/system_bus_socket: connect: no such file or directory)\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := &App{Dial: func(string) (Conn, error) {
				if tt.dialErr != nil {
					return nil, tt.dialErr
				}
				return &failingConn{err: tt.err}, nil
			}}
			var stdout, stderr bytes.Buffer
			code := app.Execute(tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d", code, tt.wantCode)
			}
			if diff := cmp.Diff(tt.want, stderr.String()); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
			if stdout.String() != "" {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

// caplanced's Unchanged is success: drain of a drained backend, undrain of
// an active one, add-backend of one added as it is exit 0 and say so.
func TestUnchanged(t *testing.T) {
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"drain", "web2"}, `backend "web2": already drained`},
		{[]string{"undrain", "web1"}, `backend "web1": already undrained (not drained)`},
		{[]string{"add-backend", "web8", "10.0.1.18"}, `backend "web8": already added, with that service, address, weight and check`},
	} {
		app := &App{Dial: func(string) (Conn, error) {
			return &failingConn{err: dbusError(dbusname.ErrorPrefix+"Unchanged", tt.msg)}, nil
		}}
		var stdout, stderr bytes.Buffer
		if code := app.Execute(tt.args, &stdout, &stderr); code != cli.ExitOK || stdout.String() != tt.msg+"\n" || stderr.Len() > 0 {
			t.Errorf("%v: exit code %d, stdout %q, stderr %q; want 0, %q, none", tt.args, code, stdout.String(), stderr.String(), tt.msg+"\n")
		}
	}
}

// A backend named with --service must be in it, and a service named must
// exist: checked before anything changes, with the daemon's words.
func TestNotFoundLocally(t *testing.T) {
	const mgr = "org.caplance.Caplance1 /org/caplance/Caplance1 org.caplance.Caplance1.Manager."
	replies := map[string]fakeReply{
		"org.caplance.Caplance1.Manager.ListBackends": {body: []any{backendRows}},
		"org.caplance.Caplance1.Manager.ListServices": {body: []any{serviceRows}},
	}
	tests := []struct {
		args      []string
		replies   map[string]fakeReply // besides replies
		want      string
		wantCalls []string
	}{
		{args: []string{"drain", "web2", "--service", "dns"}, want: `backend "web2" is in service "web", not in "dns"`, wantCalls: []string{mgr + "ListBackends"}},
		{args: []string{"undrain", "--service", "nope", "web2"}, want: `backend "web2" is in service "web", not in "nope"`, wantCalls: []string{mgr + "ListBackends"}},
		{args: []string{"remove-backend", "dns1", "--service", "web"}, want: `backend "dns1" is in service "dns", not in "web"`, wantCalls: []string{mgr + "ListBackends"}},
		{args: []string{"set-weight", "web9", "5", "--service", "web"}, want: `backend "web9": no such backend`, wantCalls: []string{mgr + "ListBackends"}},
		{args: []string{"show", "web2", "--service", "dns"}, want: `backend "web2" is in service "web", not in "dns"`, wantCalls: []string{mgr + "ListBackends"}},
		{args: []string{"show", "web9"}, want: `backend "web9": no such backend`, wantCalls: []string{mgr + "ListBackends"}},
		{args: []string{"show", "web2"}, replies: map[string]fakeReply{"org.freedesktop.DBus.Properties.GetAll": {
			err: dbusError("org.freedesktop.DBus.Error.UnknownObject", "Unknown object '/org/caplance/Caplance1/service/web/backend/web2'.")}},
			want: `backend "web2": no such backend`, wantCalls: []string{mgr + "ListBackends",
				"org.caplance.Caplance1 /org/caplance/Caplance1/service/web/backend/web2 org.freedesktop.DBus.Properties.GetAll s(org.caplance.Caplance1.Backend)"}},
		{args: []string{"list", "--service", "nope"}, want: `service "nope": no such service`, wantCalls: []string{mgr + "ListServices", mgr + "ListBackends"}},
		{args: []string{"list", "--json", "--service", "web2"}, want: `service "web2": no such service`, wantCalls: []string{mgr + "ListServices", mgr + "ListBackends"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			f := &fakeConn{replies: maps.Clone(replies)}
			maps.Copy(f.replies, tt.replies)
			code, stdout, stderr := run(t, f, tt.args...)
			if code != cli.ExitFailed || stdout != "" {
				t.Errorf("exit code %d, stdout %q; want %d and nothing", code, stdout, cli.ExitFailed)
			}
			if diff := cmp.Diff("caplancectl: "+tt.want+"\n", stderr); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantCalls, f.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}

// DialBus: a --bus that is no address is a usage error; a bus that is not
// there says so and is no *NotRunningError (exit 3 is for a working bus
// without caplanced, see TestOverBus).
func TestDialBusFailure(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		bus, systemEnv string
		wantUsage      bool
		want           string
	}{
		{bus: "bogus", wantUsage: true, want: `--bus "bogus": not a D-Bus address: want system, session or an address such as unix:path=/run/dbus/system_bus_socket`},
		{bus: "unix:/x", wantUsage: true, want: `--bus "unix:/x": not a D-Bus address: "/x" is not key=value: want system`},
		{bus: "unix:foo=1", wantUsage: true, want: `--bus "unix:foo=1": not a D-Bus address: a unix address needs path= or abstract=`},
		{bus: "unix:path=" + dir + "/none", want: `no bus at "unix:path=` + dir + `/none" (dial unix ` + dir + `/none: connect: no such file or directory)`},
		{bus: "system", systemEnv: "unix:path=" + dir + "/sys", want: `no system bus at "unix:path=` + dir + `/sys" (dial unix ` + dir + `/sys: connect: no such file or directory)`},
	}
	for _, tt := range tests {
		t.Run(tt.bus, func(t *testing.T) {
			if tt.systemEnv != "" {
				t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", tt.systemEnv)
			}
			_, err := DialBus(tt.bus)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("DialBus(%q): %v, want %q…", tt.bus, err, tt.want)
			}
			if got := errors.As(err, new(cli.UsageError)); got != tt.wantUsage {
				t.Errorf("DialBus(%q): a usage error: %v, want %v", tt.bus, got, tt.wantUsage)
			}
			if errors.As(err, new(*NotRunningError)) {
				t.Errorf("DialBus(%q): %v is a *NotRunningError (exit 3)", tt.bus, err)
			}
		})
	}
}
