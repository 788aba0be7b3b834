package ctl

import (
	"regexp"
	"strings"
	"testing"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/google/go-cmp/cmp"
)

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string // the first line of stderr after "caplancectl: "
	}{
		{nil, "missing command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"--bogus", "status"}, "unknown flag: --bogus"},
		{[]string{"stauts"}, `unknown command "stauts" (did you mean stats or status?)`},
		{[]string{"drian", "web1"}, `unknown command "drian" (did you mean drain?)`},
		{[]string{"status", "--bus"}, "status: flag needs an argument: --bus"},
		{[]string{"status", "x"}, `status: unexpected argument "x"`},
		{[]string{"status", "--yaml"}, "status: unknown flag: --yaml"},
		{[]string{"list", "x"}, `list: unexpected argument "x"`},
		{[]string{"list", "--jsn"}, "list: unknown flag: --jsn"},
		{[]string{"list", "--json=maybe"}, `list: --json "maybe": want true or false`},
		{[]string{"show"}, "show: missing NAME"},
		{[]string{"show", "a", "b"}, `show: unexpected argument "b"`},
		{[]string{"show", "--all", "a"}, "show: unknown flag: --all"},
		{[]string{"add-backend"}, "add-backend: missing NAME"},
		{[]string{"add-backend", "web1"}, "add-backend: missing ADDRESS"},
		{[]string{"add-backend", "web1", "10.0.1.1", "x"}, `add-backend: unexpected argument "x"`},
		{[]string{"add-backend", "web1", "10.0.1.1", "--weight", "x"}, `add-backend: weight "x": not a number`},
		{[]string{"add-backend", "web1", "10.0.1.1", "--weight=-1"}, `add-backend: weight "-1": must not be negative`},
		{[]string{"add-backend", "web1", "10.0.1.1", "--weight", "4294967296"}, `add-backend: weight "4294967296": out of range`},
		{[]string{"add-backend", "web1", "10.0.1.1", "--weight"}, "add-backend: flag needs an argument: --weight"},
		{[]string{"add-backend", "web1", "10.0.1.1", "--check"}, "add-backend: flag needs an argument: --check"},
		{[]string{"add-backend", "web1", "10.0.1.1", "--runtime=sometimes"}, `add-backend: --runtime "sometimes": want true or false`},
		{[]string{"add-backend", "--persistent", "web1", "10.0.1.1"}, "add-backend: unknown flag: --persistent"},
		{[]string{"remove-backend"}, "remove-backend: missing NAME"},
		{[]string{"remove-backend", "a", "b"}, `remove-backend: unexpected argument "b"`},
		{[]string{"remove-backend", "-f", "a"}, "remove-backend: unknown shorthand flag: 'f' in -f"},
		{[]string{"set-weight"}, "set-weight: missing NAME"},
		{[]string{"set-weight", "web1"}, "set-weight: missing WEIGHT"},
		{[]string{"set-weight", "web1", "x"}, `set-weight: weight "x": not a number`},
		{[]string{"set-weight", "web1", "1.5"}, `set-weight: weight "1.5": not a number`},
		{[]string{"set-weight", "web1", "-3"}, `set-weight: "-3": negative numbers are not accepted (no flag is called that)`},
		{[]string{"set-weight", "web1", "99999999999"}, `set-weight: weight "99999999999": out of range`},
		{[]string{"set-weight", "web1", "5", "6"}, `set-weight: unexpected argument "6"`},
		{[]string{"set-weight", "--force", "web1", "5"}, "set-weight: unknown flag: --force"},
		{[]string{"drain"}, "drain: missing NAME"},
		{[]string{"drain", "a", "b"}, `drain: unexpected argument "b"`},
		{[]string{"drain", "--now", "a"}, "drain: unknown flag: --now"},
		{[]string{"undrain"}, "undrain: missing NAME"},
		{[]string{"undrain", "a", "b"}, `undrain: unexpected argument "b"`},
		{[]string{"undrain", "--now", "a"}, "undrain: unknown flag: --now"},
		{[]string{"reload", "now"}, `reload: unexpected argument "now"`},
		{[]string{"maintenance"}, "maintenance: missing on|off"},
		{[]string{"maintenance", "maybe"}, `maintenance: "maybe": want on or off`},
		{[]string{"maintenance", "ON"}, `maintenance: "ON": want on or off`},
		{[]string{"maintenance", "on", "now"}, `maintenance: unexpected argument "now"`},
		{[]string{"reload", "--force"}, "reload: unknown flag: --force"},
		{[]string{"stats", "drops"}, `stats: unexpected argument "drops"`},
		{[]string{"stats", "--yaml"}, "stats: unknown flag: --yaml"},
		{[]string{"watch", "web1"}, `watch: unexpected argument "web1"`},
		{[]string{"watch", "--since", "1h"}, "watch: unknown flag: --since"},
		{[]string{"list", "--service"}, "list: flag needs an argument: --service"},
		{[]string{"list", "web"}, `list: unexpected argument "web"`},
		{[]string{"show", "web1", "--service"}, "show: flag needs an argument: --service"},
		{[]string{"drain", "--service"}, "drain: flag needs an argument: --service"},
		{[]string{"add-backend", "web1", "10.0.1.1", "--service"}, "add-backend: flag needs an argument: --service"},
		{[]string{"set-weight", "web1", "x", "--service", "web"}, `set-weight: weight "x": not a number`},
		{[]string{"services", "web"}, `services: unexpected argument "web"`},
		{[]string{"services", "--yaml"}, "services: unknown flag: --yaml"},
		{[]string{"list-services", "web"}, `list-services: unexpected argument "web"`},
		{[]string{"show-service"}, "show-service: missing NAME"},
		{[]string{"show-service", "a", "b"}, `show-service: unexpected argument "b"`},
		{[]string{"show-service", "--all", "a"}, "show-service: unknown flag: --all"},
		{[]string{"stats", "--rate", "--interval", "5"}, `stats: --interval "5": not a duration: want a number with a unit, such as 5s, 1m30s or 500ms`},
		{[]string{"stats", "--rate", "--interval", "1m"}, "stats: --interval 1m0s: want more than 0 and at most 20s"},
		{[]string{"stats", "--interval", "0s"}, "stats: --interval 0s: want more than 0 and at most 20s"},
		{[]string{"add-service"}, "add-service: missing NAME"},
		{[]string{"add-service", "web"}, "add-service: missing --vip: a service needs at least one VIP"},
		{[]string{"add-service", "web", "--port", "80"}, "add-service: missing --vip: a service needs at least one VIP"},
		{[]string{"add-service", "web", "10.0.0.100"}, `add-service: unexpected argument "10.0.0.100"`},
		{[]string{"add-service", "web", "--vip"}, "add-service: flag needs an argument: --vip"},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--weight", "5"}, "add-service: unknown flag: --weight"},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--protocol", "tcp"}, "add-service: unknown flag: --protocol"},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--table-size", "x"}, `add-service: --table-size "x": not a number`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--table-size", "65537.0"}, `add-service: --table-size "65537.0": not a number`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--table-size=-7"}, `add-service: --table-size "-7": must not be negative`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--table-size", "4294967296"}, `add-service: --table-size "4294967296": out of range`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--table-size", strings.Repeat("9", 100)},
			`add-service: --table-size "` + strings.Repeat("9", 64) + `"…: out of range`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--runtime=maybe"}, `add-service: --runtime "maybe": want true or false`},
		{[]string{"change-service"}, "change-service: missing NAME"},
		{[]string{"change-service", "web"}, "change-service: nothing to change: give at least one of --vip, --port, --proto, --hash, --table-size, --check"},
		{[]string{"change-service", "web", "--runtime"}, "change-service: unknown flag: --runtime"},
		{[]string{"change-service", "web", "--table-size", ""}, `change-service: --table-size "": not a number`},
		{[]string{"change-service", "web", "dns", "--hash", "5-tuple"}, `change-service: unexpected argument "dns"`},
		{[]string{"remove-service"}, "remove-service: missing NAME"},
		{[]string{"remove-service", "a", "b"}, `remove-service: unexpected argument "b"`},
		{[]string{"remove-service", "--force", "a"}, "remove-service: unknown flag: --force"},
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
			if diff := cmp.Diff(want, first); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

