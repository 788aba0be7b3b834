package registry

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
)

// TestPatchMatchesFullDerivation: after every change of a random sequence,
// the list that patch derived from the touched backends is the list a full
// derivation of the same state gives.
func TestPatchMatchesFullDerivation(t *testing.T) {
	const seed = 10
	rng := rand.New(rand.NewPCG(seed, 0))
	f := newFixture(t, baseConfig())
	rt := &routeTable{none: map[netip.Addr]string{}}
	if err := f.r.UseRoutes(rt.routeErr); err != nil {
		t.Fatal(err)
	}
	for step := range 400 {
		name := fmt.Sprintf("web%d", rng.IntN(8))
		address := fmt.Sprintf("10.0.1.%d", 11+rng.IntN(8))
		var what string
		switch rng.IntN(8) {
		case 0:
			what = "add " + name
			_, _ = f.r.Add(name, address, AddOptions{Runtime: rng.IntN(2) == 0})
		case 1:
			what = "remove " + name
			_ = f.r.Remove(name)
		case 2:
			what = "weight " + name
			_ = f.r.SetWeight(name, int64(rng.IntN(300)))
		case 3:
			what = "drain/undrain " + name
			if f.r.Drain(name) != nil {
				_ = f.r.Undrain(name)
			}
		case 4:
			what = "health " + name
			_, _ = f.r.ReportHealth(name, rng.IntN(2) == 0, fmt.Sprint(rng.IntN(3)))
		case 5:
			what = "route to " + address
			why := ""
			if rng.IntN(2) == 0 {
				why = "network is unreachable"
			}
			rt.set(netip.MustParseAddr(address), why)
			_ = f.r.RoutesChanged()
		case 6:
			what = "route to " + address + " without RoutesChanged"
			rt.set(netip.MustParseAddr(address), "network is unreachable")
		case 7:
			what = "reload"
			cfg := baseConfig()
			if rng.IntN(2) == 0 {
				cfg = append(cfg, config.Backend{Name: name, Address: netip.MustParseAddr(address), Weight: 7})
			}
			_, _ = f.r.Reload(services, cfg)
		}
		f.r.opMu.Lock()
		full := f.r.cur.clone()
		full.base = nil
		f.r.derive(full)
		f.r.opMu.Unlock()
		if diff := cmp.Diff(full.list, f.r.List(), cmpOpts); diff != "" {
			t.Fatalf("step %d (%s): the list differs from a full derivation (-full +list):\n%s", step, what, diff)
		}
	}
}
