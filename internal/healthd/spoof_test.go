package healthd

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/registry"
)

// TestSpoofedSignals: connections that are not caplanced's flood
// caplance-healthd's connection with fake signals from before it owns its
// name until after it has synced: a backend whose exec check would create a
// file, caplanced leaving and a hostile connection taking its name
// (NameOwnerChanged), the real backend removed and its check replaced.
// Nobody's (another uid) get through the bus only until healthd owns
// org.caplance.Health1; those of caplanced's user (the policy lets that
// user send healthd signals) get through all along. Nothing runs, nothing
// changes: healthd keeps checking and reporting the real backends.
func TestSpoofedSignals(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l1, l2 := listen(t), listen(t)
	e.startCaplanced(tcpCheck("web1", "10.0.1.11", l1))
	caplanced := e.srvConn.Names()[0]
	touched := filepath.Join(t.TempDir(), "touched")

	var floods []*flood
	e.startHealthd(testConfig(), func(o *Options) {
		// Before Run: the fakes are already queued when it starts.
		target := o.Conn.Names()[0]
		for _, cred := range []dbustest.Credential{dbustest.Nobody(t), dbustest.User(t, dbustest.DaemonUser)} {
			floods = append(floods, startFlood(t, cred, e.bus.ConnectAs(t, cred), target, caplanced, touched))
		}
	})
	e.waitHealth("web1", "up: "+l1.connected(2), 2*time.Second)
	// And after the start: a few more rounds each.
	for _, f := range floods {
		f.waitRounds(f.rounds() + 20)
		f.stop()
		t.Logf("%v sent %d rounds of fake signals", f.cred, f.rounds())
	}
	// A real change after the last fake: healthd follows caplanced still.
	if _, err := e.registry().Add("web2", "10.0.1.12", registry.AddOptions{Check: "tcp://" + l2.addr, Runtime: true}); err != nil {
		t.Fatal(err)
	}
	e.waitHealth("web2", "up: "+l2.connected(2), 2*time.Second)
	time.Sleep(settle) // an exec probe would have run by now

	if _, err := os.Stat(touched); !os.IsNotExist(err) {
		t.Errorf("the fake backend's exec check ran: %s: %v", touched, err)
	}
	mgr, err := getAll(e.bus.Connect(t), dbusname.HealthPath, dbusname.HealthManagerIface)
	if err != nil {
		t.Fatal(err)
	}
	if mgr["Caplanced"].Value() != "running" {
		t.Errorf("Caplanced = %v, want running", mgr["Caplanced"])
	}
	e.inLoop(func() {
		got := map[string]string{}
		for name, b := range e.d.backends {
			got[name] = b.spec
		}
		want := map[string]string{"web1": "tcp://" + l1.addr, "web2": "tcp://" + l2.addr}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("backends (-want +got):\n%s", diff)
		}
		if len(e.d.jobs) != 2 {
			t.Errorf("%d probes running, want 2", len(e.d.jobs))
		}
	})
	if diff := cmp.Diff([]string{"up: " + l1.connected(2)}, e.calls.of("web1")); diff != "" {
		t.Errorf("ReportHealth calls for web1 (-want +got):\n%s", diff)
	}
	if e.calls.of("evil") != nil {
		t.Errorf("the fake backend was reported: %v", e.calls.of("evil"))
	}
	for _, l := range e.notes.lines() {
		if l == "STATUS=caplanced not running: probing 1 backend, will report when it returns" {
			t.Errorf("a fake NameOwnerChanged was believed: %s", l)
		}
	}
	if s := e.notes.lastStatus(); s != "checking 2 backends" {
		t.Errorf("STATUS=%q, want checking 2 backends", s)
	}
}

// flood sends fake signals to one connection, round after round, until
// stopped.
type flood struct {
	cred dbustest.Credential
	mu   sync.Mutex
	n    int
	quit chan struct{}
	done chan struct{}
	once sync.Once
}

// startFlood sends target, from conn (connected as cred), rounds of signals that claim to be
// caplanced's (whose connection is caplanced) or the bus's, until stop.
// Each round ends with a call to the bus, which returns once the bus has
// passed the round on.
func startFlood(t *testing.T, cred dbustest.Credential, conn *dbus.Conn, target, caplanced, touched string) *flood {
	t.Helper()
	self := conn.Names()[0]
	evil := dbusname.BackendPath("default", "evil")
	web1 := dbusname.BackendPath("default", "web1")
	execCheck := "exec:///usr/bin/touch?arg=" + touched
	evilProps := map[string]map[string]dbus.Variant{dbusname.BackendIface: {
		"Name": dbus.MakeVariant("evil"), "Address": dbus.MakeVariant("10.0.1.66"), "Check": dbus.MakeVariant(execCheck),
	}}
	round := []*dbus.Message{
		unicastSignal(target, dbusname.ManagerPath, dbusname.ObjectManagerIface, "InterfacesAdded", evil, evilProps),
		unicastSignal(target, "/org/freedesktop/DBus", busDriver, "NameOwnerChanged", dbusname.BusName, caplanced, ""),
		unicastSignal(target, "/org/freedesktop/DBus", busDriver, "NameOwnerChanged", dbusname.BusName, "", self),
		unicastSignal(target, dbusname.ManagerPath, dbusname.ObjectManagerIface, "InterfacesAdded", evil, evilProps),
		unicastSignal(target, dbusname.ManagerPath, dbusname.ObjectManagerIface, "InterfacesRemoved", web1, []string{dbusname.BackendIface}),
		unicastSignal(target, web1, propertiesIface, "PropertiesChanged", dbusname.BackendIface,
			map[string]dbus.Variant{"Check": dbus.MakeVariant(execCheck)}, []string{}),
	}
	f := &flood{cred: cred, quit: make(chan struct{}), done: make(chan struct{})}
	send := func() error {
		for _, m := range round {
			if err := conn.Send(m, nil).Err; err != nil {
				return fmt.Errorf("sending a fake signal: %w", err)
			}
		}
		if err := conn.BusObject().Call(busDriver+".GetId", 0).Err; err != nil {
			return fmt.Errorf("GetId: %w", err)
		}
		f.mu.Lock()
		f.n++
		f.mu.Unlock()
		return nil
	}
	if err := send(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(f.done)
		for {
			select {
			case <-f.quit:
				return
			default:
				if err := send(); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	t.Cleanup(f.stop)
	return f
}

func (f *flood) rounds() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// waitRounds waits until n rounds have been sent.
func (f *flood) waitRounds(n int) {
	for f.rounds() < n {
		time.Sleep(time.Millisecond)
	}
}

func (f *flood) stop() {
	f.once.Do(func() { close(f.quit) })
	<-f.done
}

// unicastSignal is a signal addressed to the connection dest only.
func unicastSignal(dest string, path dbus.ObjectPath, iface, member string, body ...any) *dbus.Message {
	return &dbus.Message{
		Type: dbus.TypeSignal,
		Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldDestination: dbus.MakeVariant(dest),
			dbus.FieldPath:        dbus.MakeVariant(path),
			dbus.FieldInterface:   dbus.MakeVariant(iface),
			dbus.FieldMember:      dbus.MakeVariant(member),
			dbus.FieldSignature:   dbus.MakeVariant(dbus.SignatureOf(body...)),
		},
		Body: body,
	}
}
