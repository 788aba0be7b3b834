package metrics

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caplance/caplance/internal/balancer"
	"github.com/caplance/caplance/internal/receiver"
	"github.com/caplance/caplance/internal/registry"
)

// Source is what caplanced's collector reads at scrape time: the same
// sources as stats.json and the D-Bus properties. A nil function is a role
// caplanced does not play.
type Source struct {
	Balancer func() balancer.Stats
	Receiver func() receiver.Stats
	Backends func() []registry.Backend
	// Dataplane is balancer.Balancer.Dataplane: "raw" or "xdp (…)".
	Dataplane string
	// ConntrackCapacity is balancer.conntrack_size.
	ConntrackCapacity int
}

// Caplanced counts caplanced's events that no counter of the data path
// keeps (table builds, reloads) and, with Registry, serves them with the
// numbers of a Source. Its methods are safe for concurrent use; a nil
// *Caplanced counts nothing, so that tests and callers without metrics
// need no stand-in.
type Caplanced struct {
	tableBuilds *prometheus.HistogramVec
	reloads     *prometheus.CounterVec
	mu          sync.Mutex
	lastReload  lastReload
}

type lastReload struct {
	ok bool
	at time.Time
}

// Reload results, the values of the label result.
const (
	ReloadSuccess = "success"
	ReloadRefused = "refused"
)

// NewCaplanced returns the event counters, before the data path exists:
// the first table builds happen while caplanced starts.
func NewCaplanced() *Caplanced {
	c := &Caplanced{
		tableBuilds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "caplance_maglev_table_build_duration_seconds",
			Help: "Time taken by each build of a service's Maglev table (the count is the number of builds).",
			// A default-size table (65537 slots) builds in about a
			// millisecond; a large one with thousands of backends in
			// tens (docs/benchmarks.md).
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}, []string{"service"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "caplance_config_reloads_total",
			Help: "Reloads of the configuration file (SIGHUP, Reload over D-Bus) by result: success, refused.",
		}, []string{"result"}),
	}
	for _, r := range []string{ReloadSuccess, ReloadRefused} {
		c.reloads.WithLabelValues(r) // a series from the start, at 0
	}
	c.lastReload = lastReload{ok: true, at: time.Now()}
	return c
}

// TableBuilt counts one build of service's Maglev table, which took took.
func (c *Caplanced) TableBuilt(service string, took time.Duration) {
	if c == nil {
		return
	}
	c.tableBuilds.WithLabelValues(service).Observe(took.Seconds())
}

// Reloaded counts one reload; err is why it was refused, nil for success.
func (c *Caplanced) Reloaded(err error) {
	if c == nil {
		return
	}
	result := ReloadSuccess
	if err != nil {
		result = ReloadRefused
	}
	c.reloads.WithLabelValues(result).Inc()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastReload.ok = err == nil
	if err == nil {
		c.lastReload.at = time.Now()
	}
}

// Registry returns a registry of caplanced's metrics read from src, with
// the Go and process collectors.
func (c *Caplanced) Registry(src Source) (*prometheus.Registry, error) {
	return NewRegistry(c.tableBuilds, c.reloads, &caplancedCollector{c: c, src: src})
}

