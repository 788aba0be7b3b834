package healthd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeCaplanced records reports and fails them on demand.
type fakeCaplanced struct {
	mu    sync.Mutex
	calls []string
	times []time.Time
	fail  error
	gone  map[string]bool
	got   chan struct{}
}

func newFake() *fakeCaplanced {
	return &fakeCaplanced{gone: map[string]bool{}, got: make(chan struct{}, 100)}
}

func (f *fakeCaplanced) send(_ context.Context, name string, r report) error {
	f.mu.Lock()
	defer func() { f.got <- struct{}{} }()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("%s %v %s", name, r.healthy, r.detail))
	f.times = append(f.times, time.Now())
	switch {
	case f.gone[name]:
		return errGone
	case f.fail != nil:
		return f.fail
	}
	return nil
}

func (f *fakeCaplanced) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *fakeCaplanced) callsSoFar() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeCaplanced) wait(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-f.got:
		case <-time.After(2 * time.Second):
			t.Fatalf("fewer than %d calls: %v", n, f.callsSoFar())
		}
	}
}

func startReporter(t *testing.T, f *fakeCaplanced, min, max time.Duration) *reporter {
	return runReporter(t, newReporter(f.send, min, max, slog.New(slog.DiscardHandler)))
}

// runReporter runs r until the test ends.
func runReporter(t *testing.T, r *reporter) *reporter {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func TestReporterSendsAndForgets(t *testing.T) {
	t.Parallel()
	f := newFake()
	r := startReporter(t, f, 10*time.Millisecond, 100*time.Millisecond)
	r.enqueue("web1", report{true, "ok after 2 tries"})
	f.wait(t, 1)
	f.gone["web2"] = true // set before web2 is enqueued: no race
	r.enqueue("web2", report{false, "refused after 3 tries"})
	f.wait(t, 1)
	time.Sleep(50 * time.Millisecond)
	want := []string{"web1 true ok after 2 tries", "web2 false refused after 3 tries"}
	if diff := cmp.Diff(want, f.callsSoFar()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if n := r.pendingCount(); n != 0 {
		t.Errorf("%d pending; a backend caplanced does not have is dropped", n)
	}
}

// Failures are retried with a backoff that doubles up to the maximum;
// while they fail, the newest report of a backend replaces the older one.
func TestReporterRetriesWithBackoff(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.setFail(errors.New("org.freedesktop.DBus.Error.ServiceUnknown"))
	r := startReporter(t, f, 20*time.Millisecond, 80*time.Millisecond)
	r.enqueue("web1", report{false, "down"})
	f.wait(t, 5)
	r.enqueue("web1", report{true, "up again"})
	f.wait(t, 1)
	f.setFail(nil)
	f.wait(t, 1)
	time.Sleep(150 * time.Millisecond)

	f.mu.Lock()
	defer f.mu.Unlock()
	var gaps []time.Duration
	for i := 1; i < 5; i++ {
		gaps = append(gaps, f.times[i].Sub(f.times[i-1]))
	}
	// At least 20, 40, 80, 80ms: the backoff doubles up to its cap. No
	// upper bound: a busy machine may delay a retry (f.wait proved that
	// every retry came).
	for i, want := range []time.Duration{20, 40, 80, 80} {
		want *= time.Millisecond
		if gaps[i] < want {
			t.Errorf("retry %d after %v, want at least %v", i+1, gaps[i], want)
		}
	}
	last := f.calls[len(f.calls)-1]
	if last != "web1 true up again" {
		t.Errorf("last call %q, want the newest report", last)
	}
	for _, c := range f.calls[5:] {
		if c != "web1 true up again" {
			t.Errorf("after the newer report, %q was sent", c)
		}
	}
	if n := r.pendingCount(); n != 0 {
		t.Errorf("%d pending after success", n)
	}
}

// replaceAll (caplanced came back) sends the whole state at once, without
// waiting for the backoff, and forget drops a pending report.
func TestReporterReplaceAll(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.setFail(errors.New("away"))
	// Both queued before it runs: one batch of two calls, both failing
	// (queued one by one, a busy reporter may send the first twice).
	r := newReporter(f.send, time.Hour, time.Hour, slog.New(slog.DiscardHandler))
	r.enqueue("a", report{false, "x"})
	r.enqueue("gone", report{false, "y"})
	runReporter(t, r)
	f.wait(t, 2)
	r.forget("gone")
	f.setFail(nil)
	r.replaceAll(map[string]report{"a": {true, "ok"}, "b": {false, "refused"}})
	f.wait(t, 2)
	want := []string{"a false x", "gone false y", "a true ok", "b false refused"}
	if diff := cmp.Diff(want, f.callsSoFar()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}
