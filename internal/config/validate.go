package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/maglev"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/quote"
)

var backendName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func validate(raw rawConfig) (*Config, problems) {
	var p problems
	cfg := &Config{}
	if raw.Balancer == nil && raw.Receiver == nil {
		p.add("neither a [balancer] nor a [receiver] section: caplanced has nothing to do")
	}
	tableSize := maglev.DefaultSize
	if raw.Balancer != nil {
		cfg.Balancer = validateBalancer(*raw.Balancer, &p)
		tableSize = cfg.Balancer.TableSize
	}
	singlePool := raw.Balancer != nil && (raw.Balancer.VIPs != nil || raw.Balancer.Ports != nil) || len(raw.Backends) > 0
	switch {
	case len(raw.Services) > 0 && raw.Balancer == nil:
		p.at([]string{"service"}, "[[service]] entries need a [balancer] section")
	case len(raw.Backends) > 0 && raw.Balancer == nil:
		p.at([]string{"backend"}, "[[backend]] entries need a [balancer] section")
	}
	var backends int // entries, for max_backends
	switch {
	case len(raw.Services) > 0:
		if singlePool {
			mixedForms(raw, &p)
		}
		cfg.Services, cfg.Backends, backends = validateServices(raw.Services, tableSize, &p)
	case singlePool:
		cfg.SinglePool = true
		cfg.Services, cfg.Backends = validateSinglePool(raw, tableSize, &p)
		backends = len(raw.Backends)
	}
	if cfg.Balancer != nil && backends > cfg.Balancer.MaxBackends {
		entries := "[[backend]]"
		if len(raw.Services) > 0 {
			entries = "[[service.backend]]"
		}
		p.at([]string{"balancer", "max_backends"}, "%d %s entries: more than balancer.max_backends = %d allows", backends, entries, cfg.Balancer.MaxBackends)
	}
	if raw.Receiver != nil {
		cfg.Receiver = validateReceiver(*raw.Receiver, &p)
	}
	if raw.Metrics != nil && raw.Metrics.Listen != "" {
		if err := CheckListen(raw.Metrics.Listen); err != nil {
			p.at([]string{"metrics", "listen"}, "metrics: listen %s: %v", quote.Q(raw.Metrics.Listen), err)
		} else {
			cfg.Metrics.Listen = raw.Metrics.Listen
		}
	}
	return cfg, p
}

// mixedForms reports each key of the single-pool form in a file of
// [[service]] entries.
func mixedForms(raw rawConfig, p *problems) {
	const why = "a file has either [[service]] entries or the single pool of balancer.vips, [balancer.ports] and [[backend]]"
	if raw.Balancer != nil && raw.Balancer.VIPs != nil {
		p.at([]string{"balancer", "vips"}, "balancer.vips cannot be used together with [[service]]: %s; give each service its vips", why)
	}
	if raw.Balancer != nil && raw.Balancer.Ports != nil {
		p.at([]string{"balancer", "ports"}, "[balancer.ports] cannot be used together with [[service]]: %s; give each service its ports", why)
	}
	if len(raw.Backends) > 0 {
		p.at([]string{"backend"}, "[[backend]] cannot be used together with [[service]]: %s; list each service's backends as [[service.backend]]", why)
	}
}

