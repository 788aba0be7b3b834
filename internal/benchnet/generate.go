package benchnet

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Timing is how long a run's phases last: warm-up traffic that is not
// counted (until the sink has counted a warm-up packet, at most WarmupMax,
// then Warmup more), Measure that is, then Drain for what is in flight.
type Timing struct {
	Warmup, WarmupMax, Measure, Drain time.Duration
}

const (
	// batch is how many frames go to the kernel in one system call, and
	// the unit of pacing.
	batch = 32
	// maxLag bounds how far a paced generator may fall behind its schedule
	// (after a late wake-up) before it gives up catching up, so a hiccup
	// costs rate rather than a long burst; at least two batches' intervals,
	// so that at low rates one late wake-up is caught up.
	maxLag = 5 * time.Millisecond
)

// GenResult is what the generator did.
type GenResult struct {
	WarmSent, Sent uint64 // frames of the warm-up and of the measured phase
	// Elapsed is the measured phase's wall time; Start and End sample the
	// CPU around it.
	Elapsed    time.Duration
	Start, End CPUSample
	Err        error
}

// Generate sends l's warm-up frames on ring until warmed is set (the sink
// counted one) and for t.Warmup more, then its measured frames for
// t.Measure, paced at rate frames a second (0: as fast as it goes), from a
// locked OS thread on GenCPU whose id it sets in probe.GenTID; it samples
// the CPU around the measured phase.
func Generate(ring *Ring, l *Load, rate float64, t Timing, probe *CPUProbe, warmed *atomic.Bool) GenResult {
	done := make(chan GenResult, 1)
	go func() {
		// Locked for good: the thread ends with the goroutine rather than
		// going back to the runtime pinned to GenCPU.
		runtime.LockOSThread()
		probe.GenTID = unix.Gettid()
		g := generator{ring: ring, rate: rate}
		var r GenResult
		if r.Err = pin(); r.Err != nil {
			done <- r
			return
		}
		for deadline := time.Now().Add(t.WarmupMax); !warmed.Load(); {
			if time.Now().After(deadline) {
				r.Err = fmt.Errorf("no warm-up packet reached the sink within %v", t.WarmupMax)
				done <- r
				return
			}
			r.WarmSent += g.send(l.Frames[Warm], t.Warmup/10)
		}
		r.WarmSent += g.send(l.Frames[Warm], t.Warmup)
		r.Start = probe.Sample()
		t0 := time.Now()
		r.Sent = g.send(l.Frames[Measured], t.Measure)
		r.Elapsed = time.Since(t0)
		r.End = probe.Sample()
		r.Err = g.err
		done <- r
	}()
	return <-done
}

// generator is Generate's state.
type generator struct {
	ring *Ring
	rate float64
	next int // the flow whose frame goes next
	err  error
}

// send sends frames, round robin, for d, paced at g.rate, and returns how
// many the kernel took. When the ring is full it moves on to the next
// batch (at once when unpaced): the slots come free as the kernel frees the
// packets.
func (g *generator) send(frames [][]byte, d time.Duration) uint64 {
	start := g.ring.Queued
	now := time.Now()
	end, due := now.Add(d), now
	var interval time.Duration
	if g.rate > 0 {
		interval = time.Duration(float64(batch) / g.rate * float64(time.Second))
	}
	for ; now.Before(end) && g.err == nil; now = time.Now() {
		if interval > 0 {
			if wait := due.Sub(now); wait > 0 {
				nap(wait)
			} else if -wait > max(maxLag, 2*interval) {
				due = now
			}
			due = due.Add(interval)
		}
		for left := batch; left > 0 && g.err == nil; {
			n := min(left, len(frames)-g.next)
			q := g.ring.Queue(frames[g.next : g.next+n])
			g.next = (g.next + q) % len(frames)
			left -= q
			if g.err = g.ring.Flush(); q < n {
				break
			}
		}
	}
	return g.ring.Queued - start
}
