package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/fleetlab"
	"github.com/caplance/caplance/internal/testbed"
)

// converge bounds how long BGP and BFD may take to bring a path up or down
// at the router: generous, for a busy machine.
const converge = 30 * time.Second

// TestFleet runs three balancers behind a router's ECMP, each announcing
// the VIP through its own BIRD (the shipped contrib/bird snippet) over BGP
// with BFD, and proves what a fleet promises: the router spreads flows over
// every balancer, a flow reaches the same backend whichever balancer it
// crosses, rolling restarts, a dead balancer and a joining one break no
// connection, maintenance withdraws a balancer without breaking any, and
// a balancer with nothing to serve leaves the router's route. It does so
// once per data plane; the subtests share one lab and run in order; each
// leaves every started balancer up.
func TestFleet(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces)")
	}
	for _, dataplane := range []string{"raw", "xdp"} {
		t.Run(dataplane, func(t *testing.T) { testFleet(t, dataplane) })
	}
}

func testFleet(t *testing.T, dataplane string) {
	// Each balancer serves its D-Bus API on a private bus of its own.
	const maxBalancers = 4
	buses := map[string]*dbustest.Bus{}
	for i := range maxBalancers {
		buses[fleetlab.BalancerName(i)] = dbustest.Start(t)
	}
	lab, err := fleetlab.New(fleetlab.Options{
		Caplanced: caplancedBin, Prefix: "fleet", Dir: t.TempDir(),
		Balancers: 3, MaxBalancers: maxBalancers, Backends: 3, Workers: 1, WithdrawDelay: 2 * time.Second, IPv6: true,
		Dataplane: dataplane,
		Bus:       func(name string) (string, error) { return buses[name].Address, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Error(err)
		}
	})

	t.Run("BGPAndECMP", func(t *testing.T) {
		// New waited for the router's route to have the three next hops.
		got, err := lab.RouterBird.Protocols()
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range lab.Balancers {
			if got[b.Name] != "Established" {
				t.Errorf("the router's BGP session with %s: %q, want Established", b.Name, got[b.Name])
			}
			own, err := b.Bird.Protocols()
			if err != nil {
				t.Fatal(err)
			}
			if own["uplink"] != "Established" {
				t.Errorf("%s's BGP session with the router: %q, want Established", b.Name, own["uplink"])
			}
		}
		hops, err := lab.NextHops(testbed.VIP)
		if diff := cmp.Diff(lab.Addrs(), hops, cmpopts.EquateComparable(netip.Addr{})); err != nil || diff != "" {
			t.Errorf("the router's next hops to the VIP (-want +got):\n%s%v", diff, err)
		}
	})

	t.Run("SameBackendThroughEveryBalancer", func(t *testing.T) {
		ports := make([]uint16, 1000)
		for i := range ports {
			ports[i] = uint16(20000 + i)
		}
		before := received(t, lab)
		flows, err := lab.TraceFlows(ports)
		if err != nil {
			t.Fatal(err)
		}
		after := received(t, lab)
		// What each balancer counted is what the backends got from it, and each
		// carries a share: an even split gives a third, a sixth is far below
		// any likely draw.
		want := make([]uint64, len(lab.Balancers))
		var viaRouter []string
		for _, f := range flows {
			want[slices.Index(lab.Balancers, f.Balancer)]++
			viaRouter = append(viaRouter, f.Backend)
		}
		got := diffCounts(before, after)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("packets each balancer received of %d flows through the router (-the backends got from it +it counted):\n%s", len(ports), diff)
		}
		for i, b := range lab.Balancers {
			if got[i] < uint64(len(ports)/6) {
				t.Errorf("%s received %d of the %d flows through the router, want at least a sixth", b.Name, got[i], len(ports))
			}
		}
		t.Logf("packets received of %d flows through the router: %v", len(ports), got)
		if backends := distinct(viaRouter); len(backends) != len(lab.Backends) {
			t.Errorf("the flows reached backends %v, want all %d", backends, len(lab.Backends))
		}
		sameThroughEach(t, lab, testbed.VIP, ports, viaRouter)
	})

	// The same over IPv6: a session per balancer over IPv6 (the snippet's
	// caplance_router6), the router's IPv6 multipath route, and IPv6 flows
	// (6-in-6 to the backends) reaching one backend whatever the path.
	t.Run("IPv6", func(t *testing.T) {
		got, err := lab.RouterBird.Protocols()
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range lab.Balancers {
			if got[b.Name+"v6"] != "Established" {
				t.Errorf("the router's IPv6 BGP session with %s: %q, want Established", b.Name, got[b.Name+"v6"])
			}
		}
		hops, err := lab.NextHops(testbed.VIP6)
		if diff := cmp.Diff(lab.Addrs6(), hops, cmpopts.EquateComparable(netip.Addr{})); err != nil || diff != "" {
			t.Errorf("the router's next hops to %v (-want +got):\n%s%v", testbed.VIP6, diff, err)
		}
		ports := make([]uint16, 300)
		for i := range ports {
			ports[i] = uint16(22000 + i)
		}
		viaRouter, err := lab.EchoFlows(testbed.VIP6, ports)
		if err != nil {
			t.Fatal(err)
		}
		if backends := distinct(viaRouter); len(backends) != len(lab.Backends) {
			t.Errorf("the IPv6 flows reached backends %v, want all %d", backends, len(lab.Backends))
		}
		sameThroughEach(t, lab, testbed.VIP6, ports, viaRouter)
	})

	t.Run("RollingRestart", func(t *testing.T) {
		conns, load := startTraffic(t, lab)
		for _, b := range lab.Balancers {
			if err := lab.Restart(b); err != nil {
				t.Fatalf("restart %s: %v", b.Name, err)
			}
			// The next restart waits until this balancer is back in the
			// router's route, as an operator's script would.
			if err := lab.WaitAll(converge); err != nil {
				t.Fatal(err)
			}
			if err := conns.WaitExchanges(conns.Exchanges(), 3, converge); err != nil {
				t.Fatalf("after restarting %s: %v", b.Name, err)
			}
		}
		stopTraffic(t, conns, load)
	})

	// A dead balancer: every process of its namespace killed at once
	// (its kernel still closes BIRD's BGP connection), then one whose power
	// is cut (its link goes first, so only BFD tells the router).
	t.Run("DeadBalancer", func(t *testing.T) { killBalancer(t, lab, lab.Balancers[2], false) })
	t.Run("PowerCut", func(t *testing.T) { killBalancer(t, lab, lab.Balancers[0], true) })

	t.Run("JoiningBalancer", func(t *testing.T) {
		conns, load := startTraffic(t, lab)
		joined, err := lab.AddBalancer()
		if err != nil {
			t.Fatal(err)
		}
		if err := lab.WaitAll(converge); err != nil {
			t.Fatal(err)
		}
		if err := conns.WaitExchanges(conns.Exchanges(), 3, converge); err != nil {
			t.Error(err)
		}
		stopTraffic(t, conns, load)
		if n := received(t, lab)[3]; n == 0 {
			t.Errorf("%s joined but carried nothing", joined.Name)
		}
	})

	t.Run("Maintenance", func(t *testing.T) {
		conns, load := startTraffic(t, lab)
		b := lab.Balancers[0]
		maintenance := func(state string) {
			t.Helper()
			out, err := exec.Command(caplancectlBin, "--bus", buses[b.Name].Address, "maintenance", state).CombinedOutput()
			if err != nil {
				t.Fatalf("caplancectl maintenance %s on %s: %v\n%s", state, b.Name, err, out)
			}
		}
		on := time.Now()
		maintenance("on")
		if err := lab.WaitNextHops(testbed.VIP, lab.Addrs(b), converge); err != nil {
			t.Fatal(err)
		}
		if err := lab.WaitNextHops(testbed.VIP6, lab.Addrs6(b), converge); err != nil {
			t.Fatal(err)
		}
		withdrawn := time.Since(on)
		if err := conns.WaitExchanges(conns.Exchanges(), 3, converge); err != nil {
			t.Error(err)
		}
		off := time.Now()
		maintenance("off")
		if err := lab.WaitAll(converge); err != nil {
			t.Fatal(err)
		}
		t.Logf("maintenance on at %s: out of the router's routes after %v; off at %s: back after %v",
			on.Format("15:04:05.000"), withdrawn.Round(time.Millisecond), off.Format("15:04:05.000"), time.Since(off).Round(time.Millisecond))
		stopTraffic(t, conns, load)
	})

	t.Run("NoHealthyBackendWithdraws", func(t *testing.T) {
		sick := lab.Balancers[1]
		mgr := buses[sick.Name].Connect(t).Object(dbusname.BusName, dbusname.ManagerPath)
		for _, be := range lab.Backends {
			call(t, mgr, "ReportHealth", be.Name, false, "test: down on "+sick.Name)
		}
		if err := lab.WaitNextHops(testbed.VIP, lab.Addrs(sick), converge); err != nil {
			t.Fatal(err)
		}
		// Its IPv6 service, web6, still has healthy backends: VIP6 stays.
		if err := lab.WaitNextHops(testbed.VIP6, lab.Addrs6(), converge); err != nil {
			t.Error(err)
		}
		// The others still serve every flow, and the sick one gets none.
		before := received(t, lab)
		if _, err := lab.EchoFlows(testbed.VIP, []uint16{21000, 21001, 21002, 21003, 21004, 21005, 21006, 21007}); err != nil {
			t.Fatal(err)
		}
		if n := received(t, lab)[1] - before[1]; n != 0 {
			t.Errorf("%s, withdrawn, still received %d packets", sick.Name, n)
		}
		for _, be := range lab.Backends {
			call(t, mgr, "ReportHealth", be.Name, true, "test: up again")
		}
		if err := lab.WaitAll(converge); err != nil {
			t.Fatal(err)
		}
	})
}