func validateBalancer(raw rawBalancer, p *problems) *Balancer {
	b := &Balancer{
		Interface:     raw.Interface,
		EncapPort:     port(raw.EncapPort, DefaultEncapPort, "balancer: encap_port", p),
		TableSize:     maglev.DefaultSize,
		Workers:       intIn(raw.Workers, 0, 0, MaxWorkers, "balancer: workers", p),
		Dataplane:     DataplaneAuto,
		ConntrackSize: intIn(raw.ConntrackSize, DefaultConntrackSize, 1024, MaxConntrackSize, "balancer: conntrack_size", p),
		TCPTimeout:    timeout(raw.TCPTimeout, DefaultTCPTimeout, "balancer: tcp_timeout", p),
		UDPTimeout:    timeout(raw.UDPTimeout, DefaultUDPTimeout, "balancer: udp_timeout", p),
		TCPClosingTimeout: timeout(raw.TCPClosingTimeout, DefaultTCPClosingTimeout,
			"balancer: tcp_closing_timeout", p),
		Routed:           raw.Routed != nil && *raw.Routed,
		RouteTable:       routeTable(raw.RouteTable, p),
		RouteProtocol:    routeProtocol(raw.RouteProtocol, p),
		RouteMinBackends: 1,
		WithdrawDelay:    withdrawDelay(raw.WithdrawDelay, p),
	}
	switch Dataplane(raw.Dataplane) {
	case "":
	case DataplaneAuto, DataplaneXDP, DataplaneRaw:
		b.Dataplane = Dataplane(raw.Dataplane)
	default:
		p.at([]string{"balancer", "dataplane"}, "balancer: dataplane %s: must be auto, xdp or raw", quote.Q(raw.Dataplane))
	}
	if raw.Interface != "" && !validInterfaceName(raw.Interface) {
		p.at([]string{"balancer", "interface"}, "balancer: interface %s: not a valid interface name (1-15 characters, no '/', ':' or white space)", quote.Q(raw.Interface))
	}
	if raw.TableSize != nil {
		if err := checkTableSize(int64(*raw.TableSize)); err != nil {
			p.at([]string{"balancer", "table_size"}, "balancer: table_size %d: %v", *raw.TableSize, err)
		} else {
			b.TableSize = *raw.TableSize
		}
	}
	b.MaxBackends = min(DefaultMaxBackends, b.TableSize)
	if raw.MaxBackends != nil {
		if n := *raw.MaxBackends; n < 1 || n > b.TableSize {
			p.at([]string{"balancer", "max_backends"}, "balancer: max_backends %d: must be from 1 to table_size (%d): every backend needs a slot", n, b.TableSize)
		} else {
			b.MaxBackends = n
		}
	}
	if raw.RouteMinBackends != nil {
		if n := *raw.RouteMinBackends; n < 1 || n > b.MaxBackends {
			p.at([]string{"balancer", "route_min_backends"}, "balancer: route_min_backends %d: must be from 1 to max_backends (%d): no service has more backends", n, b.MaxBackends)
		} else {
			b.RouteMinBackends = n
		}
	}
	return b
}

// validateServices validates the [[service]] entries and their backends,
// which it returns with how many backend entries there are.
func validateServices(raw []rawService, tableSize int, p *problems) ([]model.Service, []Backend, int) {
	set := NewServiceSet(nil)
	var services []model.Service
	var vips []netip.Addr
	for i, rs := range raw {
		spec := ServiceSpec{Name: rs.Name, VIPs: rs.VIPs, Protocols: rs.Protocols, Hash: rs.Hash, TableSize: rs.TableSize, Check: rs.Check}
		svc, problems := set.add(spec, rs.Ports, ServiceDefaults(tableSize))
		for _, sp := range problems {
			p.at([]string{"service", item(i), sp.Field}, "%s: %v", servicePlace(rs.Name, i), sp)
		}
		services = append(services, svc)
		for _, v := range svc.VIPs {
			vips = append(vips, v.Addr)
		}
	}
	backendSet := NewBackendSet(vips)
	var backends []Backend
	count := 0
	for i, rs := range raw {
		key := []string{"service", item(i), "backend"}
		for j, rb := range rs.Backends {
			// Addresses are unique per entry, not per name: two entries of
			// one name (an error already) keep theirs apart.
			b := validateBackend(backendSet, rb, item(i), slices.Concat(key, []string{item(j)}), servicePlace(rs.Name, i)+": "+backendPlace(rb.Name, j), p)
			b.Service = services[i].Name
			backends = append(backends, b)
		}
		count += len(rs.Backends)
		if n, size := len(rs.Backends), services[i].TableSize; n > size {
			p.at([]string{"service", item(i)}, "%s: %d backends: more than its table_size (%d) has slots", servicePlace(rs.Name, i), n, size)
		}
	}
	return services, backends, count
}

