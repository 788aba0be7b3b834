package nft_test

// Helpers for the root tests. Every namespace is unnamed: it exists while a
// handle or a socket refers to it, so it vanishes even if a test is killed.
// Nothing here touches the namespace the test process started in: code that
// must run inside a namespace runs on a fresh, locked OS thread that is never
// unlocked, so the Go runtime throws the thread away when the goroutine ends.

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// requireRoot skips t unless it runs as root; CI runs as root, so the tests
// run there.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
}

// newNetNS returns a new, empty network namespace, closed at cleanup.
func newNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends up in the new namespace
		ns, err := netns.New()
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("new network namespace: %v", r.err)
	}
	t.Cleanup(func() { r.ns.Close() })
	return r.ns
}

// inNetNS runs fn on a fresh OS thread in ns and returns its results. Sockets
// that fn opens stay in ns and may be used from any goroutine afterwards; an
// io.Closer result is closed at cleanup. fn must not call t.Fatal.
func inNetNS[T any](t *testing.T, ns netns.NsHandle, fn func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is thrown away
		if err := netns.Set(ns); err != nil {
			var zero T
			ch <- result{zero, err}
			return
		}
		v, err := fn()
		ch <- result{v, err}
	}()
	r := <-ch
	if c, ok := any(r.v).(io.Closer); ok && r.err == nil && c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return r.v, r.err
}

// mustInNetNS is inNetNS that fails the test on an error.
func mustInNetNS[T any](t *testing.T, ns netns.NsHandle, fn func() (T, error)) T {
	t.Helper()
	v, err := inNetNS(t, ns, fn)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// link is two namespaces joined by a veth pair: "a0" in A, "b0" in B.
type link struct {
	a, b netns.NsHandle
}

// newLink creates the two namespaces and the veth pair, adds the prefixes
// (e.g. "10.99.0.1/24") to each side and brings everything up.
func newLink(t *testing.T, aPrefixes, bPrefixes []string) link {
	t.Helper()
	l := link{a: newNetNS(t), b: newNetNS(t)}
	ha, err := netlink.NewHandleAt(l.a)
	if err != nil {
		t.Fatalf("netlink handle in A: %v", err)
	}
	t.Cleanup(ha.Close)
	hb, err := netlink.NewHandleAt(l.b)
	if err != nil {
		t.Fatalf("netlink handle in B: %v", err)
	}
	t.Cleanup(hb.Close)

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "a0"},
		PeerName:      "b0",
		PeerNamespace: netlink.NsFd(l.b),
	}
	if err := ha.LinkAdd(veth); err != nil {
		t.Fatalf("add veth a0/b0: %v", err)
	}
	setUp(t, ha, "a0", aPrefixes)
	setUp(t, hb, "b0", bPrefixes)
	l.waitReady(t, strings.Split(aPrefixes[0], "/")[0])
	return l
}

// waitReady waits until a TCP connect from B to addrA on a closed port is
// refused. A new veth drops packets until the kernel's link watcher has
// activated its queues, which it may put off for up to a second.
func (l link) waitReady(t *testing.T, addrA string) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		_, err = inNetNS(t, l.b, func() (net.Conn, error) {
			return net.DialTimeout("tcp", net.JoinHostPort(addrA, "1"), 50*time.Millisecond)
		})
		if errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
	}
	t.Fatalf("veth a0/b0 not ready: connect to %s:1: %v", addrA, err)
}

func setUp(t *testing.T, h *netlink.Handle, name string, prefixes []string) {
	t.Helper()
	for _, n := range []string{"lo", name} {
		lnk, err := h.LinkByName(n)
		if err != nil {
			t.Fatalf("link %s: %v", n, err)
		}
		if n == name {
			for _, p := range prefixes {
				addr, err := netlink.ParseAddr(p)
				if err != nil {
					t.Fatal(err)
				}
				if addr.IP.To4() == nil {
					addr.Flags |= unix.IFA_F_NODAD // usable at once
				}
				if err := h.AddrAdd(lnk, addr); err != nil {
					t.Fatalf("add %s to %s: %v", p, n, err)
				}
			}
		}
		if err := h.LinkSetUp(lnk); err != nil {
			t.Fatalf("set %s up: %v", n, err)
		}
	}
}

// udpAddr is a net.UDPAddr for "a.b.c.d", port.
func udpAddr(addr string, port int) *net.UDPAddr {
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(port)))
}
