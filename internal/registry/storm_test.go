package registry

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// TestStorm runs 8 goroutines × 125 random changes on overlapping names and
// addresses, then checks that the data path, the watchers and a restart all
// agree with List.
func TestStorm(t *testing.T) {
	const goroutines, ops = 8, 125
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	baseline := runtime.NumGoroutine()

	f := newFixture(t, baseConfig())
	// The watcher keeps a model of the set from the changes alone.
	model := map[string]Backend{}
	for _, b := range f.r.List() {
		model[b.Name] = b
	}
	var inWatch sync.Mutex
	f.r.Watch(func(c Change) {
		if !inWatch.TryLock() {
			t.Errorf("watchers called concurrently")
			return
		}
		defer inWatch.Unlock()
		switch c.Kind {
		case Added, Updated:
			model[c.New.Name] = c.New
		case Removed:
			delete(model, c.Old.Name)
		}
	})

	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			for range ops {
				// web0-web11 overlap the configuration's web1 and web2;
				// 12 addresses for 12 names give address collisions.
				name := fmt.Sprintf("web%d", rng.IntN(12))
				var err error
				switch rng.IntN(6) {
				case 0, 1:
					w := uint32(rng.IntN(400))
					_, err = f.r.Add(name, fmt.Sprintf("10.0.2.%d", rng.IntN(12)+1), AddOptions{Weight: &w, Runtime: rng.IntN(3) == 0})
				case 2:
					err = f.r.Remove(name)
				case 3:
					err = f.r.SetWeight(name, int64(rng.IntN(300)))
				case 4:
					if rng.IntN(2) == 0 {
						err = f.r.Drain(name)
					} else {
						err = f.r.Undrain(name)
					}
				case 5:
					_, err = f.r.ReportHealth(name, rng.IntN(2) == 0, "")
				}
				if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrAlreadyExists) && !errors.Is(err, ErrInvalidArgument) && !errors.Is(err, ErrUnchanged) {
					t.Errorf("%v", err)
				}
			}
		})
	}
	wg.Wait()

	list := f.r.List()
	log := f.dp.log()
	if last := log[len(log)-1]; !last.OK {
		t.Errorf("the last apply call failed")
	}
	if diff := cmp.Diff(dataPath(list), log[len(log)-1].Set, cmpOpts); diff != "" {
		t.Errorf("last applied set vs List (-want +got):\n%s", diff)
	}
	inWatch.Lock()
	got := slices.Collect(maps.Values(model))
	inWatch.Unlock()
	slices.SortFunc(got, func(a, b Backend) int { return strings.Compare(a.Name, b.Name) })
	if diff := cmp.Diff(list, got, cmpOpts); diff != "" {
		t.Errorf("the watcher's model vs List (-want +got):\n%s", diff)
	}
	names, addrs, ids := map[string]bool{}, map[string]bool{}, map[uint32]bool{}
	for _, b := range list {
		if names[b.Name] || addrs[b.Address.String()] || ids[b.ID] {
			t.Errorf("%+v: name, address or ID not unique", b)
		}
		names[b.Name], addrs[b.Address.String()], ids[b.ID] = true, true, true
	}
	t.Logf("%d apply calls, %d backends at the end", len(log), len(list))

	// A restart gives the persistent ones back (health and IDs aside).
	var persistent []Backend
	for _, b := range list {
		if b.Persistent {
			b.Health, b.HealthDetail = HealthUnknown, ""
			persistent = append(persistent, b)
		}
	}
	if w := f.open(t, baseConfig()); len(w) > 0 {
		t.Errorf("warnings after restart: %q", w)
	}
	if diff := cmp.Diff(persistent, f.r.List(), cmpOpts, cmpopts.IgnoreFields(Backend{}, "ID")); diff != "" {
		t.Errorf("after restart (-want +got):\n%s", diff)
	}

	// No goroutine left behind.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		t.Errorf("%d goroutines, %d before", n, baseline)
	}
}
