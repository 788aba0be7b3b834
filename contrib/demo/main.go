// Command demo shows Caplance at work (`make demo`, as root): it builds a
// client, a balancer and four backends in network namespaces, runs the real
// caplanced as balancer (three backends configured, its D-Bus API on a
// private bus) and receivers, sends HTTP requests through the VIP, adds the
// fourth backend live with caplancectl, sends more, prints which backend
// served each flow and the counters, and removes every namespace and process
// on exit, Ctrl-C or failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/testbed"
)

func main() {
	caplanced := flag.String("caplanced", "bin/caplanced", "the caplanced `binary` to run")
	caplancectl := flag.String("caplancectl", "bin/caplancectl", "the caplancectl `binary` to run")
	requests := flag.Int("requests", 30, "how many HTTP requests to send, half before and half after the live change")
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
	tb, err := testbed.New(testbed.Options{Binary: caplanced, Prefix: "demo", Backends: 4, Dir: dir, BalancerBus: bus.Address})
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
	if err := tb.StartBalancerWith(tb.Backends[:3]); err != nil {
		return err
	}
	fmt.Printf("caplanced balances VIP %s over 3 backends; %s waits.\n\n", testbed.VIP, tb.Backends[3].Name)

	start := time.Now()
	client := tb.HTTPClient(false)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "request\tclient flow\tserved by")
	for i := range requests {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if i == requests/2 {
			w.Flush()
			be := tb.Backends[3]
			args := []string{"--bus", bus.Address, "add-backend", be.Name, be.Addr.String()}
			fmt.Printf("\n$ caplancectl add-backend %s %s   # live, no restart\n", be.Name, be.Addr)
			if out, err := exec.Command(caplancectl, args...).CombinedOutput(); err != nil {
				return fmt.Errorf("caplancectl: %v: %s", err, out)
			}
			out, _ := exec.Command(caplancectl, "--bus", bus.Address, "list").CombinedOutput()
			fmt.Printf("$ caplancectl list\n%s\n", out)
			fmt.Fprintln(w, "request\tclient flow\tserved by")
		}
		var local string
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) { local = ci.Conn.LocalAddr().String() }}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet,
			fmt.Sprintf("http://%s:%d/", testbed.VIP, testbed.HTTPPort), nil)
		if err != nil {
			return err
		}
		name, err := testbed.Do(client, req)
		if err != nil {
			return fmt.Errorf("request %d: %w", i+1, err)
		}
		fmt.Fprintf(w, "%d\t%s → %s:%d\t%s\n", i+1, local, testbed.VIP, testbed.HTTPPort, name)
	}
	w.Flush()

	st, err := tb.Balancer.Stats(start)
	if err != nil {
		return err
	}
	fmt.Println("\nBalancer counters (stats.json):")
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "backend\tnew flows\tpackets\tbytes\tdelivered by its receiver\t")
	for _, b := range st.Balancer.Backends {
		delivered := "?"
		for _, be := range tb.Backends {
			if be.Name == b.Name {
				if rs, err := be.Receiver.Stats(start); err == nil {
					delivered = fmt.Sprint(rs.Receiver.Delivered)
				}
			}
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%s\t\n", b.Name, b.NewFlows, b.Packets, b.Bytes, delivered)
	}
	w.Flush()
	fmt.Printf("received %d, forwarded %d, connection tracking holds %d flows\n",
		st.Balancer.Received, st.Balancer.Forwarded, st.Balancer.ConntrackSize)
	return nil
}
