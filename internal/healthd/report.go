package healthd

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusname"
)

// report is one ReportHealth call's arguments, less the name.
type report struct {
	healthy bool
	detail  string
}

// reportFunc calls ReportHealth.
type reportFunc func(ctx context.Context, name string, r report) error

// errGone is returned by a reportFunc when caplanced no longer knows the
// backend: the report is dropped, not retried.
var errGone = errors.New("no such backend")

// reporter sends the reports to caplanced from one goroutine. What is
// pending is kept per backend, newest wins, so a backend that flaps while
// caplanced is away is reported once, as it is now. Everything pending is
// sent together (a batch) as soon as there is something and no batch is
// under way; a batch with failures is retried after a backoff that doubles
// from retryMin to retryMax, and that is reset when caplanced comes back.
type reporter struct {
	send     reportFunc
	log      *slog.Logger
	retryMin time.Duration
	retryMax time.Duration

	mu      sync.Mutex
	pending map[string]report
	// sent counts the calls that succeeded, for the tests.
	sent    int
	backoff time.Duration
	wake    chan struct{}
}

func newReporter(send reportFunc, retryMin, retryMax time.Duration, log *slog.Logger) *reporter {
	return &reporter{
		send: send, log: log, retryMin: retryMin, retryMax: max(retryMax, retryMin),
		pending: map[string]report{}, wake: make(chan struct{}, 1),
	}
}

// enqueue makes r the report to send for name.
func (p *reporter) enqueue(name string, r report) {
	p.mu.Lock()
	p.pending[name] = r
	p.mu.Unlock()
	p.poke()
}

// forget drops what is pending for name (the backend is gone, or its check
// changed and its state is unknown again).
func (p *reporter) forget(name string) {
	p.mu.Lock()
	delete(p.pending, name)
	p.mu.Unlock()
}

// replaceAll makes all the whole pending set (the full state, after
// caplanced came back) and sends it at once.
func (p *reporter) replaceAll(all map[string]report) {
	p.mu.Lock()
	p.pending = maps.Clone(all)
	p.backoff = 0
	p.mu.Unlock()
	p.poke()
}

// pendingCount is how many reports wait.
func (p *reporter) pendingCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

func (p *reporter) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run sends batches until ctx ends.
func (p *reporter) run(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-retry.C:
		}
		if d, failed := p.batch(ctx); failed {
			retry.Reset(d)
		}
	}
}

// batch sends everything pending, by name; it returns the delay before the
// next try when something failed.
func (p *reporter) batch(ctx context.Context) (time.Duration, bool) {
	p.mu.Lock()
	todo := maps.Clone(p.pending)
	p.mu.Unlock()
	failed := 0
	var lastErr error
	for _, name := range slices.Sorted(maps.Keys(todo)) {
		r := todo[name]
		err := p.send(ctx, name, r)
		if ctx.Err() != nil {
			return 0, false
		}
		switch {
		case err == nil, errors.Is(err, errGone):
			if err != nil {
				p.log.Info("not reporting a backend caplanced no longer has", "backend", name)
			}
			p.mu.Lock()
			if p.pending[name] == r {
				delete(p.pending, name)
			}
			if err == nil {
				p.sent++
			}
			p.mu.Unlock()
		default:
			failed++
			lastErr = err
		}
	}
	if failed == 0 {
		p.mu.Lock()
		p.backoff = 0
		p.mu.Unlock()
		return 0, false
	}
	p.mu.Lock()
	p.backoff = min(max(p.backoff*2, p.retryMin), p.retryMax)
	d := p.backoff
	p.mu.Unlock()
	p.log.Warn("reporting health to caplanced failed; will retry", "failed", failed, "of", len(todo), "retry_in", d, "err", lastErr)
	return d, true
}

// dbusReporter is the reportFunc that calls caplanced's ReportHealth on
// conn, each call bounded by timeout.
func dbusReporter(conn *dbus.Conn, timeout time.Duration) reportFunc {
	return func(ctx context.Context, name string, r report) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		call := conn.Object(dbusname.BusName, dbusname.ManagerPath).CallWithContext(ctx,
			dbusname.ManagerIface+".ReportHealth", dbus.FlagNoAutoStart, name, r.healthy, r.detail)
		if e, ok := dbusname.AsError(call.Err); ok && e.Name == dbusname.ErrorPrefix+"NotFound" {
			return errors.Join(errGone, call.Err)
		}
		return call.Err
	}
}
