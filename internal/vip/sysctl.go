package vip

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
)

// procSys is where sysctls live. Under it, net/ shows the network namespace
// of the thread that opens a file (see the package comment).
const procSys = "/proc/sys/"

// SetSysctl sets the sysctl name (dotted, as sysctl(8) writes it:
// "net.ipv4.conf.all.arp_ignore"; a dot inside an interface name is written
// as a slash, "net.ipv4.conf.eth0/100.rp_filter") to value, recording the
// old value. Only net.* sysctls are accepted: they are the ones that belong
// to a network namespace. A sysctl that already has the value is left alone
// and not recorded.
func (h *Host) SetSysctl(name, value string) error {
	return h.ensureSysctl(name, value, func(cur string) bool { return sameValue(cur, value) })
}

// ReceiverSysctls makes the host never answer ARP for a VIP on lo:
// net.ipv4.conf.all.arp_ignore=1 unless it is already 1, 2 or 8 (as strict
// or stricter), and net.ipv4.conf.all.arp_announce=2 unless it is already 2.
func (h *Host) ReceiverSysctls() error {
	if err := h.ensureSysctl("net.ipv4.conf.all.arp_ignore", "1", func(cur string) bool {
		return slices.Contains([]string{"1", "2", "8"}, strings.TrimSpace(cur))
	}); err != nil {
		return err
	}
	return h.ensureSysctl("net.ipv4.conf.all.arp_announce", "2", func(cur string) bool {
		return sameValue(cur, "2")
	})
}

// RelaxRPFilter lets packets decapsulated on iface through reverse-path
// filtering: it sets net.ipv4.conf.<iface>.rp_filter, and then
// net.ipv4.conf.all.rp_filter, from 1 (strict) to 2 (loose), leaving any
// other value alone. The kernel applies the larger of the two values.
func (h *Host) RelaxRPFilter(iface string) error {
	notStrict := func(cur string) bool { return !sameValue(cur, "1") }
	if err := h.ensureSysctl(confName(iface, "rp_filter"), "2", notStrict); err != nil {
		return err
	}
	return h.ensureSysctl("net.ipv4.conf.all.rp_filter", "2", notStrict)
}

// ensureSysctl sets name to value, recording the old value, unless ok says
// the current value will do.
func (h *Host) ensureSysctl(name, value string, ok func(cur string) bool) error {
	if h.lock == nil {
		return errClosed
	}
	path, err := sysctlPath(name)
	if err != nil {
		return err
	}
	cur, err := readSysctl(path)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", name, err)
	}
	if ok(cur) {
		return nil
	}
	if cur == "" {
		return fmt.Errorf("sysctl %s: current value is empty; caplanced could not restore it", name)
	}
	if err := h.record(Change{Kind: KindSysctl, Sysctl: name, Value: cur}); err != nil {
		return err
	}
	if err := writeSysctl(path, value); err != nil {
		return h.forget(fmt.Errorf("sysctl %s=%s: %w", name, value, err))
	}
	return nil
}

// restoreSysctl writes a recorded value back; a sysctl that no longer exists
// (its interface is gone) is fine.
func restoreSysctl(name, value string) error {
	path, err := sysctlPath(name)
	if err != nil {
		return err
	}
	err = writeSysctl(path, value)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// confName is the sysctl name of key for interface iface.
func confName(iface, key string) string {
	return "net.ipv4.conf." + strings.ReplaceAll(iface, ".", "/") + "." + key
}

// sysctlPath maps a sysctl(8) name to its file: dots become slashes and
// slashes dots.
func sysctlPath(name string) (string, error) {
	if !strings.HasPrefix(name, "net.") {
		return "", fmt.Errorf("sysctl %q: only net.* sysctls can be set", name)
	}
	parts := strings.Split(name, ".")
	for i, p := range parts {
		p = strings.ReplaceAll(p, "/", ".")
		if p == "" || p == "." || p == ".." {
			return "", fmt.Errorf("sysctl %q: not a valid name", name)
		}
		parts[i] = p
	}
	return procSys + strings.Join(parts, "/"), nil
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	// One write: procfs parses each write(2) as the whole value.
	_, err = f.WriteString(value + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// sameValue compares sysctl values ignoring how white space separates the
// fields ("4096\t87380" is "4096 87380").
func sameValue(a, b string) bool {
	return slices.Equal(strings.Fields(a), strings.Fields(b))
}
