package vip_test

import (
	"errors"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestProcIsPerThread checks what the package (and its tests) rely on when
// they read and write sysctls through /proc from a thread in another
// network namespace:
//   - /proc/sys/net shows the namespace of the thread that opens a file,
//     not the process's: other threads still see the host's values;
//   - a file opened there keeps showing that namespace after the thread
//     moves to another one (the namespace is bound at lookup);
//   - /proc/net (= /proc/self/net) shows the main thread's namespace, and
//     only /proc/thread-self/net the calling thread's (they agree when the
//     test runs on the main thread, which Go may well pick).
//
// It only reads while this thread is in the host's namespace.
func TestProcIsPerThread(t *testing.T) {
	const file = "/proc/sys/net/ipv4/conf/all/arp_announce"
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	// readElsewhere reads on a goroutine that is not locked to this thread,
	// so runs on one in the host's namespace.
	readElsewhere := func(name string) string {
		t.Helper()
		type result struct {
			s   string
			err error
		}
		c := make(chan result)
		go func() {
			b, err := os.ReadFile(name)
			c <- result{strings.TrimSpace(string(b)), err}
		}()
		r := <-c
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.s
	}

	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	host, err := netns.Get() // every thread is in the host's namespace yet
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	ns := inNetns(t)
	// The test's thread may be the main thread (Go runs goroutines there
	// too), whose namespace /proc/self/net shows.
	mainNS, err := netns.GetFromThread(os.Getpid(), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	onMain := mainNS.Equal(ns)
	mainNS.Close()
	t.Logf("test thread is the main thread: %v", onMain)
	hostValue := readElsewhere(file)
	nsValue := "2"
	if hostValue == "2" {
		nsValue = "1"
	}
	setSysctl(t, "net.ipv4.conf.all.arp_announce", nsValue)
	addVeth(t, "vprobe0")

	if got := read(file); got != nsValue {
		t.Errorf("this thread reads %s = %s, want the namespace's %s", file, got, nsValue)
	}
	if got := readElsewhere(file); got != hostValue {
		t.Errorf("another thread reads %s = %s, want the host's %s", file, got, hostValue)
	}

	want := map[string]bool{"/proc/thread-self/net/dev": true, "/proc/self/net/dev": onMain, "/proc/net/dev": onMain}
	got := map[string]bool{}
	for name := range want {
		got[name] = strings.Contains(read(name), "vprobe0")
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("files that list this namespace's vprobe0 (-want +got):\n%s", diff)
	}
	// The same from a thread that is not the main one (certainly not, if
	// this goroutine holds the main thread).
	other, err := otherThreadViews()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("other thread is the main thread: %v", other.onMain)
	want = map[string]bool{"/proc/thread-self/net/dev": true, "/proc/self/net/dev": other.onMain, "/proc/net/dev": other.onMain}
	if diff := cmp.Diff(want, other.lists); diff != "" {
		t.Errorf("files that list another thread's namespace's vprobe1 (-want +got):\n%s", diff)
	}

	// Open in the test namespace, read after moving to the host's.
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := netns.Set(host); err != nil {
		t.Fatal(err)
	}
	pinned, perr := io.ReadAll(f)
	fresh, ferr := os.ReadFile(file)
	if err := netns.Set(ns); err != nil {
		t.Fatalf("back into the test namespace: %v", err) // the cleanup still restores the thread
	}
	if perr != nil || ferr != nil {
		t.Fatal(perr, ferr)
	}
	if got := strings.TrimSpace(string(pinned)); got != nsValue {
		t.Errorf("file opened in the namespace, read from the host's: %s, want the namespace's %s", got, nsValue)
	}
	if got := strings.TrimSpace(string(fresh)); got != hostValue {
		t.Errorf("file opened in the host's namespace: %s, want the host's %s", got, hostValue)
	}
}

type threadViews struct {
	onMain bool
	lists  map[string]bool // file → lists vprobe1
}

// otherThreadViews moves a new goroutine's thread into a namespace of its
// own with a veth vprobe1, and reports which /proc files list it.
func otherThreadViews() (threadViews, error) {
	type result struct {
		v   threadViews
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // unlocked only when back in the host's namespace
		v := threadViews{onMain: unix.Gettid() == os.Getpid(), lists: map[string]bool{}}
		orig, err := netns.Get()
		if err != nil {
			c <- result{err: err}
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			c <- result{err: err}
			return
		}
		ns.Close()
		err = netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vprobe1"}, PeerName: "vprobe1p"})
		for _, name := range []string{"/proc/thread-self/net/dev", "/proc/self/net/dev", "/proc/net/dev"} {
			b, rerr := os.ReadFile(name)
			err = errors.Join(err, rerr)
			v.lists[name] = strings.Contains(string(b), "vprobe1")
		}
		if serr := netns.Set(orig); serr != nil {
			c <- result{err: errors.Join(err, serr)} // the thread dies with the goroutine
			return
		}
		runtime.UnlockOSThread()
		c <- result{v, err}
	}()
	r := <-c
	return r.v, r.err
}
