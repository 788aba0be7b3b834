package config

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/caplance/caplance/internal/maglev"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/quote"
)

// The rules of one service, written once: the configuration file's
// [[service]] entries and the registry's AddService and ChangeService (and
// its state file) all go through CheckService and ServiceSet, so a bad
// service gets the same message wherever it comes from, after each caller's
// place ("test.toml: line 7: service \"web\": ", "adding service \"web\": ").
//
// A spec is checked against a base: the service it starts from. Every field
// the spec leaves empty ("" or nil) keeps the base's value, so AddService
// passes ServiceDefaults and ChangeService passes the service as it is,
// with a spec holding only the fields to change.

// ServiceSpec is a service as an operator gives it, before validation.
type ServiceSpec struct {
	Name string
	VIPs []string
	// Protocols are "tcp", "udp" or "tcp+udp" (see ParseProtocols).
	Protocols []string
	// Ports is a port list as ParsePorts reads it: "80,443,8000-8099" or
	// "all". The same list applies to every VIP.
	Ports     string
	Hash      string
	TableSize *int64
	// Check is the health check spec of the service's backends that have
	// none of their own. Like every field, "" keeps the base's: a change
	// cannot remove a service's check (only a new service, or the file, can
	// leave it out).
	Check string
}

// ServiceDefaults is the base of a new service: every protocol and port of
// its VIPs, the 5-tuple hash, a table of tableSize slots ([balancer]
// table_size) and no check.
func ServiceDefaults(tableSize int) model.Service {
	return model.Service{Protocols: model.TCP | model.UDP, Hash: model.FiveTuple, TableSize: tableSize}
}

// serviceNameTaken is the problem of a name another service has.
func serviceNameTaken() Problem {
	p := newProblem("name", "name: already used by another service")
	p.Taken = true
	return p
}

// overlapping is the problem of a service that would take a VIP, protocol
// and port that service other takes (model.Overlap found them).
func overlapping(other string, vip netip.Addr, proto model.Protocols, port uint16) Problem {
	where := fmt.Sprintf("%s port %d of %s", proto, port, vip)
	if port == 0 { // both take every port
		where = fmt.Sprintf("every %s port of %s", proto, vip)
	}
	p := newProblem("vips", "overlaps service %s: both would take %s (a packet must belong to one service)", quote.Q(other), where)
	p.Taken = true
	return p
}

// ServiceSet validates services one at a time: each alone (CheckService)
// and against the others, whose names it must not take and whose VIP,
// protocol and port it must not share.
type ServiceSet struct {
	names    map[string]bool
	services []model.Service
}

// NewServiceSet returns a set holding services, valid already (those a new
// or changed service is checked against).
func NewServiceSet(services []model.Service) *ServiceSet {
	s := &ServiceSet{names: map[string]bool{}}
	for _, svc := range services {
		s.names[svc.Name] = true
		s.services = append(s.services, svc)
	}
	return s
}

// Add validates spec over base (see CheckService) and against the services
// in the set, and adds it: its name in any case, the service itself only
// when it is valid (an invalid one would report overlaps of values that
// are wrong anyway).
func (s *ServiceSet) Add(spec ServiceSpec, base model.Service) (model.Service, []Problem) {
	return s.add(spec, portItems(spec.Ports), base)
}

// add is Add with the port list as its items (nil: not given), as the file
// gives them.
func (s *ServiceSet) add(spec ServiceSpec, ports []any, base model.Service) (model.Service, []Problem) {
	svc, problems := checkService(spec, ports, base)
	if svc.Name != "" && s.names[svc.Name] {
		problems = append(problems, serviceNameTaken())
	}
	s.names[svc.Name] = true
	if len(problems) > 0 {
		return svc, problems
	}
	for _, other := range s.services {
		if vip, proto, port, ok := model.Overlap(svc, other); ok {
			problems = append(problems, overlapping(other.Name, vip, proto, port))
		}
	}
	if len(problems) == 0 {
		s.services = append(s.services, svc)
	}
	return svc, problems
}

// CheckService validates spec alone (not against other services: see
// ServiceSet) and returns base with the fields spec gives replaced. A new
// service's base is ServiceDefaults; a changed one's is the service as it
// is, whose name spec may repeat but not change. New VIPs take spec's ports
// or, without them, the ones base's VIPs share (every port for a new
// service). The service's fields are base's where there are problems.
func CheckService(spec ServiceSpec, base model.Service) (model.Service, []Problem) {
	return checkService(spec, portItems(spec.Ports), base)
}

// portItems splits a port list of ParsePorts' form into its items; nil for
// "", which gives no list.
func portItems(s string) []any {
	if s == "" {
		return nil
	}
	var items []any
	for _, it := range strings.Split(s, ",") {
		items = append(items, strings.TrimSpace(it))
	}
	return items
}

