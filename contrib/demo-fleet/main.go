// Command demo-fleet shows a fleet of Caplance balancers behind a router's
// ECMP (`make demo-fleet`, as root): it builds a client, a router running
// BIRD, three balancers each running BIRD (the shipped contrib/bird snippet)
// and caplanced, and three backends in network namespaces (package
// fleetlab); shows the BGP sessions and the router's multipath route; sends
// UDP flows through the router and through each balancer alone; restarts
// the three balancers one after another under HTTP load and long-lived
// connections; puts one balancer in maintenance with caplancectl; and
// prints which balancer and backend served each flow before, during the
// maintenance and after. It removes every namespace and process on exit,
// Ctrl-C or failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/fleetlab"
	"github.com/caplance/caplance/internal/testbed"
)

func main() {
	caplanced := flag.String("caplanced", "bin/caplanced", "the caplanced `binary` to run")
	caplancectl := flag.String("caplancectl", "bin/caplancectl", "the caplancectl `binary` to run")
	flows := flag.Int("flows", 12, "how many UDP flows to follow")
	flag.Parse()
	if err := run(*caplanced, *caplancectl, *flows); err != nil {
		fmt.Fprintln(os.Stderr, "demo-fleet:", err)
		os.Exit(1)
	}
}

func run(caplanced, caplancectl string, flows int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: the demo creates network namespaces")
	}
	dir, err := os.MkdirTemp("", "caplance-demo-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// Each balancer's D-Bus API, on a private bus with the shipped policy.
	policy, err := filepath.Abs(dbustest.PolicyDir) // make demo-fleet runs in the repository's root
	if err != nil {
		return err
	}
	buses := map[string]string{}
	var stops []func()
	bus := func(name string) (string, error) {
		busDir := filepath.Join(dir, "bus-"+name)
		if err := os.MkdirAll(busDir, 0o755); err != nil {
			return "", err
		}
		b, stopBus, err := dbustest.Run(busDir, policy, false)
		if err != nil {
			return "", err
		}
		stops = append(stops, stopBus)
		buses[name] = b.Address
		return b.Address, nil
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()

	fmt.Println("Building the lab: client, router (BIRD), 3 balancers (BIRD + caplanced), 3 backends…")
	lab, err := fleetlab.New(fleetlab.Options{Caplanced: caplanced, Prefix: "dfleet", Dir: dir,
		Balancers: 3, Backends: 3, WithdrawDelay: 2 * time.Second, Bus: bus})
	if err != nil {
		return err
	}
	// Ctrl-C or SIGTERM: tear down before exiting.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		lab.Close() // the deferred Close below may run too; the lab's is idempotent
	}()
	defer func() {
		if err := lab.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo-fleet: cleanup:", err)
		}
		fmt.Println("Removed every namespace and process.")
	}()

	fmt.Printf("\nThe router's BGP sessions (birdc show protocols):\n")
	sessions, err := lab.RouterBird.Protocols()
	if err != nil {
		return err
	}
	for _, b := range lab.Balancers {
		fmt.Printf("  %s (%s): %s\n", b.Name, b.Addr, sessions[b.Name])
	}
	if err := showRoute(lab); err != nil {
		return err
	}

	ports := make([]uint16, flows)
	for i := range ports {
		ports[i] = uint16(40001 + i)
	}
	fmt.Printf("\n%d UDP flows from %s to %s:%d through the router…\n", flows, testbed.ClientAddr, testbed.VIP, testbed.EchoPort)
	before, err := follow(lab, ports)
	if err != nil {
		return err
	}
	fmt.Println("…and through each balancer alone (the client routes the VIP to it directly):")
	alone := make([][]string, len(lab.Balancers))
	for i, b := range lab.Balancers {
		if err := lab.Via(b); err != nil {
			return err
		}
		if alone[i], err = lab.EchoFlows(testbed.VIP, ports); err != nil {
			return fmt.Errorf("through %s: %w", b.Name, err)
		}
	}
	if err := lab.Via(nil); err != nil {
		return err
	}

	fmt.Println("\nRolling restart under load: ab (2 clients, a new connection per request) and")
	fmt.Println("20 long-lived connections sending a request every 100 ms; SIGTERM, then a new start, one balancer at a time.")
	conns, err := lab.StartConns(20, 100*time.Millisecond)
	if err != nil {
		return err
	}
	load, err := lab.StartLoad(2)
	if err != nil {
		conns.Stop()
		return err
	}
	for _, b := range lab.Balancers {
		if ctx.Err() != nil {
			load.Close()
			conns.Stop()
			return ctx.Err()
		}
		seen, err := restart(lab, b)
		if err != nil {
			load.Close()
			conns.Stop()
			return err
		}
		fmt.Printf("  %s restarted; the router's next hops went %s\n", b.Name, strings.Join(seen, " → "))
	}
	rep := conns.Stop()
	res, err := load.Stop()
	if err != nil {
		return err
	}
	fmt.Printf("ab: %d requests, %d failed. Long-lived connections: %d, %d answers, %d broken, longest wait %v.\n",
		res.Complete, res.Failed, rep.Conns, rep.Exchanges, len(rep.Broken), rep.MaxGap.Round(time.Millisecond))
	for _, err := range rep.Broken {
		fmt.Println("  ", err)
	}

	after, err := follow(lab, ports)
	if err != nil {
		return err
	}

	out := lab.Balancers[1]
	fmt.Printf("\nMaintenance: %s withdraws its routes and keeps running.\n", out.Name)
	ctl := func(args ...string) error {
		fmt.Printf("$ caplancectl %s\n", strings.Join(args, " "))
		cmd := exec.Command(caplancectl, append([]string{"--bus", buses[out.Name]}, args...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		return cmd.Run()
	}
	if err := ctl("maintenance", "on"); err != nil {
		return err
	}
	if err := lab.WaitNextHops(testbed.VIP, lab.Addrs(out), 30*time.Second); err != nil {
		return err
	}
	if err := showRoute(lab); err != nil {
		return err
	}
	during, err := follow(lab, ports)
	if err != nil {
		return err
	}
	if err := ctl("maintenance", "off"); err != nil {
		return err
	}
	if err := lab.WaitAll(30 * time.Second); err != nil {
		return err
	}
	if err := showRoute(lab); err != nil {
		return err
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "\nclient port\tbefore\t")
	for _, b := range lab.Balancers {
		fmt.Fprintf(w, "%s alone\t", b.Name)
	}
	fmt.Fprintf(w, "after the rolling restart\t%s in maintenance\t\n", out.Name)
	for i, port := range ports {
		fmt.Fprintf(w, "%d\t%s\t", port, before[i])
		for j := range lab.Balancers {
			fmt.Fprintf(w, "%s\t", alone[j][i])
		}
		fmt.Fprintf(w, "%s\t%s\t\n", after[i], during[i])
	}
	w.Flush()
	fmt.Println("(balancer → backend: the balancer the flow crossed, seen on its link, and the backend that answered.")
	fmt.Println(" Every path gives the same backend; which balancer a flow takes follows the client socket's flow hash.)")
	return nil
}

// showRoute prints the router's route to the VIP: one next hop per balancer.
func showRoute(lab *fleetlab.Lab) error {
	hops, err := lab.NextHops(testbed.VIP)
	if err != nil {
		return err
	}
	fmt.Printf("The router's route to %s: ECMP over %s (L4 hash: fib_multipath_hash_policy=1)\n",
		testbed.VIP, names(lab, hops))
	return nil
}

// follow sends one datagram per port through the router and returns
// "balancer → backend" for each.
func follow(lab *fleetlab.Lab, ports []uint16) ([]string, error) {
	flows, err := lab.TraceFlows(ports)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(flows))
	for i, f := range flows {
		out[i] = f.Balancer.Name + " → " + f.Backend
	}
	return out, nil
}

// restart restarts b's caplanced, waits until the router uses it again,
// and returns the router's successive sets of next hops meanwhile.
func restart(lab *fleetlab.Lab, b *fleetlab.Balancer) ([]string, error) {
	var (
		mu   sync.Mutex
		seen []string
	)
	done := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			if hops, err := lab.NextHops(testbed.VIP); err == nil {
				s := names(lab, hops)
				mu.Lock()
				if len(seen) == 0 || seen[len(seen)-1] != s {
					seen = append(seen, s)
				}
				mu.Unlock()
			}
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	err := lab.Restart(b)
	if err == nil {
		err = lab.WaitAll(30 * time.Second)
	}
	close(done)
	<-watched
	if hops, herr := lab.NextHops(testbed.VIP); herr == nil && seen[len(seen)-1] != names(lab, hops) {
		seen = append(seen, names(lab, hops))
	}
	return seen, err
}

// names writes next hops as balancer names.
func names(lab *fleetlab.Lab, hops []netip.Addr) string {
	var out []string
	for _, b := range lab.Balancers {
		if slices.Contains(hops, b.Addr) {
			out = append(out, b.Name)
		}
	}
	return "[" + strings.Join(out, " ") + "]"
}
