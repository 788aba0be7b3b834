package netnstest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var (
	prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,5}$`)
	// A host name is the switch side's link name, so at most 15 characters.
	hostRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,14}$`)
)

// Lab is a set of network namespaces ("hosts") joined by veth pairs to one
// bridge that lives in a namespace of its own. Its methods are safe for
// concurrent use.
type Lab struct {
	id       string
	registry *os.File

	mu     sync.Mutex
	closed bool
	sw     *Host
	names  []string // every namespace created or being created, as recorded
	procs  []*os.Process
}

// Host is one network namespace of a Lab.
type Host struct {
	lab  *Lab
	name string
}

// New creates a lab whose namespaces are named prefix (a lowercase letter,
// then at most five lowercase letters or digits), four random characters and
// "sw" or a host name. It first deletes the labs of runs that died.
func New(prefix string) (*Lab, error) {
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("netnstest: prefix %q: want a lowercase letter then up to 5 lowercase letters or digits", prefix)
	}
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		return nil, fmt.Errorf("netnstest: %w", err)
	}
	if err := reapStale(); err != nil {
		return nil, fmt.Errorf("netnstest: clean up dead runs: %w", err)
	}
	id, registry, err := reserve(prefix)
	if err != nil {
		return nil, fmt.Errorf("netnstest: %w", err)
	}
	l := &Lab{id: id, registry: registry}
	l.sw, err = l.addNamespace(id + "sw")
	if err == nil {
		err = l.sw.Do(func() error {
			return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", Flags: net.FlagUp}})
		})
	}
	if err == nil {
		err = l.sw.switchOnly()
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("netnstest: lab %s: switch: %w", id, err), l.Close())
	}
	return l, nil
}

// bridgeNetfilter are the sysctls with which br_netfilter (built into
// some kernels, this one's included, and then on in every new namespace)
// hands each frame a bridge forwards to the IP stack's routing and
// netfilter hooks.
var bridgeNetfilter = []string{"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables", "net/bridge/bridge-nf-call-arptables"}

// switchOnly makes the switch namespace's bridge only switch, as a switch
// does: with br_netfilter on, every frame crossing it was also routed and
// filtered, half of a forwarder's CPU time in the data-path benchmark
// (perf: br_nf_pre_routing). A kernel without br_netfilter has nothing to
// turn off.
func (h *Host) switchOnly() error {
	for _, path := range bridgeNetfilter {
		if err := h.SetSysctl(path, "0"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// addNamespace records the name before creating the namespace, so a run that
// dies in between leaves nothing unlisted for the next New to miss.
func (l *Lab) addNamespace(name string) (*Host, error) {
	if err := record(l.registry, append(l.names, name)); err != nil {
		return nil, err
	}
	l.names = append(l.names, name)
	// `ip netns add` rather than unshare here: it also makes /run/netns a
	// shared mount, so deleting a name reaches copies made by `ip netns exec`.
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		// The name may belong to someone else: forget it rather than delete it.
		l.names = l.names[:len(l.names)-1]
		return nil, errors.Join(fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out))),
			record(l.registry, l.names))
	}
	return &Host{lab: l, name: name}, nil
}

// Switch returns the namespace that holds the bridge; a host's link there
// is named after the host. The data-path benchmark steers the bridge's
// receive processing there (RPS); tests have no business in it.
func (l *Lab) Switch() *Host { return l.sw }

// AddHost creates a host: a namespace with lo up and eth0 up, carrying addrs,
// whose veth peer, named after the host, is attached to the lab's bridge.
// IPv6 addresses skip duplicate address detection, so they are usable at once,
// and it returns once both ends of the veth are operationally up.
func (l *Lab) AddHost(name string, addrs ...netip.Prefix) (*Host, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		return nil, fmt.Errorf("netnstest: add host %s: lab %s is closed", name, l.id)
	case !hostRE.MatchString(name) || name == "sw":
		return nil, fmt.Errorf("netnstest: host name %q: want a lowercase letter then up to 14 lowercase letters or digits, not \"sw\"", name)
	case slices.Contains(l.names, l.id+name):
		return nil, fmt.Errorf("netnstest: host %s already exists in lab %s", name, l.id)
	}
	h, err := l.addNamespace(l.id + name)
	if err != nil {
		return nil, fmt.Errorf("netnstest: host %s: %w", name, err)
	}
	ns, err := netns.GetFromName(h.name)
	if err != nil {
		return nil, fmt.Errorf("netnstest: host %s: %w", name, err)
	}
	defer ns.Close()
	err = l.sw.Do(func() error {
		br, err := netlink.LinkByName("br0")
		if err != nil {
			return err
		}
		return netlink.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index, Flags: net.FlagUp},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(ns),
		})
	})
	if err != nil {
		return nil, fmt.Errorf("netnstest: host %s: add veth: %w", name, err)
	}
	err = h.Do(func() error {
		for _, ifname := range []string{"lo", "eth0"} {
			link, err := netlink.LinkByName(ifname)
			if err != nil {
				return err
			}
			if ifname == "eth0" {
				for _, a := range addrs {
					if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(a), Flags: unix.IFA_F_NODAD}); err != nil {
						return fmt.Errorf("add address %v: %w", a, err)
					}
				}
			}
			if err := netlink.LinkSetUp(link); err != nil {
				return fmt.Errorf("set %s up: %w", ifname, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("netnstest: host %s: %w", name, err)
	}
	// A veth carries frames only once the kernel's link watcher has run
	// for both ends (it activates their queues and sets the operational
	// state): a hand-made frame sent before that is lost.
	for _, end := range []struct {
		host *Host
		link string
	}{{h, "eth0"}, {l.sw, name}} {
		if err := end.host.Do(func() error { return waitOperUp(end.link) }); err != nil {
			return nil, fmt.Errorf("netnstest: host %s: %w", name, err)
		}
	}
	return h, nil
}

// waitOperUp waits until link's operational state is up.
func waitOperUp(name string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if link.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is still %v after 10s", name, link.Attrs().OperState)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Close kills every process in the lab's namespaces and deletes them, and so
// their links. It is safe to call more than once; later calls do nothing.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	for _, p := range l.procs {
		_ = p.Kill() // fails only if it has already exited
	}
	var errs []error
	for _, name := range l.names {
		errs = append(errs, deleteNamespace(name))
	}
	err := errors.Join(errs...)
	if err == nil {
		// On failure the file stays, and once its lock is gone the next New
		// retries the deletion.
		err = os.Remove(filepath.Join(registryDir, l.id))
	}
	if err := errors.Join(err, l.registry.Close()); err != nil {
		return fmt.Errorf("netnstest: close lab %s: %w", l.id, err)
	}
	return nil
}