// validateSinglePool validates a file of the single-pool form: its VIPs,
// their ports and the [[backend]] entries are the service DefaultService.
func validateSinglePool(raw rawConfig, tableSize int, p *problems) ([]model.Service, []Backend) {
	var services []model.Service
	var vips []netip.Addr
	if raw.Balancer != nil {
		if len(raw.Balancer.VIPs) == 0 {
			p.at([]string{"balancer", "vips"}, "balancer: vips: at least one VIP is required")
		}
		svc := ServiceDefaults(tableSize)
		svc.Name = DefaultService
		svc.VIPs = singlePoolVIPs(*raw.Balancer, p)
		if len(svc.VIPs) > 0 {
			services = append(services, svc)
		}
		for _, v := range svc.VIPs {
			vips = append(vips, v.Addr)
		}
	}
	set := NewBackendSet(vips)
	var backends []Backend
	for i, rb := range raw.Backends {
		backends = append(backends, validateBackend(set, rb, DefaultService, []string{"backend", item(i)}, backendPlace(rb.Name, i), p))
	}
	return services, backends
}

// singlePoolVIPs is balancer.vips with the ports [balancer.ports] gives
// them.
func singlePoolVIPs(raw rawBalancer, p *problems) []model.VIP {
	var vips []model.VIP
	for _, a := range addressList(raw.VIPs, "balancer: vips", p) {
		vips = append(vips, model.VIP{Addr: a})
	}
	for _, key := range slices.Sorted(maps.Keys(raw.Ports)) {
		ports := raw.Ports[key]
		place, at := fmt.Sprintf("balancer: ports: %s", quote.Q(key)), []string{"balancer", "ports", key}
		a, err := ParseAddress(key)
		if err != nil {
			p.at(at, "%s: %v", place, err)
			continue
		}
		i := slices.IndexFunc(vips, func(v model.VIP) bool { return v.Addr == a })
		if i < 0 {
			p.at(at, "%s: not one of balancer.vips", place)
			continue
		}
		if len(ports) == 0 {
			p.at(at, "%s: empty list would drop every packet; leave the VIP out of [balancer.ports] to accept all ports", place)
			continue
		}
		items := make([]any, len(ports))
		for j, n := range ports {
			items[j] = n
		}
		ranges, errs := parsePorts(items)
		for _, err := range errs {
			p.at(at, "%s: %v", place, err)
		}
		vips[i].Ports = ranges
	}
	return vips
}

// validateBackend validates one backend entry, of service, at key.
func validateBackend(set *BackendSet, rb rawBackend, service string, key []string, place string, p *problems) Backend {
	spec := BackendSpec{Name: rb.Name, Service: service, Address: rb.Address, Check: rb.Check}
	if rb.Weight != nil {
		w := int64(*rb.Weight)
		spec.Weight = &w
	}
	b, problems := set.Add(spec)
	for _, bp := range problems {
		p.at(slices.Concat(key, []string{bp.Field}), "%s: %v", place, bp)
	}
	return b
}

// servicePlace names the i-th (0-based) [[service]] in messages.
func servicePlace(name string, i int) string {
	if name == "" {
		return fmt.Sprintf("service #%d", i+1)
	}
	return "service " + quote.Q(name)
}

// backendPlace names the i-th (0-based) backend of a list in messages.
func backendPlace(name string, i int) string {
	if name == "" {
		return fmt.Sprintf("backend #%d", i+1)
	}
	return "backend " + quote.Q(name)
}

