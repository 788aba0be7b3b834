// Package model holds the value types that config, registry and balancer
// share — a service with its VIPs, ports, protocols and hashing, a backend's
// identity, address, weight and state — so that none of them imports another
// just for a type. It holds data, its names and the few facts every user
// must compute alike (which ports a VIP takes, whether two services
// overlap); validation with messages for people is config's. It is pure:
// standard library only.
package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// PortRange is the destination ports First to Last, both included.
type PortRange struct{ First, Last uint16 }

// VIP is one virtual address of a service and the destination ports it
// takes there.
type VIP struct {
	Addr netip.Addr
	// Ports is sorted by First and its ranges neither overlap nor touch;
	// nil takes every port.
	Ports []PortRange
}

// Takes reports whether the VIP takes destination port p.
func (v VIP) Takes(p uint16) bool {
	if v.Ports == nil {
		return true
	}
	for _, r := range v.Ports {
		if p >= r.First && p <= r.Last {
			return true
		}
	}
	return false
}

// sharesPort reports whether v and o take a port in common.
func (v VIP) sharesPort(o VIP) bool {
	if v.Ports == nil || o.Ports == nil {
		return true
	}
	for _, a := range v.Ports {
		for _, b := range o.Ports {
			if a.First <= b.Last && b.First <= a.Last {
				return true
			}
		}
	}
	return false
}

// FormatPorts writes ports as the port lists of the configuration file, the
// D-Bus API and caplancectl do: "80,443,8000-8099", or "all" for nil.
func FormatPorts(ports []PortRange) string {
	if ports == nil {
		return "all"
	}
	var sb strings.Builder
	for i, r := range ports {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.Itoa(int(r.First)))
		if r.Last != r.First {
			sb.WriteByte('-')
			sb.WriteString(strconv.Itoa(int(r.Last)))
		}
	}
	return sb.String()
}

// Protocols is the set of transport protocols a service takes.
type Protocols uint8

// The protocols a service can take.
const (
	TCP Protocols = 1 << iota
	UDP
)

// String is "tcp", "udp" or "tcp+udp", as the configuration file, the D-Bus
// API and caplancectl write them.
func (p Protocols) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case TCP | UDP:
		return "tcp+udp"
	}
	return fmt.Sprintf("protocols(%d)", uint8(p))
}

// Hash says which fields of a flow pick its backend.
type Hash uint8

// Hashes. FiveTuple spreads every flow on its own; SourceIP sends every flow
// of a client address to one backend (IPVS "sh"); SourceIPPort keys on the
// client's address and port, so a client's flows from one port stay
// together whatever VIP or port of the service they reach.
const (
	FiveTuple Hash = iota
	SourceIP
	SourceIPPort
)

// String is the hash's name in the configuration file, the D-Bus API and
// caplancectl.
func (h Hash) String() string {
	switch h {
	case FiveTuple:
		return "5-tuple"
	case SourceIP:
		return "source-ip"
	case SourceIPPort:
		return "source-ip-port"
	}
	return fmt.Sprintf("hash(%d)", uint8(h))
}

// Hashes lists every hash, for parsing and documentation.
func Hashes() []Hash { return []Hash{FiveTuple, SourceIP, SourceIPPort} }

// Service is one virtual service: what traffic it takes, (VIP, protocol,
// destination port), and how it picks a backend for it from its pool.
type Service struct {
	Name      string
	VIPs      []VIP
	Protocols Protocols
	Hash      Hash
	// TableSize is the prime size of its Maglev table.
	TableSize int
	// Check is the health check spec of its backends that have none of
	// their own, "" for none.
	Check string
}

// Equal reports whether s and o are the same service in every field.
func (s Service) Equal(o Service) bool {
	return s.Name == o.Name && s.Protocols == o.Protocols && s.Hash == o.Hash &&
		s.TableSize == o.TableSize && s.Check == o.Check &&
		slices.EqualFunc(s.VIPs, o.VIPs, func(a, b VIP) bool {
			// nil is every port; an empty list, which no valid service has, none.
			return a.Addr == b.Addr && (a.Ports == nil) == (b.Ports == nil) && slices.Equal(a.Ports, b.Ports)
		})
}

// Overlap returns a VIP, protocol and port that both a and b would take,
// and false when there is none: then no packet can be theirs both.
func Overlap(a, b Service) (vip netip.Addr, proto Protocols, port uint16, ok bool) {
	shared := a.Protocols & b.Protocols
	if shared == 0 {
		return netip.Addr{}, 0, 0, false
	}
	proto = TCP
	if shared&TCP == 0 {
		proto = UDP
	}
	for _, va := range a.VIPs {
		for _, vb := range b.VIPs {
			if va.Addr == vb.Addr && va.sharesPort(vb) {
				return va.Addr, proto, firstShared(va, vb), true
			}
		}
	}
	return netip.Addr{}, 0, 0, false
}

// firstShared is the lowest port both VIPs take; they share one.
func firstShared(a, b VIP) uint16 {
	if a.Ports == nil {
		a, b = b, a
	}
	if a.Ports == nil {
		return 0
	}
	for _, r := range a.Ports {
		for p := int(r.First); p <= int(r.Last); p++ {
			if b.Takes(uint16(p)) {
				return uint16(p)
			}
		}
	}
	return 0
}

// State is a backend's place in the rotation.
type State uint8

// Backend states. Active backends get new flows; Draining ones keep their
// established flows and get no new ones; Down ones get nothing, and their
// connection-tracking entries are not reused.
const (
	Active State = iota
	Draining
	Down
)

func (s State) String() string {
	switch s {
	case Active:
		return "active"
	case Draining:
		return "draining"
	case Down:
		return "down"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Backend is one backend as the data path needs it: what the registry
// hands the balancer.
type Backend struct {
	// ID identifies the backend in connection tracking. The registry keeps
	// it stable for a name, so flows keep their backend across table
	// changes; it is never given to another name.
	ID uint32
	// Name is unique among every service's backends.
	Name string
	// Service is the name of the service whose pool it is in.
	Service string
	Address netip.Addr
	Weight  uint32
	State   State
}

// Set is everything the data path forwards by: the services, and the
// backends of all of them sorted by name.
type Set struct {
	Services []Service
	Backends []Backend
}
