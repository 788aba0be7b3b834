package config

import (
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/maglev"
	"github.com/caplance/caplance/internal/model"
)

var backendName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func validate(raw rawConfig) (*Config, problems) {
	var p problems
	cfg := &Config{}
	if raw.Balancer == nil && raw.Receiver == nil {
		p.add("neither a [balancer] nor a [receiver] section: caplanced has nothing to do")
	}
	if raw.Balancer != nil {
		cfg.Balancer = validateBalancer(*raw.Balancer, &p)
	}
	if len(raw.Backends) > 0 && raw.Balancer == nil {
		p.at([]string{"backend"}, "[[backend]] entries need a [balancer] section")
	}
	cfg.Backends = validateBackends(raw.Backends, cfg.Balancer, &p)
	if cfg.Balancer != nil && len(raw.Backends) > cfg.Balancer.MaxBackends {
		p.at([]string{"balancer", "max_backends"}, "%d [[backend]] entries: more than balancer.max_backends = %d allows", len(raw.Backends), cfg.Balancer.MaxBackends)
	}
	if raw.Receiver != nil {
		cfg.Receiver = validateReceiver(*raw.Receiver, &p)
	}
	return cfg, p
}

func validateBalancer(raw rawBalancer, p *problems) *Balancer {
	b := &Balancer{
		Interface:     raw.Interface,
		EncapPort:     port(raw.EncapPort, DefaultEncapPort, "balancer: encap_port", p),
		TableSize:     maglev.DefaultSize,
		Workers:       intIn(raw.Workers, 0, 0, MaxWorkers, "balancer: workers", p),
		ConntrackSize: intIn(raw.ConntrackSize, DefaultConntrackSize, 1024, MaxConntrackSize, "balancer: conntrack_size", p),
		TCPTimeout:    timeout(raw.TCPTimeout, DefaultTCPTimeout, "balancer: tcp_timeout", p),
		UDPTimeout:    timeout(raw.UDPTimeout, DefaultUDPTimeout, "balancer: udp_timeout", p),
		TCPClosingTimeout: timeout(raw.TCPClosingTimeout, DefaultTCPClosingTimeout,
			"balancer: tcp_closing_timeout", p),
	}
	if len(raw.VIPs) == 0 {
		p.at([]string{"balancer", "vips"}, "balancer: vips: at least one VIP is required")
	}
	addrs := addressList(raw.VIPs, "balancer: vips", p)
	for _, a := range addrs {
		b.VIPs = append(b.VIPs, model.VIP{Addr: a})
	}
	for _, key := range slices.Sorted(maps.Keys(raw.Ports)) {
		ports := raw.Ports[key]
		place, at := fmt.Sprintf("balancer: ports: %q", key), []string{"balancer", "ports", key}
		a, err := ParseAddress(key)
		if err != nil {
			p.at(at, "%s: %v", place, err)
			continue
		}
		i := slices.IndexFunc(b.VIPs, func(v model.VIP) bool { return v.Addr == a })
		if i < 0 {
			p.at(at, "%s: not one of balancer.vips", place)
			continue
		}
		for _, n := range portList(ports, place, at, p) {
			b.VIPs[i].Ports = append(b.VIPs[i].Ports, model.PortRange{First: n, Last: n})
		}
	}
	if raw.Interface != "" && !validInterfaceName(raw.Interface) {
		p.at([]string{"balancer", "interface"}, "balancer: interface %q: not a valid interface name (1-15 characters, no '/', ':' or white space)", raw.Interface)
	}
	if raw.TableSize != nil {
		m := *raw.TableSize
		switch {
		case m < maglev.MinSize || m > maglev.MaxSize:
			p.at([]string{"balancer", "table_size"}, "balancer: table_size %d: must be a prime between %d and %d", m, maglev.MinSize, maglev.MaxSize)
		case !maglev.IsPrime(m):
			p.at([]string{"balancer", "table_size"}, "balancer: table_size %d: not a prime (Maglev needs a prime table size; the default is %d)", m, maglev.DefaultSize)
		default:
			b.TableSize = m
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
	return b
}

func validateBackends(raw []rawBackend, bal *Balancer, p *problems) []Backend {
	var vips []netip.Addr
	if bal != nil {
		for _, v := range bal.VIPs {
			vips = append(vips, v.Addr)
		}
	}
	set := NewBackendSet(vips)
	var out []Backend
	for i, rb := range raw {
		place := fmt.Sprintf("backend %q", rb.Name)
		if rb.Name == "" {
			place = fmt.Sprintf("backend #%d", i+1)
		}
		spec := BackendSpec{Name: rb.Name, Address: rb.Address, Check: rb.Check}
		if rb.Weight != nil {
			w := int64(*rb.Weight)
			spec.Weight = &w
		}
		b, problems := set.Add(spec)
		for _, bp := range problems {
			p.at([]string{"backend", item(i), bp.Field}, "%s: %v", place, bp)
		}
		out = append(out, b)
	}
	return out
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
		p.at([]string{"receiver", "mode"}, "receiver: mode %q: must be auto, kernel or userspace", raw.Mode)
	}
	return r
}

// addressList parses a list of unicast IPv4 addresses and rejects repeats.
func addressList(raw []string, place string, p *problems) []netip.Addr {
	var out []netip.Addr
	for _, s := range raw {
		a, err := ParseAddress(s)
		if err != nil {
			p.at(keyOf(place), "%s: %q: %v", place, s, err)
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
// unicast IPv4, reachable from other hosts. IPv6 is planned (DESIGN.md) but
// not carried by the data path yet.
func ParseAddress(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return a, fmt.Errorf("not an IPv4 address")
	case a.Is6() && !a.Is4In6():
		return a, fmt.Errorf("IPv6 is not supported yet: give an IPv4 address")
	}
	a = a.Unmap()
	switch {
	case a.IsUnspecified(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return a, fmt.Errorf("not a unicast address")
	case a.IsMulticast():
		return a, fmt.Errorf("multicast address, need unicast")
	case a.IsLoopback():
		return a, fmt.Errorf("loopback address, need one reachable from other hosts")
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
		p.at(keyOf(place), "%s %q: not a duration (write e.g. \"90s\", \"15m\" or \"1h\")", place, raw)
	case d < time.Second || d > 24*time.Hour:
		p.at(keyOf(place), "%s %q: must be between 1s and 24h", place, raw)
	default:
		return d
	}
	return def
}

func portList(raw []int, place string, key []string, p *problems) []uint16 {
	if len(raw) == 0 {
		p.at(key, "%s: empty list would drop every packet; leave the VIP out of [balancer.ports] to accept all ports", place)
		return nil
	}
	out := make([]uint16, 0, len(raw))
	for _, n := range raw {
		switch {
		case n < 1 || n > 65535:
			p.at(key, "%s: port %d: must be between 1 and 65535", place, n)
		case slices.Contains(out, uint16(n)):
			p.at(key, "%s: port %d: listed twice", place, n)
		default:
			out = append(out, uint16(n))
		}
	}
	slices.Sort(out)
	return out
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
