package vip_test

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/vip"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Environment of the crash child: the state directory, and the inode of the
// network namespace it must find itself in before it changes anything.
const (
	childDirEnv = "CAPLANCE_VIP_TEST_CRASH_DIR"
	childNSEnv  = "CAPLANCE_VIP_TEST_CRASH_NETNS"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		crashChild(dir, os.Getenv(childNSEnv))
	}
	os.Exit(m.Run())
}

// crashChild makes receiver changes, says "ready", and waits to be killed.
func crashChild(dir, wantNS string) {
	fail := func(err error) {
		fmt.Println("child:", err)
		os.Exit(2)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		fail(err)
	}
	if strconv.FormatUint(st.Ino, 10) != wantNS {
		fail(fmt.Errorf("in network namespace %d, not the test's %s: refusing to change it", st.Ino, wantNS))
	}
	h, err := vip.Open(dir)
	if err != nil {
		fail(err)
	}
	if err := h.AttachLoopback(ip("10.0.0.100")); err != nil {
		fail(err)
	}
	if err := h.ReceiverSysctls(); err != nil {
		fail(err)
	}
	if err := h.AddRoute(crashRoute); err != nil {
		fail(err)
	}
	fmt.Println("ready")
	time.Sleep(time.Minute)
	os.Exit(3)
}

// crashRoute is a routed balancer's announcement of the VIP.
var crashRoute = vip.Route{VIP: ip("10.0.0.100"), Table: 100, Protocol: 252}

var receiverChanges = []vip.Change{
	{Kind: vip.KindAddress, Link: "lo", Address: pfx("10.0.0.100/32")},
	{Kind: vip.KindSysctl, Sysctl: "net.ipv4.conf.all.arp_ignore", Value: "0"},
	{Kind: vip.KindSysctl, Sysctl: "net.ipv4.conf.all.arp_announce", Value: "0"},
	{Kind: vip.KindRoute, Link: "lo", Address: pfx("10.0.0.100/32"), Table: 100, Protocol: 252},
}

// TestCrash: changes made by a run that dies without Undo are the next
// run's Leftovers, and its Undo cleans them up.
func TestCrash(t *testing.T) {
	tests := []struct {
		name  string
		crash func(t *testing.T, dir string, ns netns.NsHandle)
	}{
		{"host dropped", func(t *testing.T, dir string, _ netns.NsHandle) {
			h, err := vip.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.AttachLoopback(ip("10.0.0.100")); err != nil {
				t.Fatal(err)
			}
			if err := h.ReceiverSysctls(); err != nil {
				t.Fatal(err)
			}
			if err := h.AddRoute(crashRoute); err != nil {
				t.Fatal(err)
			}
			// What the kernel does for a killed process: close its files.
			h.Close()
		}},
		{"process killed", killedChild},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := inNetns(t)
			loUp(t)
			addForeignRoute(t, "10.0.0.200/32", 100, 12)
			setSysctl(t, "net.ipv4.conf.all.arp_ignore", "0")
			setSysctl(t, "net.ipv4.conf.all.arp_announce", "0")
			loBefore := addrsOf(t, "lo")
			dir := t.TempDir()

			tt.crash(t, dir, ns)
			if got := getSysctl(t, "net.ipv4.conf.all.arp_ignore"); got != "1" {
				t.Fatalf("the crashed run did not set arp_ignore: %s", got)
			}

			h := openHost(t, dir)
			if diff := cmp.Diff(receiverChanges, h.Leftovers(), equateAddrs); diff != "" {
				t.Errorf("Leftovers (-want +got):\n%s", diff)
			}
			var got []string
			for _, c := range h.Leftovers() {
				got = append(got, c.String())
			}
			want := []string{
				"address 10.0.0.100/32 on lo",
				"sysctl net.ipv4.conf.all.arp_ignore=0",
				"sysctl net.ipv4.conf.all.arp_announce=0",
				"route 10.0.0.100/32 dev lo table 100 proto 252",
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Leftovers as logged (-want +got):\n%s", diff)
			}
			if err := h.Undo(); err != nil {
				t.Fatalf("Undo: %v", err)
			}
			if l := h.Leftovers(); len(l) != 0 {
				t.Errorf("Leftovers after Undo: %v", l)
			}
			if journalExists(t, dir) {
				t.Error("journal left after Undo")
			}
			if diff := cmp.Diff(loBefore, addrsOf(t, "lo")); diff != "" {
				t.Errorf("lo's addresses after Undo (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"10.0.0.200/32 dev lo proto bird scope universe"}, routesIn(t, 100)); diff != "" {
				t.Errorf("table 100 after Undo: only BIRD's route stays (-want +got):\n%s", diff)
			}
			for _, s := range []string{"net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce"} {
				if got := getSysctl(t, s); got != "0" {
					t.Errorf("%s = %s after Undo, want 0", s, got)
				}
			}
		})
	}
}

