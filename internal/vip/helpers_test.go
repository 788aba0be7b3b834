package vip_test

import (
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/caplance/caplance/internal/vip"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNetns locks the calling goroutine to its OS thread and moves the thread
// into a new, empty network namespace, so that the test can change
// addresses, links and net.* sysctls without touching the host's. The
// namespace has only lo (down), and vanishes when the test ends and its
// last handle is closed. Call it from the goroutine that makes the changes:
// a t.Run subtest runs on a goroutine of its own and needs its own call.
// It skips the test when not root.
func inNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current network namespace: %v", err)
	}
	ns, err := netns.New() // unshare(CLONE_NEWNET): this thread only
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() {
		// Cleanups run on the test's goroutine, so this is still the
		// namespace's thread.
		ns.Close()
		defer orig.Close()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the runtime ends the thread with the goroutine.
			t.Errorf("back to the original network namespace: %v", err)
			return
		}
		runtime.UnlockOSThread()
	})
	return ns
}

// addVeth creates a veth pair named name and name+"p" and gives name the
// addresses ("192.168.1.2/24").
func addVeth(t *testing.T, name string, addrs ...string) netlink.Link {
	t.Helper()
	la := netlink.NewLinkAttrs()
	la.Name = name
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: name + "p"}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		addAddr(t, name, a)
	}
	return link
}

// addAddr adds prefix to link as someone else would; an IPv6 one without
// duplicate address detection, so that it is never tentative while a test
// looks at it (DAD's end is a work item of its own).
func addAddr(t *testing.T, link, prefix string) {
	t.Helper()
	l, err := netlink.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if a.IP.To4() == nil {
		a.Flags |= unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		t.Fatalf("add %s to %s: %v", prefix, link, err)
	}
}

// addrsOf lists link's addresses as "10.0.0.100/32", "2001:db8::1/128",
// except the IPv6 ones the kernel adds by itself (link-local, ::1).
func addrsOf(t *testing.T, link string) []string {
	t.Helper()
	var out []string
	for _, a := range addrList(t, link) {
		if ip, _ := netip.AddrFromSlice(a.IP); ip.Is6() && (ip.IsLinkLocalUnicast() || ip.IsLoopback()) {
			continue
		}
		out = append(out, a.IPNet.String())
	}
	return out
}

// addrFlags returns the flags (IFA_F_*) of address a on link.
func addrFlags(t *testing.T, link string, a netip.Addr) int {
	t.Helper()
	for _, x := range addrList(t, link) {
		if ip, _ := netip.AddrFromSlice(x.IP); ip.Unmap() == a {
			return x.Flags
		}
	}
	t.Fatalf("%s has no %s", link, a)
	return 0
}

func addrList(t *testing.T, link string) []netlink.Addr {
	t.Helper()
	l, err := netlink.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

func linkIsUp(t *testing.T, name string) bool {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Flags&net.FlagUp != 0
}

func linkNames(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

// sysctlPath turns "net.ipv4.conf.all.arp_ignore" into its /proc/sys file.
func sysctlPath(name string) string {
	return "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
}

// getSysctl reads a sysctl as the calling thread sees it.
func getSysctl(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(sysctlPath(name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// setSysctl writes a sysctl; call it only inside a test namespace.
func setSysctl(t *testing.T, name, value string) {
	t.Helper()
	if err := os.WriteFile(sysctlPath(name), []byte(value+"\n"), 0); err != nil {
		t.Fatal(err)
	}
}

func openHost(t *testing.T, dir string) *vip.Host {
	t.Helper()
	h, err := vip.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func journalExists(t *testing.T, dir string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join(dir, vip.JournalName))
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

func writeJournal(t *testing.T, dir, text string) string {
	t.Helper()
	path := filepath.Join(dir, vip.JournalName)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// equateAddrs lets cmp compare Changes, which hold netip values, and
// treats nil and empty lists alike.
var equateAddrs = cmp.Options{cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{}), cmpopts.EquateEmpty()}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }
