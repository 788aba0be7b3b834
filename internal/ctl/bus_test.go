package ctl

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
)

// Backend and Service must stay the elements of ListBackends'
// a(sssussstttt) and ListServices' a(sa{ss}ssussuttt).
func TestRowSignatures(t *testing.T) {
	if got := dbus.SignatureOf([]Backend{}).String(); got != "a(sssussstttt)" {
		t.Errorf("signature of []Backend = %s, want a(sssussstttt)", got)
	}
	if got := dbus.SignatureOf([]Service{}).String(); got != "a(sa{ss}ssussuttt)" {
		t.Errorf("signature of []Service = %s, want a(sa{ss}ssussuttt)", got)
	}
}

// stubDaemon owns BusName and answers like caplanced with fixed data: just
// enough to check the wire types and the match rules, not caplanced.
type stubDaemon struct {
	conn *dbus.Conn
	mu   sync.Mutex
	got  []string
}

func (s *stubDaemon) record(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, fmt.Sprintf(format, args...))
}

func (s *stubDaemon) AddBackend(name, address string, opts map[string]dbus.Variant) (dbus.ObjectPath, *dbus.Error) {
	s.record("AddBackend %s %s %s", name, address, describeValue(opts))
	service := "web"
	if v, ok := opts["service"]; ok {
		service, _ = v.Value().(string)
	}
	return dbusname.BackendPath(service, name), nil
}

func (s *stubDaemon) AddService(name string, opts map[string]dbus.Variant) (dbus.ObjectPath, *dbus.Error) {
	s.record("AddService %s %s", name, describeValue(opts))
	return dbusname.ServicePath(name), nil
}

func (s *stubDaemon) ChangeService(name string, opts map[string]dbus.Variant) *dbus.Error {
	s.record("ChangeService %s %s", name, describeValue(opts))
	return nil
}

func (s *stubDaemon) RemoveService(name string) *dbus.Error {
	if name != "web" {
		return dbus.NewError(dbusname.ErrorPrefix+"NotFound", []any{fmt.Sprintf("service %q: no such service", name)})
	}
	s.record("RemoveService %s", name)
	return nil
}

func (s *stubDaemon) ListServices() ([]Service, *dbus.Error) {
	return []Service{{"web", map[string]string{"10.0.0.100": "80,443"}, "tcp", "source-ip", 251, "", "runtime", 1, 3400, 567890, 12}}, nil
}

func (s *stubDaemon) Drain(name string) *dbus.Error {
	return dbus.NewError(dbusname.ErrorPrefix+"NotFound", []any{fmt.Sprintf("backend %q: no such backend", name)})
}

func (s *stubDaemon) SetMaintenance(on bool) *dbus.Error {
	s.record("SetMaintenance %v", on)
	return nil
}

func (s *stubDaemon) SetWeight(name string, weight uint32) *dbus.Error {
	s.record("SetWeight %s %d", name, weight)
	return nil
}

func (s *stubDaemon) ListBackends() ([]Backend, *dbus.Error) {
	return []Backend{{"web-1", "web", "10.0.1.1", 100, "active", "up", "", 12, 3, 3400, 567890}}, nil
}

func (s *stubDaemon) GetStats() (map[string]uint64, *dbus.Error) {
	return map[string]uint64{"received": 7, "drop.no_backend": 1, "service.web.packets": 6, "service.web.drops": 1}, nil
}

// stubProperties is org.freedesktop.DBus.Properties of one object.
type stubProperties map[string]dbus.Variant

func (p stubProperties) GetAll(string) (map[string]dbus.Variant, *dbus.Error) { return p, nil }

func startStub(t *testing.T, bus *dbustest.Bus) *stubDaemon {
	t.Helper()
	conn := bus.Connect(t)
	s := &stubDaemon{conn: conn}
	for _, export := range []struct {
		v     any
		path  dbus.ObjectPath
		iface string
	}{
		{s, dbusname.ManagerPath, dbusname.ManagerIface},
		{stubProperties(managerProps), dbusname.ManagerPath, propertiesIface},
		{stubProperties(webProps), dbusname.ServicePath("web"), propertiesIface},
		{stubProperties(web1Props), dbusname.BackendPath("web", "web-1"), propertiesIface},
	} {
		if err := conn.Export(export.v, export.path, export.iface); err != nil {
			t.Fatal(err)
		}
	}
	if reply, err := conn.RequestName(dbusname.BusName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName: %v %v", reply, err)
	}
	return s
}