// The descriptions of the metrics caplancedCollector makes at scrape time.
var (
	serviceLabels = []string{"service"}
	backendLabels = []string{"service", "backend"}

	descReceived = prometheus.NewDesc("caplance_received_packets_total",
		"Packets the balancer read from its VIP sockets (AF_XDP ones included).", nil, nil)
	descXDPReceived = prometheus.NewDesc("caplance_xdp_received_packets_total",
		"Packets of caplance_received_packets_total read from the AF_XDP sockets (xdp data plane only).", nil, nil)
	descForwarded = prometheus.NewDesc("caplance_forwarded_packets_total",
		"Packets (or whole fragmented datagrams) the balancer sent to a backend.", nil, nil)
	descDropped = prometheus.NewDesc("caplance_dropped_packets_total",
		"Packets the balancer dropped, by reason (the drop reasons of caplanced(8), stats.json under FILES).", []string{"reason"}, nil)
	descViaRaw = prometheus.NewDesc("caplance_xdp_via_raw_packets_total",
		"Packets the AF_XDP path handed to the raw-socket path, by reason (xdp data plane only).", []string{"reason"}, nil)
	descConntrackEntries = prometheus.NewDesc("caplance_conntrack_entries",
		"Flows connection tracking holds now.", nil, nil)
	descConntrackCapacity = prometheus.NewDesc("caplance_conntrack_capacity",
		"Flows connection tracking holds at most (balancer.conntrack_size).", nil, nil)
	descConntrackEvictions = prometheus.NewDesc("caplance_conntrack_evictions_total",
		"Tracked flows evicted, least recently used first, to make room for a new one while connection tracking was full.", nil, nil)
	descDataplane = prometheus.NewDesc("caplance_dataplane_info",
		"Always 1; mode is the balancer's data plane (raw or xdp), description says more (xdp mode, zero-copy).", []string{"mode", "description"}, nil)

	descServicePackets = prometheus.NewDesc("caplance_service_packets_total",
		"Packets sent to the service's backends.", serviceLabels, nil)
	descServiceBytes = prometheus.NewDesc("caplance_service_bytes_total",
		"Bytes of the client's packets (without the tunnel header) sent to the service's backends.", serviceLabels, nil)
	descServiceNewFlows = prometheus.NewDesc("caplance_service_new_flows_total",
		"Flows given a backend by the service's Maglev table.", serviceLabels, nil)
	descServiceActive = prometheus.NewDesc("caplance_service_active_flows",
		"Tracked flows of the service's backends, but for the inactive ones.", serviceLabels, nil)
	descServiceInactive = prometheus.NewDesc("caplance_service_inactive_flows",
		"Tracked TCP flows of the service's backends that the client has closed (FIN or RST).", serviceLabels, nil)
	descServiceDropped = prometheus.NewDesc("caplance_service_dropped_packets_total",
		"Packets classified to the service and then dropped (no_backend, too_big, send_error, encap_error).", serviceLabels, nil)

	descBackendPackets = prometheus.NewDesc("caplance_backend_packets_total",
		"Packets sent to the backend.", backendLabels, nil)
	descBackendBytes = prometheus.NewDesc("caplance_backend_bytes_total",
		"Bytes of the client's packets (without the tunnel header) sent to the backend.", backendLabels, nil)
	descBackendNewFlows = prometheus.NewDesc("caplance_backend_new_flows_total",
		"Flows given to the backend by its service's Maglev table.", backendLabels, nil)
	descBackendActive = prometheus.NewDesc("caplance_backend_active_flows",
		"Tracked flows pointing at the backend, but for the inactive ones (D-Bus ActiveFlows).", backendLabels, nil)
	descBackendInactive = prometheus.NewDesc("caplance_backend_inactive_flows",
		"Tracked TCP flows of the backend that the client has closed (D-Bus InactiveFlows).", backendLabels, nil)
	descBackendState = prometheus.NewDesc("caplance_backend_state",
		"1 for the backend's state in the data path (active, draining, down), 0 for the others.", append(backendLabels, "state"), nil)
	descBackendHealth = prometheus.NewDesc("caplance_backend_health",
		"1 for the backend's health as caplance-healthd last reported it (unknown, up, down; D-Bus Health), 0 for the others.", append(backendLabels, "state"), nil)
	descBackendAdmin = prometheus.NewDesc("caplance_backend_admin_state",
		"1 for the backend's administrative state (active, drained; D-Bus AdminState), 0 for the others.", append(backendLabels, "state"), nil)
	descBackendWeight = prometheus.NewDesc("caplance_backend_weight",
		"The backend's weight (D-Bus Weight).", backendLabels, nil)

	descLastReloadOK = prometheus.NewDesc("caplance_config_last_reload_successful",
		"1 when the last reload succeeded (or none was tried since the start), 0 when it was refused.", nil, nil)
	descLastReloadTime = prometheus.NewDesc("caplance_config_last_reload_success_timestamp_seconds",
		"When the configuration was last loaded successfully (start or reload), in seconds since the epoch.", nil, nil)

	descReceiverReceived = prometheus.NewDesc("caplance_receiver_received_packets_total",
		"Tunnelled packets the user-space receiver read.", nil, nil)
	descReceiverDelivered = prometheus.NewDesc("caplance_receiver_delivered_packets_total",
		"Inner packets the user-space receiver handed to the local stack.", nil, nil)
	descReceiverDropped = prometheus.NewDesc("caplance_receiver_dropped_packets_total",
		"Packets the user-space receiver dropped, by reason.", []string{"reason"}, nil)

	backendStates = []string{"active", "draining", "down"}
	healthStates  = []registry.Health{registry.HealthUnknown, registry.HealthUp, registry.HealthDown}
	adminStates   = []registry.AdminState{registry.AdminActive, registry.AdminDrained}
)

