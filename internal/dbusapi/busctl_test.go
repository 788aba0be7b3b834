package dbusapi_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBusctl: the API as systemd's busctl(1) sees it, as caplanced.dbus(7)
// promises (anything caplancectl does can be done with busctl).
func TestBusctl(t *testing.T) {
	busctl, err := exec.LookPath("busctl")
	if err != nil {
		t.Fatal("busctl is not installed (Debian package systemd; .ci/setup installs it)")
	}
	e := newEnv(t, envOptions{})
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(busctl, append([]string{"--address=" + e.bus.Address}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("busctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	const dest, mgr, iface = "org.caplance.Caplance1", "/org/caplance/Caplance1", "org.caplance.Caplance1.Manager"
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"call", dest, mgr, iface, "AddBackend", "ssa{sv}", "web-4", "10.0.1.14", "1", "weight", "u", "5"}, `o "/org/caplance/Caplance1/service/default/backend/web_2d4"`},
		{[]string{"get-property", dest, "/org/caplance/Caplance1/service/default/backend/web_2d4", "org.caplance.Caplance1.Backend", "Weight"}, "u 5"},
		{[]string{"call", dest, mgr, iface, "Drain", "s", "web-4"}, ""},
		{[]string{"tree", dest}, "/org/caplance/Caplance1/service/default/backend/web_2d4"},
		{[]string{"introspect", dest, "/org/caplance/Caplance1/service/default/backend/web_2d4"}, ".AdminState property s \"drained\""},
		{[]string{"introspect", dest, mgr}, ".AddBackend method ssa{sv} o"},
		{[]string{"call", dest, mgr, iface, "ListBackends"}, `a(sssussstttt) 3 "web-4" "default" "10.0.1.14" 5 "drained"`},
		{[]string{"call", dest, mgr, iface, "AddService", "sa{sv}", "dns", "3", "vips", "as", "1", "10.0.0.53", "ports", "s", "53", "protocols", "s", "udp"}, `o "/org/caplance/Caplance1/service/dns"`},
		{[]string{"call", dest, mgr, iface, "ChangeService", "sa{sv}", "dns", "1", "hash", "s", "source-ip"}, ""},
		{[]string{"get-property", dest, "/org/caplance/Caplance1/service/dns", "org.caplance.Caplance1.Service", "VIPs"}, `a{ss} 1 "10.0.0.53" "53"`},
		{[]string{"call", dest, mgr, iface, "AddBackend", "ssa{sv}", "dns1", "10.0.1.14", "1", "service", "s", "dns"}, `o "/org/caplance/Caplance1/service/dns/backend/dns1"`},
		{[]string{"call", dest, mgr, iface, "ListServices"}, `a(sa{ss}ssussuttt) 2 "default" 1 "10.0.0.100" "all" "tcp+udp" "5-tuple" 65537 "" "config" 3 0 0 0 "dns" 1 "10.0.0.53" "53" "udp" "source-ip" 65537 "" "runtime" 1 0 0 0`},
		{[]string{"tree", dest}, "/org/caplance/Caplance1/service/dns/backend/dns1"},
		{[]string{"call", dest, mgr, iface, "RemoveService", "s", "dns"}, ""},
	} {
		// Columns are aligned with runs of spaces.
		if got := strings.Join(strings.Fields(run(tt.args...)), " "); !strings.Contains(got, tt.want) {
			t.Errorf("busctl %s:\n%s\nwant it to contain %q", strings.Join(tt.args, " "), got, tt.want)
		}
	}
	// busctl shows the introspection data the daemon serves: the golden files.
	for path, golden := range map[string]string{
		mgr: "manager.xml", "/org/caplance/Caplance1/service/default": "service.xml",
		"/org/caplance/Caplance1/service/default/backend/web_2d4": "backend.xml",
	} {
		want, err := os.ReadFile(filepath.Join("testdata", golden))
		if err != nil {
			t.Fatal(err)
		}
		if got := run("introspect", "--xml-interface", dest, path); strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
			t.Errorf("busctl introspect --xml-interface %s differs from testdata/%s:\n%s", path, golden, got)
		}
	}
}