// syncBuffer is a bytes.Buffer for a writer and a reader in two goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestOverBus runs caplancectl over a private system bus with the shipped
// policy against a stub daemon: the real DialBus, wire types, errors, the
// policy's refusal and the match rules.
func TestOverBus(t *testing.T) {
	bus := dbustest.Start(t)
	addr := bus.Address
	ctl := func(args ...string) (int, string, string) {
		var stdout, stderr syncBuffer
		code := (&App{}).Execute(append([]string{"--bus", addr}, args...), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	// Nobody owns the name yet.
	for _, args := range [][]string{{"status"}, {"list"}, {"show", "web-1"}, {"drain", "web1"}, {"watch"}} {
		code, _, stderr := ctl(args...)
		if code != ExitNotRunning || !strings.Contains(stderr, "systemctl start caplanced") {
			t.Errorf("%v without caplanced: exit code %d, stderr %q", args, code, stderr)
		}
	}

	stub := startStub(t, bus)
	// TAB asks the real bus for the names, through the shipped policy.
	for _, tt := range []struct {
		words []string
		want  []string
	}{
		{[]string{"drain", ""}, []string{"web-1"}},
		{[]string{"list", "--service", ""}, []string{"web"}},
		{[]string{"show-service", ""}, []string{"web"}},
	} {
		if got, _ := complete(t, &App{}, append([]string{"--bus", addr}, tt.words...)...); !cmp.Equal(tt.want, got) {
			t.Errorf("caplancectl %q<TAB> over the bus: offered %q, want %q", tt.words, got, tt.want)
		}
	}
	tests := []struct {
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{args: []string{"list"}, wantStdout: "SERVICE  PROTO  HASH       TABLE  VIPS\n" +
			"  -> NAME   ADDRESS   WEIGHT  ADMIN   HEALTH  ACTIVE  INACTIVE  PACKETS  BYTES   REASON\n" +
			"web      tcp    source-ip  251    10.0.0.100:80,443\n" +
			"  -> web-1  10.0.1.1  100     active  up      12      3         3400     567890  -\n"},
		{args: []string{"list", "--service", "web", "--json"}, wantStdout: "[\n  {\n    \"name\": \"web-1\",\n    \"service\": \"web\",\n"},
		{args: []string{"services"}, wantStdout: "NAME  PROTO  HASH       TABLE  BACKENDS  ACTIVE  PACKETS  BYTES   SOURCE   CHECK  VIPS\n" +
			"web   tcp    source-ip  251    1         12      3400     567890  runtime  -      10.0.0.100:80,443\n"},
		{args: []string{"status", "--json"}, wantStdout: "{\n  \"api_version\": 2,\n"},
		{args: []string{"show", "web-1", "--json"}, wantStdout: "{\n  \"active_flows\": 12,\n"},
		{args: []string{"show-service", "web"}, wantStdout: "Name:          web\nVIPs:          10.0.0.100:80,443,8000-8099 10.0.0.101:80,443\n"},
		{args: []string{"show-service", "dns"}, wantCode: cli.ExitFailed, wantStderr: "caplancectl: service \"dns\": no such service\n"},
		{args: []string{"stats"}, wantStdout: "drop.no_backend 1\nreceived 7\n\nSERVICE  PACKETS  DROPS\nweb      6        1\n"},
		{args: []string{"show", "web-1"}, wantStdout: "Name:          web-1\nService:       web\n"},
		{args: []string{"show", "web-1", "--service", "dns"}, wantCode: cli.ExitFailed, wantStderr: "caplancectl: backend \"web-1\" is in service \"web\", not in \"dns\"\n"},
		{args: []string{"add-service", "dns", "--vip", "10.0.0.53", "--port", "53", "--proto", "udp", "--hash", "source-ip", "--table-size", "251", "--check", "udp://:53", "--runtime"}},
		{args: []string{"change-service", "web", "--vip", "10.0.0.100", "--vip", "10.0.0.101", "--port", "all"}},
		{args: []string{"remove-service", "web"}},
		{args: []string{"remove-service", "dns"}, wantCode: cli.ExitFailed, wantStderr: "caplancectl: service \"dns\": no such service\n"},
		{args: []string{"set-weight", "web-1", "8", "--service", "dns"}, wantCode: cli.ExitFailed, wantStderr: "caplancectl: backend \"web-1\" is in service \"web\", not in \"dns\"\n"},
		{args: []string{"add-backend", "dns1", "10.0.2.1", "--service", "dns"}},
		{args: []string{"show", "web9"}, wantCode: cli.ExitFailed, wantStderr: "caplancectl: backend \"web9\": no such backend\n"},
		{args: []string{"status"}, wantStdout: "Version:    1.2.3\nAPIVersion: 2\n"},
		{args: []string{"add-backend", "web2", "10.0.1.2", "--weight", "5", "--runtime"}},
		{args: []string{"set-weight", "web2", "7"}},
		{args: []string{"maintenance", "on"}},
		{args: []string{"drain", "web9"}, wantCode: cli.ExitFailed, wantStderr: "caplancectl: backend \"web9\": no such backend\n"},
		{args: []string{"reload"}, wantCode: cli.ExitFailed, wantStderr: "caplancectl: Unknown / invalid method 'Reload'\n"},
	}
	for _, tt := range tests {
		code, stdout, stderr := ctl(tt.args...)
		if code != tt.wantCode || !strings.HasPrefix(stdout, tt.wantStdout) || (tt.wantStdout == "") != (stdout == "") || stderr != tt.wantStderr {
			t.Errorf("%v: exit code %d, stdout %q, stderr %q; want %d, %q…, %q", tt.args, code, stdout, stderr, tt.wantCode, tt.wantStdout, tt.wantStderr)
		}
	}
	// Reading is for everyone, changing is not. (The table of list and
	// services call ListServices, which the policy opens to everyone with
	// the D-Bus side of services.)
	nobody := &App{Dial: func(string) (Conn, error) {
		c, err := bus.DialAs(dbustest.Nobody(t))
		if err != nil {
			return nil, err
		}
		return &busConn{c: c}, nil
	}}
	var stdout, stderr syncBuffer
	for _, args := range [][]string{{"list", "--json"}, {"show", "web-1"}, {"stats"}} {
		if code := nobody.Execute(args, &stdout, &stderr); code != 0 || stderr.String() != "" {
			t.Errorf("%v as nobody: exit code %d, stderr %q", args, code, stderr.String())
		}
	}
	code := nobody.Execute([]string{"set-weight", "web1", "3"}, &stdout, &stderr)
	wantDenied := "caplancectl: SetWeight: refused by the D-Bus policy (run as root or a member of caplance-admin)\n"
	if code != cli.ExitFailed || stderr.String() != wantDenied {
		t.Errorf("set-weight as nobody: exit code %d, stderr %q; want %d, %q", code, stderr.String(), cli.ExitFailed, wantDenied)
	}
	var mstderr syncBuffer
	code = nobody.Execute([]string{"maintenance", "off"}, &stdout, &mstderr)
	wantDenied = "caplancectl: SetMaintenance: refused by the D-Bus policy (run as root or a member of caplance-admin)\n"
	if code != cli.ExitFailed || mstderr.String() != wantDenied {
		t.Errorf("maintenance off as nobody: exit code %d, stderr %q; want %d, %q", code, mstderr.String(), cli.ExitFailed, wantDenied)
	}

	want := []string{
		"AddService dns a{sv}{check:s=udp://:53,hash:s=source-ip,ports:s=53,protocols:s=udp,runtime:b=true,table_size:u=251,vips:as=[10.0.0.53]}",
		"ChangeService web a{sv}{ports:s=all,vips:as=[10.0.0.100 10.0.0.101]}",
		"RemoveService web",
		"AddBackend dns1 10.0.2.1 a{sv}{service:s=dns}",
		"AddBackend web2 10.0.1.2 a{sv}{runtime:b=true,weight:u=5}",
		"SetWeight web2 7",
		"SetMaintenance true",
	}
	if diff := cmp.Diff(want, stub.got); diff != "" {
		t.Errorf("calls received (-want +got):\n%s", diff)
	}

	// watch, ended by closing its connection.
	var (
		wout, werr syncBuffer
		mu         sync.Mutex
		watchConn  Conn
		done       = make(chan int, 1)
	)
	app := &App{Dial: func(bus string) (Conn, error) {
		c, err := DialBus(bus)
		mu.Lock()
		defer mu.Unlock()
		watchConn = c
		return c, err
	}}
	go func() { done <- app.Execute([]string{"--bus", addr, "watch"}, &wout, &werr) }()
	waitFor := func(what string, emit func()) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(wout.String(), what); {
			if time.Now().After(deadline) {
				t.Fatalf("watch did not print %q; stdout %q, stderr %q", what, wout.String(), werr.String())
			}
			if emit != nil {
				emit()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	emit := func(path dbus.ObjectPath, name string, body ...any) {
		if err := stub.conn.Emit(path, name, body...); err != nil {
			t.Fatal(err)
		}
	}
	// Until watch has subscribed, signals are lost: repeat the first.
	waitFor("BackendAdded probe", func() {
		emit(dbusname.ManagerPath, dbusname.ManagerIface+".BackendAdded", "probe", dbusname.BackendPath("web", "probe"))
	})
	emit(dbusname.ManagerPath, dbusname.ManagerIface+".ServiceAdded", "dns", dbusname.ServicePath("dns"))
	emit(dbusname.ServicePath("dns"), propertiesIface+".PropertiesChanged", dbusname.ServiceIface,
		map[string]dbus.Variant{"Hash": variant("source-ip")}, []string{"Packets"})
	emit(dbusname.ManagerPath, propertiesIface+".PropertiesChanged", dbusname.ManagerIface, map[string]dbus.Variant{"State": variant("reloading")}, []string{})
	emit(dbusname.BackendPath("web", "web-1"), propertiesIface+".PropertiesChanged", dbusname.BackendIface,
		map[string]dbus.Variant{"Weight": variant(uint32(3))}, []string{"Packets"})
	emit(dbusname.ManagerPath, dbusname.ManagerIface+".BackendHealthChanged", "web-1", false, "timeout")
	waitFor("BackendHealthChanged", nil)
	if _, err := stub.conn.ReleaseName(dbusname.BusName); err != nil {
		t.Fatal(err)
	}
	waitFor("caplanced stopped", nil)
	// A restarted caplanced is watched too.
	if reply, err := stub.conn.RequestName(dbusname.BusName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName: %v %v", reply, err)
	}
	waitFor("caplanced started", nil)
	emit(dbusname.ManagerPath, dbusname.ManagerIface+".BackendRemoved", "web-1", dbusname.BackendPath("web", "web-1"))
	emit(dbusname.ManagerPath, dbusname.ManagerIface+".ServiceRemoved", "dns", dbusname.ServicePath("dns"))
	waitFor("ServiceRemoved", nil)
	mu.Lock()
	watchConn.Close()
	mu.Unlock()
	select {
	case code := <-done:
		if code != cli.ExitFailed {
			t.Errorf("watch exit code %d after the connection closed, want %d", code, cli.ExitFailed)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not end when its connection closed")
	}
	lines := strings.Split(strings.TrimSpace(wout.String()), "\n")
	for i, l := range lines { // each after the time it arrived
		at, rest, _ := strings.Cut(l, " ")
		if _, err := time.Parse(time.RFC3339, at); err != nil || !strings.HasSuffix(at, "Z") {
			t.Errorf("watch line %q does not start with an RFC 3339 UTC time", l)
		}
		lines[i] = rest
	}
	for len(lines) > 1 && lines[1] == lines[0] { // repeated probes
		lines = lines[1:]
	}
	wantLines := []string{
		"BackendAdded probe /org/caplance/Caplance1/service/web/backend/probe",
		"ServiceAdded dns /org/caplance/Caplance1/service/dns",
		`ServicePropertiesChanged dns Hash="source-ip" invalidated=Packets`,
		`PropertiesChanged web-1 Weight=3 invalidated=Packets`,
		`BackendHealthChanged web-1 down "timeout"`,
		"caplanced stopped",
		"caplanced started",
		"BackendRemoved web-1 /org/caplance/Caplance1/service/web/backend/web_2d1",
		"ServiceRemoved dns /org/caplance/Caplance1/service/dns",
	}
	if diff := cmp.Diff(wantLines, lines); diff != "" {
		t.Errorf("watch output (-want +got):\n%s", diff)
	}
}