func validateReceiver(raw rawReceiver, p *problems) *Receiver {
	r := &Receiver{
		EncapPort: port(raw.EncapPort, DefaultEncapPort, "receiver: encap_port", p),
		Mode:      ModeAuto,
		Workers:   intIn(raw.Workers, 0, 0, MaxWorkers, "receiver: workers", p),
	}
	if len(raw.VIPs) == 0 {
		p.at([]string{"receiver", "vips"}, "receiver: vips: at least one VIP is required")
	}
	r.VIPs = addressList(raw.VIPs, "receiver: vips", p)
	// Without balancers the receiver would relay packets from anyone.
	if len(raw.Balancers) == 0 {
		p.at([]string{"receiver", "balancers"}, "receiver: balancers: at least one balancer address is required (the receiver accepts tunnelled packets only from these)")
	}
	r.Balancers = addressList(raw.Balancers, "receiver: balancers", p)
	switch Mode(raw.Mode) {
	case "":
	case ModeAuto, ModeKernel, ModeUserspace:
		r.Mode = Mode(raw.Mode)
	default:
		p.at([]string{"receiver", "mode"}, "receiver: mode %s: must be auto, kernel or userspace", quote.Q(raw.Mode))
	}
	if err := r.KernelUnsupported(); err != nil && r.Mode == ModeKernel {
		p.at([]string{"receiver", "mode"}, "receiver: mode kernel: %v: use auto or userspace", err)
	}
	return r
}

// addressList parses a list of unicast addresses and rejects repeats.
func addressList(raw []string, place string, p *problems) []netip.Addr {
	var out []netip.Addr
	for _, s := range raw {
		a, err := ParseAddress(s)
		if err != nil {
			p.at(keyOf(place), "%s: %s: %v", place, quote.Q(s), err)
			continue
		}
		if slices.Contains(out, a) {
			p.at(keyOf(place), "%s: %s: listed twice", place, a)
			continue
		}
		out = append(out, a)
	}
	return out
}

// CheckBackendName accepts the names that are safe in a D-Bus object path
// (after escaping), a file name and a log line.
func CheckBackendName(name string) error {
	if !backendName.MatchString(name) {
		return fmt.Errorf("must be 1-64 characters of A-Z a-z 0-9 . _ -")
	}
	return nil
}

// CheckWeight accepts the weights a backend can have.
func CheckWeight(w int64) error {
	if w < 0 || w > MaxWeight {
		return fmt.Errorf("weight %d: must be between 0 and %d", w, MaxWeight)
	}
	return nil
}

// ParseAddress accepts the addresses a VIP, backend or balancer can have:
// unicast IPv4 or IPv6, reachable from other hosts. Each refused kind has
// its own answer, so that an operator knows what to write instead.
func ParseAddress(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return a, fmt.Errorf("not an IP address")
	case a.Zone() != "":
		return a, fmt.Errorf("has a zone %s: give a global address without one", quote.Q(a.Zone()))
	case a.Is4In6():
		// One address, one spelling: the data path and the D-Bus API
		// compare and print the IPv4 form.
		return a, fmt.Errorf("IPv4-mapped IPv6 address: write the IPv4 form %s", a.Unmap())
	case a.IsUnspecified(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return a, fmt.Errorf("not a unicast address")
	case a.IsMulticast():
		return a, fmt.Errorf("multicast address, need unicast")
	case a.IsLoopback():
		return a, fmt.Errorf("loopback address, need one reachable from other hosts")
	case a.Is6() && a.IsLinkLocalUnicast():
		// A link-local address needs a zone, which neither the tunnel nor
		// a client on another link has.
		return a, fmt.Errorf("link-local address, need a global or unique local one")
	}
	return a, nil
}

// keyOf is the key a place such as "balancer: encap_port" names.
func keyOf(place string) []string { return strings.Split(place, ": ") }

func port(raw *int, def int, place string, p *problems) uint16 {
	if raw == nil {
		return uint16(def)
	}
	if *raw < 1 || *raw > 65535 {
		p.at(keyOf(place), "%s %d: must be between 1 and 65535", place, *raw)
		return uint16(def)
	}
	return uint16(*raw)
}

// intIn returns def when raw is absent, else *raw if it is in [lo, hi].
func intIn(raw *int, def, lo, hi int, place string, p *problems) int {
	if raw == nil {
		return def
	}
	if *raw < lo || *raw > hi {
		p.at(keyOf(place), "%s %d: must be between %d and %d", place, *raw, lo, hi)
		return def
	}
	return *raw
}

