package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caplance/caplance/internal/balancer"
	"github.com/caplance/caplance/internal/metricstest"
	"github.com/caplance/caplance/internal/receiver"
	"github.com/caplance/caplance/internal/registry"
)

// endpoint serves reg on a loopback port, as the daemons do, until the
// test ends, and returns its URL.
func endpoint(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	ln, err := Listen("127.0.0.1:0", "metrics.listen")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, reg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return "http://" + ln.Addr().String() + Path
}

// get fetches url with the Accept header accept and returns the body and
// its Content-Type.
func get(t *testing.T, url, accept string) (body, contentType string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, data)
	}
	return string(data), resp.Header.Get("Content-Type")
}

func TestCaplanced(t *testing.T) {
	c := NewCaplanced()
	c.TableBuilt("web", 2*time.Millisecond)
	c.TableBuilt("web", 3*time.Millisecond)
	c.Reloaded(errors.New("bad file"))
	reg, err := c.Registry(Source{
		Balancer: func() balancer.Stats {
			return balancer.Stats{
				Services: []balancer.ServiceStats{{Name: "web", Packets: 10, Bytes: 1500, NewFlows: 3, ActiveFlows: 2, InactiveFlows: 1, Drops: 4}},
				Backends: []balancer.BackendStats{{Name: "web1", Service: "web", State: "draining", Packets: 10, Bytes: 1500, NewFlows: 3, ActiveFlows: 2, InactiveFlows: 1}},
				Received: 20, Forwarded: 10, Drops: map[string]uint64{"no_service": 6, "too_big": 4},
				ViaRaw: map[string]uint64{}, ConntrackSize: 3, ConntrackEvictions: 7,
			}
		},
		Backends: func() []registry.Backend {
			return []registry.Backend{{Name: "web1", Service: "web", Weight: 50, Admin: registry.AdminDrained, Health: registry.HealthUp}}
		},
		Receiver: func() receiver.Stats {
			return receiver.Stats{Received: 5, Delivered: 4, Drops: map[string]uint64{"inject_error": 1}}
		},
		Dataplane:         "raw",
		ConntrackCapacity: 4096,
	})
	if err != nil {
		t.Fatal(err)
	}
	url := endpoint(t, reg)
	text, _ := get(t, url, "")
	metricstest.Check(t, text)

	want := map[string]float64{
		`caplance_received_packets_total`:                                            20,
		`caplance_forwarded_packets_total`:                                           10,
		`caplance_dropped_packets_total{reason="no_service"}`:                        6,
		`caplance_dropped_packets_total{reason="too_big"}`:                           4,
		`caplance_conntrack_entries`:                                                 3,
		`caplance_conntrack_capacity`:                                                4096,
		`caplance_conntrack_evictions_total`:                                         7,
		`caplance_dataplane_info{description="raw",mode="raw"}`:                      1,
		`caplance_service_packets_total{service="web"}`:                              10,
		`caplance_service_bytes_total{service="web"}`:                                1500,
		`caplance_service_new_flows_total{service="web"}`:                            3,
		`caplance_service_active_flows{service="web"}`:                               2,
		`caplance_service_inactive_flows{service="web"}`:                             1,
		`caplance_service_dropped_packets_total{service="web"}`:                      4,
		`caplance_backend_packets_total{backend="web1",service="web"}`:               10,
		`caplance_backend_bytes_total{backend="web1",service="web"}`:                 1500,
		`caplance_backend_new_flows_total{backend="web1",service="web"}`:             3,
		`caplance_backend_active_flows{backend="web1",service="web"}`:                2,
		`caplance_backend_inactive_flows{backend="web1",service="web"}`:              1,
		`caplance_backend_state{backend="web1",service="web",state="active"}`:        0,
		`caplance_backend_state{backend="web1",service="web",state="draining"}`:      1,
		`caplance_backend_state{backend="web1",service="web",state="down"}`:          0,
		`caplance_backend_health{backend="web1",service="web",state="unknown"}`:      0,
		`caplance_backend_health{backend="web1",service="web",state="up"}`:           1,
		`caplance_backend_health{backend="web1",service="web",state="down"}`:         0,
		`caplance_backend_admin_state{backend="web1",service="web",state="active"}`:  0,
		`caplance_backend_admin_state{backend="web1",service="web",state="drained"}`: 1,
		`caplance_backend_weight{backend="web1",service="web"}`:                      50,
		`caplance_maglev_table_build_duration_seconds_count{service="web"}`:          2,
		`caplance_maglev_table_build_duration_seconds_sum{service="web"}`:            0.005,
		`caplance_config_reloads_total{result="success"}`:                            0,
		`caplance_config_reloads_total{result="refused"}`:                            1,
		`caplance_config_last_reload_successful`:                                     0,
		`caplance_receiver_received_packets_total`:                                   5,
		`caplance_receiver_delivered_packets_total`:                                  4,
		`caplance_receiver_dropped_packets_total{reason="inject_error"}`:             1,
	}
	got := metricstest.Samples(t, text)
	picked := map[string]float64{}
	for k := range want {
		if v, ok := got[k]; ok {
			picked[k] = v
		}
	}
	if diff := cmp.Diff(want, picked, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("samples (-want +got):\n%s\n%s", diff, text)
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", `caplance_build_info{version="`} {
		if !slices.ContainsFunc(slices.Collect(maps.Keys(got)), func(k string) bool { return strings.HasPrefix(k, name) }) {
			t.Errorf("no %s in the scrape", name)
		}
	}
	if _, ok := got["caplance_xdp_received_packets_total"]; ok {
		t.Errorf("caplance_xdp_received_packets_total on the raw data plane")
	}

	// OpenMetrics when asked, as Prometheus does.
	om, contentType := get(t, url, "application/openmetrics-text;version=1.0.0")
	if !strings.HasPrefix(contentType, "application/openmetrics-text") || !strings.HasSuffix(om, "# EOF\n") {
		t.Errorf("OpenMetrics scrape: Content-Type %q, ends %q", contentType, om[max(len(om)-20, 0):])
	}
}

// Drop reasons are label values as they are in stats.json: snake_case.
func TestDropReasonsAreSnakeCase(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	for _, r := range slices.Concat(balancer.DropReasons(), balancer.ViaRawReasons(), receiver.DropReasons()) {
		if !snake.MatchString(r) {
			t.Errorf("reason %q is not snake_case", r)
		}
	}
}

func TestHealthd(t *testing.T) {
	h := NewHealthd()
	h.Probed("web", "web1", true, 2*time.Millisecond)
	h.Probed("web", "web1", true, 2*time.Millisecond)
	h.Probed("web", "web1", false, 150*time.Millisecond)
	h.Probed("web", "web2", true, time.Millisecond)
	h.Forget("web", "web2")
	reg, err := h.Registry()
	if err != nil {
		t.Fatal(err)
	}
	text, _ := get(t, endpoint(t, reg), "")
	metricstest.Check(t, text)
	got := metricstest.Samples(t, text)
	want := map[string]float64{
		`caplance_healthd_probes_total{backend="web1",result="up",service="web"}`:     2,
		`caplance_healthd_probes_total{backend="web1",result="down",service="web"}`:   1,
		`caplance_healthd_probe_duration_seconds_count{backend="web1",service="web"}`: 3,
		`caplance_healthd_probe_duration_seconds_sum{backend="web1",service="web"}`:   0.154,
	}
	picked := map[string]float64{}
	for k, v := range got {
		if strings.HasPrefix(k, "caplance_healthd_") && !strings.Contains(k, "_bucket") {
			picked[k] = v
		}
	}
	if diff := cmp.Diff(want, picked, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
		t.Errorf("samples, web2 forgotten (-want +got):\n%s", diff)
	}
}

func TestListenBadAddress(t *testing.T) {
	_, err := Listen("192.0.2.1:9469", "metrics.listen")
	if err == nil || !strings.Contains(err.Error(), "metrics.listen") {
		t.Errorf("Listen on an address the host lacks: %v, want an error naming metrics.listen", err)
	}
}
