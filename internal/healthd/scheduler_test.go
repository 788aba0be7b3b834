package healthd

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/probe"
)

// probeLog records when each job's probes ran.
type probeLog struct {
	mu       sync.Mutex
	running  map[string]bool
	inFlight int
	maxSeen  int
	starts   map[string][]time.Time
	overlap  []string
}

func newProbeLog() *probeLog {
	return &probeLog{running: map[string]bool{}, starts: map[string][]time.Time{}}
}

// probe returns a probe of key that takes d.
func (l *probeLog) probe(key string, d time.Duration) func(context.Context) probe.Result {
	return func(ctx context.Context) probe.Result {
		l.mu.Lock()
		if l.running[key] {
			l.overlap = append(l.overlap, key)
		}
		l.running[key] = true
		l.inFlight++
		l.maxSeen = max(l.maxSeen, l.inFlight)
		l.starts[key] = append(l.starts[key], time.Now())
		l.mu.Unlock()
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
		l.mu.Lock()
		l.running[key] = false
		l.inFlight--
		l.mu.Unlock()
		return probe.Result{Up: true, Detail: key, Latency: d}
	}
}

func (l *probeLog) startsOf(key string) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.starts[key]...)
}

func drain(results <-chan probeResult, stop <-chan struct{}) {
	for {
		select {
		case <-results:
		case <-stop:
			return
		}
	}
}

// A probe slower than its interval delays the next one: never two at once.
func TestSchedulerNeverOverlaps(t *testing.T) {
	t.Parallel()
	results := make(chan probeResult)
	stop := make(chan struct{})
	defer close(stop)
	go drain(results, stop)
	s := newScheduler(10, results)
	l := newProbeLog()
	j := &probeJob{key: "slow", interval: 10 * time.Millisecond, probe: l.probe("slow", 30*time.Millisecond)}
	s.start(t.Context(), j)
	time.Sleep(200 * time.Millisecond)
	s.stop(j)
	if !s.wait(time.Second) {
		t.Fatal("the job did not end after stop")
	}
	starts := l.startsOf("slow")
	if len(starts) < 3 || len(l.overlap) > 0 {
		t.Errorf("%d probes, overlaps %v", len(starts), l.overlap)
	}
	for i := 1; i < len(starts); i++ {
		if gap := starts[i].Sub(starts[i-1]); gap < 30*time.Millisecond {
			t.Errorf("probe %d started %v after the one before, which takes 30ms", i, gap)
		}
	}
}

// Probes run every interval, start to start.
func TestSchedulerInterval(t *testing.T) {
	t.Parallel()
	results := make(chan probeResult, 100)
	s := newScheduler(10, results)
	l := newProbeLog()
	j := &probeJob{key: "a", interval: 50 * time.Millisecond, probe: l.probe("a", 20*time.Millisecond)}
	start := time.Now()
	s.start(t.Context(), j)
	time.Sleep(510 * time.Millisecond)
	s.stop(j)
	// A busy machine may wake this goroutine late: the bounds follow the
	// time the job really ran, not the 510 ms asked for.
	ran := time.Since(start)
	s.wait(time.Second)
	// 0, 50, …: one probe per interval begun, never more; at least 8 in
	// 510 ms, allowing for a slow machine.
	if n, most := len(l.startsOf("a")), int(ran/j.interval)+1; n < 8 || n > most {
		t.Errorf("%d probes in %v at an interval of %v, want 8 to %d", n, ran, j.interval, most)
	}
	if n := len(results); n != len(l.startsOf("a")) && n != len(l.startsOf("a"))-1 {
		t.Errorf("%d results for %d probes", n, len(l.startsOf("a")))
	}
}

// At most maxConcurrent probes run at once, over all jobs.
func TestSchedulerBoundsConcurrency(t *testing.T) {
	t.Parallel()
	results := make(chan probeResult)
	stop := make(chan struct{})
	defer close(stop)
	go drain(results, stop)
	s := newScheduler(3, results)
	l := newProbeLog()
	ctx, cancel := context.WithCancel(t.Context())
	for _, key := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		s.start(ctx, &probeJob{key: key, interval: 10 * time.Millisecond, probe: l.probe(key, 20*time.Millisecond)})
	}
	time.Sleep(200 * time.Millisecond)
	cancel()
	if !s.wait(time.Second) {
		t.Fatal("jobs did not end with their context")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maxSeen != 3 {
		t.Errorf("at most %d probes at once, want 3", l.maxSeen)
	}
	for _, key := range []string{"a", "h"} {
		if len(l.starts[key]) == 0 {
			t.Errorf("job %s never ran", key)
		}
	}
}

// The first probe waits the start-up jitter, drawn per job.
func TestSchedulerJitter(t *testing.T) {
	t.Parallel()
	results := make(chan probeResult, 100)
	s := newScheduler(10, results)
	var asked atomic.Int64
	s.jitterOf = func(j time.Duration) time.Duration {
		asked.Store(int64(j))
		return 80 * time.Millisecond
	}
	l := newProbeLog()
	start := time.Now()
	j := &probeJob{key: "a", interval: time.Hour, jitter: 100 * time.Millisecond, probe: l.probe("a", 0)}
	s.start(t.Context(), j)
	r := <-results
	if d := r.start.Sub(start); d < 80*time.Millisecond || d > 200*time.Millisecond {
		t.Errorf("first probe after %v, want the jitter drawn (80ms)", d)
	}
	if time.Duration(asked.Load()) != 100*time.Millisecond {
		t.Errorf("jitter drawn from %v, want the job's 100ms", time.Duration(asked.Load()))
	}
	s.stop(j)
	s.wait(time.Second)

	// The real draw stays in [0, jitter).
	real := newScheduler(1, nil)
	for range 1000 {
		if d := real.jitterOf(10 * time.Millisecond); d < 0 || d >= 10*time.Millisecond {
			t.Fatalf("jitter %v outside [0, 10ms)", d)
		}
	}
	if d := real.jitterOf(0); d != 0 {
		t.Errorf("jitter of 0: %v", d)
	}
}

// A stopped job's probe under way is canceled and its result dropped.
func TestSchedulerStopCancels(t *testing.T) {
	t.Parallel()
	results := make(chan probeResult, 10)
	s := newScheduler(1, results)
	canceled := make(chan struct{})
	j := &probeJob{key: "a", interval: time.Hour, probe: func(ctx context.Context) probe.Result {
		<-ctx.Done()
		close(canceled)
		return probe.Result{}
	}}
	s.start(t.Context(), j)
	time.Sleep(20 * time.Millisecond)
	s.stop(j)
	select {
	case <-canceled:
	case <-time.After(time.Second):
		t.Fatal("the probe was not canceled")
	}
	if !s.wait(time.Second) {
		t.Fatal("the job did not end")
	}
	if len(results) != 0 {
		t.Errorf("a stopped job delivered %d results", len(results))
	}
}