// killBalancer kills every process of dead at once, after cutting its
// link if cut, under long-lived connections: none may break. It logs the
// failover time, then brings dead back.
func killBalancer(t *testing.T, lab *fleetlab.Lab, dead *fleetlab.Balancer, cut bool) {
	conns, err := lab.StartConns(30, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conns.Stop() })
	if err := conns.WaitExchanges(make([]int, 30), 3, converge); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if cut {
		if err := dead.SetLink(false); err != nil {
			t.Fatal(err)
		}
	}
	if err := dead.KillAll(); err != nil {
		t.Fatal(err)
	}
	if err := lab.WaitNextHops(testbed.VIP, lab.Addrs(dead), converge); err != nil {
		t.Fatal(err)
	}
	rerouted := time.Since(killed)
	if err := conns.WaitExchanges(conns.Exchanges(), 3, converge); err != nil {
		t.Error(err)
	}
	rep := conns.Stop()
	t.Logf("%s dead: the router dropped it after %v; of %d long-lived connections %d stalled, the longest for %v; %d broke",
		dead.Name, rerouted.Round(time.Millisecond), rep.Conns, rep.Stalled, rep.MaxGap.Round(time.Millisecond), len(rep.Broken))
	for _, err := range rep.Broken {
		t.Error(err)
	}
	if cut {
		if err := dead.SetLink(true); err != nil {
			t.Fatal(err)
		}
	}
	if err := lab.Start(dead); err != nil {
		t.Fatalf("bring %s back: %v", dead.Name, err)
	}
	if err := lab.WaitAll(converge); err != nil {
		t.Fatal(err)
	}
}