// caplancedCollector makes caplanced's metrics from its Source when
// Prometheus scrapes.
type caplancedCollector struct {
	c   *Caplanced
	src Source
}

func (cc *caplancedCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLastReloadOK, descLastReloadTime} {
		ch <- d
	}
	if cc.src.Balancer != nil {
		for _, d := range []*prometheus.Desc{descReceived, descXDPReceived, descForwarded, descDropped, descViaRaw,
			descConntrackEntries, descConntrackCapacity, descConntrackEvictions, descDataplane,
			descServicePackets, descServiceBytes, descServiceNewFlows, descServiceActive, descServiceInactive, descServiceDropped,
			descBackendPackets, descBackendBytes, descBackendNewFlows, descBackendActive, descBackendInactive, descBackendState,
			descBackendHealth, descBackendAdmin, descBackendWeight} {
			ch <- d
		}
	}
	if cc.src.Receiver != nil {
		for _, d := range []*prometheus.Desc{descReceiverReceived, descReceiverDelivered, descReceiverDropped} {
			ch <- d
		}
	}
}

func (cc *caplancedCollector) Collect(ch chan<- prometheus.Metric) {
	cc.c.mu.Lock()
	last := cc.c.lastReload
	cc.c.mu.Unlock()
	ch <- gauge(descLastReloadOK, bool01(last.ok))
	ch <- gauge(descLastReloadTime, float64(last.at.UnixNano())/1e9)
	if cc.src.Balancer != nil {
		cc.collectBalancer(ch)
	}
	if cc.src.Receiver != nil {
		st := cc.src.Receiver()
		ch <- counter(descReceiverReceived, st.Received)
		ch <- counter(descReceiverDelivered, st.Delivered)
		for reason, n := range st.Drops {
			ch <- counter(descReceiverDropped, n, reason)
		}
	}
}

func (cc *caplancedCollector) collectBalancer(ch chan<- prometheus.Metric) {
	st := cc.src.Balancer()
	mode, _, _ := strings.Cut(cc.src.Dataplane, " ")
	ch <- gauge(descDataplane, 1, mode, cc.src.Dataplane)
	ch <- counter(descReceived, st.Received)
	ch <- counter(descForwarded, st.Forwarded)
	if mode != "raw" {
		ch <- counter(descXDPReceived, st.XDPReceived)
	}
	for reason, n := range st.Drops {
		ch <- counter(descDropped, n, reason)
	}
	for reason, n := range st.ViaRaw {
		ch <- counter(descViaRaw, n, reason)
	}
	ch <- gauge(descConntrackEntries, float64(st.ConntrackSize))
	ch <- gauge(descConntrackCapacity, float64(cc.src.ConntrackCapacity))
	ch <- counter(descConntrackEvictions, st.ConntrackEvictions)
	for _, s := range st.Services {
		ch <- counter(descServicePackets, s.Packets, s.Name)
		ch <- counter(descServiceBytes, s.Bytes, s.Name)
		ch <- counter(descServiceNewFlows, s.NewFlows, s.Name)
		ch <- gauge(descServiceActive, float64(s.ActiveFlows), s.Name)
		ch <- gauge(descServiceInactive, float64(s.InactiveFlows), s.Name)
		ch <- counter(descServiceDropped, s.Drops, s.Name)
	}
	for _, b := range st.Backends {
		ch <- counter(descBackendPackets, b.Packets, b.Service, b.Name)
		ch <- counter(descBackendBytes, b.Bytes, b.Service, b.Name)
		ch <- counter(descBackendNewFlows, b.NewFlows, b.Service, b.Name)
		ch <- gauge(descBackendActive, float64(b.ActiveFlows), b.Service, b.Name)
		ch <- gauge(descBackendInactive, float64(b.InactiveFlows), b.Service, b.Name)
		for _, s := range backendStates {
			ch <- gauge(descBackendState, bool01(b.State == s), b.Service, b.Name, s)
		}
	}
	if cc.src.Backends == nil {
		return
	}
	for _, b := range cc.src.Backends() {
		for _, h := range healthStates {
			ch <- gauge(descBackendHealth, bool01(b.Health == h), b.Service, b.Name, string(h))
		}
		for _, a := range adminStates {
			ch <- gauge(descBackendAdmin, bool01(b.Admin == a), b.Service, b.Name, string(a))
		}
		ch <- gauge(descBackendWeight, float64(b.Weight), b.Service, b.Name)
	}
}

func counter(d *prometheus.Desc, n uint64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), labels...)
}

func gauge(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
