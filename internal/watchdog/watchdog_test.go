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

// recorder records what a Watchdog does: when it pinged, how often it
// checked (Instant is called at every tick), what it logged.
type recorder struct {
	mu     sync.Mutex
	pings  []time.Time
	checks int
	log    strings.Builder
	others []string
}

func (r *recorder) notify(state string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if state == "WATCHDOG=1" {
		r.pings = append(r.pings, time.Now())
	} else {
		r.others = append(r.others, state)
	}
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.Write(p)
}

// state is the number of pings and checks so far and the log's length.
func (r *recorder) state() (pings, checks, logLen int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pings), r.checks, r.log.Len()
}

// logSince is the log from offset on.
func (r *recorder) logSince(offset int) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.String()[offset:]
}

// waitUntil polls cond until it holds; the deadline is only there to end a
// test that would hang.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
	}
}

// runWatchdog runs w until the test ends.
func runWatchdog(t *testing.T, w Watchdog) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestWatchdog follows the watchdog by events, not by time: pings come
// while everything answers; once it has logged a failure, it sends none
// for the following checks; once it has logged the recovery, they come
// again. Two pings are never closer than the interval.
func TestWatchdog(t *testing.T) {
	const interval = 20 * time.Millisecond
	var instantOK, roundTripOK atomic.Bool
	instantOK.Store(true)
	roundTripOK.Store(true)
	hang := make(chan struct{})
	var hanging atomic.Bool
	r := &recorder{}
	runWatchdog(t, Watchdog{
		Interval: interval,
		Instant: func() error {
			r.mu.Lock()
			r.checks++
			r.mu.Unlock()
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
		Notify:        r.notify,
		Log:           slog.New(slog.NewTextHandler(r, nil)),
	})

	// pingsCome waits for five more pings.
	pingsCome := func(what string) {
		t.Helper()
		from, _, _ := r.state()
		waitUntil(t, "five pings "+what, func() bool { n, _, _ := r.state(); return n >= from+5 })
	}
	// fails makes a failure start, waits until the watchdog logs it, and
	// then checks that the next five checks send no ping; recover ends it
	// and waits for the log of the recovery.
	fails := func(what, logged string, start, recover func()) {
		t.Helper()
		_, _, logFrom := r.state()
		start()
		waitUntil(t, "the log of "+what, func() bool { return strings.Contains(r.logSince(logFrom), logged) })
		pings, checks, logFrom := r.state()
		waitUntil(t, "five checks", func() bool { _, c, _ := r.state(); return c >= checks+5 })
		if n, _, _ := r.state(); n != pings {
			t.Errorf("%s: %d pings after the failure was logged, want none", what, n-pings)
		}
		recover()
		waitUntil(t, "the log of the recovery from "+what, func() bool {
			return strings.Contains(r.logSince(logFrom), "everything answers again")
		})
		pingsCome("after " + what)
	}

	pingsCome("while everything answers")
	fails("a stuck worker", "a worker is stuck", func() { instantOK.Store(false) }, func() { instantOK.Store(true) })
	fails("a failing round trip", "the bus is gone", func() { roundTripOK.Store(false) }, func() { roundTripOK.Store(true) })
	fails("a hanging round trip", "the bus has not answered for 20ms", func() { hanging.Store(true) }, func() {
		hanging.Store(false)
		close(hang)
	})

	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 1; i < len(r.pings); i++ {
		if gap := r.pings[i].Sub(r.pings[i-1]); gap < interval {
			t.Errorf("ping %d came %v after the previous one, want at least the interval %v", i, gap, interval)
		}
	}
	if len(r.others) > 0 {
		t.Errorf("the watchdog sent other messages: %q", r.others)
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