// A port list, protocol or hash caplanced would refuse is a usage error
// from the same parser (package config), before any call; the messages
// are config's, so only their start and the value they name are checked.
func TestServiceValueErrors(t *testing.T) {
	tests := []struct {
		args      []string
		wantStart string // of stderr's first line
		wantValue string // named in it
	}{
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--port", "80,x"}, "add-service: --port: ", `"x"`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--port", "80-70"}, "add-service: --port: ", `80-70`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--port", "0"}, "add-service: --port: ", `port 0`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--port", "65536"}, "add-service: --port: ", `port 65536`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--port", ""}, "add-service: --port: ", `empty list`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--proto", "sctp"}, "add-service: --proto: ", `"sctp"`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--proto", "TCP"}, "add-service: --proto: ", `"TCP"`},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--hash", "rr"}, "add-service: --hash: ", `"rr"`},
		{[]string{"change-service", "web", "--port", "http"}, "change-service: --port: ", `"http"`},
		{[]string{"change-service", "web", "--proto", "udp+tcp"}, "change-service: --proto: ", `"udp+tcp"`},
		{[]string{"change-service", "web", "--hash", "source-port"}, "change-service: --hash: ", `"source-port"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := run(t, nil, tt.args...) // no bus: run fails the test if dialled
			first, _, _ := strings.Cut(stderr, "\n")
			if code != cli.ExitUsage || stdout != "" || !strings.HasPrefix(first, "caplancectl: "+tt.wantStart) || !strings.Contains(first, tt.wantValue) {
				t.Errorf("exit code %d, stdout %q, stderr %q; want %d and %q… naming %s", code, stdout, stderr, cli.ExitUsage, tt.wantStart, tt.wantValue)
			}
		})
	}
}

// Every command has a usage error above: the table cannot fall behind.
func TestUsageErrorsCoverEveryCommand(t *testing.T) {
	for _, c := range commands {
		for _, name := range append([]string{c.name}, c.aliases...) {
			code, _, _ := run(t, nil, name, "--no-such-flag")
			if code != cli.ExitUsage {
				t.Errorf("%s --no-such-flag: exit code %d, want %d", name, code, cli.ExitUsage)
			}
		}
	}
}

// synopsisFlag is a flag and its value's name in a synopsis.
var synopsisFlag = regexp.MustCompile(`--[a-z-]+( [A-Z]+)?`)

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
			// A flag is spelled in the flags' list as in the synopsis.
			for _, f := range synopsisFlag.FindAllString(c.synopsis, -1) {
				if !strings.Contains(stdout, "  "+f+"  ") && !strings.Contains(stdout, "  "+f+"\n") {
					t.Errorf("the synopsis has %q, the flags' list does not:\n%s", f, stdout)
				}
			}
			if code, helpOut, _ := run(t, nil, "help", c.name); code != cli.ExitOK || helpOut != stdout {
				t.Errorf("help %s: exit code %d, output not --help's:\n%s", c.name, code, helpOut)
			}
		})
	}
}

// TestCalls checks what each command sends: object, method and the wire
// types of the arguments.
func TestCalls(t *testing.T) {
	const mgr = "org.caplance.Caplance1 /org/caplance/Caplance1 org.caplance.Caplance1.Manager."
	const getAllManager = "org.caplance.Caplance1 /org/caplance/Caplance1 org.freedesktop.DBus.Properties.GetAll s(org.caplance.Caplance1.Manager)"
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"add-backend", "web1", "10.0.1.1"}, []string{mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{}"}},
		{[]string{"add-backend", "web1", "10.0.1.1", "--weight", "50"}, []string{mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{weight:u=50}"}},
		{[]string{"add-backend", "--weight=0", "web1", "10.0.1.1"}, []string{mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{weight:u=0}"}},
		{[]string{"add-backend", "web1", "--check", "tcp://10.0.1.1:80", "10.0.1.1"}, []string{mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{check:s=tcp://10.0.1.1:80}"}},
		{[]string{"add-backend", "web1", "10.0.1.1", "--check="}, []string{mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{check:s=}"}},
		{[]string{"add-backend", "web1", "10.0.1.1", "--runtime"}, []string{mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{runtime:b=true}"}},
		{[]string{"add-backend", "web1", "10.0.1.1", "--runtime=false"}, []string{mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{runtime:b=false}"}},
		{[]string{"add-backend", "--runtime", "--weight", "7", "--check", "http://10.0.1.1/healthz", "web1", "10.0.1.1"},
			[]string{mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{check:s=http://10.0.1.1/healthz,runtime:b=true,weight:u=7}"}},
		{[]string{"add-backend", "--", "-odd", "10.0.1.1"}, []string{mgr + "AddBackend s(-odd) s(10.0.1.1) a{sv}{}"}},
		{[]string{"add-backend", "web 1", "not-an-address"}, []string{mgr + "AddBackend s(web 1) s(not-an-address) a{sv}{}"}},
		{[]string{"remove-backend", "web1"}, []string{mgr + "RemoveBackend s(web1)"}},
		{[]string{"set-weight", "web1", "250"}, []string{mgr + "SetWeight s(web1) u(250)"}},
		{[]string{"set-weight", "web1", "99999"}, []string{mgr + "SetWeight s(web1) u(99999)"}}, // caplanced's range to refuse
		{[]string{"drain", "web1"}, []string{mgr + "Drain s(web1)"}},
		{[]string{"undrain", "web1"}, []string{mgr + "Undrain s(web1)"}},
		{[]string{"reload"}, []string{mgr + "Reload"}},
		// The state first: a balancer already in it is not called.
		{[]string{"maintenance", "on"}, []string{getAllManager, mgr + "SetMaintenance b(true)"}},
		{[]string{"maintenance", "off"}, []string{getAllManager, mgr + "SetMaintenance b(false)"}},
		{[]string{"--bus", "session", "reload"}, []string{mgr + "Reload"}},
		{[]string{"add-backend", "web1", "10.0.1.1", "--service", "web"}, []string{mgr + "AddBackend s(web1) s(10.0.1.1) a{sv}{service:s=web}"}},
		{[]string{"add-backend", "--service=dns.v2", "--weight", "3", "dns9", "10.0.2.9"}, []string{mgr + "AddBackend s(dns9) s(10.0.2.9) a{sv}{service:s=dns.v2,weight:u=3}"}},
		// A backend's object is beneath its service's: show finds the service first.
		{[]string{"show", "web-1"}, []string{mgr + "ListBackends",
			"org.caplance.Caplance1 /org/caplance/Caplance1/service/web/backend/web_2d1 org.freedesktop.DBus.Properties.GetAll s(org.caplance.Caplance1.Backend)"}},
		{[]string{"show", "web-1", "--service", "web"}, []string{mgr + "ListBackends",
			"org.caplance.Caplance1 /org/caplance/Caplance1/service/web/backend/web_2d1 org.freedesktop.DBus.Properties.GetAll s(org.caplance.Caplance1.Backend)"}},
		// --service of a backend verb is checked against the backend's.
		{[]string{"drain", "web2", "--service", "web"}, []string{mgr + "ListBackends", mgr + "Drain s(web2)"}},
		{[]string{"undrain", "--service", "dns", "dns1"}, []string{mgr + "ListBackends", mgr + "Undrain s(dns1)"}},
		{[]string{"remove-backend", "web2", "--service=web"}, []string{mgr + "ListBackends", mgr + "RemoveBackend s(web2)"}},
		{[]string{"set-weight", "web-1", "5", "--service", "web"}, []string{mgr + "ListBackends", mgr + "SetWeight s(web-1) u(5)"}},
		{[]string{"add-service", "web", "--vip", "10.0.0.100"}, []string{mgr + "AddService s(web) a{sv}{vips:as=[10.0.0.100]}"}},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--vip=10.0.0.101", "--port", "80,443,8000-8099", "--proto", "tcp",
			"--hash", "source-ip", "--table-size", "251", "--check", "http://:80/healthz", "--runtime"},
			[]string{mgr + "AddService s(web) a{sv}{check:s=http://:80/healthz,hash:s=source-ip,ports:s=80,443,8000-8099,protocols:s=tcp,runtime:b=true,table_size:u=251,vips:as=[10.0.0.100 10.0.0.101]}"}},
		{[]string{"add-service", "--proto", "tcp+udp", "--port", "all", "--hash", "source-ip-port", "dns", "--vip", "10.0.0.53"},
			[]string{mgr + "AddService s(dns) a{sv}{hash:s=source-ip-port,ports:s=all,protocols:s=tcp+udp,vips:as=[10.0.0.53]}"}},
		{[]string{"add-service", "web", "--vip", "10.0.0.100", "--runtime=false", "--check="}, []string{mgr + "AddService s(web) a{sv}{check:s=,runtime:b=false,vips:as=[10.0.0.100]}"}},
		// Addresses are caplanced's to check, as add-backend's.
		{[]string{"add-service", "web", "--vip", "not-an-address"}, []string{mgr + "AddService s(web) a{sv}{vips:as=[not-an-address]}"}},
		{[]string{"change-service", "web", "--port", "443"}, []string{mgr + "ChangeService s(web) a{sv}{ports:s=443}"}},
		{[]string{"change-service", "web", "--vip", "10.0.0.102", "--vip", "10.0.0.103", "--hash", "5-tuple", "--table-size", "65537", "--proto", "udp", "--check", ""},
			[]string{mgr + "ChangeService s(web) a{sv}{check:s=,hash:s=5-tuple,protocols:s=udp,table_size:u=65537,vips:as=[10.0.0.102 10.0.0.103]}"}},
		{[]string{"remove-service", "web"}, []string{mgr + "RemoveService s(web)"}},
		{[]string{"services"}, []string{mgr + "ListServices"}},
		{[]string{"list-services", "--json"}, []string{mgr + "ListServices"}},
		{[]string{"list", "--service", "web"}, []string{mgr + "ListServices", mgr + "ListBackends"}},
		{[]string{"list"}, []string{mgr + "ListServices", mgr + "ListBackends"}},
		{[]string{"list", "--json"}, []string{mgr + "ListBackends"}},
		{[]string{"list", "--json", "--service", "web"}, []string{mgr + "ListServices", mgr + "ListBackends"}},
		{[]string{"show-service", "dns.v2"}, []string{
			"org.caplance.Caplance1 /org/caplance/Caplance1/service/dns_2ev2 org.freedesktop.DBus.Properties.GetAll s(org.caplance.Caplance1.Service)",
			mgr + "ListBackends"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			f := &fakeConn{replies: map[string]fakeReply{
				"org.caplance.Caplance1.Manager.AddBackend":     {body: []any{dbusname.BackendPath("web", "web1")}},
				"org.caplance.Caplance1.Manager.SetWeight":      {},
				"org.caplance.Caplance1.Manager.Drain":          {},
				"org.caplance.Caplance1.Manager.Undrain":        {},
				"org.caplance.Caplance1.Manager.Reload":         {},
				"org.caplance.Caplance1.Manager.SetMaintenance": {},
				"org.caplance.Caplance1.Manager.RemoveBackend":  {},
				"org.caplance.Caplance1.Manager.AddService":     {body: []any{dbusname.ServicePath("web")}},
				"org.caplance.Caplance1.Manager.ChangeService":  {},
				"org.caplance.Caplance1.Manager.RemoveService":  {},
				"org.caplance.Caplance1.Manager.ListServices":   {body: []any{serviceRows}},
				"org.caplance.Caplance1.Manager.ListBackends":   {body: []any{backendRows}},
				"org.freedesktop.DBus.Properties.GetAll":        {body: []any{web1Props}},
			}}
			code, _, stderr := run(t, f, tt.args...)
			if code != cli.ExitOK || stderr != "" {
				t.Errorf("exit code %d, stderr %q", code, stderr)
			}
			if diff := cmp.Diff(tt.want, f.calls); diff != "" {
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
		// --bus anywhere: before the command, after it, as --bus=.
		for _, args := range [][]string{{"--bus", bus, "reload"}, {"reload", "--bus", bus}, {"reload", "--bus=" + bus}} {
			if bus == "system" {
				args = []string{"reload"} // the default
			}
			var out, errb strings.Builder
			if code := app.Execute(args, &out, &errb); code != 0 || got != bus {
				t.Errorf("%v: exit code %d, dialled %q, want %q (stderr %q)", args, code, got, bus, errb.String())
			}
		}
	}
}
