package daemon

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
)

// pings counts WATCHDOG=1 messages.
type pings struct {
	mu     sync.Mutex
	n      int
	others []string
}

func (p *pings) notify(state string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if state == "WATCHDOG=1" {
		p.n++
	} else {
		p.others = append(p.others, state)
	}
}

func (p *pings) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// runWatchdog runs w until the test ends.
func runWatchdog(t *testing.T, w watchdog) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// countDuring is how many pings arrive within d.
func countDuring(p *pings, d time.Duration) int {
	before := p.count()
	time.Sleep(d)
	return p.count() - before
}

func TestWatchdog(t *testing.T) {
	const interval = 20 * time.Millisecond
	var instantOK, roundTripOK atomic.Bool
	instantOK.Store(true)
	roundTripOK.Store(true)
	hang := make(chan struct{})
	var hanging atomic.Bool
	p := &pings{}
	runWatchdog(t, watchdog{
		interval: interval,
		instant: func() error {
			if !instantOK.Load() {
				return errors.New("a worker is stuck")
			}
			return nil
		},
		roundTrip: func(ctx context.Context) error {
			if hanging.Load() {
				select {
				case <-hang:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			if !roundTripOK.Load() {
				return errors.New("the bus is gone")
			}
			return nil
		},
		notify: p.notify,
		log:    slog.New(slog.DiscardHandler),
	})

	// About 10 ticks in 200ms; a loaded machine may delay a few.
	if n := countDuring(p, 10*interval); n < 5 {
		t.Fatalf("all answering: %d pings in %s, want about 10", n, 10*interval)
	}

	settle := 3 * interval // the check under way when a failure starts may still pass
	instantOK.Store(false)
	time.Sleep(settle)
	if n := countDuring(p, 10*interval); n != 0 {
		t.Errorf("a stuck worker: %d pings, want none", n)
	}
	instantOK.Store(true)
	if n := countDuring(p, 10*interval); n < 5 {
		t.Errorf("recovered: %d pings, want about 10", n)
	}

	roundTripOK.Store(false)
	time.Sleep(settle)
	if n := countDuring(p, 10*interval); n != 0 {
		t.Errorf("a failing round trip: %d pings, want none", n)
	}
	roundTripOK.Store(true)
	time.Sleep(settle)

	hanging.Store(true)
	time.Sleep(settle)
	if n := countDuring(p, 10*interval); n != 0 {
		t.Errorf("a hanging round trip: %d pings, want none", n)
	}
	hanging.Store(false)
	close(hang)
	if n := countDuring(p, 10*interval); n < 5 {
		t.Errorf("the round trip answers again: %d pings, want about 10", n)
	}
	if len(p.others) > 0 {
		t.Errorf("the watchdog sent other messages: %q", p.others)
	}
}

func TestParseTestWedge(t *testing.T) {
	tests := []struct {
		value   string
		wedge   bool
		after   time.Duration
		wantErr bool
	}{
		{value: ""},
		{value: "worker", wedge: true},
		{value: "worker:1.5s", wedge: true, after: 1500 * time.Millisecond},
		{value: "worker:0s", wedge: true},
		{value: "loop", wantErr: true},
		{value: "worker:", wantErr: true},
		{value: "worker:-1s", wantErr: true},
		{value: "worker:soon", wantErr: true},
		{value: "1", wantErr: true},
	}
	for _, tt := range tests {
		wedge, after, err := parseTestWedge(tt.value)
		if (err != nil) != tt.wantErr || wedge != tt.wedge || after != tt.after {
			t.Errorf("parseTestWedge(%q) = %v, %v, %v; want %v, %v, error %v", tt.value, wedge, after, err, tt.wedge, tt.after, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), TestWedgeEnv) {
			t.Errorf("parseTestWedge(%q): the error %q does not name %s", tt.value, err, TestWedgeEnv)
		}
	}
}

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
