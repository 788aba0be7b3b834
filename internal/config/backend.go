package config

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/caplance/caplance/internal/quote"
)

// The rules of one backend, written once: the configuration file's
// [[service.backend]] and [[backend]] entries, the registry's backends
// (configuration and AddBackend) and the state file's all go through
// BackendSet, so one bad backend gets the same message wherever it comes
// from. Each caller puts its own place in front ("test.toml: line 7:
// service \"web\": backend \"x\": ", "adding backend \"x\": ", "state file …:
// backends[0] \"x\": ").

// BackendSpec is a backend as an operator gives it, before validation.
type BackendSpec struct {
	Name string
	// Service is the name of the service whose pool it joins.
	Service string
	Address string
	// Weight is nil for DefaultWeight.
	Weight *int64
	Check  string
}

// Problem is one rule a backend or a service breaks. Its message names the
// field and repeats at most a short prefix of the bad value, but not the
// backend or service: that is the caller's place.
type Problem struct {
	// Field is the key at fault: name, address, weight or check of a
	// backend; name, vips, protocols, ports, hash, table_size or check of a
	// service.
	Field string
	// Taken says the name, address or (VIP, protocol, port) is another
	// backend's or service's (the registry's AlreadyExists); every other
	// problem is a malformed value.
	Taken bool
	msg   string
}

func (p Problem) Error() string { return p.msg }

func newProblem(field, format string, args ...any) Problem {
	return Problem{Field: field, msg: fmt.Sprintf(format, args...)}
}

// NameTaken is the problem of a name another backend has.
func NameTaken() Problem {
	p := newProblem("name", "name: already used by another backend")
	p.Taken = true
	return p
}

// AddressTaken is the problem of an address backend other of the same
// service has.
func AddressTaken(a netip.Addr, other string) Problem {
	p := newProblem("address", "address %s: already used by backend %s", a, quote.Q(other))
	p.Taken = true
	return p
}

// BackendSet validates backends one at a time: each alone, against the VIPs
// and against the ones added before it. A name is unique among the
// backends of every service (the same host may be a backend of several
// services, under distinct names); an address only within its service.
type BackendSet struct {
	vips  []netip.Addr
	names map[string]bool
	addrs map[serviceAddr]string
}

type serviceAddr struct {
	service string
	addr    netip.Addr
}

// NewBackendSet returns an empty set of backends for a balancer with these
// VIPs, those of every service (nil: no VIP to avoid).
func NewBackendSet(vips []netip.Addr) *BackendSet {
	return &BackendSet{vips: vips, names: map[string]bool{}, addrs: map[serviceAddr]string{}}
}

// Add validates spec and records its name and address (the valid ones) as
// taken. The Backend has the parsed values; its fields are zero (Weight
// DefaultWeight) where there are problems.
func (s *BackendSet) Add(spec BackendSpec) (Backend, []Problem) {
	b, problems := CheckBackend(spec, s.vips)
	if spec.Name != "" && s.names[spec.Name] {
		problems = append(problems, NameTaken())
	}
	s.names[spec.Name] = true
	if b.Address.IsValid() {
		key := serviceAddr{spec.Service, b.Address}
		if other, dup := s.addrs[key]; dup {
			problems = append(problems, AddressTaken(b.Address, other))
		} else {
			s.addrs[key] = spec.Name
		}
	}
	return b, problems
}

// CheckBackend validates spec alone and against the VIPs, those of every
// service (not against other backends: see BackendSet, NameTaken and
// AddressTaken). That spec.Service exists is the caller's to check.
func CheckBackend(spec BackendSpec, vips []netip.Addr) (Backend, []Problem) {
	var problems []Problem
	b := Backend{Name: spec.Name, Service: spec.Service, Weight: DefaultWeight, Check: spec.Check}
	if spec.Name == "" {
		problems = append(problems, newProblem("name", "name: missing"))
	} else if err := CheckBackendName(spec.Name); err != nil {
		problems = append(problems, newProblem("name", "name: %v", err))
	}
	if spec.Address == "" {
		problems = append(problems, newProblem("address", "address: missing"))
	} else if a, err := ParseAddress(spec.Address); err != nil {
		problems = append(problems, newProblem("address", "address %s: %v", quote.Q(spec.Address), err))
	} else if slices.Contains(vips, a) {
		problems = append(problems, newProblem("address", "address %s: is a VIP of this balancer (packets would loop)", a))
	} else {
		b.Address = a
	}
	if spec.Weight != nil {
		if err := CheckWeight(*spec.Weight); err != nil {
			problems = append(problems, newProblem("weight", "%v", err))
		} else {
			b.Weight = uint32(*spec.Weight)
		}
	}
	if spec.Check != "" {
		if err := CheckSpec(spec.Check); err != nil {
			problems = append(problems, newProblem("check", "%v", err)) // the error quotes the spec
		}
	}
	return b, problems
}
