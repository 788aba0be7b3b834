package healthd

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/caplance/caplance/internal/probe"
)

// probeJob is one distinct probe (one checkspec.Spec.Key): it runs every
// interval on its own goroutine, so it never overlaps itself, and holds one
// of the scheduler's slots while it runs.
type probeJob struct {
	key      string
	interval time.Duration
	jitter   time.Duration
	probe    func(ctx context.Context) probe.Result

	cancel context.CancelFunc
	done   chan struct{}
}

// probeResult is one finished probe of job, started at start.
type probeResult struct {
	job    *probeJob
	start  time.Time
	result probe.Result
}

// scheduler runs probe jobs with bounded concurrency and hands their
// results to one channel.
type scheduler struct {
	slots   chan struct{}
	results chan<- probeResult
	wg      sync.WaitGroup
	// jitterOf returns the start-up delay of a job, in [0, jitter).
	jitterOf func(jitter time.Duration) time.Duration
}

func newScheduler(maxConcurrent int, results chan<- probeResult) *scheduler {
	return &scheduler{
		slots:   make(chan struct{}, max(maxConcurrent, 1)),
		results: results,
		jitterOf: func(j time.Duration) time.Duration {
			if j <= 0 {
				return 0
			}
			return rand.N(j)
		},
	}
}

// start runs j until stop(j) or ctx ends: the first probe after a random
// delay in [0, jitter), then one every interval (measured from start to
// start; a probe that overruns delays the next, which then starts at once).
func (s *scheduler) start(ctx context.Context, j *probeJob) {
	ctx, j.cancel = context.WithCancel(ctx)
	j.done = make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(j.done)
		s.loop(ctx, j)
	}()
}

// stop ends j without waiting for a probe under way; its result, if any,
// is not delivered.
func (s *scheduler) stop(j *probeJob) { j.cancel() }

// wait waits until every job has ended (after stop or the end of their
// context) or timeout passes; it reports whether they all ended.
func (s *scheduler) wait(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

func (s *scheduler) loop(ctx context.Context, j *probeJob) {
	timer := time.NewTimer(s.jitterOf(j.jitter))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		select {
		case <-ctx.Done():
			return
		case s.slots <- struct{}{}:
		}
		start := time.Now()
		r := j.probe(ctx)
		<-s.slots
		if ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case s.results <- probeResult{job: j, start: start, result: r}:
		}
		timer.Reset(max(time.Until(start.Add(j.interval)), 0))
	}
}
