package vip_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/caplance/caplance/internal/vip"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestSetupFOU: on a kernel without fou (this machine's) SetupFOU fails
// with ErrNoKernelFOU and changes nothing; on one with fou, ipip and ip6tnl
// (the VM test's) it opens the port on a tunnel device that is up, and Undo
// takes everything back. IPv6 in IPv4 is always refused.
func TestSetupFOU(t *testing.T) {
	for _, tc := range []struct {
		fou     vip.FOU
		devices []string // the devices it may use
	}{
		{vip.FOU{Port: 5555}, []string{"tunl0", "caplance-ipip"}},
		{vip.FOU{Port: 5555, OuterIPv6: true}, []string{"caplance-ip6tnl"}},
		{vip.FOU{Port: 5555, OuterIPv6: true, InnerIPv6: true}, []string{"ip6tnl0", "caplance-ip6tnl"}},
	} {
		t.Run(tc.fou.String(), func(t *testing.T) {
			testSetupFOU(t, tc.fou, tc.devices)
		})
	}
	t.Run("IPv6 in IPv4", func(t *testing.T) {
		inNetns(t)
		dir := t.TempDir()
		h := openHost(t, dir)
		_, err := h.SetupFOU([]vip.FOU{{Port: 5555}, {Port: 5555, InnerIPv6: true}})
		want := "foo-over-UDP port 5555 (IPv6 in IPv4): kernel has no foo-over-UDP decapsulation: IPv6 in IPv4 (sit) is decapsulated in user space"
		if err == nil || err.Error() != want || !errors.Is(err, vip.ErrNoKernelFOU) {
			t.Fatalf("SetupFOU error = %v, want %q wrapping ErrNoKernelFOU", err, want)
		}
		if c := h.Changes(); len(c) != 0 {
			t.Errorf("SetupFOU recorded %v", c)
		}
	})
}

func testSetupFOU(t *testing.T, f vip.FOU, devices []string) {
	inNetns(t)
	const rpAll = "net.ipv4.conf.all.rp_filter"
	setSysctl(t, rpAll, "1")
	linksBefore := linkNames(t)
	dir := t.TempDir()
	h := openHost(t, dir)

	devs, err := h.SetupFOU([]vip.FOU{f})
	_, famErr := netlink.GenlFamilyGet("fou")
	switch {
	case famErr != nil:
		// No fou at all: the error carries the kernel's answer.
		want := f.String() + `: kernel has no foo-over-UDP decapsulation: generic netlink family "fou": no such file or directory`
		if err == nil || err.Error() != want {
			t.Fatalf("SetupFOU error = %v, want %q", err, want)
		}
		fallthrough
	case errors.Is(err, vip.ErrNoKernelFOU):
		if !errors.Is(err, vip.ErrNoKernelFOU) || !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EOPNOTSUPP) {
			t.Errorf("SetupFOU error %v does not wrap ErrNoKernelFOU and the kernel's errno", err)
		}
		t.Logf("no kernel foo-over-UDP here: %v", err)
		if c := h.Changes(); len(c) != 0 {
			t.Errorf("SetupFOU recorded %v", c)
		}
		if journalExists(t, dir) {
			t.Error("SetupFOU left a journal")
		}
		if diff := cmp.Diff(linksBefore, linkNames(t)); diff != "" {
			t.Errorf("links (-before +after):\n%s", diff)
		}
		if got := getSysctl(t, rpAll); got != "1" {
			t.Errorf("rp_filter on all = %s, want 1 (untouched)", got)
		}
		return
	case err != nil:
		t.Fatalf("SetupFOU: %v", err)
	}

	// The kernel decapsulates.
	dev := devs[0]
	if !slices.Contains(devices, dev) {
		t.Errorf("SetupFOU device = %q, want one of %v", dev, devices)
	}
	if !linkIsUp(t, dev) {
		t.Errorf("%s is down", dev)
	}
	if !hasFOU(t, f) {
		t.Errorf("no %v", f)
	}
	wantRP := "2" // relaxed for IPv4 inners only
	if f.InnerIPv6 {
		wantRP = "1"
	}
	if got := getSysctl(t, rpAll); got != wantRP {
		t.Errorf("rp_filter on all = %s, want %s", got, wantRP)
	}
	kinds := []vip.Kind{}
	for _, c := range h.Changes() {
		kinds = append(kinds, c.Kind)
	}
	if kinds[len(kinds)-1] != vip.KindFOU {
		t.Errorf("changes %v: the port is not opened last", h.Changes())
	}
	// A second SetupFOU finds everything in place and records nothing.
	n := len(h.Changes())
	if _, err := h.SetupFOU([]vip.FOU{f}); err != nil {
		t.Errorf("second SetupFOU: %v", err)
	}
	if len(h.Changes()) != n {
		t.Errorf("second SetupFOU recorded %v", h.Changes()[n:])
	}

	if err := h.Undo(); err != nil {
		t.Fatalf("Undo: %v", err)
	}
	if hasFOU(t, f) {
		t.Errorf("%v left after Undo", f)
	}
	if slices.Contains(linkNames(t), dev) && linkIsUp(t, dev) {
		t.Errorf("%s still up after Undo", dev)
	}
	if got := getSysctl(t, rpAll); got != "1" {
		t.Errorf("rp_filter on all = %s after Undo, want 1", got)
	}
	if journalExists(t, dir) {
		t.Error("journal left after Undo")
	}
}

func hasFOU(t *testing.T, f vip.FOU) bool {
	t.Helper()
	af, proto := unix.AF_INET, 4
	if f.OuterIPv6 {
		af = unix.AF_INET6
	}
	if f.InnerIPv6 {
		proto = 41
	}
	fous, err := netlink.FouList(af)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(fous, func(x netlink.Fou) bool {
		return x.Port == int(f.Port) && x.Protocol == proto && x.EncapType == netlink.FOU_ENCAP_DIRECT
	})
}
