// Package config owns caplanced's configuration: it decodes the TOML file
// strictly (unknown keys and wrong types are errors with their line, and do
// not stop the decoding of the other keys), applies CAPLANCED_* environment
// overrides, and validates everything into typed values, reporting every
// problem at once with the line or variable it was found in.
//
// The rules of one backend (backend.go: BackendSet, CheckBackend) and of one
// service (service.go: ServiceSet, CheckService, ParsePorts,
// ParseProtocols, ParseHash) are written once here and are the registry's,
// its state file's and the D-Bus API's too. A service's spec is checked
// over a base whose values it keeps where the spec leaves a field empty:
// ServiceDefaults for a new service (the file's [[service]], AddService),
// the service as it is for ChangeService, which so passes only the fields
// it changes.
//
// A file in the single-pool form of before services (balancer.vips,
// [balancer.ports], [[backend]]) is read as one service named "default";
// ServicesForm writes such a configuration in the services form.
//
// It reads the file it is given and the environment it is handed; it must not
// touch the network, the kernel or any other file.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/caplance/caplance/internal/model"
)

// DefaultPath is where the packaged caplanced looks for its configuration.
const DefaultPath = "/etc/caplance/caplanced.toml"

// Defaults for keys the operator may leave out.
const (
	// DefaultEncapPort is the UDP port of the foo-over-UDP tunnel; 5555 is
	// the port the Linux fou documentation uses in its examples.
	DefaultEncapPort     = 5555
	DefaultWeight        = 100
	DefaultConntrackSize = 1 << 20
	DefaultTCPTimeout    = 15 * time.Minute
	DefaultUDPTimeout    = 5 * time.Minute
	// DefaultTCPClosingTimeout is how long a TCP flow stays tracked after
	// the client's FIN or RST: IPVS's CLOSE timeout.
	DefaultTCPClosingTimeout = 10 * time.Second
	// MaxWorkers bounds the workers per role: each has its own sockets and
	// a few MiB of buffers.
	MaxWorkers = 64
	// MaxConntrackSize keeps connection tracking under about 1.5 GiB.
	MaxConntrackSize = 1 << 24
	// DefaultMaxBackends is max_backends when absent (or table_size when
	// that is smaller). A change of the backend set costs about one Maglev
	// build, which grows with the backends (docs/benchmarks.md); the limit
	// keeps a stream of AddBackend calls from making it unbounded.
	DefaultMaxBackends = 4096
	// MaxWeight bounds weights so that ratios stay meaningful for a table
	// of a few hundred thousand slots.
	MaxWeight = 10000
	// DefaultRouteTable is the kernel routing table a routed balancer
	// publishes its servable VIPs in; no ip rule points at it.
	DefaultRouteTable = 100
	// DefaultRouteProtocol is the rtnetlink protocol of caplanced's routes;
	// the package names it "caplance" in /etc/iproute2/rt_protos.d.
	DefaultRouteProtocol = 252
	// DefaultWithdrawDelay is how long a routed balancer keeps forwarding
	// after withdrawing its routes at stop: a few BGP/BFD convergence
	// times.
	DefaultWithdrawDelay = 5 * time.Second
	// MaxWithdrawDelay bounds withdraw_delay; the unit's TimeoutStopSec
	// must stay above it.
	MaxWithdrawDelay = 5 * time.Minute
)

// DefaultService is the name of the one service of a file in the
// single-pool form.
const DefaultService = "default"

// Config is a validated configuration. Balancer and Receiver are nil when
// the host does not play that role.
type Config struct {
	Balancer *Balancer
	// Services are the [[service]] entries in the order of the file, or the
	// one service DefaultService of a file in the single-pool form; none
	// when the balancer is to get its services at run time.
	Services []model.Service
	// Backends are the backends of every service, in the order of the
	// file.
	Backends []Backend
	Receiver *Receiver
	// Metrics is the [metrics] section; zero when absent.
	Metrics Metrics
	// SinglePool says the file is in the single-pool form (balancer.vips,
	// [balancer.ports], [[backend]]); see ServicesForm.
	SinglePool bool
}

// Metrics is the [metrics] section: where the Prometheus metrics are
// served when systemd passes no socket (caplanced-metrics.socket).
type Metrics struct {
	// Listen is a TCP address, IP:PORT; "" serves no metrics.
	Listen string
}

