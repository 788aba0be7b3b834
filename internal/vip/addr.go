package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AttachVIP adds addr/32 (an IPv6 addr/128, without duplicate address
// detection, so that it serves at once) to iface and returns the interface
// used. With iface "", it picks the one interface other than lo with an
// address of addr's family whose prefix contains addr, and fails naming the
// candidates when there are none or several. An address already on the
// interface (with any prefix length) is left as it is and not recorded.
func (h *Host) AttachVIP(addr netip.Addr, iface string) (string, error) {
	addr = addr.Unmap()
	if !addr.IsValid() || addr.Zone() != "" {
		return "", fmt.Errorf("VIP %s: not an IPv4 or IPv6 address", addr)
	}
	var link netlink.Link
	var err error
	if iface == "" {
		link, err = linkForSubnet(addr)
	} else {
		link, err = netlink.LinkByName(iface)
		if err != nil {
			err = fmt.Errorf("interface %q: %w", iface, err)
		}
	}
	if err != nil {
		return "", fmt.Errorf("VIP %s: %w", addr, err)
	}
	if err := h.addAddress(link, addr); err != nil {
		return "", fmt.Errorf("VIP %s: %w", addr, err)
	}
	return link.Attrs().Name, nil
}

// DetachVIP removes addr/32 from the interface AttachVIP put it on, and its
// entry from the journal, for a VIP no service has any more. An address
// AttachVIP found already there (someone else's) is left alone, and so is
// one the journal has from an earlier run (Undo takes those). The sysctls
// set for the interface stay until Undo: other VIPs may share it.
func (h *Host) DetachVIP(addr netip.Addr) error {
	if h.lock == nil {
		return errClosed
	}
	p := netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen())
	for i := len(h.changes) - 1; i >= h.nLeft; i-- {
		c := h.changes[i]
		if c.Kind != KindAddress || c.Address != p {
			continue
		}
		if err := delAddress(c.Link, p); err != nil {
			return fmt.Errorf("VIP %s: remove from %s: %w", addr, c.Link, err)
		}
		h.changes = slices.Delete(h.changes, i, i+1)
		// Undoing a change that is already undone is harmless, so a
		// journal still holding the entry does no harm either.
		return writeJournal(h.path, h.changes)
	}
	return nil
}

// AttachLoopback adds addr to lo, as a /32 or, for an IPv6 VIP, a /128
// without duplicate address detection (IFA_F_NODAD: usable at once, and
// never "dadfailed" because a balancer on the link holds the same VIP),
// where a receiver accepts the VIP's packets without answering ARP or
// neighbour solicitations for it: Linux answers a solicitation only for
// an address of the interface it arrived on (TestNoNeighbourAdvertisement
// proves it), so an IPv6 VIP needs no sysctl.
func (h *Host) AttachLoopback(addr netip.Addr) error {
	addr = addr.Unmap()
	if !addr.IsValid() || addr.IsUnspecified() || addr.IsMulticast() || (addr.Is6() && addr.IsLinkLocalUnicast()) || addr.Zone() != "" {
		return fmt.Errorf("VIP %s: not a unicast address", addr)
	}
	link, err := netlink.LinkByName("lo")
	if err == nil {
		err = h.addAddress(link, addr)
	}
	if err != nil {
		return fmt.Errorf("VIP %s: %w", addr, err)
	}
	return nil
}

// addAddress adds addr/32 (addr/128, nodad) to link unless addr is already
// there.
func (h *Host) addAddress(link netlink.Link, addr netip.Addr) error {
	name := link.Attrs().Name
	addrs, err := netlink.AddrList(link, familyOf(addr))
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			return nil // someone else's: not ours to remove
		}
	}
	p := netip.PrefixFrom(addr, addr.BitLen())
	if err := h.record(Change{Kind: KindAddress, Link: name, Address: p}); err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: prefixIPNet(p)}
	if addr.Is6() {
		// Deprecated from the start (preferred lifetime 0, valid
		// forever): it still takes packets and answers neighbour
		// solicitations, but the kernel never picks it as a source
		// (RFC 6724 rule 3), where it would otherwise prefer it to the
		// host's own address: the balancer's IPv6 tunnels must leave
		// from an address the receivers know, and the host's own
		// connections from one whose answers come back to the host.
		a.Flags = unix.IFA_F_NODAD
		a.ValidLft, a.PreferedLft = infiniteLifetime, 0
	}
	if err := netlink.AddrAdd(link, a); err != nil {
		return h.forget(fmt.Errorf("add %s to %s: %w", p, name, err))
	}
	return nil
}

// infiniteLifetime is the IFA_CACHEINFO lifetime that never ends.
const infiniteLifetime = 0xffffffff

// familyOf is addr's netlink family.
func familyOf(addr netip.Addr) int {
	if addr.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// InterfaceFor names the interface AttachVIP attaches addr to when given
// none: the one whose subnet contains it (linkForSubnet).
func InterfaceFor(addr netip.Addr) (string, error) {
	link, err := linkForSubnet(addr)
	if err != nil {
		return "", fmt.Errorf("VIP %v: %w", addr, err)
	}
	return link.Attrs().Name, nil
}

// linkForSubnet finds the one interface, not a loopback one, with an
// address of addr's family (not link-local) whose prefix contains addr.
func linkForSubnet(addr netip.Addr) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var all, matching []string // "eth0 192.168.1.2/24 …"
	var found netlink.Link
	for _, link := range links {
		if link.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := netlink.AddrList(link, familyOf(addr))
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
		}
		desc := []string{link.Attrs().Name}
		match := false
		for _, a := range addrs {
			p, ok := ipNetPrefix(a.IPNet)
			if !ok || p.Addr().IsLinkLocalUnicast() {
				continue
			}
			desc = append(desc, p.String())
			match = match || p.Masked().Contains(addr)
		}
		if len(desc) == 1 {
			continue // no address of the family
		}
		all = append(all, strings.Join(desc, " "))
		if match {
			matching = append(matching, strings.Join(desc, " "))
			found = link
		}
	}
	switch {
	case len(matching) == 1:
		return found, nil
	case len(matching) > 1:
		return nil, fmt.Errorf("several interfaces have an address in its subnet (%s); set balancer.interface",
			strings.Join(matching, ", "))
	case len(all) == 0:
		fam := "IPv4"
		if addr.Is6() {
			fam = "IPv6"
		}
		return nil, fmt.Errorf("no interface has an address in its subnet (interfaces: none has an %s address); set balancer.interface", fam)
	}
	return nil, fmt.Errorf("no interface has an address in its subnet (interfaces: %s); set balancer.interface",
		strings.Join(all, ", "))
}

// delAddress removes prefix from the link named name; a missing link or
// address is fine.
func delAddress(name string, p netip.Prefix) error {
	link, err := netlink.LinkByName(name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	err = netlink.AddrDel(link, &netlink.Addr{IPNet: prefixIPNet(p)})
	if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	ones, bits := n.Mask.Size()
	if bits != ip.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones), true
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// HasAddress returns the interface that already has addr, "" when none
// does. It changes nothing.
func HasAddress(addr netip.Addr) (string, error) {
	addrs, err := netlink.AddrList(nil, familyOf(addr.Unmap()))
	if err != nil {
		return "", fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); !ok || ip.Unmap() != addr.Unmap() {
			continue
		}
		link, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return "", fmt.Errorf("interface of %s: %w", addr, err)
		}
		return link.Attrs().Name, nil
	}
	return "", nil
}
