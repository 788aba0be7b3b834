package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/testbed"
)

// startPrivateBus runs dbus-daemon with contrib/dbus/private-bus.conf as its
// comment says, with only the installed paths moved: the socket into a
// temporary directory and the included policies to the repository's
// packaging/dbus. It returns the bus, stopped when the test ends.
func startPrivateBus(t *testing.T) *dbustest.Bus {
	t.Helper()
	dbustest.EnsureAccounts(t) // the bus ignores the rules of missing accounts
	data, err := os.ReadFile("../../contrib/dbus/private-bus.conf")
	if err != nil {
		t.Fatal(err)
	}
	policy, err := filepath.Abs("../../" + dbustest.PolicyDir)
	if err != nil {
		t.Fatal(err)
	}
	dir := dbustest.SocketDir(t)
	socket := filepath.Join(dir, "system_bus_socket")
	conf := string(data)
	for _, r := range []struct {
		old, new string
		n        int
	}{
		{"<listen>unix:path=/run/caplance-bus/system_bus_socket</listen>", "<listen>unix:path=" + socket + "</listen>", 1},
		{"<include>/usr/share/dbus-1/system.d/", "<include>" + policy + "/", 2},
	} {
		if got := strings.Count(conf, r.old); got != r.n {
			t.Fatalf("private-bus.conf has %q %d times, want %d", r.old, got, r.n)
		}
		conf = strings.ReplaceAll(conf, r.old, r.new)
	}
	path := filepath.Join(dir, "private-bus.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command("dbus-daemon", "--config-file="+path, "--nofork", "--print-address")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	address := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		address <- strings.TrimSpace(line)
		_ = cmd.Wait() // the pipe is closed unread: the daemon prints nothing more
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	select {
	case addr := <-address:
		if addr == "" {
			<-exited
			t.Fatalf("dbus-daemon --config-file=%s exited: %v\n%s", path, cmd.ProcessState, stderr.String())
		}
		return &dbustest.Bus{Address: addr, Socket: socket}
	case <-time.After(30 * time.Second):
		t.Fatalf("dbus-daemon --config-file=%s printed no address in 30s", path)
		return nil
	}
}

// TestPrivateBus runs caplanced on the example private bus: it registers its
// name there, caplancectl reaches it with --bus, and the shipped policy
// applies (an account outside caplance-admin may not change the backends).
func TestPrivateBus(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces)")
	}
	bus := startPrivateBus(t)
	tb := openTestbed(t, testbed.Options{Prefix: "pbus", Backends: 1, Workers: 1, BalancerBus: bus.Address})
	if err := tb.StartBalancer(); err != nil {
		t.Fatal(err)
	}

	var owned bool
	conn := bus.ConnectAs(t, dbustest.Root())
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, dbusname.BusName).Store(&owned); err != nil || !owned {
		t.Fatalf("NameHasOwner(%s) on the private bus = %v, %v; want true", dbusname.BusName, owned, err)
	}
	if out, err := exec.Command(caplancectlBin, "--bus", bus.Address, "status").CombinedOutput(); err != nil {
		t.Errorf("caplancectl --bus %s status: %v\n%s", bus.Address, err, out)
	}
	nobody := bus.ConnectAs(t, dbustest.Nobody(t)).Object(dbusname.BusName, dbusname.ManagerPath)
	err := nobody.Call(dbusname.ManagerIface+".AddBackend", 0, "x1", "198.51.100.99", map[string]dbus.Variant{}).Err
	if dbustest.ErrorName(err) != "org.freedesktop.DBus.Error.AccessDenied" {
		t.Errorf("AddBackend as nobody on the private bus: %v, want AccessDenied (the shipped policy)", err)
	}
}
