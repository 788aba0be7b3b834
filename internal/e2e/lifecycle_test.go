package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/caplance/caplance/internal/daemon"
	"github.com/caplance/caplance/internal/nft"
	"github.com/caplance/caplance/internal/testbed"
)

// hostState is what caplanced may change on a host.
type hostState struct {
	vipOn       string // interface holding the VIP or VIP6, "" for none
	nftTable    bool
	arpIgnore   string
	arpAnnounce string
	acceptLocal string // on eth0
	journal     bool
}

func readHostState(h testbedHost, runtimeDir string) (hostState, error) {
	var st hostState
	err := h.Do(func() error {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if a.IP.Equal(testbed.VIP.AsSlice()) || a.IP.Equal(testbed.VIP6.AsSlice()) {
				l, err := netlink.LinkByIndex(a.LinkIndex)
				if err != nil {
					return err
				}
				st.vipOn = l.Attrs().Name
			}
		}
		_, err = nft.Counters(nft.CurrentNetNS)
		st.nftTable = !errors.Is(err, nft.ErrNoTable)
		ignore, err1 := os.ReadFile("/proc/sys/net/ipv4/conf/all/arp_ignore")
		announce, err2 := os.ReadFile("/proc/sys/net/ipv4/conf/all/arp_announce")
		local, err3 := os.ReadFile("/proc/sys/net/ipv4/conf/eth0/accept_local")
		st.arpIgnore, st.arpAnnounce = strings.TrimSpace(string(ignore)), strings.TrimSpace(string(announce))
		st.acceptLocal = strings.TrimSpace(string(local))
		return errors.Join(err1, err2, err3)
	})
	_, jerr := os.Stat(filepath.Join(runtimeDir, "host-changes.json"))
	st.journal = jerr == nil
	return st, err
}

func TestLifecycle(t *testing.T) {
	tb := newTestbed(t)
	lb, be := tb.Balancer, tb.Backends[0]
	pristine := hostState{arpIgnore: "0", arpAnnounce: "0", acceptLocal: "0"}

	check := func(t *testing.T, what string, h testbedHost, dir string, want hostState) {
		t.Helper()
		got, err := readHostState(h, dir)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: host state %+v, want %+v", what, got, want)
		}
	}

	t.Run("running", func(t *testing.T) {
		check(t, "balancer", tb.LB, lb.RuntimeDir, hostState{vipOn: "eth0", nftTable: true, arpIgnore: "0", arpAnnounce: "0", acceptLocal: "1", journal: true})
		check(t, "backend", be.Host, be.Receiver.RuntimeDir, hostState{vipOn: "lo", arpIgnore: "1", arpAnnounce: "2", acceptLocal: "0", journal: true})
		for _, m := range []string{"STATUS=balancing 1 service(s) on 1 VIP(s) over 3 backend(s)", "READY=1"} {
			if !strings.Contains(strings.Join(lb.Messages(), "\n"), m) {
				t.Errorf("balancer never sent %q; sent %q", m, lb.Messages())
			}
		}
		if !strings.Contains(strings.Join(be.Receiver.Messages(), "\n"), "decapsulation: userspace") {
			t.Errorf("receiver status does not say user-space decapsulation: %q", be.Receiver.Messages())
		}
	})

	t.Run("SIGTERM leaves nothing behind", func(t *testing.T) {
		if err := errors.Join(lb.Stop(), be.Receiver.Stop()); err != nil {
			t.Fatal(err)
		}
		check(t, "balancer", tb.LB, lb.RuntimeDir, pristine)
		check(t, "backend", be.Host, be.Receiver.RuntimeDir, pristine)
		if !strings.Contains(strings.Join(lb.Messages(), "\n"), "STOPPING=1") {
			t.Errorf("no STOPPING=1 sent: %q", lb.Messages())
		}
	})

	t.Run("kill -9, then a restart cleans up and serves", func(t *testing.T) {
		if err := errors.Join(lb.Restart(tb.LB, caplancedBin), be.Receiver.Restart(be.Host, caplancedBin)); err != nil {
			t.Fatal(err)
		}
		if err := errors.Join(lb.Kill(), be.Receiver.Kill()); err != nil {
			t.Fatal(err)
		}
		check(t, "balancer after kill -9", tb.LB, lb.RuntimeDir, hostState{vipOn: "eth0", nftTable: true, arpIgnore: "0", arpAnnounce: "0", acceptLocal: "1", journal: true})
		check(t, "backend after kill -9", be.Host, be.Receiver.RuntimeDir, hostState{vipOn: "lo", arpIgnore: "1", arpAnnounce: "2", acceptLocal: "0", journal: true})
		if err := errors.Join(lb.Restart(tb.LB, caplancedBin), be.Receiver.Restart(be.Host, caplancedBin)); err != nil {
			t.Fatal(err)
		}
		for _, d := range []*testbed.Daemon{lb, be.Receiver} {
			if !strings.Contains(d.Log(), "undoing a change left by an earlier run") {
				t.Errorf("%s did not log the cleanup of its leftovers:\n%s", d.Name, d.Log())
			}
		}
		client := tb.HTTPClient(false)
		served := map[string]bool{}
		for i := range 30 {
			name, err := testbed.Get(client, "/")
			if err != nil {
				t.Fatalf("request %d after the restart: %v", i, err)
			}
			served[name] = true
		}
		if !served[be.Name] {
			t.Errorf("the restarted receiver %s served none of 30 requests: %v", be.Name, served)
		}
	})

	t.Run("a second signal cuts the stop short", func(t *testing.T) {
		// A stop takes a few milliseconds: a second SIGTERM sent once the
		// first shows could come after it. The test hook holds the stop
		// (after STOPPING=1, before any cleanup) until the process exits,
		// so the second signal surely meets a stop under way.
		t.Run("held stop", func(t *testing.T) {
			t.Setenv(daemon.TestWedgeEnv, "stop") // for this run of caplanced only
			if err := lb.Stop(); err != nil {
				t.Fatal(err)
			}
			if err := lb.Restart(tb.LB, caplancedBin); err != nil {
				t.Fatal(err)
			}
		})
		logBefore := len(lb.Log())
		if err := lb.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the first SIGTERM handled", func() error {
			if !strings.Contains(lb.Log()[logBefore:], "holding the stop until a second signal") {
				return errors.New("not stopping yet")
			}
			return nil
		})
		if err := lb.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		code, err := lb.Wait()
		if err != nil || code != 1 || !strings.Contains(lb.Log()[logBefore:], "second signal: exiting before cleanup finished") {
			t.Errorf("exit code %d (%v) after two SIGTERMs, want 1 and a log line:\n%s", code, err, lb.Log())
		}
		if err := lb.Restart(tb.LB, caplancedBin); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("caplanced --cleanup after kill -9", func(t *testing.T) {
		if err := lb.Kill(); err != nil {
			t.Fatal(err)
		}
		out, err := tb.LB.Command(t.Context(), caplancedBin, "--cleanup", "--runtime-dir", lb.RuntimeDir).CombinedOutput()
		if err != nil {
			t.Fatalf("--cleanup: %v\n%s", err, out)
		}
		check(t, "balancer after --cleanup", tb.LB, lb.RuntimeDir, pristine)
	})
}