// checkService is CheckService with the port list as its items (nil: not
// given), so that the file's can be integers and strings.
func checkService(spec ServiceSpec, portList []any, base model.Service) (model.Service, []Problem) {
	var problems []Problem
	svc := base
	switch {
	case spec.Name == "" && base.Name == "":
		problems = append(problems, newProblem("name", "name: missing"))
	case spec.Name == "" || spec.Name == base.Name:
	case base.Name != "":
		problems = append(problems, newProblem("name", "name: cannot be changed (remove the service and add it again)"))
	case CheckServiceName(spec.Name) != nil:
		problems = append(problems, newProblem("name", "name: %v", CheckServiceName(spec.Name)))
	default:
		svc.Name = spec.Name
	}

	var addrs []netip.Addr
	vipsOK := spec.VIPs == nil
	switch {
	case spec.VIPs == nil && len(base.VIPs) == 0:
		problems = append(problems, newProblem("vips", "vips: missing (at least one VIP is required)"))
	case spec.VIPs == nil:
	case len(spec.VIPs) == 0:
		problems = append(problems, newProblem("vips", "vips: at least one VIP is required"))
	default:
		var errs []error
		addrs, errs = parseVIPs(spec.VIPs)
		for _, err := range errs {
			problems = append(problems, newProblem("vips", "vips: %v", err))
		}
		vipsOK = len(errs) == 0
	}
	var ports []model.PortRange
	portsOK := portList == nil
	if !portsOK {
		var errs []error
		ports, errs = parsePorts(portList)
		for _, err := range errs {
			problems = append(problems, newProblem("ports", "ports: %v", err))
		}
		portsOK = len(errs) == 0
	}
	if spec.VIPs != nil && portList == nil && vipsOK {
		var same bool
		if ports, same = sharedPorts(base.VIPs); !same {
			problems = append(problems, newProblem("ports", "ports: missing: the service's VIPs have different port lists, so give the new VIPs theirs"))
			portsOK = false
		}
	}
	if (spec.VIPs != nil || portList != nil) && vipsOK && portsOK {
		if spec.VIPs == nil {
			addrs = nil
			for _, v := range base.VIPs {
				addrs = append(addrs, v.Addr)
			}
		}
		svc.VIPs = make([]model.VIP, len(addrs))
		for i, a := range addrs {
			svc.VIPs[i] = model.VIP{Addr: a, Ports: slices.Clone(ports)}
		}
	}

	if spec.Protocols != nil {
		if p, err := ParseProtocols(spec.Protocols); err != nil {
			problems = append(problems, newProblem("protocols", "protocols: %v", err))
		} else {
			svc.Protocols = p
		}
	}
	if spec.Hash != "" {
		if h, err := ParseHash(spec.Hash); err != nil {
			problems = append(problems, newProblem("hash", "hash %v", err))
		} else {
			svc.Hash = h
		}
	}
	if spec.TableSize != nil {
		if err := checkTableSize(*spec.TableSize); err != nil {
			problems = append(problems, newProblem("table_size", "table_size %d: %v", *spec.TableSize, err))
		} else {
			svc.TableSize = int(*spec.TableSize)
		}
	}
	if spec.Check != "" {
		if err := CheckSpec(spec.Check); err != nil {
			problems = append(problems, newProblem("check", "%v", err)) // the error quotes the spec
		} else {
			svc.Check = spec.Check
		}
	}
	return svc, problems
}

// CheckServiceName accepts the names a service can have: a backend's.
func CheckServiceName(name string) error { return CheckBackendName(name) }

// parseVIPs parses a service's VIPs, with one error for each that is not a
// valid VIP or is listed twice.
func parseVIPs(vips []string) ([]netip.Addr, []error) {
	var out []netip.Addr
	var errs []error
	for _, s := range vips {
		a, err := ParseAddress(s)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", quote.Q(s), err))
		case slices.Contains(out, a):
			errs = append(errs, fmt.Errorf("%s: listed twice", a))
		default:
			out = append(out, a)
		}
	}
	return out, errs
}

// sharedPorts is the port list every VIP has, and false when they differ.
func sharedPorts(vips []model.VIP) ([]model.PortRange, bool) {
	if len(vips) == 0 {
		return nil, true
	}
	for _, v := range vips[1:] {
		if (v.Ports == nil) != (vips[0].Ports == nil) || !slices.Equal(v.Ports, vips[0].Ports) {
			return nil, false
		}
	}
	return vips[0].Ports, true
}

// ParseProtocols reads protocol names — "tcp", "udp" or "tcp+udp" — into
// the set they give together; naming one twice is an error.
func ParseProtocols(names []string) (model.Protocols, error) {
	if len(names) == 0 {
		return 0, errors.New("none given: want tcp, udp or both (leave the key out for both)")
	}
	var set model.Protocols
	for _, n := range names {
		var p model.Protocols
		switch n {
		case "tcp":
			p = model.TCP
		case "udp":
			p = model.UDP
		case "tcp+udp":
			p = model.TCP | model.UDP
		default:
			return 0, fmt.Errorf("%s: not a protocol (want tcp, udp or tcp+udp)", quote.Q(n))
		}
		if twice := set & p; twice != 0 {
			return 0, fmt.Errorf("%s: listed twice", twice)
		}
		set |= p
	}
	return set, nil
}