// killedChild runs the changes in a child process, started from this
// thread so that it is in the test's namespace, and kills it with SIGKILL.
func killedChild(t *testing.T, dir string, ns netns.NsHandle) {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childDirEnv+"="+dir, childNSEnv+"="+strconv.FormatUint(st.Ino, 10))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child said %q (%v)", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want killed", err)
	}
}

// TestUndoKeepsGoing: one change that cannot be undone does not stop the
// others, and it stays in the journal for the next attempt.
func TestUndoKeepsGoing(t *testing.T) {
	inNetns(t)
	setSysctl(t, "net.ipv4.conf.all.arp_ignore", "1")
	addAddr(t, "lo", "10.0.0.100/32")
	addAddr(t, "lo", "10.0.0.101/32")
	dir := t.TempDir()
	path := writeJournal(t, dir, `{"version": 1, "changes": [
		{"kind": "address", "link": "lo", "address": "10.0.0.100/32"},
		{"kind": "sysctl", "sysctl": "net.ipv4.conf.all.arp_ignore", "value": "banana"},
		{"kind": "address", "link": "lo", "address": "10.0.0.101/32"}
	]}`)
	h := openHost(t, dir)

	err := h.Undo()
	want := "undo sysctl net.ipv4.conf.all.arp_ignore=banana: write /proc/sys/net/ipv4/conf/all/arp_ignore: invalid argument"
	if err == nil || err.Error() != want {
		t.Fatalf("Undo error = %v, want %q", err, want)
	}
	if a := addrsOf(t, "lo"); len(a) != 0 {
		t.Errorf("lo still has %v", a)
	}
	wantLeft := []vip.Change{{Kind: vip.KindSysctl, Sysctl: "net.ipv4.conf.all.arp_ignore", Value: "banana"}}
	if diff := cmp.Diff(wantLeft, h.Leftovers(), equateAddrs); diff != "" {
		t.Errorf("Leftovers after a failed Undo (-want +got):\n%s", diff)
	}
	h.Close()
	h2 := openHost(t, dir)
	if diff := cmp.Diff(wantLeft, h2.Leftovers(), equateAddrs); diff != "" {
		t.Errorf("journal %s after a failed Undo (-want +got):\n%s", path, diff)
	}
}

// TestUndoIdempotent: changes that are already undone, or whose link is
// gone, count as undone.
func TestUndoIdempotent(t *testing.T) {
	inNetns(t)
	addVeth(t, "eth0")
	dir := t.TempDir()
	writeJournal(t, dir, `{"version": 1, "changes": [
		{"kind": "link-created", "link": "caplance-ipip", "type": "ipip"},
		{"kind": "link-created", "link": "eth0", "type": "ipip"},
		{"kind": "link-up", "link": "tunl0"},
		{"kind": "sysctl", "sysctl": "net.ipv4.conf.tunl0.rp_filter", "value": "1"},
		{"kind": "fou", "port": 5555, "ipproto": 4},
		{"kind": "link-created", "link": "caplance-ip6tnl", "type": "ip6tnl"},
		{"kind": "fou", "port": 5555, "ipproto": 41, "family": "ipv6"},
		{"kind": "address", "link": "eth0", "address": "10.0.0.100/32"},
		{"kind": "address", "link": "eth9", "address": "10.0.0.100/32"}
	]}`)
	h := openHost(t, dir)
	if n := len(h.Leftovers()); n != 9 {
		t.Fatalf("%d leftovers, want 9", n)
	}
	if err := h.Undo(); err != nil {
		t.Fatalf("Undo: %v", err)
	}
	if journalExists(t, dir) {
		t.Error("journal left after Undo")
	}
	if !slicesContain(linkNames(t), "eth0") {
		t.Error("Undo deleted eth0, a veth, for an ipip link of the same name")
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestCorruptJournal: a journal that cannot be read is an error naming the
// file, never a panic, and Open changes nothing.
func TestCorruptJournal(t *testing.T) {
	tests := []struct {
		name, text, reason string
	}{
		{"torn", `{"version": 1, "changes": [{"kind": "address", "link": "lo", "addr`, "truncated JSON"},
		{"empty", "", "empty file"},
		{"not JSON", "hello\n", "invalid character 'h' looking for beginning of value"},
		{"not an object", "[]", "json: cannot unmarshal array into Go value of type vip.journalFile"},
		{"two objects", `{"version": 1, "changes": []} {}`, "data after the JSON object"},
		{"version", `{"version": 2, "changes": []}`, "version 2, want 1"},
		{"no version", `{"changes": []}`, "version 0, want 1"},
		{"unknown field", `{"version": 1, "changes": [], "pid": 7}`, `json: unknown field "pid"`},
		{"unknown kind", `{"version": 1, "changes": [{"kind": "tunnel"}]}`, `change 1: unknown kind "tunnel"`},
		{"route without table", `{"version": 1, "changes": [{"kind": "route", "link": "lo", "address": "10.0.0.1/32", "protocol": 252}]}`,
			`change 1: route 10.0.0.1/32 dev lo table 0 proto 252: table 0 is not one of caplanced's own`},
		{"route in the main table", `{"version": 1, "changes": [{"kind": "route", "link": "lo", "address": "10.0.0.1/32", "table": 254, "protocol": 252}]}`,
			`change 1: route 10.0.0.1/32 dev lo table 254 proto 252: table 254 is not one of caplanced's own`},
		{"route of the kernel's protocol", `{"version": 1, "changes": [{"kind": "route", "link": "lo", "address": "10.0.0.1/32", "table": 100}]}`,
			`change 1: route 10.0.0.1/32 dev lo table 100 proto 0: protocol 0 is the kernel's own`},
		{"route to a subnet", `{"version": 1, "changes": [{"kind": "route", "link": "lo", "address": "10.0.0.0/24", "table": 100, "protocol": 252}]}`,
			`change 1: route change with "address" 10.0.0.0/24: want a /32 or /128`},
		{"route without address", `{"version": 1, "changes": [{"kind": "route", "link": "lo", "table": 100, "protocol": 252}]}`,
			`change 1: route change with "address" invalid Prefix: want a /32 or /128`},
		{"route on eth0", `{"version": 1, "changes": [{"kind": "route", "link": "eth0", "address": "10.0.0.1/32", "table": 100, "protocol": 252}]}`,
			`change 1: route change with "link" "eth0": want "lo"`},
		{"bad address", `{"version": 1, "changes": [{"kind": "address", "link": "lo", "address": "10.0.0.300/32"}]}`,
			`netip.ParsePrefix("10.0.0.300/32"): ParseAddr("10.0.0.300"): IPv4 field has value >255`},
		{"address without link", `{"version": 1, "changes": [{"kind": "address", "address": "10.0.0.1/32"}]}`,
			`change 1: address change without "link"`},
		{"sysctl outside net", `{"version": 1, "changes": [{"kind": "sysctl", "sysctl": "kernel.panic", "value": "0"}]}`,
			`change 1: sysctl "kernel.panic": only net.* sysctls can be set`},
		{"sysctl without value", `{"version": 1, "changes": [{"kind": "sysctl", "sysctl": "net.ipv4.ip_forward"}]}`,
			`change 1: sysctl change without "value"`},
		{"fou without port", `{"version": 1, "changes": [{"kind": "fou", "ipproto": 4}]}`,
			`change 1: fou change without "port" or "ipproto"`},
		{"fou of another family", `{"version": 1, "changes": [{"kind": "fou", "port": 5555, "ipproto": 4, "family": "inet6"}]}`,
			`change 1: fou change with family "inet6": want "ipv6" or none (IPv4)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeJournal(t, dir, tt.text)
			h, err := vip.Open(dir)
			if err == nil {
				h.Close()
				t.Fatal("Open succeeded")
			}
			want := fmt.Sprintf("host-change journal %s is unreadable (%s); "+
				"undo the changes it lists by hand, then remove it", path, tt.reason)
			if err.Error() != want {
				t.Errorf("Open error:\n got %s\nwant %s", err, want)
			}
			if got, _ := os.ReadFile(path); string(got) != tt.text {
				t.Error("Open changed the journal")
			}
			// The lock is released: fixing the file is enough.
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			h, err = vip.Open(dir)
			if err != nil {
				t.Fatalf("Open after removing the journal: %v", err)
			}
			h.Close()
		})
	}
}

// TestStaleTempFile: a crash while writing leaves a temporary file
// half-written beside the intact journal; Open ignores and removes it.
func TestStaleTempFile(t *testing.T) {
	dir := t.TempDir()
	writeJournal(t, dir, `{"version": 1, "changes": [{"kind": "fou", "port": 5555, "ipproto": 4}]}`)
	tmp := filepath.Join(dir, ".host-changes.json.tmp-12345")
	if err := os.WriteFile(tmp, []byte(`{"version": 1, "chan`), 0o644); err != nil {
		t.Fatal(err)
	}
	h := openHost(t, dir)
	want := []vip.Change{{Kind: vip.KindFOU, Port: 5555, IPProto: 4}}
	if diff := cmp.Diff(want, h.Leftovers(), equateAddrs); diff != "" {
		t.Errorf("Leftovers (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("stale %s not removed: %v", tmp, err)
	}
	if !strings.HasSuffix(h.Path(), "/host-changes.json") {
		t.Errorf("Path() = %s", h.Path())
	}
}
