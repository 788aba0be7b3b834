package vip

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrNoKernelFOU means the kernel cannot decapsulate foo-over-UDP itself: it
// has no fou (the generic netlink family "fou" is unknown), no ipip or no
// ip6tnl, or the pair of families is one it is not used for here (IPv6 in
// IPv4). The receiver then decapsulates in user space.
var ErrNoKernelFOU = errors.New("kernel has no foo-over-UDP decapsulation")

// FOU is one foo-over-UDP receive port: its UDP port, the family of the
// outer header (of the port's socket) and the family of the packets inside.
// The kernel hands a port's payload to one protocol only, so a receiver
// whose VIPs hold both families cannot use one port for both.
type FOU struct {
	Port                 uint16
	OuterIPv6, InnerIPv6 bool
}

func (f FOU) String() string {
	return fmt.Sprintf("foo-over-UDP port %d (%s in %s)", f.Port, familyName(f.InnerIPv6), familyName(f.OuterIPv6))
}

func familyName(ipv6 bool) string {
	if ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

// ipproto is the protocol the port hands its payload to: IPIP (4) for an
// IPv4 packet, IPv6 (41) for an IPv6 one, whatever the outer family.
func (f FOU) ipproto() uint8 {
	if f.InnerIPv6 {
		return unix.IPPROTO_IPV6
	}
	return unix.IPPROTO_IPIP
}

// af is the outer family as the fou netlink API takes it.
func (f FOU) af() int {
	if f.OuterIPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// tunnelKind is the tunnel device type that receives what a port hands on:
// ipip for IPv4 in IPv4, ip6tnl for both inner families in IPv6. fallback
// is the device the module creates in each namespace, which receives what
// no other tunnel claims once up ("" where it cannot serve: ip6tnl0 takes
// IPv6 in IPv6 only); own is the external (collect-metadata) device
// SetupFOU creates where there is no fallback.
type tunnelKind struct {
	linkType, fallback, own string
	newLink                 func(attrs netlink.LinkAttrs) netlink.Link
}

var (
	ipipTunnel = tunnelKind{
		linkType: "ipip", fallback: "tunl0", own: "caplance-ipip",
		newLink: func(attrs netlink.LinkAttrs) netlink.Link {
			return &netlink.Iptun{LinkAttrs: attrs, FlowBased: true} // "external"
		},
	}
	ip6tnlTunnel = tunnelKind{
		linkType: "ip6tnl", fallback: "ip6tnl0", own: "caplance-ip6tnl",
	}
)

// tunnel is the device kind f needs, with the protocol the own device takes.
func (f FOU) tunnel() (tunnelKind, error) {
	switch {
	case !f.OuterIPv6 && !f.InnerIPv6:
		return ipipTunnel, nil
	case f.OuterIPv6:
		k, proto := ip6tnlTunnel, f.ipproto()
		if !f.InnerIPv6 {
			k.fallback = "" // ip6tnl0 is "mode ip6ip6"
		}
		k.newLink = func(attrs netlink.LinkAttrs) netlink.Link {
			return &netlink.Ip6tnl{LinkAttrs: attrs, Proto: proto, FlowBased: true}
		}
		return k, nil
	}
	return tunnelKind{}, fmt.Errorf("%w: IPv6 in IPv4 (sit) is decapsulated in user space", ErrNoKernelFOU)
}

// SetupFOU makes the kernel decapsulate direct foo-over-UDP on each of
// ports: a port's payload goes to a tunnel device that is up (ipip for IPv4
// in IPv4, ip6tnl for an IPv6 outer), with rp_filter relaxed there for IPv4
// inners (RelaxRPFilter). It returns the devices, one per port. Each port is
// opened last, when its device is ready. It is all or nothing: when the
// kernel lacks fou or a tunnel type, the error wraps ErrNoKernelFOU and the
// kernel's own message, and nothing is left changed; any other failure also
// undoes what this call did.
func (h *Host) SetupFOU(ports []FOU) ([]string, error) {
	if h.lock == nil {
		return nil, errClosed
	}
	if len(ports) == 0 {
		return nil, errors.New("foo-over-UDP: no port")
	}
	kinds := make([]tunnelKind, len(ports))
	for i, f := range ports {
		if f.Port == 0 {
			return nil, errors.New("foo-over-UDP: port 0")
		}
		var err error
		if kinds[i], err = f.tunnel(); err != nil {
			return nil, fmt.Errorf("%v: %w", f, err)
		}
	}
	// Ask first, so that a kernel without fou changes nothing at all.
	if _, err := netlink.GenlFamilyGet(netlink.FOU_GENL_NAME); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%v: %w: generic netlink family %q: %w",
				ports[0], ErrNoKernelFOU, netlink.FOU_GENL_NAME, err)
		}
		return nil, fmt.Errorf("%v: generic netlink family %q: %w", ports[0], netlink.FOU_GENL_NAME, err)
	}
	mark := len(h.changes)
	devices := make([]string, len(ports))
	for i, f := range ports {
		var err error
		if devices[i], err = h.setupFOU(f, kinds[i]); err != nil {
			return nil, h.rollback(mark, fmt.Errorf("%v: %w", f, err))
		}
	}
	return devices, nil
}

func (h *Host) setupFOU(f FOU, kind tunnelKind) (string, error) {
	dev, err := h.tunnelDevice(kind)
	if err != nil {
		return "", err
	}
	// IPv6 has no reverse-path filter of its own.
	if !f.InnerIPv6 {
		if err := h.RelaxRPFilter(dev); err != nil {
			return "", err
		}
	}
	return dev, h.addFOU(f)
}

