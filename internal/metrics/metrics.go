// Package metrics owns the Prometheus metrics of caplanced and
// caplance-healthd (the METRICS sections of caplanced(8) and
// caplance-healthd(8)) and their HTTP endpoint.
//
//   - caplanced.go: the collector that reads caplanced's existing counters
//     (balancer.Stats, receiver.Stats, the registry's backends: the sources
//     of stats.json and of the D-Bus properties) when Prometheus scrapes,
//     and the few events that no counter kept before, counted where they
//     happen, off the data path: Maglev table builds and reloads.
//   - healthd.go: caplance-healthd's probe results and latencies.
//   - metrics.go: the registry (with the Go and process collectors) and
//     /metrics, served on the socket systemd passes under the name FDName
//     (caplanced-metrics.socket, caplance-healthd-metrics.socket) or else
//     on the configured address.
//
// It must never add work to a packet worker: every number of the data path
// is read at scrape time from the per-worker counters the workers already
// keep.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/caplance/caplance/internal/version"
)

// FDName is the FileDescriptorName= of the metrics socket units: a socket
// systemd passes under this name is where /metrics is served.
const FDName = "metrics"

// Path is where the metrics are served.
const Path = "/metrics"

// scrapeTimeout bounds one scrape, and the time a client may take to send
// its request headers.
const scrapeTimeout = 10 * time.Second

// NewRegistry returns a registry with the Go and process collectors, the
// build info and cs.
func NewRegistry(cs ...prometheus.Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	build := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "caplance_build_info",
		Help:        "Always 1; the version label is the running binary's version.",
		ConstLabels: prometheus.Labels{"version": version.Version},
	}, func() float64 { return 1 })
	all := append([]prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		build,
	}, cs...)
	for _, c := range all {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return reg, nil
}

// Listen returns where /metrics is served: the socket systemd passed under
// the name FDName (socket activation), else a new TCP listener on addr,
// else, when addr is "", nil: no endpoint. key names addr's setting in
// errors.
func Listen(addr, key string) (net.Listener, error) {
	named, err := activation.ListenersWithNames()
	if err != nil {
		return nil, fmt.Errorf("metrics: sockets from systemd: %w", err)
	}
	if ls := named[FDName]; len(ls) > 0 {
		for _, l := range ls[1:] {
			_ = l.Close() // one socket unit passes one listener
		}
		return ls[0], nil
	}
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %s: %w", key, err)
	}
	return ln, nil
}

// Serve serves reg's metrics at Path, in the OpenMetrics format when the
// scraper asks for it, on ln until ctx ends; it closes ln.
func Serve(ctx context.Context, ln net.Listener, reg *prometheus.Registry, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle(Path, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		EnableOpenMetrics: true,
		// A scrape reads every worker's counters and walks connection
		// tracking (at most every 250 ms, balancer.flowCounts): a few at
		// once are plenty for any number of Prometheus servers.
		MaxRequestsInFlight: 4,
		Timeout:             scrapeTimeout,
	}))
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: scrapeTimeout,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	log.Info("serving metrics", "address", ln.Addr().String(), "path", Path)
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := srv.Shutdown(shut); err != nil {
			_ = srv.Close()
		}
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) { // ctx ended
		<-done
		return nil
	}
	return fmt.Errorf("metrics: serving on %s: %w", ln.Addr(), err)
}
