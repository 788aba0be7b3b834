package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/testbed"
)

// HTTP load through the VIP: ab (apache2-utils) from the client, abClients
// requests in flight, a new connection for each (no keep-alive: every
// request is a new flow, as many clients make), for abDuration after a
// warm-up of abWarmupRequests.
const (
	abClients        = 50
	abDuration       = 5 * time.Second
	abWarmupRequests = 500
)

// BenchmarkHTTP serves HTTP through the VIP to the testbed's three backends
// (user-space HTTP servers on the VIP, which the receivers put on lo), once
// with the balancer host forwarding in the kernel (a multipath route for the
// VIP over the three backends, hashed on the 5-tuple) and then through
// caplanced, raw sockets and then AF_XDP (the backends' receivers
// decapsulate), in the same
// run and lab. It reports requests per second, latency p50 and p99, and
// caplanced's rate as a fraction of the kernel's (x-kernel); it asserts
// that every request succeeded, nothing about speed. Run it with
// `make bench-http`, or
//
//	go test -run '^$' -bench HTTP -benchtime 1x ./internal/e2e/
//
// Sub-benchmarks: kernel-forwarding, caplanced (dataplane raw), then
// caplanced-xdp (dataplane xdp).
func BenchmarkHTTP(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("the HTTP benchmark needs root (network namespaces)")
	}
	tb, err := testbed.New(testbed.Options{Binary: caplancedBin, Prefix: "htb", Backends: 3, Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := tb.Close(); err != nil {
			b.Error(err)
		}
	})
	// The client sends to the VIP through the balancer host whichever
	// forwards it (the backends hold the VIP too, on lo).
	if err := tb.Client.AddRoute(netip.PrefixFrom(testbed.VIP, 32), testbed.LBAddr); err != nil {
		b.Fatal(err)
	}
	var kernel *abResult
	b.Run("kernel-forwarding", func(b *testing.B) {
		lb := tb.LB
		for _, s := range [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv4/fib_multipath_hash_policy", "1"}, {"net/ipv4/conf/all/send_redirects", "0"}, {"net/ipv4/conf/eth0/send_redirects", "0"}} {
			if err := lb.SetSysctl(s[0], s[1]); err != nil {
				b.Fatal(err)
			}
		}
		args := []string{"route", "add", netip.PrefixFrom(testbed.VIP, 32).String()}
		for _, be := range tb.Backends {
			args = append(args, "nexthop", "via", be.Addr.String(), "dev", "eth0")
		}
		if out, err := lb.Command(context.Background(), "ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		defer func() {
			out, err := lb.Command(context.Background(), "ip", "route", "del", netip.PrefixFrom(testbed.VIP, 32).String()).CombinedOutput()
			if err == nil {
				err = lb.SetSysctl("net/ipv4/ip_forward", "0")
			}
			if err != nil {
				b.Errorf("undoing kernel forwarding: %v: %s", err, out)
			}
		}()
		kernel = runAB(b, tb)
		kernel.report(b, "kernel forwarding", nil)
	})
	for _, run := range []struct{ name, dataplane, what string }{
		{"caplanced", "raw", "caplanced (raw sockets), default workers"},
		{"caplanced-xdp", "xdp", "caplanced (AF_XDP), a worker per receive queue"},
	} {
		b.Run(run.name, func(b *testing.B) {
			tb.SetDataplane(run.dataplane)
			if err := tb.StartBalancer(); err != nil {
				b.Fatal(err)
			}
			defer func() {
				if err := tb.Balancer.Stop(); err != nil {
					b.Error(err)
				}
				tb.Balancer = nil
			}()
			runAB(b, tb).report(b, run.what, kernel)
		})
	}
}

// abResult is what one ab run measured.
type abResult struct {
	rps        float64
	complete   int
	p50, p99   float64 // milliseconds
	mean, long float64 // milliseconds: mean time per request, longest
}

