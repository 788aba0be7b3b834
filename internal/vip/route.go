package vip

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route is a routed VIP's announcement: VIP/32 (IPv6 /128) dev lo in Table,
// with Protocol, for the host's routing daemon to export. It is the same as
// `ip route add VIP/32 dev lo table Table proto Protocol`.
type Route struct {
	VIP      netip.Addr
	Table    uint32
	Protocol uint8
}

func (r Route) String() string {
	return fmt.Sprintf("route %s dev lo table %d proto %d", r.prefix(), r.Table, r.Protocol)
}

func (r Route) prefix() netip.Prefix {
	a := r.VIP.Unmap()
	return netip.PrefixFrom(a, a.BitLen())
}

func (r Route) check() error {
	a := r.VIP.Unmap()
	switch {
	case !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "":
		return fmt.Errorf("%s: not a unicast address", r)
	case r.Table == 0 || r.Table == unix.RT_TABLE_DEFAULT || r.Table == unix.RT_TABLE_MAIN || r.Table == unix.RT_TABLE_LOCAL:
		return fmt.Errorf("%s: table %d is not one of caplanced's own", r, r.Table)
	case r.Protocol <= unix.RTPROT_STATIC:
		return fmt.Errorf("%s: protocol %d is the kernel's own", r, r.Protocol)
	}
	return nil
}

// change is the journal entry of r.
func (r Route) change() Change {
	return Change{Kind: KindRoute, Link: "lo", Address: r.prefix(), Table: r.Table, Protocol: r.Protocol}
}

// netlinkRoute is r as netlink adds, finds and deletes it.
func (r Route) netlinkRoute(lo int) *netlink.Route {
	scope := netlink.SCOPE_UNIVERSE
	if r.VIP.Unmap().Is4() {
		scope = netlink.SCOPE_LINK
	}
	return &netlink.Route{
		Dst: prefixIPNet(r.prefix()), LinkIndex: lo, Table: int(r.Table),
		Protocol: netlink.RouteProtocol(r.Protocol), Scope: scope, Type: unix.RTN_UNICAST,
	}
}

// AddRoute adds r, journalled first (once), so that Undo (at stop, or
// after a crash at the next start or caplanced --cleanup) deletes it. A
// route to the VIP that the table already has is left as it is: one of r's
// protocol is r (caplanced's own) and is recorded, one of another protocol
// is someone else's and an error.
func (h *Host) AddRoute(r Route) error {
	if err := r.check(); err != nil {
		return err
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("%s: %w", r, err)
	}
	recorded := slices.Contains(h.changes, r.change())
	if !recorded {
		if err := h.record(r.change()); err != nil {
			return err
		}
	}
	err = netlink.RouteAdd(r.netlinkRoute(lo.Attrs().Index))
	if errors.Is(err, unix.EEXIST) {
		var proto uint8
		if proto, err = routeProtocol(r); err == nil && proto != r.Protocol {
			err = fmt.Errorf("table %d already has a route to %s of protocol %d, not caplanced's", r.Table, r.prefix(), proto)
		}
	}
	switch {
	case err == nil:
		return nil
	case recorded:
		return fmt.Errorf("add %s: %w", r, err)
	}
	return h.forget(fmt.Errorf("add %s: %w", r, err))
}

// DeleteRoute deletes r and its journal entry, for a VIP that is not
// announced any more. A route that is already gone counts as deleted.
func (h *Host) DeleteRoute(r Route) error {
	if h.lock == nil {
		return errClosed
	}
	if err := delRoute(r); err != nil {
		return fmt.Errorf("delete %s: %w", r, err)
	}
	c := r.change()
	i := slices.Index(h.changes, c)
	if i < 0 {
		return nil
	}
	h.changes = slices.Delete(h.changes, i, i+1)
	if i < h.nLeft {
		h.nLeft--
	}
	return writeJournal(h.path, h.changes)
}

// Routes returns the VIPs that have a route of protocol in table (of
// either family), whoever added them. It changes nothing.
func Routes(table uint32, protocol uint8) ([]netip.Addr, error) {
	filter := &netlink.Route{Table: int(table), Protocol: netlink.RouteProtocol(protocol)}
	routes, err := listRoutes(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("list routes of table %d: %w", table, err)
	}
	var out []netip.Addr
	for _, rt := range routes {
		if p, ok := ipNetPrefix(rt.Dst); ok && p.IsSingleIP() {
			out = append(out, p.Addr())
		}
	}
	return out, nil
}

// dumpAttempts bounds the retries of a route dump that a concurrent change
// interrupted (a routing daemon rewriting its routes, say).
const dumpAttempts = 5

// listRoutes is netlink.RouteListFiltered, dumped again when a concurrent
// change interrupted the dump, whose result may then miss routes.
func listRoutes(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	for i := 1; ; i++ {
		routes, err := netlink.RouteListFiltered(family, filter, mask)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpAttempts {
			return routes, err
		}
	}
}

// routeProtocol is the protocol of the route to r's VIP in r's table.
func routeProtocol(r Route) (uint8, error) {
	filter := &netlink.Route{Table: int(r.Table), Dst: prefixIPNet(r.prefix())}
	routes, err := listRoutes(familyOf(r.VIP.Unmap()), filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
	if err != nil {
		return 0, fmt.Errorf("list routes of table %d: %w", r.Table, err)
	}
	if len(routes) == 0 {
		return 0, fmt.Errorf("table %d has no route to %s, and yet the kernel says it exists", r.Table, r.prefix())
	}
	return uint8(routes[0].Protocol), nil
}

// delRoute deletes r if the table still has it with r's protocol: the
// kernel matches the protocol, so a route another program put in its
// place stays. A route that is gone, or a missing lo, is fine.
func delRoute(r Route) error {
	lo, err := netlink.LinkByName("lo")
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	nr := r.netlinkRoute(lo.Attrs().Index)
	// Scope "nowhere" matches any, as ip route del has it: the same route
	// may have been added with another scope (ip route add's default is
	// universe).
	nr.Scope = netlink.SCOPE_NOWHERE
	err = netlink.RouteDel(nr)
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}
