package receiver

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/rawio/rawiotest"
)

var (
	testVIP      = netip.MustParseAddr("10.0.0.100")
	testBalancer = netip.MustParseAddr("10.0.0.1")
	testBackend  = netip.MustParsePrefix("10.0.0.2/24")
)

// inBackend runs fn in a throw-away namespace, the backend host.
func inBackend(t *testing.T, fn func() error) {
	t.Helper()
	lab := netnstest.NewForTest(t, "rcv")
	host, err := lab.AddHost("backend", testBackend)
	if err != nil {
		t.Fatal(err)
	}
	if err := host.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func testConfig(workers int) Config {
	return Config{VIPs: []netip.Addr{testVIP}, Balancers: []netip.Addr{testBalancer}, Port: 5555, Workers: workers}
}

// TestSocketsBypassTheRuntimePoller: no socket of a worker is in the Go
// runtime's epoll (see openWorker), and the workers share the encap port.
func TestSocketsBypassTheRuntimePoller(t *testing.T) {
	inBackend(t, func() error {
		r, err := Open(testConfig(2))
		if err != nil {
			return err
		}
		defer r.Close()
		for i, w := range r.workers {
			for _, fd := range []int{w.encapFD, w.injectFD} {
				polled, err := rawiotest.Polled(fd)
				if err != nil {
					return err
				}
				if polled {
					t.Errorf("worker %d: descriptor %d is in the runtime's epoll", i, fd)
				}
			}
		}
		return nil
	})
}

// TestOpenPortTaken: when another program holds the encap port, Open fails
// naming the port and leaves no descriptor open.
func TestOpenPortTaken(t *testing.T) {
	var openErr error
	var before, after int
	inBackend(t, func() error {
		other, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(other)
		if err := unix.Bind(other, &unix.SockaddrInet4{Port: 5555}); err != nil {
			return err
		}
		if before, err = openDescriptors(); err != nil {
			return err
		}
		var r *Receiver
		if r, openErr = Open(testConfig(2)); openErr == nil {
			r.Close()
		}
		after, err = openDescriptors()
		return err
	})
	if openErr == nil {
		t.Fatal("Open succeeded on a port another socket holds")
	}
	if want := "listen on UDP port 5555: address already in use"; !strings.Contains(openErr.Error(), want) {
		t.Errorf("error %q does not say %q", openErr, want)
	}
	if after != before {
		t.Errorf("%d descriptors open before Open, %d after its failure", before, after)
	}
}

func openDescriptors() (int, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	return len(entries), err
}
