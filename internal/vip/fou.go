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
// has no fou (the generic netlink family "fou" is unknown) or no ipip. The
// receiver then decapsulates in user space.
var ErrNoKernelFOU = errors.New("kernel has no foo-over-UDP decapsulation")

const (
	ipprotoIPIP = 4
	// fallbackTunnel is the device the ipip module creates in each network
	// namespace; it receives IPIP packets no other tunnel claims once up.
	fallbackTunnel = "tunl0"
	// ownTunnel is the external (collect-metadata) ipip device SetupFOU
	// creates where there is no tunl0.
	ownTunnel = "caplance-ipip"
)

// SetupFOU makes the kernel decapsulate direct foo-over-UDP on port: the
// packets' payload, an IPv4 packet, goes to an ipip device that is up, whose
// name it returns, with rp_filter relaxed there (RelaxRPFilter). The port is
// opened last, when the rest is ready. When the kernel lacks fou or ipip, the
// error wraps ErrNoKernelFOU and the kernel's own message, and nothing is
// left changed; any other failure also undoes what this call did.
func (h *Host) SetupFOU(port uint16) (string, error) {
	if h.lock == nil {
		return "", errClosed
	}
	if port == 0 {
		return "", errors.New("foo-over-UDP: port 0")
	}
	// Ask first, so that a kernel without fou changes nothing at all.
	if _, err := netlink.GenlFamilyGet(netlink.FOU_GENL_NAME); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", fmt.Errorf("foo-over-UDP port %d: %w: generic netlink family %q: %w",
				port, ErrNoKernelFOU, netlink.FOU_GENL_NAME, err)
		}
		return "", fmt.Errorf("foo-over-UDP port %d: generic netlink family %q: %w", port, netlink.FOU_GENL_NAME, err)
	}
	mark := len(h.changes)
	dev, err := h.setupFOU(port)
	if err != nil {
		return "", h.rollback(mark, fmt.Errorf("foo-over-UDP port %d: %w", port, err))
	}
	return dev, nil
}

func (h *Host) setupFOU(port uint16) (string, error) {
	dev, err := h.tunnelDevice()
	if err != nil {
		return "", err
	}
	if err := h.RelaxRPFilter(dev); err != nil {
		return "", err
	}
	return dev, h.addFOU(port)
}

// tunnelDevice brings up the ipip device that receives what no other
// tunnel claims: tunl0, or, in a namespace without it, a collect-metadata
// ("external") device of caplance's own. See the package comment for why
// not a "remote any local any" device.
func (h *Host) tunnelDevice() (string, error) {
	link, err := netlink.LinkByName(fallbackTunnel)
	if err == nil {
		return fallbackTunnel, h.linkUp(link)
	}
	if !isLinkNotFound(err) {
		return "", fmt.Errorf("ipip device %s: %w", fallbackTunnel, err)
	}
	// No tunl0: ipip is not loaded yet, or this namespace has no fallback
	// devices (net.core.fb_tunnels_only_for_init_net).
	if err := h.record(Change{Kind: KindLinkCreated, Link: ownTunnel, LinkType: "ipip"}); err != nil {
		return "", err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = ownTunnel
	err = netlink.LinkAdd(&netlink.Iptun{LinkAttrs: attrs, FlowBased: true}) // "external"
	switch {
	case errors.Is(err, unix.EOPNOTSUPP): // no ipip link type
		return "", h.forget(fmt.Errorf("%w: create ipip device %s: %w", ErrNoKernelFOU, ownTunnel, err))
	case errors.Is(err, unix.EEXIST):
		return "", h.forget(fmt.Errorf("create ipip device %s: %w (a namespace has one external ipip device, or the name is taken)", ownTunnel, err))
	case err != nil:
		return "", h.forget(fmt.Errorf("create ipip device %s: %w", ownTunnel, err))
	}
	if link, err := netlink.LinkByName(fallbackTunnel); err == nil {
		// Creating it loaded ipip, which made tunl0: use that, as every
		// later start will.
		if err := delLink(ownTunnel, "ipip"); err != nil {
			return "", fmt.Errorf("delete ipip device %s: %w", ownTunnel, err)
		}
		if err := h.forget(nil); err != nil {
			return "", err
		}
		return fallbackTunnel, h.linkUp(link)
	}
	link, err = netlink.LinkByName(ownTunnel)
	if err == nil {
		err = netlink.LinkSetUp(link) // deleting it undoes this too
	}
	if err != nil {
		return "", fmt.Errorf("set %s up: %w", ownTunnel, err)
	}
	return ownTunnel, nil
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
func (h *Host) addFOU(port uint16) error {
	if err := h.record(Change{Kind: KindFOU, Port: port, IPProto: ipprotoIPIP}); err != nil {
		return err
	}
	err := netlink.FouAdd(netlink.Fou{
		Family:    unix.AF_INET,
		Port:      int(port),
		Protocol:  ipprotoIPIP,
		EncapType: netlink.FOU_ENCAP_DIRECT,
	})
	if err == nil {
		return nil
	}
	// A port that is taken fails the kernel's bind (EADDRINUSE) before its
	// own duplicate check (EALREADY); see whether the taker is a fou.
	if errors.Is(err, unix.EADDRINUSE) || errors.Is(err, unix.EALREADY) || errors.Is(err, unix.EEXIST) {
		if f, ok := findFOU(port); ok {
			if f.EncapType == netlink.FOU_ENCAP_DIRECT && f.Protocol == ipprotoIPIP {
				return h.forget(nil)
			}
			return h.forget(fmt.Errorf("add receive port: already there with encapsulation type %d, ipproto %d",
				f.EncapType, f.Protocol))
		}
	}
	return h.forget(fmt.Errorf("add receive port: %w", err))
}

// findFOU returns the IPv4 receive port port, if the kernel has one.
func findFOU(port uint16) (netlink.Fou, bool) {
	fous, err := netlink.FouList(unix.AF_INET)
	if err != nil {
		return netlink.Fou{}, false
	}
	i := slices.IndexFunc(fous, func(f netlink.Fou) bool { return f.Port == int(port) })
	if i < 0 {
		return netlink.Fou{}, false
	}
	return fous[i], true
}

// delFOU removes the receive port; a port, or a fou, that is not there is
// fine.
func delFOU(port uint16) error {
	if _, err := netlink.GenlFamilyGet(netlink.FOU_GENL_NAME); errors.Is(err, unix.ENOENT) {
		return nil
	}
	err := netlink.FouDel(netlink.Fou{Family: unix.AF_INET, Port: int(port)})
	if err == nil {
		return nil
	}
	// The kernel answers EINVAL for a port it does not have; check.
	fous, lerr := netlink.FouList(unix.AF_INET)
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