// startTraffic starts 30 long-lived connections, each sending a request
// every 100 ms, and ab with 4 concurrent clients, and waits until every
// connection has had an answer. Both stop at the end of the test if
// stopTraffic has not stopped them before.
func startTraffic(t *testing.T, lab *fleetlab.Lab) (*fleetlab.Conns, *fleetlab.Load) {
	t.Helper()
	conns, err := lab.StartConns(30, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conns.Stop() })
	load, err := lab.StartLoad(4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(load.Close)
	if err := conns.WaitExchanges(make([]int, 30), 1, converge); err != nil {
		t.Fatal(err)
	}
	return conns, load
}

// stopTraffic stops the traffic of startTraffic and fails the test on any
// failed request or broken connection.
func stopTraffic(t *testing.T, conns *fleetlab.Conns, load *fleetlab.Load) {
	t.Helper()
	rep := conns.Stop()
	res, err := load.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ab: %d requests, %d failed; %d long-lived connections: %d answers, longest wait %v (%s), %d broken",
		res.Complete, res.Failed, rep.Conns, rep.Exchanges, rep.MaxGap.Round(time.Millisecond), rep.Slowest, len(rep.Broken))
	if res.Complete == 0 || res.Failed != 0 {
		t.Errorf("ab: %d requests, %d failed, want some and none failed:\n%s", res.Complete, res.Failed, res.Output)
	}
	for _, err := range rep.Broken {
		t.Error(err)
	}
}

// received returns how many packets each balancer has read from its VIP
// sockets, from stats written after the call.
func received(t *testing.T, lab *fleetlab.Lab) []uint64 {
	t.Helper()
	now := time.Now()
	out := make([]uint64, len(lab.Balancers))
	errs := make([]error, len(lab.Balancers))
	var wg sync.WaitGroup
	for i, b := range lab.Balancers {
		wg.Go(func() {
			st, err := b.Caplanced.Stats(now)
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w", b.Name, err)
				return
			}
			out[i] = st.Balancer.Received
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func diffCounts(before, after []uint64) []uint64 {
	out := make([]uint64, len(after))
	for i := range after {
		out[i] = after[i] - before[i]
	}
	return out
}

func distinct(names []string) []string {
	out := slices.Clone(names)
	slices.Sort(out)
	return slices.Compact(out)
}

// sameThroughEach sends the flows from ports to vip through each balancer
// alone (the client routes the VIP to it) and checks that each reaches the
// backend it reached through the router, viaRouter.
func sameThroughEach(t *testing.T, lab *fleetlab.Lab, vip netip.Addr, ports []uint16, viaRouter []string) {
	t.Helper()
	t.Cleanup(func() {
		if err := lab.Via(nil); err != nil {
			t.Error(err)
		}
	})
	for _, b := range lab.Balancers {
		if err := lab.Via(b); err != nil {
			t.Fatal(err)
		}
		direct, err := lab.EchoFlows(vip, ports)
		if err != nil {
			t.Fatalf("through %s: %v", b.Name, err)
		}
		if diff := cmp.Diff(viaRouter, direct); diff != "" {
			t.Errorf("backends of the flows to %v through the router and through %s alone (-router +%s):\n%s", vip, b.Name, b.Name, diff)
		}
	}
}
