package healthd

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/registry"
)

// recorder is a followerEvents that writes each event down as a line.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
}

func (r *recorder) upsert(name string, addr netip.Addr, spec, source string) {
	r.add("upsert %s %s %s %s", name, addr, spec, source)
}
func (r *recorder) remove(name string)                    { r.add("remove %s", name) }
func (r *recorder) setTunnel(vip netip.Addr, port uint16) { r.add("tunnel %s %d", vip, port) }
func (r *recorder) resynced()                             { r.add("resynced") }

func (r *recorder) taken() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// TestFollowerEvents runs the follower alone against the real caplanced
// API: it emits an upsert or remove only for what changed, in caplanced's
// order, and after caplanced comes back, the differences and resynced.
func TestFollowerEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	backend := func(name, addr string) config.Backend {
		return config.Backend{Name: name, Address: netip.MustParseAddr(addr), Weight: 100, Check: "tcp://" + addr + ":80"}
	}
	e.startCaplanced(backend("web1", "10.0.1.11"), backend("web2", "10.0.1.12"))

	conn, err := e.bus.DialAs(dbustest.Health(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, release, err := serveHealth1(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	rec := &recorder{}
	f, err := follow(conn, testLogger(t), rec, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	// The follower's state belongs to one goroutine, as in the daemon.
	ctx, cancel := context.WithCancel(context.Background())
	loopDone := make(chan struct{})
	defer func() { cancel(); <-loopDone }()
	go func() {
		defer close(loopDone)
		f.start(ctx)
		for {
			select {
			case <-ctx.Done():
				return
			case sig, ok := <-f.signals:
				if !ok {
					return
				}
				f.onSignal(ctx, sig)
			case <-f.retry.C:
				f.onRetry(ctx)
			}
		}
	}()
	want := []string{
		"tunnel " + testVIP + " 5555",
		"upsert web1 10.0.1.11 tcp://10.0.1.11:80 config",
		"upsert web2 10.0.1.12 tcp://10.0.1.12:80 config",
		"resynced",
	}
	waitEvents := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cmp.Equal(want, rec.taken()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: events (-want +got):\n%s", what, cmp.Diff(want, rec.taken()))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitEvents("start")

	// A change the follower does not mirror (the weight) emits nothing:
	// the next event is web3's.
	if err := e.registry().SetWeight("web1", 7); err != nil {
		t.Fatal(err)
	}
	if _, err := e.registry().Add("web3", "10.0.1.13", registry.AddOptions{Check: "tcp://10.0.1.13:443"}); err != nil {
		t.Fatal(err)
	}
	want = append(want, "upsert web3 10.0.1.13 tcp://10.0.1.13:443 runtime")
	waitEvents("add")
	if err := e.registry().Remove("web3"); err != nil {
		t.Fatal(err)
	}
	want = append(want, "remove web3")
	waitEvents("remove")

	// caplanced restarts with web1 changed, web2 gone and web4 new: only
	// the differences, then resynced.
	e.stopCaplanced()
	e.startCaplanced(backend("web1", "10.0.1.21"), backend("web4", "10.0.1.14"))
	want = append(want,
		"upsert web1 10.0.1.21 tcp://10.0.1.21:80 config",
		"upsert web4 10.0.1.14 tcp://10.0.1.14:80 config",
		"remove web2",
		"resynced",
	)
	waitEvents("restart")
}