// Name returns the namespace's name, as `ip netns exec` wants it.
func (h *Host) Name() string { return h.name }

// Do runs fn on an OS thread switched into the host's namespace. Sockets fn
// opens stay in the namespace after Do returns. fn runs on a goroutine of its
// own, so it must return an error instead of calling t.FailNow, and goroutines
// it starts, and paths under /sys, see the root namespace.
func (h *Host) Do(fn func() error) error {
	ns, err := netns.GetFromName(h.name)
	if err != nil {
		return fmt.Errorf("netnstest: open namespace %s: %w", h.name, err)
	}
	defer ns.Close()
	err = fmt.Errorf("netnstest: %s: Do's function exited without returning (runtime.Goexit)", h.name)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: Go ends the thread with this goroutine instead of
		// reusing it, so no goroutine ever inherits the namespace, whatever fn
		// did to the thread, and no fallible switch back is needed.
		runtime.LockOSThread()
		if serr := netns.Set(ns); serr != nil {
			err = fmt.Errorf("netnstest: enter namespace %s: %w", h.name, serr)
			return
		}
		err = fn()
	}()
	<-done
	return err
}

// Command returns a command that runs name with args inside the host's
// namespace via `ip netns exec`, which also mounts the namespace's /sys.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", slices.Concat([]string{"netns", "exec", h.name, name}, args)...)
}

// Start starts cmd and has Close kill it if it still runs; waiting for it
// stays the caller's job. Close also kills every other process it finds in
// the lab's namespaces, but one started with cmd.Start that is still on its
// way in, between exec and setns, escapes that search.
func (h *Host) Start(cmd *exec.Cmd) error {
	h.lab.mu.Lock()
	defer h.lab.mu.Unlock()
	if h.lab.closed {
		return fmt.Errorf("netnstest: %s: start %s: lab is closed", h.name, cmd.Path)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("netnstest: %s: %w", h.name, err)
	}
	h.lab.procs = append(h.lab.procs, cmd.Process)
	return nil
}

// AddRoute routes dst via the gateway via on eth0.
func (h *Host) AddRoute(dst netip.Prefix, via netip.Addr) error {
	err := h.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(dst.Masked()), Gw: via.AsSlice()})
	})
	if err != nil {
		return fmt.Errorf("netnstest: %s: route %v via %v: %w", h.name, dst, via, err)
	}
	return nil
}

// SendIPv6 sends the whole IPv6 packet pkt, its header as given (a raw
// socket with IPV6_HDRINCL), to the destination the header names, as a
// router forwarding it or caplanced would.
func (h *Host) SendIPv6(pkt []byte) error {
	if len(pkt) < 40 || pkt[0]>>4 != 6 {
		return fmt.Errorf("netnstest: %s: send: not an IPv6 packet", h.name)
	}
	err := h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_HDRINCL, 1); err != nil {
			return err
		}
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet6{Addr: [16]byte(pkt[24:40])})
	})
	if err != nil {
		return fmt.Errorf("netnstest: %s: send an IPv6 packet: %w", h.name, err)
	}
	return nil
}

// SetSysctl writes value to /proc/sys/path inside the host's namespace, for
// example SetSysctl("net/ipv4/ip_forward", "1"). Only paths under net/ are
// accepted: the others are not per namespace, so writing one would change
// the whole machine.
func (h *Host) SetSysctl(path, value string) error {
	if !strings.HasPrefix(path, "net/") || filepath.Clean(path) != path {
		return fmt.Errorf("netnstest: %s: sysctl %q: want a clean path under net/", h.name, path)
	}
	err := h.Do(func() error { return os.WriteFile(filepath.Join("/proc/sys", path), []byte(value), 0) })
	if err != nil {
		return fmt.Errorf("netnstest: %s: sysctl: %w", h.name, err)
	}
	return nil
}

// NewForTest is New for tests: it skips the test unless run as root, fails it
// if the lab cannot be built, and closes the lab when the test ends.
func NewForTest(tb testing.TB, prefix string) *Lab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("netnstest: network namespaces need root")
	}
	l, err := New(prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Error(err)
		}
	})
	return l
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
