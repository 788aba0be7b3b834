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
// with ErrNoKernelFOU and changes nothing; on one with fou and ipip (the VM
// test's) it opens the port on an ipip device that is up, and Undo takes
// everything back.
func TestSetupFOU(t *testing.T) {
	inNetns(t)
	const rpAll = "net.ipv4.conf.all.rp_filter"
	setSysctl(t, rpAll, "1")
	linksBefore := linkNames(t)
	dir := t.TempDir()
	h := openHost(t, dir)

	dev, err := h.SetupFOU(5555)
	_, famErr := netlink.GenlFamilyGet("fou")
	switch {
	case famErr != nil:
		// No fou at all: the error carries the kernel's answer.
		want := `foo-over-UDP port 5555: kernel has no foo-over-UDP decapsulation: generic netlink family "fou": no such file or directory`
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
	if dev != "tunl0" && dev != "caplance-ipip" {
		t.Errorf("SetupFOU device = %q", dev)
	}
	if !linkIsUp(t, dev) {
		t.Errorf("%s is down", dev)
	}
	if !hasFOU(t, 5555) {
		t.Error("no foo-over-UDP port 5555")
	}
	if got := getSysctl(t, rpAll); got != "2" {
		t.Errorf("rp_filter on all = %s, want 2", got)
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
	if _, err := h.SetupFOU(5555); err != nil {
		t.Errorf("second SetupFOU: %v", err)
	}
	if len(h.Changes()) != n {
		t.Errorf("second SetupFOU recorded %v", h.Changes()[n:])
	}

	if err := h.Undo(); err != nil {
		t.Fatalf("Undo: %v", err)
	}
	if hasFOU(t, 5555) {
		t.Error("foo-over-UDP port 5555 left after Undo")
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

func hasFOU(t *testing.T, port int) bool {
	t.Helper()
	fous, err := netlink.FouList(unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(fous, func(f netlink.Fou) bool {
		return f.Port == port && f.Protocol == 4 && f.EncapType == netlink.FOU_ENCAP_DIRECT
	})
}
