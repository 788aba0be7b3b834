package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/caplance/caplance/internal/testbed"
)

// newLab is a testbed with no backend and no balancer running, for tests
// of how the balancer starts; dir is the testbed's directory.
func newLab(t *testing.T) (tb *testbed.Testbed, dir string) {
	t.Helper()
	dir = t.TempDir()
	return openTestbed(t, testbed.Options{Prefix: "e2e", Dir: dir}), dir
}

// A state file the registry refuses fails the start before anything on the
// host changes: the VIP never goes up, no table, no sysctl, no journal.
func TestBadStateFileChangesNothing(t *testing.T) {
	tb, dir := newLab(t)
	state := filepath.Join(dir, "lb", "state", "backends.json")
	if err := os.MkdirAll(filepath.Dir(state), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, []byte(`{"version": 1, "backends": [{"name": "a", "addr`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := tb.StartDaemon(tb.LB, "lb", tb.BalancerConfig(nil), "none")
	if err == nil {
		t.Fatal("caplanced started with a corrupt state file")
	}
	out := err.Error()
	if !strings.Contains(out, "caplanced: state file "+state+": not valid JSON") {
		t.Errorf("start with a corrupt state file: %v\nwant an error naming %s", err, state)
	}
	// What the daemon logs when it changes the host: none of it happened.
	for _, step := range []string{"cleaning up", "installing nftables", "attaching VIPs", "VIP attached"} {
		if strings.Contains(out, step) {
			t.Errorf("the failed start got as far as %q:\n%s", step, out)
		}
	}
	got, err := readHostState(tb.LB, filepath.Join(dir, "lb", "run"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (hostState{arpIgnore: "0", arpAnnounce: "0", acceptLocal: "0"}); got != want {
		t.Errorf("a failed start left %+v, want %+v", got, want)
	}
}

// addressesOf lists the IPv4 addresses on host's eth0.
func addressesOf(t *testing.T, tb *testbed.Testbed) []string {
	t.Helper()
	var out []string
	err := tb.LB.Do(func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		for _, a := range addrs {
			out = append(out, a.IPNet.String())
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A VIP the host already has would take every port of that address (SSH
// included) from the host: refused, unless [balancer.ports] names the
// ports to balance; either way the host keeps its address.
func TestVIPThatIsAHostAddress(t *testing.T) {
	tb, dir := newLab(t)
	own := testbed.LBAddr
	before := addressesOf(t, tb)
	cfg := fmt.Sprintf("[balancer]\nvips = [%q]\n", own)
	_, err := tb.StartDaemon(tb.LB, "lb", cfg, "none")
	want := fmt.Sprintf("VIP %s of service %q is already an address of this host (on eth0)", own, "default")
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("start with the host's own address as VIP: %v\nwant %q", err, want)
	}
	got, err := readHostState(tb.LB, filepath.Join(dir, "lb", "run"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (hostState{arpIgnore: "0", arpAnnounce: "0", acceptLocal: "0"}); got != want {
		t.Errorf("a refused start left %+v, want %+v", got, want)
	}

	withPorts := cfg + fmt.Sprintf("[balancer.ports]\n%q = [%d]\n", own, testbed.HTTPPort)
	d, err := tb.StartDaemon(tb.LB, "lb", withPorts, "none")
	if err != nil {
		t.Fatalf("start with the host's own address and a port list: %v", err)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, addressesOf(t, tb)); diff != "" {
		t.Errorf("eth0's addresses after the stop (-want +got):\n%s", diff)
	}
}
