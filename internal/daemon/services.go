package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/nft"
	"github.com/caplance/caplance/internal/vip"
)

// applySet is the registry's apply callback on a balancer: it makes the
// host, the nft table and the balancer serve set, all or nothing. A change
// of backends only reaches the balancer; a change of services also attaches
// the VIPs that are new and detaches those no service has any more, and
// replaces the nft table (one transaction) when its rules change. The
// order keeps the host's stack silent: the table silences a VIP before
// the VIP is attached, and still silences it while it is detached. A
// routed balancer attaches its VIPs to lo and announces the servable ones
// (package announce) once the balancer serves the set, before it detaches
// the VIPs that went.
func (r *running) applySet(set model.Set) error {
	r.hostMu.Lock()
	defer r.hostMu.Unlock()
	want := vipsOf(set.Services)
	var added, removed []netip.Addr
	for _, a := range want {
		if !slices.Contains(r.vips, a) {
			added = append(added, a)
		}
	}
	for _, a := range r.vips {
		if !slices.Contains(want, a) {
			removed = append(removed, a)
		}
	}
	if err := checkVIPsNotLocal(added, set.Services); err != nil {
		return err
	}
	oldRules := r.rules
	// While removed VIPs are still attached, they stay silenced.
	if err := r.setRules(r.rulesFor(set.Services, removed)); err != nil {
		return err
	}
	var attached []netip.Addr
	undo := func(err error) error {
		for _, a := range attached {
			if derr := r.host.DetachVIP(a); derr != nil {
				err = errors.Join(err, derr)
			}
		}
		if rerr := r.setRules(oldRules); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restoring the nftables table: %w", rerr))
		}
		return err
	}
	for _, a := range added {
		iface, err := r.attach(a)
		if err != nil {
			return undo(err)
		}
		attached = append(attached, a)
		r.log.Info("VIP attached", "vip", a, "interface", iface)
		// Tunnel health probes (caplance-healthd) get their answers from
		// the VIP, a local address here, which the kernel drops as a
		// martian unless the interface accepts local sources. IPv6 has no
		// such check (and no accept_local): nothing to set for an IPv6 VIP.
		// A routed VIP is on lo and the answers come in on any interface:
		// conf.all, which the kernel ORs with each interface's.
		if !a.Is4() {
			continue
		}
		if r.ann != nil {
			iface = "all"
		}
		if err := r.host.SetSysctl("net.ipv4.conf."+iface+".accept_local", "1"); err != nil {
			return undo(err)
		}
	}
	if err := r.bal.SetServices(set); err != nil {
		return undo(err)
	}
	r.vips = want
	if r.ann != nil {
		r.ann.SetSet(set)
	}
	for _, a := range removed {
		if err := r.host.DetachVIP(a); err != nil {
			// The balancer no longer takes its traffic; the address goes
			// at the latest when caplanced stops.
			r.log.Error("detaching a VIP no service has", "vip", a, "err", err)
			continue
		}
		r.log.Info("VIP detached", "vip", a)
	}
	if len(removed) > 0 {
		if err := r.setRules(r.rulesFor(set.Services, nil)); err != nil {
			r.log.Error("removing detached VIPs from the nftables table", "err", err)
		}
	}
	return nil
}

// attach attaches a VIP: on lo for a routed balancer, else on the
// balancer's interface. It returns the interface.
func (r *running) attach(a netip.Addr) (string, error) {
	if r.ann != nil {
		return "lo", r.host.AttachLoopback(a)
	}
	return r.host.AttachVIP(a, r.iface)
}

// services are the registry's services, as the data path has them.
func (r *running) services() []model.Service {
	var out []model.Service
	for _, s := range r.reg.Services() {
		out = append(out, s.Service)
	}
	return out
}

// vipsOf returns the services' VIPs, each once, in order of first use.
func vipsOf(services []model.Service) []netip.Addr {
	var out []netip.Addr
	for _, s := range services {
		for _, v := range s.VIPs {
			if !slices.Contains(out, v.Addr) {
				out = append(out, v.Addr)
			}
		}
	}
	return out
}

// rulesFor is the nft table for services, with extra VIPs silenced too,
// and the receiver's tunnel filter if there is one.
func (r *running) rulesFor(services []model.Service, extra []netip.Addr) nft.Rules {
	rules := nft.Rules{SilenceVIPs: append(vipsOf(services), extra...), Tunnel: r.tunnel}
	for _, s := range services {
		for _, v := range s.VIPs {
			rules.Forward = append(rules.Forward, nft.Forward{VIP: v.Addr, Protocols: s.Protocols, Ports: v.Ports})
		}
	}
	return rules
}

// setRules makes the nft table hold rules: replaced in one transaction when
// they changed (a replacement resets its counters, so an unchanged table is
// left alone), removed when there are none.
func (r *running) setRules(rules nft.Rules) error {
	if r.nftOwned && reflect.DeepEqual(rules, r.rules) {
		return nil
	}
	if len(rules.SilenceVIPs) == 0 && len(rules.Forward) == 0 && rules.Tunnel == nil {
		if r.nftOwned {
			if _, err := nft.Remove(nft.CurrentNetNS); err != nil {
				return fmt.Errorf("nftables: %w", err)
			}
		}
		r.nftOwned, r.rules = false, rules
		return nil
	}
	if err := nft.Apply(nft.CurrentNetNS, rules); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	r.nftOwned, r.rules = true, rules
	return nil
}

// checkVIPsNotLocal refuses a VIP the host already has unless every
// service that has it lists its ports: caplanced would otherwise take every
// port of that address (SSH included) from the host's own services.
func checkVIPsNotLocal(vips []netip.Addr, services []model.Service) error {
	var errs []error
	for _, a := range vips {
		iface, err := vip.HasAddress(a)
		if err != nil {
			return err
		}
		if iface == "" {
			continue
		}
		for _, s := range services {
			if i := slices.IndexFunc(s.VIPs, func(v model.VIP) bool { return v.Addr == a }); i >= 0 && s.VIPs[i].Ports == nil {
				errs = append(errs, fmt.Errorf("VIP %s of service %q is already an address of this host (on %s): caplanced would take all of its traffic from the host's own services; "+
					"choose an address the host does not have, or list the ports to balance for it "+
					"(if a caplanced with another --runtime-dir left it behind, run caplanced --cleanup --runtime-dir with that directory)", a, s.Name, iface))
			}
		}
	}
	return errors.Join(errs...)
}
