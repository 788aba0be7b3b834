package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/dbusname"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/metricstest"
	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/testbed"
)

// The metrics endpoints, on the balancer host's loopback.
const (
	caplancedMetrics = "127.0.0.1:9469"
	healthdMetrics   = "127.0.0.1:9470"
)

// The contrib files whose metric names must all exist.
var contribFiles = []string{"../../contrib/prometheus/caplance.rules.yml", "../../contrib/grafana/caplance.json"}

// TestMetrics scrapes the real caplanced and caplance-healthd over
// metrics.listen: promtool finds nothing to say, the numbers are the data
// path's, reloads are counted, and every metric the contrib alert rules and
// dashboard use exists.
func TestMetrics(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces)")
	}
	bus := dbustest.Start(t)
	tb := openTestbed(t, testbed.Options{Prefix: "met", Backends: 2, Workers: 2, BalancerBus: bus.Address})
	be1, be2 := tb.Backends[0], tb.Backends[1]
	cfg := tb.BalancerConfig(nil) +
		backendWithCheck(be1, "http://:80/?"+tunables) +
		backendWithCheck(be2, "tcp://:80?"+tunables) +
		fmt.Sprintf("\n[metrics]\nlisten = %q\n", caplancedMetrics)
	d, err := tb.StartDaemon(tb.LB, "lb", cfg, bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	tb.Balancer = d
	if _, err := tb.StartHealthdWith(tb.LB, healthdBin, bus.Address, fmt.Sprintf("[metrics]\nlisten = %q\n", healthdMetrics)); err != nil {
		t.Fatal(err)
	}
	mgr := bus.Connect(t).Object(dbusname.BusName, dbusname.ManagerPath)
	waitHealth(t, mgr, map[string]string{be1.Name: "up", be2.Name: "up"}, 5*time.Second)

	const requests = 6
	client := tb.HTTPClient(false)
	for range requests {
		if _, err := testbed.Get(client, "/"); err != nil {
			t.Fatal(err)
		}
	}
	// Each request was a new connection: a new flow given a backend by
	// the table. Health probes go to the backends' own addresses, not
	// through the balancer.
	flows := func(s map[string]float64) float64 {
		return s[fmt.Sprintf(`caplance_backend_new_flows_total{backend=%q,service="default"}`, be1.Name)] +
			s[fmt.Sprintf(`caplance_backend_new_flows_total{backend=%q,service="default"}`, be2.Name)]
	}
	var lb string
	eventually(t, "the scrape counts every request's flow", func() error {
		lb = scrape(t, tb.LB, caplancedMetrics)
		if got := flows(metricstest.Samples(t, lb)); got != requests {
			return fmt.Errorf("new flows %v, want %d", got, requests)
		}
		return nil
	})
	metricstest.Check(t, lb)
	s := metricstest.Samples(t, lb)
	for _, b := range []string{be1.Name, be2.Name} {
		for _, sample := range []string{
			fmt.Sprintf(`caplance_backend_health{backend=%q,service="default",state="up"}`, b),
			fmt.Sprintf(`caplance_backend_state{backend=%q,service="default",state="active"}`, b),
			fmt.Sprintf(`caplance_backend_admin_state{backend=%q,service="default",state="active"}`, b),
		} {
			if s[sample] != 1 {
				t.Errorf("%s = %v, want 1", sample, s[sample])
			}
		}
	}
	if got := s[`caplance_service_packets_total{service="default"}`]; got < requests*3 { // SYN, ACK, request, ACK, FIN at least
		t.Errorf("caplance_service_packets_total = %v, want at least %d for %d HTTP requests", got, requests*3, requests)
	}
	var info []string
	for k, v := range s {
		if strings.HasPrefix(k, "caplance_dataplane_info{") && v == 1 {
			info = append(info, k)
		}
	}
	if len(info) != 1 || !regexp.MustCompile(`mode="(raw|xdp)"`).MatchString(info[0]) {
		t.Errorf("data plane info %v, want one, of mode raw or xdp", info)
	}
	if s[`caplance_maglev_table_build_duration_seconds_count{service="default"}`] < 1 {
		t.Errorf("no table build counted:\n%s", lb)
	}

	t.Run("reloads are counted by result", func(t *testing.T) {
		changed := tb.BalancerConfig(nil) + fmt.Sprintf("\n[metrics]\nlisten = %q\n", "127.0.0.1:9471")
		if err := tb.Balancer.Reload(changed); err != nil {
			t.Fatal(err)
		}
		s := metricstest.Samples(t, scrape(t, tb.LB, caplancedMetrics))
		want := map[string]float64{`caplance_config_reloads_total{result="refused"}`: 1, `caplance_config_reloads_total{result="success"}`: 0, `caplance_config_last_reload_successful`: 0}
		for k, v := range want {
			if s[k] != v {
				t.Errorf("after a refused reload (metrics.listen changed): %s = %v, want %v", k, s[k], v)
			}
		}
		if err := tb.Balancer.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		s = metricstest.Samples(t, scrape(t, tb.LB, caplancedMetrics))
		want = map[string]float64{`caplance_config_reloads_total{result="refused"}`: 1, `caplance_config_reloads_total{result="success"}`: 1, `caplance_config_last_reload_successful`: 1}
		for k, v := range want {
			if s[k] != v {
				t.Errorf("after a successful reload: %s = %v, want %v", k, s[k], v)
			}
		}
	})

	var hd string
	eventually(t, "caplance-healthd counts passed probes", func() error {
		hd = scrape(t, tb.LB, healthdMetrics)
		s := metricstest.Samples(t, hd)
		for _, b := range []string{be1.Name, be2.Name} {
			up := fmt.Sprintf(`caplance_healthd_probes_total{backend=%q,result="up",service="default"}`, b)
			count := fmt.Sprintf(`caplance_healthd_probe_duration_seconds_count{backend=%q,service="default"}`, b)
			if s[up] < checkRise || s[count] < s[up] {
				return fmt.Errorf("%s = %v, %s = %v", up, s[up], count, s[count])
			}
		}
		return nil
	})
	metricstest.Check(t, hd)

	t.Run("contrib's alert rules and dashboard use only metrics that exist", func(t *testing.T) {
		out, err := exec.Command(metricstest.Promtool(t), "check", "rules", contribFiles[0]).CombinedOutput()
		if err != nil {
			t.Errorf("promtool check rules: %v\n%s", err, out)
		}
		exist := metricstest.Names(t, lb)
		for n := range metricstest.Names(t, hd) {
			exist[n] = true
		}
		for _, f := range contribFiles {
			used := contribMetrics(t, f)
			if len(used) < 5 {
				t.Errorf("%s: only %v: is the pattern still right?", f, used)
			}
			for _, n := range used {
				if !exist[n] {
					t.Errorf("%s uses %s, which no scrape has", f, n)
				}
			}
		}
	})
}

var metricName = regexp.MustCompile(`\b(?:caplance|go|process)_[a-z0-9_]+\b`)

// contribMetrics are the metric names file uses.
func contribMetrics(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	names := metricName.FindAllString(string(data), -1)
	slices.Sort(names)
	return slices.Compact(names)
}

// scrape fetches /metrics at addr from inside host's network namespace.
func scrape(t *testing.T, host *netnstest.Host, addr string) string {
	t.Helper()
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
				var c net.Conn
				err := host.Do(func() (err error) {
					c, err = (&net.Dialer{}).DialContext(ctx, network, a)
					return err
				})
				return c, err
			},
		},
	}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %v %s\n%s", addr, err, resp.Status, body)
	}
	return string(body)
}