// Balancer is the [balancer] section: what the balancer's services share.
type Balancer struct {
	// Interface is where the VIPs are attached; "" means the one interface
	// whose subnet contains each VIP.
	Interface string
	EncapPort uint16
	// TableSize is the Maglev table size of the services that give none.
	TableSize int
	// MaxBackends is how many backends the balancer holds at most, of
	// every service, from the file and added at run time together; never
	// more than TableSize.
	MaxBackends int
	// Workers is the number of packet workers; 0 means one per CPU.
	Workers int
	// Dataplane says how packets reach the workers and leave them.
	Dataplane Dataplane
	// ConntrackSize is how many flows connection tracking remembers.
	ConntrackSize int
	// TCPTimeout and UDPTimeout are the idle timeouts of tracked flows.
	TCPTimeout, UDPTimeout time.Duration
	// TCPClosingTimeout is the idle timeout of a TCP flow the client has
	// closed (FIN or RST).
	TCPClosingTimeout time.Duration
	// Routed says the VIPs live on lo and each servable VIP is published
	// as a route in RouteTable, with RouteProtocol, for the host's routing
	// daemon to announce. The other route keys are used only when Routed.
	Routed        bool
	RouteTable    uint32
	RouteProtocol uint8
	// RouteMinBackends is how many backends of a service must be able to
	// take new flows for its VIPs to be announced.
	RouteMinBackends int
	// WithdrawDelay is how long caplanced keeps forwarding after
	// withdrawing its routes at stop.
	WithdrawDelay time.Duration
}

// Backend is one backend of a service: a [[service.backend]] or [[backend]]
// entry.
type Backend struct {
	Name string
	// Service is the name of the service whose pool it is in.
	Service string
	Address netip.Addr
	Weight  uint32
	// Check is the backend's own health check spec, "" for none (its
	// service's then); caplance-healthd parses it.
	Check string
}

// Receiver is the [receiver] section: this host is a backend that
// decapsulates traffic from the listed balancers.
type Receiver struct {
	VIPs      []netip.Addr
	Balancers []netip.Addr
	EncapPort uint16
	Mode      Mode
	// Workers is the number of decapsulation workers; 0 means one per CPU.
	Workers int
}

// KernelUnsupported says why the kernel cannot decapsulate for r, or is
// nil when it can. The kernel's fou hands each receive port's payload to one
// protocol, so the VIPs (the inner packets) must all be of one family; and it
// decapsulates IPv4 in IPv4 (ipip) and either family in IPv6 (ip6tnl), but
// IPv6 in IPv4 (sit) is left to user space.
func (r *Receiver) KernelUnsupported() error {
	if len(r.VIPs) == 0 {
		return nil
	}
	first := r.VIPs[0]
	if i := slices.IndexFunc(r.VIPs, func(a netip.Addr) bool { return a.Is6() != first.Is6() }); i >= 0 {
		return fmt.Errorf("the kernel's fou gives a receive port one inner protocol, and the VIPs %s and %s are of both families", first, r.VIPs[i])
	}
	if first.Is6() {
		if i := slices.IndexFunc(r.Balancers, netip.Addr.Is4); i >= 0 {
			return fmt.Errorf("the kernel does not decapsulate IPv6 in IPv4 here (sit), and the IPv6 VIP %s would come from the IPv4 balancer %s", first, r.Balancers[i])
		}
	}
	return nil
}

// Mode says who decapsulates on a receiver.
type Mode string

// Receiver modes.
const (
	ModeAuto      Mode = "auto"
	ModeKernel    Mode = "kernel"
	ModeUserspace Mode = "userspace"
)

// Dataplane says how the balancer's packets reach its workers and leave
// them.
type Dataplane string

// Balancer data planes.
const (
	// DataplaneAuto is AF_XDP when it can be set up on the balancer's
	// interface, else raw sockets.
	DataplaneAuto Dataplane = "auto"
	// DataplaneXDP is AF_XDP, or no start.
	DataplaneXDP Dataplane = "xdp"
	// DataplaneRaw is raw sockets only.
	DataplaneRaw Dataplane = "raw"
)

// The raw structs mirror the file. Pointers tell "absent" (take the default)
// from "given" (validate it).
type rawConfig struct {
	Balancer *rawBalancer `toml:"balancer"`
	Services []rawService `toml:"service"`
	Backends []rawBackend `toml:"backend"`
	Receiver *rawReceiver `toml:"receiver"`
	Metrics  *rawMetrics  `toml:"metrics"`
}

type rawMetrics struct {
	Listen string `toml:"listen"`
}