// tunnelDevice brings up the device of kind that receives what no other
// tunnel claims: the fallback device, or, in a namespace without it (or
// where it cannot serve), an external device of caplance's own. See the
// package comment for why not a "remote any local any" device.
func (h *Host) tunnelDevice(kind tunnelKind) (string, error) {
	if kind.fallback != "" {
		link, err := netlink.LinkByName(kind.fallback)
		if err == nil {
			return kind.fallback, h.linkUp(link)
		}
		if !isLinkNotFound(err) {
			return "", fmt.Errorf("%s device %s: %w", kind.linkType, kind.fallback, err)
		}
	}
	// No fallback: the module is not loaded yet, or this namespace has no
	// fallback devices (net.core.fb_tunnels_only_for_init_net).
	if h.created(kind.own, kind.linkType) {
		return kind.own, nil // by an earlier call: up already
	}
	if err := h.record(Change{Kind: KindLinkCreated, Link: kind.own, LinkType: kind.linkType}); err != nil {
		return "", err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = kind.own
	err := netlink.LinkAdd(kind.newLink(attrs))
	switch {
	case errors.Is(err, unix.EOPNOTSUPP): // no such link type
		return "", h.forget(fmt.Errorf("%w: create %s device %s: %w", ErrNoKernelFOU, kind.linkType, kind.own, err))
	case errors.Is(err, unix.EEXIST):
		return "", h.forget(fmt.Errorf("create %s device %s: %w (a namespace has one external %s device, or the name is taken)",
			kind.linkType, kind.own, err, kind.linkType))
	case err != nil:
		return "", h.forget(fmt.Errorf("create %s device %s: %w", kind.linkType, kind.own, err))
	}
	if kind.fallback != "" {
		if link, err := netlink.LinkByName(kind.fallback); err == nil {
			// Creating it loaded the module, which made the fallback
			// device: use that, as every later start will.
			if err := delLink(kind.own, kind.linkType); err != nil {
				return "", fmt.Errorf("delete %s device %s: %w", kind.linkType, kind.own, err)
			}
			if err := h.forget(nil); err != nil {
				return "", err
			}
			return kind.fallback, h.linkUp(link)
		}
	}
	link, err := netlink.LinkByName(kind.own)
	if err == nil {
		err = netlink.LinkSetUp(link) // deleting it undoes this too
	}
	if err != nil {
		return "", fmt.Errorf("set %s up: %w", kind.own, err)
	}
	return kind.own, nil
}

// linkUp sets link up, recording it unless it was up already.
func (h *Host) linkUp(link netlink.Link) error {
	name := link.Attrs().Name
	if link.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := h.record(Change{Kind: KindLinkUp, Link: name}); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return h.forget(fmt.Errorf("set %s up: %w", name, err))
	}
	return nil
}

// addFOU adds the receive port, unless the same port is already there with
// the same protocol (someone else's, not recorded).
func (h *Host) addFOU(f FOU) error {
	c := Change{Kind: KindFOU, Port: f.Port, IPProto: f.ipproto()}
	if f.OuterIPv6 {
		c.Family = familyIPv6
	}
	if err := h.record(c); err != nil {
		return err
	}
	err := netlink.FouAdd(netlink.Fou{
		Family:    f.af(),
		Port:      int(f.Port),
		Protocol:  int(f.ipproto()),
		EncapType: netlink.FOU_ENCAP_DIRECT,
	})
	if err == nil {
		return nil
	}
	// A port that is taken fails the kernel's bind (EADDRINUSE) before its
	// own duplicate check (EALREADY); see whether the taker is a fou.
	if errors.Is(err, unix.EADDRINUSE) || errors.Is(err, unix.EALREADY) || errors.Is(err, unix.EEXIST) {
		if found, ok := findFOU(f.af(), f.Port); ok {
			if found.EncapType == netlink.FOU_ENCAP_DIRECT && found.Protocol == int(f.ipproto()) {
				return h.forget(nil)
			}
			return h.forget(fmt.Errorf("add receive port: already there with encapsulation type %d, ipproto %d",
				found.EncapType, found.Protocol))
		}
	}
	return h.forget(fmt.Errorf("add receive port: %w", err))
}

// findFOU returns the receive port port of family af, if the kernel has one.
func findFOU(af int, port uint16) (netlink.Fou, bool) {
	fous, err := netlink.FouList(af)
	if err != nil {
		return netlink.Fou{}, false
	}
	i := slices.IndexFunc(fous, func(f netlink.Fou) bool { return f.Port == int(port) })
	if i < 0 {
		return netlink.Fou{}, false
	}
	return fous[i], true
}

// delFOU removes the receive port port of family af; a port, or a fou, that
// is not there is fine.
func delFOU(af int, port uint16) error {
	if _, err := netlink.GenlFamilyGet(netlink.FOU_GENL_NAME); errors.Is(err, unix.ENOENT) {
		return nil
	}
	err := netlink.FouDel(netlink.Fou{Family: af, Port: int(port)})
	if err == nil {
		return nil
	}
	// The kernel answers EINVAL for a port it does not have; check.
	fous, lerr := netlink.FouList(af)
	if lerr == nil && !slices.ContainsFunc(fous, func(f netlink.Fou) bool { return f.Port == int(port) }) {
		return nil
	}
	return err
}

// setLinkDown sets down a link caplanced brought up; a missing link is fine.
func setLinkDown(name string) error {
	link, err := netlink.LinkByName(name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	return netlink.LinkSetDown(link)
}

// delLink deletes a link caplanced created, unless it is gone or is now a
// different kind of link (not ours any more).
func delLink(name, linkType string) error {
	link, err := netlink.LinkByName(name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if link.Type() != linkType {
		return nil
	}
	return netlink.LinkDel(link)
}
