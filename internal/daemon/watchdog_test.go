package daemon

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
)

// A refused reload shows in STATUS= until a reload succeeds, on one line.
func TestStatusAfterRefusedReload(t *testing.T) {
	r := &running{cfg: &config.Config{Receiver: &config.Receiver{}}, userMode: true}
	const ok = "receiving for 0 VIP(s), decapsulation: userspace"
	if got := r.status(); got != ok {
		t.Errorf("status = %q, want %q", got, ok)
	}
	r.reloadErr = errors.Join(errors.New("line 3: bad key"), errors.New("line 4: bad value"))
	want := "reload refused: line 3: bad key; line 4: bad value (the running configuration stays); " + ok
	if got := r.status(); got != want {
		t.Errorf("status = %q, want %q", got, want)
	}
	r.reloadErr = nil
	if got := r.status(); got != ok {
		t.Errorf("status after a good reload = %q, want %q", got, ok)
	}
}

// The watchdog's bus check works for caplanced's user under the shipped
// policy: it may call Peer.Ping on its own name.
func TestPingSelfUnderShippedPolicy(t *testing.T) {
	bus := dbustest.Start(t)
	conn := bus.ConnectAs(t, dbustest.User(t, dbustest.DaemonUser))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := pingSelf(ctx, conn); err == nil {
		t.Error("pingSelf succeeded before the name was taken")
	}
	reply, err := conn.RequestName(dbusname.BusName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName = %v, %v", reply, err)
	}
	if err := pingSelf(ctx, conn); err != nil {
		t.Errorf("pingSelf: %v", err)
	}
}
