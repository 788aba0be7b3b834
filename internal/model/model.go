// Package model holds the value types that config, registry and balancer
// share — a VIP with its ports, a backend's identity, address, weight and
// state — so that none of them imports another just for a type. It holds
// data and its names only: no validation (config and registry own that), no
// I/O. It is pure: standard library only.
package model

import (
	"fmt"
	"net/netip"
)

// VIP is one virtual address and the destination ports it accepts.
type VIP struct {
	Addr netip.Addr
	// Ports is the allow-list, sorted; nil accepts every port.
	Ports []uint16
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
	ID      uint32
	Name    string
	Address netip.Addr
	Weight  uint32
	State   State
}
