package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Healthd is caplance-healthd's metrics: each check's probe results and
// their latency. A nil *Healthd counts nothing.
type Healthd struct {
	probes  *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

// Probe results, the values of the label result.
const (
	ProbeUp   = "up"
	ProbeDown = "down"
)

// NewHealthd returns caplance-healthd's metrics.
func NewHealthd() *Healthd {
	return &Healthd{
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caplance_healthd_probes_total",
			Help: "Probes of the backend's check by result: up (the probe passed), down (it failed).",
		}, []string{"service", "backend", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "caplance_healthd_probe_duration_seconds",
			Help: "Time taken by each probe of the backend's check, passed or failed.",
			// From a local TCP connect (~100 µs) to the longest timeout
			// worth waiting for (~10 s).
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}, []string{"service", "backend"}),
	}
}

// Probed counts one probe of backend's check, of service.
func (h *Healthd) Probed(service, backend string, up bool, took time.Duration) {
	if h == nil {
		return
	}
	result := ProbeDown
	if up {
		result = ProbeUp
	}
	h.probes.WithLabelValues(service, backend, result).Add(1)
	h.latency.WithLabelValues(service, backend).Observe(took.Seconds())
}

// Forget drops the series of backend's check, which is gone.
func (h *Healthd) Forget(service, backend string) {
	if h == nil {
		return
	}
	h.probes.DeletePartialMatch(prometheus.Labels{"service": service, "backend": backend})
	h.latency.DeleteLabelValues(service, backend)
}

// Registry returns a registry of caplance-healthd's metrics, with the Go
// and process collectors.
func (h *Healthd) Registry() (*prometheus.Registry, error) {
	return NewRegistry(h.probes, h.latency)
}