// ParseHash reads a hash's name (model.Hash.String).
func ParseHash(s string) (model.Hash, error) {
	var names []string
	for _, h := range model.Hashes() {
		if s == h.String() {
			return h, nil
		}
		names = append(names, h.String())
	}
	return 0, fmt.Errorf("%s: must be %s or %s", quote.Q(s), strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
}

// ParsePorts reads a port list as the D-Bus API and caplancectl give it:
// ports and first-last ranges, comma-separated ("80,443,8000-8099"), or
// "all" for every port (nil). The list may name a port once; it comes back
// sorted, ranges that touch merged. The error has one line per problem.
func ParsePorts(s string) ([]model.PortRange, error) {
	ports, errs := parsePorts(portItems(s))
	return ports, errors.Join(errs...)
}

// parsePorts reads a port list's items: integers (int64 or int, as TOML
// and [balancer.ports] give them) and strings, a port, a range
// "first-last", or "all" alone. It returns one error per bad item, in the
// order of the list.
func parsePorts(items []any) ([]model.PortRange, []error) {
	switch {
	case len(items) == 0:
		return nil, []error{errors.New("empty list would drop every packet; leave ports out (or give \"all\") to take every port")}
	case len(items) == 1 && items[0] == "all":
		return nil, nil
	}
	var sorted []model.PortRange // the good items so far, sorted by First
	var errs []error
	for i, it := range items {
		switch it.(type) {
		case int, int64, string:
		default:
			errs = append(errs, fmt.Errorf("element %d: must be a port (an integer) or a range (a string \"first-last\"), not %s", i+1, tomlType(it)))
			continue
		}
		r, err := portItem(it)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// The first range that ends at or after r starts is the only one
		// that can overlap it.
		at, _ := slices.BinarySearchFunc(sorted, r.First, func(o model.PortRange, first uint16) int { return int(o.Last) - int(first) })
		if at < len(sorted) && sorted[at].First <= r.Last {
			if sorted[at] == r {
				errs = append(errs, fmt.Errorf("%s: listed twice", portsText(r)))
			} else {
				errs = append(errs, fmt.Errorf("%s: overlaps %s", portsText(r), model.FormatPorts([]model.PortRange{sorted[at]})))
			}
			continue
		}
		sorted = slices.Insert(sorted, at, r)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	merged := make([]model.PortRange, 0, len(sorted))
	for _, r := range sorted {
		if n := len(merged); n > 0 && int(merged[n-1].Last)+1 == int(r.First) {
			merged[n-1].Last = r.Last
			continue
		}
		merged = append(merged, r)
	}
	return merged, nil
}

// portsText names a port or a range in a message: "port 80", "ports 80-90".
func portsText(r model.PortRange) string {
	if r.First == r.Last {
		return fmt.Sprintf("port %d", r.First)
	}
	return fmt.Sprintf("ports %d-%d", r.First, r.Last)
}

// portItem reads one item of a port list.
func portItem(it any) (model.PortRange, error) {
	switch v := it.(type) {
	case int:
		return portRange(int64(v), int64(v))
	case int64:
		return portRange(v, v)
	case string:
		first, last, isRange := strings.Cut(v, "-")
		f, errF := portNumber(first)
		l, errL := portNumber(last)
		switch {
		case v == "all":
			return model.PortRange{}, errors.New(`"all" stands alone: it is every port`)
		case errF != nil || (isRange && errL != nil):
			return model.PortRange{}, fmt.Errorf("%s: not a port or a range first-last (e.g. 80 or 8000-8099)", quote.Q(v))
		case !isRange:
			return portRange(f, f)
		}
		return portRange(f, l)
	}
	panic(fmt.Sprintf("config: port list item of type %T", it)) // parsePorts checked the type
}

// portNumber reads a port written in decimal digits (its range is checked
// by portRange).
func portNumber(s string) (int64, error) {
	if s == "" || strings.Trim(s, "0123456789") != "" || len(s) > 6 {
		return 0, errors.New("not a number")
	}
	return strconv.ParseInt(s, 10, 64)
}

// portRange checks that first-last is a range of valid ports.
func portRange(first, last int64) (model.PortRange, error) {
	for _, p := range []int64{first, last} {
		if p < 1 || p > 65535 {
			return model.PortRange{}, fmt.Errorf("port %d: must be between 1 and 65535", p)
		}
	}
	if first > last {
		return model.PortRange{}, fmt.Errorf("ports %d-%d: the first is above the last", first, last)
	}
	return model.PortRange{First: uint16(first), Last: uint16(last)}, nil
}

// checkTableSize accepts the sizes a Maglev table can have.
func checkTableSize(n int64) error {
	switch {
	case n < maglev.MinSize || n > maglev.MaxSize:
		return fmt.Errorf("must be a prime between %d and %d", maglev.MinSize, maglev.MaxSize)
	case !maglev.IsPrime(int(n)):
		return fmt.Errorf("not a prime (Maglev needs a prime table size; the default is %d)", maglev.DefaultSize)
	}
	return nil
}
