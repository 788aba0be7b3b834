package healthd

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// kernelSource is the address the kernel would send from towards dst (the
// preferred source of the route to it), as the balancer's data path picks
// the outer source address: tunnel probes leave from where the balancer's
// tunnelled packets leave.
func kernelSource(dst netip.Addr) (netip.Addr, error) {
	if !dst.IsValid() {
		return netip.Addr{}, errors.New("no backend address")
	}
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no route to %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return netip.Addr{}, fmt.Errorf("no route to %s", dst)
	}
	src, ok := netip.AddrFromSlice(routes[0].Src)
	if !ok {
		return netip.Addr{}, fmt.Errorf("the route to %s has no source address", dst)
	}
	return src.Unmap(), nil
}
