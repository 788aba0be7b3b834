// Command demo shows Caplance at work (`make demo`, as root): it builds a
// client, a balancer and four backends in network namespaces, runs the real
// caplanced as balancer (two services, HTTP on one VIP and UDP on another,
// each over its own pool; its D-Bus API on a private bus) and receivers,
// sends HTTP requests and UDP queries, adds a third service live with
// caplancectl (source-ip hashing) and an IPv6 one over IPv6 backends, sends
// more, prints which backend served
// each flow and the counters per service and backend, and removes every
// namespace and process on exit, Ctrl-C or failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/testbed"
)

func main() {
	caplanced := flag.String("caplanced", "bin/caplanced", "the caplanced `binary` to run")
	caplancectl := flag.String("caplancectl", "bin/caplancectl", "the caplancectl `binary` to run")
	requests := flag.Int("requests", 20, "how many flows to open before and after the live change")
	flag.Parse()
	if err := run(*caplanced, *caplancectl, *requests); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(caplanced, caplancectl string, requests int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: the demo creates network namespaces")
	}
	dir, err := os.MkdirTemp("", "caplance-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// The balancer's D-Bus API, on a private bus with the shipped policy.
	policy, err := filepath.Abs(dbustest.PolicyDir) // make demo runs in the repository's root
	if err != nil {
		return err
	}
	bus, stopBus, err := dbustest.Run(dir, policy, false)
	if err != nil {
		return err
	}
	defer stopBus()

	fmt.Println("Building the lab: client, balancer, 4 backends (receiver + HTTP server each)…")
	tb, err := testbed.New(testbed.Options{Binary: caplanced, Prefix: "demo", Backends: 4, Dir: dir, BalancerBus: bus.Address, IPv6: true})
	if err != nil {
		return err
	}
	// Ctrl-C or SIGTERM: tear down before exiting.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		tb.Close() // idempotent: the deferred Close below may run too
	}()
	defer func() {
		if err := tb.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: cleanup:", err)
		}
		fmt.Println("Removed every namespace and process.")
	}()
	lb, err := tb.StartDaemon(tb.LB, "lb", tb.ServicesConfig(), bus.Address)
	if err != nil {
		return err
	}
	tb.Balancer = lb
	fmt.Printf("caplanced balances two services: web (HTTP, %s:%d) over be1 and be2, dns (UDP, %s:%d) over be2 and be3.\n",
		testbed.VIP, testbed.HTTPPort, testbed.VIP2, testbed.DNSPort)
	ctl := func(args ...string) error {
		fmt.Printf("$ caplancectl %s\n", strings.Join(args, " "))
		out, err := exec.Command(caplancectl, append([]string{"--bus", bus.Address}, args...)...).CombinedOutput()
		fmt.Print(string(out))
		if err != nil {
			return fmt.Errorf("caplancectl %s: %v", args[0], err)
		}
		return nil
	}
	if err := ctl("list"); err != nil {
		return err
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "\nflow\tclient → service\tserved by")
	flow := 0
	show := func(local string, to netip.AddrPort, name string) {
		flow++
		fmt.Fprintf(w, "%d\t%s → %s\t%s\n", flow, local, to, name)
	}
	get := func(vip netip.Addr) error {
		var local string
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) { local = ci.Conn.LocalAddr().String() }}
		to := netip.AddrPortFrom(vip, testbed.HTTPPort)
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, "http://"+to.String()+"/", nil)
		if err != nil {
			return err
		}
		name, err := testbed.Do(tb.HTTPClient(false), req)
		if err != nil {
			return fmt.Errorf("flow %d: %w", flow+1, err)
		}
		show(local, to, name)
		return nil
	}
	query := func() error {
		to := netip.AddrPortFrom(testbed.VIP2, testbed.DNSPort)
		c, err := tb.DialUDP(to)
		if err != nil {
			return err
		}
		defer c.Close()
		name, err := testbed.Echo(c, []byte("query"))
		if err != nil {
			return fmt.Errorf("flow %d: %w", flow+1, err)
		}
		show(c.LocalAddr().String(), to, name)
		return nil
	}
	for range requests / 2 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := get(testbed.VIP); err != nil {
			return err
		}
		if err := query(); err != nil {
			return err
		}
	}
	w.Flush()

	fmt.Println("\nA third service, live, no restart: every client address sticks to one backend.")
	if err := ctl("add-service", "api", "--vip", testbed.VIP3.String(), "--port", "80", "--proto", "tcp", "--hash", "source-ip"); err != nil {
		return err
	}
	for _, be := range []*testbed.Backend{tb.Backends[0], tb.Backends[3]} {
		if err := ctl("add-backend", "--service", "api", "api-"+be.Name, be.Addr.String()); err != nil {
			return err
		}
	}
	if err := ctl("list"); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nflow\tclient → service\tserved by")
	for range requests / 2 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := get(testbed.VIP3); err != nil {
			return err
		}
	}
	w.Flush()

	w.Flush()

	fmt.Println("\nAn IPv6 service, live: IPv6 clients over IPv6 backends (6-in-6 tunnels).")
	if err := ctl("add-service", "web6", "--vip", testbed.VIP6.String(), "--port", "80", "--proto", "tcp"); err != nil {
		return err
	}
	for _, be := range tb.Backends[2:] {
		if err := ctl("add-backend", "--service", "web6", "web6-"+be.Name, be.Addr6.String()); err != nil {
			return err
		}
	}
	fmt.Fprintln(w, "\nflow\tclient → service\tserved by")
	for range requests / 2 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := get(testbed.VIP6); err != nil {
			return err
		}
	}
	w.Flush()

	// Counters written after the last flow (stats.json is rewritten every second).
	st, err := tb.Balancer.Stats(time.Now())
	if err != nil {
		return err
	}
	fmt.Println("\nBalancer counters (stats.json):")
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "service\tnew flows\tpackets\tbytes\t")
	for _, s := range st.Balancer.Services {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t\n", s.Name, s.NewFlows, s.Packets, s.Bytes)
	}
	fmt.Fprintln(w, "backend\tnew flows\tpackets\tbytes\t")
	for _, b := range st.Balancer.Backends {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t\n", b.Name, b.NewFlows, b.Packets, b.Bytes)
	}
	w.Flush()
	fmt.Printf("received %d, forwarded %d, connection tracking holds %d flows\n",
		st.Balancer.Received, st.Balancer.Forwarded, st.Balancer.ConntrackSize)
	return nil
}