// runAB checks that the VIP's requests reach every backend, then runs ab
// from the client against the VIP, a warm-up and then the measured run, and
// reads its report and percentiles.
func runAB(b *testing.B, tb *testbed.Testbed) *abResult {
	b.Helper()
	// 60 new connections: each backend's chance of none is (2/3)^60.
	served := map[string]bool{}
	client := tb.HTTPClient(false)
	for range 60 {
		name, err := testbed.Get(client, "/")
		if err != nil {
			b.Fatal(err)
		}
		served[name] = true
	}
	if len(served) != len(tb.Backends) {
		b.Fatalf("60 requests to the VIP reached %v, not all %d backends", served, len(tb.Backends))
	}
	url := "http://" + testbed.VIP.String() + "/"
	ab := func(csv string, args ...string) string {
		args = append(append([]string{"-q", "-r", "-c", strconv.Itoa(abClients)}, args...), "-e", csv, url)
		out, err := tb.Client.Command(context.Background(), "ab", args...).CombinedOutput()
		if err != nil {
			b.Fatalf("ab %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	csv := filepath.Join(b.TempDir(), "percentiles.csv")
	ab(csv, "-n", strconv.Itoa(abWarmupRequests))
	// -t caps the requests at 50,000 unless -n follows it.
	out := ab(csv, "-t", strconv.Itoa(int(abDuration.Seconds())), "-n", "10000000")
	r := &abResult{}
	fields := map[string]*float64{"Requests per second": &r.rps, "Time per request": &r.mean}
	var failed, non2xx float64
	fields["Failed requests"], fields["Non-2xx responses"] = &failed, &non2xx
	var complete float64
	fields["Complete requests"] = &complete
	for _, line := range strings.Split(out, "\n") {
		name, val, ok := strings.Cut(line, ":")
		if p := fields[strings.TrimSpace(name)]; ok && p != nil && *p == 0 {
			*p, _ = strconv.ParseFloat(strings.Fields(val)[0], 64)
		}
	}
	r.complete = int(complete)
	if r.complete == 0 || failed != 0 || non2xx != 0 {
		b.Fatalf("ab: %d requests complete, %.0f failed, %.0f not 2xx:\n%s", r.complete, failed, non2xx, out)
	}
	pct, err := readPercentiles(csv)
	if err != nil {
		b.Fatal(err)
	}
	r.p50, r.p99, r.long = pct[50], pct[99], pct[100]
	return r
}

// abPercentileLine is a line of ab's -e file: "percent,milliseconds".
var abPercentileLine = regexp.MustCompile(`^(\d+),([0-9.]+)$`)

// readPercentiles reads ab's -e file: the time within which each percentage
// of the requests was served, in milliseconds.
func readPercentiles(path string) (map[int]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ab's percentiles: %w", err)
	}
	defer f.Close()
	pct := map[int]float64{}
	for s := bufio.NewScanner(f); s.Scan(); {
		if m := abPercentileLine.FindStringSubmatch(strings.TrimSpace(s.Text())); m != nil {
			p, _ := strconv.Atoi(m[1])
			pct[p], _ = strconv.ParseFloat(m[2], 64)
		}
	}
	if _, ok := pct[99]; !ok {
		return nil, fmt.Errorf("ab's percentiles in %s: no 99%% line", path)
	}
	return pct, nil
}

// report reports r's metrics and logs them; kernel, when known, is the
// kernel-forwarding result it is compared with.
func (r *abResult) report(b *testing.B, what string, kernel *abResult) {
	b.ReportMetric(r.rps, "req/s")
	b.ReportMetric(r.p50, "p50-ms")
	b.ReportMetric(r.p99, "p99-ms")
	var ratio string
	if kernel != nil && kernel.rps > 0 {
		b.ReportMetric(r.rps/kernel.rps, "x-kernel")
		ratio = fmt.Sprintf(" = %.2f× kernel forwarding", r.rps/kernel.rps)
	}
	b.Logf("%s: %d requests at concurrency %d in %v: %.0f req/s%s; latency mean %.2f ms, p50 %.1f ms, p99 %.1f ms, longest %.1f ms",
		what, r.complete, abClients, abDuration, r.rps, ratio, r.mean, r.p50, r.p99, r.long)
}