// timeout parses a Go duration ("90s", "15m") of at least a second.
func timeout(raw string, def time.Duration, place string, p *problems) time.Duration {
	if raw == "" {
		return def
	}
	d, err := time.ParseDuration(raw)
	switch {
	case err != nil:
		p.at(keyOf(place), "%s %s: not a duration (write e.g. \"90s\", \"15m\" or \"1h\")", place, quote.Q(raw))
	case d < time.Second || d > 24*time.Hour:
		p.at(keyOf(place), "%s %s: must be between 1s and 24h", place, quote.Q(raw))
	default:
		return d
	}
	return def
}

// routeTable accepts a kernel routing table of caplanced's own: not 0
// (unspecified) nor the tables the kernel itself uses.
func routeTable(raw *int, p *problems) uint32 {
	if raw == nil {
		return DefaultRouteTable
	}
	key := []string{"balancer", "route_table"}
	switch n := *raw; {
	case n < 1 || n > math.MaxUint32:
		p.at(key, "balancer: route_table %d: must be between 1 and %d", n, uint32(math.MaxUint32))
	case n == 253 || n == 254 || n == 255:
		p.at(key, "balancer: route_table %d: is the kernel's %s table; give a table of caplanced's own (e.g. %d)", n, map[int]string{253: "default", 254: "main", 255: "local"}[n], DefaultRouteTable)
	default:
		return uint32(n)
	}
	return DefaultRouteTable
}

// routeProtocol accepts an rtnetlink route protocol that is not one the
// kernel (0-4) or BIRD (12) marks its own routes with, so that caplanced
// never deletes a route it did not add.
func routeProtocol(raw *int, p *problems) uint8 {
	if raw == nil {
		return DefaultRouteProtocol
	}
	key := []string{"balancer", "route_protocol"}
	switch n := *raw; {
	case n < 1 || n > 255:
		p.at(key, "balancer: route_protocol %d: must be between 5 and 255 (not 12)", n)
	case n <= 4:
		p.at(key, "balancer: route_protocol %d: is the kernel's own (%s); give a protocol of caplanced's own (e.g. %d)", n, [...]string{"", "redirect", "kernel", "boot", "static"}[n], DefaultRouteProtocol)
	case n == 12:
		p.at(key, "balancer: route_protocol 12: is BIRD's; give a protocol of caplanced's own (e.g. %d)", DefaultRouteProtocol)
	default:
		return uint8(n)
	}
	return DefaultRouteProtocol
}

// withdrawDelay parses withdraw_delay: a Go duration from 0 to
// MaxWithdrawDelay.
func withdrawDelay(raw string, p *problems) time.Duration {
	if raw == "" {
		return DefaultWithdrawDelay
	}
	key := []string{"balancer", "withdraw_delay"}
	d, err := time.ParseDuration(raw)
	switch {
	case err != nil:
		p.at(key, "balancer: withdraw_delay %s: not a duration (write e.g. \"5s\" or \"0s\")", quote.Q(raw))
	case d < 0 || d > MaxWithdrawDelay:
		p.at(key, "balancer: withdraw_delay %s: must be between 0s and %s", quote.Q(raw), formatDuration(MaxWithdrawDelay))
	default:
		return d
	}
	return DefaultWithdrawDelay
}

func validInterfaceName(s string) bool {
	return len(s) <= 15 && !strings.ContainsAny(s, "/: \t\n") && s != "." && s != ".."
}

// CheckSpec validates a health check spec (see package checkspec); the error
// quotes the spec and names the bad part.
func CheckSpec(spec string) error {
	_, err := checkspec.Parse(spec)
	return err
}

// CheckListen checks a TCP address to listen on, for metrics.listen here
// and in caplance-healthd.toml: an IP address (IPv6 in brackets) or
// nothing (every address), a colon and a port from 1 to 65535. Names are
// refused: which address a name stands for may change under a listener.
func CheckListen(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want IP:PORT, such as 127.0.0.1:9469 or [::1]:9469")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %s: want a number from 1 to 65535", quote.Q(port))
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("%s is not an IP address (names are not accepted)", quote.Q(host))
	}
	return nil
}
