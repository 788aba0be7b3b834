package watchdog

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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
func runWatchdog(t *testing.T, w Watchdog) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
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
	runWatchdog(t, Watchdog{
		Interval: interval,
		Instant: func() error {
			if !instantOK.Load() {
				return errors.New("a worker is stuck")
			}
			return nil
		},
		RoundTrip: func(ctx context.Context) error {
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
		RoundTripName: "the bus",
		Notify:        p.notify,
		Log:           slog.New(slog.DiscardHandler),
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
		value, what string
		wedge       bool
		after       time.Duration
		wantErr     bool
	}{
		{value: "", what: "worker"},
		{value: "worker", what: "worker", wedge: true},
		{value: "worker:1.5s", what: "worker", wedge: true, after: 1500 * time.Millisecond},
		{value: "worker:0s", what: "worker", wedge: true},
		{value: "loop", what: "worker", wantErr: true},
		{value: "worker:", what: "worker", wantErr: true},
		{value: "worker:-1s", what: "worker", wantErr: true},
		{value: "worker:soon", what: "worker", wantErr: true},
		{value: "1", what: "worker", wantErr: true},
		{value: "", what: "loop"},
		{value: "loop", what: "loop", wedge: true},
		{value: "loop:250ms", what: "loop", wedge: true, after: 250 * time.Millisecond},
		{value: "worker", what: "loop", wantErr: true},
		{value: "loop:", what: "loop", wantErr: true},
		{value: "loop:-1s", what: "loop", wantErr: true},
		{value: "loop:later", what: "loop", wantErr: true},
	}
	for _, tt := range tests {
		wedge, after, err := ParseTestWedge(tt.value, tt.what, "caplanced(8)")
		if (err != nil) != tt.wantErr || wedge != tt.wedge || after != tt.after {
			t.Errorf("ParseTestWedge(%q, %q) = %v, %v, %v; want %v, %v, error %v", tt.value, tt.what, wedge, after, err, tt.wedge, tt.after, tt.wantErr)
		}
		if err != nil && (!strings.Contains(err.Error(), TestWedgeEnv) || !strings.Contains(err.Error(), "want "+tt.what+" or "+tt.what+":DURATION") || !strings.Contains(err.Error(), "caplanced(8)")) {
			t.Errorf("ParseTestWedge(%q, %q): the error %q does not name %s, what it wants and the man page", tt.value, tt.what, err, TestWedgeEnv)
		}
	}
}

func TestWedgeAfter(t *testing.T) {
	var wedged atomic.Bool
	WedgeAfter(context.Background(), time.Millisecond, func() { wedged.Store(true) })
	if !wedged.Load() {
		t.Error("not wedged after the delay")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	WedgeAfter(ctx, time.Hour, func() { t.Error("wedged although ctx had ended") })
}