type rawBalancer struct {
	VIPs              []string         `toml:"vips"`
	Interface         string           `toml:"interface"`
	Ports             map[string][]int `toml:"ports"`
	EncapPort         *int             `toml:"encap_port"`
	TableSize         *int             `toml:"table_size"`
	MaxBackends       *int             `toml:"max_backends"`
	Workers           *int             `toml:"workers"`
	Dataplane         string           `toml:"dataplane"`
	ConntrackSize     *int             `toml:"conntrack_size"`
	TCPTimeout        string           `toml:"tcp_timeout"`
	UDPTimeout        string           `toml:"udp_timeout"`
	TCPClosingTimeout string           `toml:"tcp_closing_timeout"`
	Routed            *bool            `toml:"routed"`
	RouteTable        *int             `toml:"route_table"`
	RouteProtocol     *int             `toml:"route_protocol"`
	RouteMinBackends  *int             `toml:"route_min_backends"`
	WithdrawDelay     string           `toml:"withdraw_delay"`
}

type rawService struct {
	Name      string   `toml:"name"`
	VIPs      []string `toml:"vips"`
	Protocols []string `toml:"protocols"`
	// Ports holds integers and "first-last" strings.
	Ports     []any        `toml:"ports"`
	Hash      string       `toml:"hash"`
	TableSize *int64       `toml:"table_size"`
	Check     string       `toml:"check"`
	Backends  []rawBackend `toml:"backend"`
}

type rawBackend struct {
	Name    string `toml:"name"`
	Address string `toml:"address"`
	Weight  *int   `toml:"weight"`
	Check   string `toml:"check"`
}

type rawReceiver struct {
	VIPs      []string `toml:"vips"`
	Balancers []string `toml:"balancers"`
	EncapPort *int     `toml:"encap_port"`
	Mode      string   `toml:"mode"`
	Workers   *int     `toml:"workers"`
}

// Load reads the file at path and applies the process environment.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data, os.Environ())
}

// Parse decodes and validates data, named name in errors, with overrides
// from environ ("KEY=value" strings, as os.Environ returns). Every problem is
// reported, of the file's decoding (unknown keys, wrong types), of the
// environment and of validation: the error is an errors.Join of one error
// per problem, each starting with where it is ("name: line 3:" or
// "environment CAPLANCED_…:"), the file's in the order of its lines. Only a
// TOML syntax error stops the file's decoding; the environment is still
// checked then.
func Parse(name string, data []byte, environ []string) (*Config, error) {
	var raw rawConfig
	d, err := decodeLenient(data, &raw)
	if err != nil {
		_, envProblems := applyEnv(&rawConfig{}, environ)
		errs := []error{fmt.Errorf("%s: %w", name, err)}
		for _, p := range envProblems {
			errs = append(errs, fmt.Errorf("environment %s: %s", p.env, p.msg))
		}
		return nil, errors.Join(errs...)
	}
	fromEnv, envProblems := applyEnv(&raw, environ)
	for _, p := range envProblems {
		if p.key != nil {
			d.failed[lookup(p.key)] = true
		}
	}
	cfg, invalid := validate(raw)
	all := append(d.problems, envProblems...)
	for _, p := range invalid {
		if !d.isFailed(p.key) { // reported as what it is, not as missing
			all = append(all, p)
		}
	}
	if len(all) == 0 {
		return cfg, nil
	}
	type placed struct {
		order, line int
		err         error
	}
	var out []placed
	for _, p := range all {
		env := p.env
		for n := len(p.key); env == "" && n > 0; n-- {
			env = fromEnv[lookup(p.key[:n])]
		}
		line := d.line(p.key)
		switch {
		case env != "":
			out = append(out, placed{2, 0, fmt.Errorf("environment %s: %s", env, p.msg)})
		case line > 0:
			out = append(out, placed{1, line, fmt.Errorf("%s: line %d: %s", name, line, p.msg)})
		default:
			out = append(out, placed{0, 0, fmt.Errorf("%s: %s", name, p.msg)})
		}
	}
	slices.SortStableFunc(out, func(a, b placed) int { return cmp.Or(a.order-b.order, a.line-b.line) })
	errs := make([]error, len(out))
	for i, p := range out {
		errs[i] = p.err
	}
	return nil, errors.Join(errs...)
}

// DecodeStrict decodes the TOML document data into v (a pointer to a struct
// with `toml` tags) strictly. err is a syntax error, with its line and
// column, which stops the decoding. Otherwise problems has one error per
// unknown key and per value of the wrong type, each with its line
// ("line 3: unknown key \"x\""), in the order of the file, and every other
// key is decoded into v. caplance-healthd's configuration is read with it too.
func DecodeStrict(data []byte, v any) (errs []error, err error) {
	d, err := decodeLenient(data, v)
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(d.problems, func(a, b problem) int { return d.line(a.key) - d.line(b.key) })
	for _, p := range d.problems {
		if line := d.line(p.key); line > 0 {
			errs = append(errs, fmt.Errorf("line %d: %s", line, p.msg))
		} else {
			errs = append(errs, errors.New(p.msg))
		}
	}
	return errs, nil
}