// This kernel has no foo-over-UDP: mode = "kernel" must fail with a clear
// error and change nothing, for each family of tunnel, while "auto" falls
// back to user space (every testbed receiver runs in auto mode and says so
// in its status).
func TestKernelModeWithoutFOU(t *testing.T) {
	tb := newTestbed(t)
	host, err := tb.Lab.AddHost("kern", netip.MustParsePrefix("198.18.0.50/24"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, vip, balancers, want string
	}{
		{"IPv4 in IPv4", fmt.Sprintf("%q", testbed.VIP), fmt.Sprintf("%q", testbed.LBAddr), "foo-over-UDP port 5555 (IPv4 in IPv4)"},
		{"IPv6 in IPv6", fmt.Sprintf("%q", testbed.VIP6), fmt.Sprintf("%q", testbed.LBAddr6), "foo-over-UDP port 5555 (IPv6 in IPv6)"},
		{"IPv4 in both", fmt.Sprintf("%q", testbed.VIP), fmt.Sprintf("%q, %q", testbed.LBAddr, testbed.LBAddr6), "foo-over-UDP port 5555 (IPv4 in IPv4)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fmt.Sprintf("[receiver]\nvips = [%s]\nbalancers = [%s]\nmode = \"kernel\"\n", tc.vip, tc.balancers)
			_, err = tb.StartDaemon(host, "kern", cfg, "none")
			if want := "receiver mode kernel: " + tc.want + ": kernel has no foo-over-UDP"; err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("mode kernel on a kernel without fou: got %v, want an error with %q", err, want)
			}
			got, err := readHostState(host, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if want := (hostState{arpIgnore: "0", arpAnnounce: "0", acceptLocal: "0"}); got != want {
				t.Errorf("a failed start left %+v, want %+v", got, want)
			}
		})
	}
}
