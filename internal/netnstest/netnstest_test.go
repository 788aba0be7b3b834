package netnstest_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/netnstest"
)

const (
	registryDir = "/run/caplance-netnstest"
	netnsDir    = "/run/netns"
)

// output runs a command and returns its standard output, failing the test
// with its standard error if it fails.
func output(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("%v: %v: %s", cmd.Args, err, ee.Stderr)
		}
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return string(out)
}

// labID returns the lab id of a host named short.
func labID(h *netnstest.Host, short string) string {
	return strings.TrimSuffix(h.Name(), short)
}

// namespacesOf lists the names in /run/netns and `ip netns list` that start
// with id.
func namespacesOf(t *testing.T, id string) []string {
	t.Helper()
	var got []string
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id) {
			got = append(got, netnsDir+"/"+e.Name())
		}
	}
	for _, line := range strings.Split(output(t, exec.Command("ip", "netns", "list")), "\n") {
		if name, _, _ := strings.Cut(line, " "); strings.HasPrefix(name, id) {
			got = append(got, "ip netns list: "+name)
		}
	}
	return got
}

func TestUDPBetweenHosts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		a, b   netip.Prefix
		listen string
	}{
		{"ipv4", netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("10.0.0.2/24"), "udp4"},
		{"ipv6", netip.MustParsePrefix("fd0c::1/64"), netip.MustParsePrefix("fd0c::2/64"), "udp6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			lab := netnstest.NewForTest(t, "cplt")
			a, err := lab.AddHost("a", tt.a)
			if err != nil {
				t.Fatal(err)
			}
			b, err := lab.AddHost("b", tt.b)
			if err != nil {
				t.Fatal(err)
			}
			// Sockets belong to the namespace they were opened in, so they
			// keep working after Do returns.
			var server, client *net.UDPConn
			if err := b.Do(func() (err error) {
				server, err = net.ListenUDP(tt.listen, net.UDPAddrFromAddrPort(netip.AddrPortFrom(tt.b.Addr(), 0)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			if err := a.Do(func() (err error) {
				client, err = net.DialUDP(tt.listen, nil, server.LocalAddr().(*net.UDPAddr))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			deadline := time.Now().Add(5 * time.Second)
			server.SetDeadline(deadline)
			client.SetDeadline(deadline)

			if _, err := client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 16)
			n, from, err := server.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.a.Addr().String(), from.Addr().String()); diff != "" {
				t.Errorf("request source (-want +got):\n%s", diff)
			}
			if _, err := server.WriteToUDPAddrPort(append([]byte("re:"), buf[:n]...), from); err != nil {
				t.Fatal(err)
			}
			n, err = client.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff("re:ping", string(buf[:n])); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCommandRunsInNamespace(t *testing.T) {
	t.Parallel()
	lab := netnstest.NewForTest(t, "cplt")
	h, err := lab.AddHost("web1", netip.MustParsePrefix("10.1.0.7/24"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"address", []string{"ip", "-o", "-4", "addr", "show", "dev", "eth0"}, "10.1.0.7/24"},
		{"links", []string{"sh", "-c", "ip -o link | cut -d: -f2 | cut -d@ -f1"}, " lo\n eth0\n"},
		{"sysfs is the namespace's", []string{"ls", "/sys/class/net"}, "eth0\nlo\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := output(t, h.Command(ctx, tt.args[0], tt.args[1:]...))
			if tt.name == "address" {
				// Only the address matters, not the lifetimes and flags around it.
				got = strings.Fields(got)[3]
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%v (-want +got):\n%s", tt.args, diff)
			}
		})
	}
}

// threadNS identifies the network namespace of the calling thread.
func threadNS(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), nil
}

func TestDo(t *testing.T) {
	t.Parallel()
	lab := netnstest.NewForTest(t, "cplt")
	h, err := lab.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	want, err := threadNS(filepath.Join(netnsDir, h.Name()))
	if err != nil {
		t.Fatal(err)
	}
	root, err := threadNS("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	errFn := errors.New("from fn")
	tests := []struct {
		name    string
		fn      func(inside *string) error
		wantErr bool
		wantIs  error // when set, the error Do's must wrap
	}{
		{name: "runs in the namespace", fn: func(inside *string) (err error) {
			*inside, err = threadNS("/proc/thread-self/ns/net")
			return err
		}},
		{name: "returns fn's error", fn: func(*string) error { return errFn }, wantErr: true, wantIs: errFn},
		{name: "survives Goexit", fn: func(*string) error { runtime.Goexit(); return nil }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var inside string
			err := h.Do(func() error { return tt.fn(&inside) })
			switch {
			case (err != nil) != tt.wantErr:
				t.Errorf("Do: got error %v, want an error: %t", err, tt.wantErr)
			case tt.wantIs != nil && !errors.Is(err, tt.wantIs):
				t.Errorf("Do: got %v, want it to wrap %v", err, tt.wantIs)
			case !tt.wantErr:
				if diff := cmp.Diff(want, inside); diff != "" {
					t.Errorf("namespace inside Do (-want +got):\n%s", diff)
				}
			}
			// Do never moves the caller's thread.
			if after, _ := threadNS("/proc/thread-self/ns/net"); after != root {
				t.Errorf("caller's namespace after Do: got %s, want %s", after, root)
			}
		})
	}
}

// TestLinkUpAfterAddHost: AddHost returns only once the host's eth0 is
// operationally up, so a frame sent at once is not lost on a veth whose
// queues the kernel has not activated yet.
func TestLinkUpAfterAddHost(t *testing.T) {
	t.Parallel()
	lab := netnstest.NewForTest(t, "cplt")
	for _, name := range []string{"a", "b", "c"} {
		h, err := lab.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		out, err := h.Command(t.Context(), "ip", "-br", "link", "show", "dev", "eth0").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: ip link: %v\n%s", name, err, out)
		}
		if f := strings.Fields(string(out)); len(f) < 2 || f[1] != "UP" {
			t.Errorf("%s: eth0 right after AddHost: %q, want operstate UP", name, out)
		}
	}
}

func TestSetSysctlAndAddRoute(t *testing.T) {
	t.Parallel()
	lab := netnstest.NewForTest(t, "cplt")
	lb, err := lab.AddHost("lb", netip.MustParsePrefix("10.2.0.1/24"), netip.MustParsePrefix("10.3.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	client, err := lab.AddHost("client", netip.MustParsePrefix("10.2.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	rootForward, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}

	for _, path := range []string{"kernel/hostname", "net/../kernel/hostname", "/net/ipv4/ip_forward", "net/ipv4/../../vm/swappiness"} {
		if err := lb.SetSysctl(path, "1"); err == nil {
			t.Errorf("SetSysctl(%q): got no error, want one: only net/ sysctls are per namespace", path)
		}
	}
	if err := lb.SetSysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if diff := cmp.Diff("1\n", output(t, lb.Command(ctx, "cat", "/proc/sys/net/ipv4/ip_forward"))); diff != "" {
		t.Errorf("ip_forward in the namespace (-want +got):\n%s", diff)
	}
	if got, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(got) != string(rootForward) {
		t.Errorf("root ip_forward: got %q, want it unchanged %q", got, rootForward)
	}

	if err := client.AddRoute(netip.MustParsePrefix("10.3.0.0/24"), netip.MustParseAddr("10.2.0.1")); err != nil {
		t.Fatal(err)
	}
	got := output(t, client.Command(ctx, "ip", "route", "show", "10.3.0.0/24"))
	if diff := cmp.Diff("10.3.0.0/24 via 10.2.0.1 dev eth0 \n", got); diff != "" {
		t.Errorf("route (-want +got):\n%s", diff)
	}
}

func TestAddHostRejects(t *testing.T) {
	t.Parallel()
	lab := netnstest.NewForTest(t, "cplt")
	if _, err := lab.AddHost("taken"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		host  string
		addrs []netip.Prefix
	}{
		{"uppercase", "Web", nil},
		{"longer than a link name", "abcdefghijklmnop", nil},
		{"the switch's name", "sw", nil},
		{"duplicate", "taken", nil},
		{"invalid address", "ok", []netip.Prefix{{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := lab.AddHost(tt.host, tt.addrs...); err == nil {
				t.Errorf("AddHost(%q, %v): got no error", tt.host, tt.addrs)
			}
		})
	}
}

func TestNewRejectsPrefix(t *testing.T) {
	t.Parallel()
	for _, prefix := range []string{"", "1cpl", "Cpl", "cpl-x", "toolong1"} {
		if l, err := netnstest.New(prefix); err == nil {
			l.Close()
			t.Errorf("New(%q): got no error", prefix)
		}
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	t.Parallel()
	lab := netnstest.NewForTest(t, "cplt")
	var hosts []*netnstest.Host
	for _, name := range []string{"a", "b"} {
		h, err := lab.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	id := labID(hosts[0], "a")
	want := []string{netnsDir + "/" + id + "a", netnsDir + "/" + id + "b", netnsDir + "/" + id + "sw"}
	if diff := cmp.Diff(want, slices.DeleteFunc(namespacesOf(t, id), func(s string) bool {
		return strings.HasPrefix(s, "ip netns list")
	})); diff != "" {
		t.Fatalf("namespaces while open (-want +got):\n%s", diff)
	}
	sleep := hosts[1].Command(context.Background(), "sleep", "1000")
	if err := hosts[1].Start(sleep); err != nil {
		t.Fatal(err)
	}

	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string(nil), namespacesOf(t, id)); diff != "" {
		t.Errorf("namespaces after Close (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(registryDir, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registry file after Close: got %v, want it gone", err)
	}
	if err := sleep.Wait(); err == nil || sleep.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("process in the lab: Wait = %v, want killed by SIGKILL", err)
	}
	if err := lab.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := hosts[0].Start(hosts[0].Command(context.Background(), "true")); err == nil {
		t.Errorf("Start after Close: got no error")
	}
	if _, err := lab.AddHost("c"); err == nil {
		t.Errorf("AddHost after Close: got no error")
	}
}

// TestRootNamespaceUnchanged runs a full cycle, in parallel with the other
// tests' labs, and compares the root namespace's state before and after. The
// neighbour table is left out: its entries age on their own.
func TestRootNamespaceUnchanged(t *testing.T) {
	t.Parallel()
	snapshot := func() map[string]string {
		s := map[string]string{}
		for _, args := range [][]string{
			{"-o", "link"}, {"-o", "addr"}, {"-4", "route", "show", "table", "all"},
			{"-6", "route", "show", "table", "all"}, {"rule"},
		} {
			s[strings.Join(args, " ")] = output(t, exec.Command("ip", args...))
		}
		for _, p := range []string{"net/ipv4/ip_forward", "net/ipv4/conf/all/forwarding", "net/ipv6/conf/all/forwarding"} {
			b, err := os.ReadFile("/proc/sys/" + p)
			if err != nil {
				t.Fatal(err)
			}
			s[p] = string(b)
		}
		return s
	}
	before := snapshot()

	lab := netnstest.NewForTest(t, "cplt")
	h, err := lab.AddHost("lb", netip.MustParsePrefix("10.4.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.SetSysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if err := h.AddRoute(netip.MustParsePrefix("10.5.0.0/24"), netip.MustParseAddr("10.4.0.2")); err != nil {
		t.Fatal(err)
	}
	output(t, h.Command(t.Context(), "ip", "link", "set", "eth0", "mtu", "1400"))
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}

	if diff := cmp.Diff(before, snapshot()); diff != "" {
		t.Errorf("root namespace (-before +after):\n%s", diff)
	}
}

// TestStaleRunIsReaped kills a process that holds a lab, with a process of
// its own running inside, and checks that the next New deletes both.
func TestStaleRunIsReaped(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("netnstest: network namespaces need root")
	}
	child := exec.Command(os.Args[0])
	child.Env = append(os.Environ(), "NETNSTEST_HELPER=1")
	child.Stderr = os.Stderr
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		child.Process.Kill()
		child.Wait()
		t.Fatalf("helper: %v", err)
	}
	var id string
	var sleepPID int
	if _, err := fmt.Sscan(line, &id, &sleepPID); err != nil {
		t.Fatalf("helper said %q: %v", line, err)
	}
	// No check that the leftovers exist now: a concurrent test binary's New
	// may already be reaping them, which is as good.
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()

	lab := netnstest.NewForTest(t, "cplt")
	if _, err := lab.AddHost("a"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string(nil), namespacesOf(t, id)); diff != "" {
		t.Errorf("namespaces of the dead run after New (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(registryDir, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead run's registry file: got %v, want it gone", err)
	}
	// The orphan is reparented; whoever reaps it may not have yet.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(sleepPID) + "/stat")
		if err != nil || strings.Contains(string(stat), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d of the dead run still runs: %s", sleepPID, stat)
		}
	}
}

// TestMain turns the test binary into the process TestStaleRunIsReaped kills
// when NETNSTEST_HELPER=1, rather than running the tests.
func TestMain(m *testing.M) {
	if os.Getenv("NETNSTEST_HELPER") == "1" {
		if err := deadRun(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// deadRun builds a lab, starts a process inside, reports both and waits to
// be killed.
func deadRun() error {
	lab, err := netnstest.New("cplt")
	if err != nil {
		return err
	}
	h, err := lab.AddHost("a")
	if err != nil {
		return err
	}
	// The shell says "ready" only once `ip netns exec` has moved it into the
	// namespace, so the parent never kills us before it is there.
	sleep := h.Command(context.Background(), "sh", "-c", "echo ready; exec sleep 1000")
	out, err := sleep.StdoutPipe()
	if err != nil {
		return err
	}
	if err := h.Start(sleep); err != nil {
		return err
	}
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		return err
	}
	fmt.Printf("%s %d\n", labID(h, "a"), sleep.Process.Pid)
	select {}
}

// TestSwitchOnlySwitches: the lab's bridge hands no frame to the IP
// stack's hooks (br_netfilter's sysctls are 0 in the switch namespace),
// and the root namespace keeps its own settings.
func TestSwitchOnlySwitches(t *testing.T) {
	t.Parallel()
	root := map[string][]byte{}
	for _, name := range []string{"iptables", "ip6tables", "arptables"} {
		path := "/proc/sys/net/bridge/bridge-nf-call-" + name
		v, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			t.Logf("%s: no br_netfilter in this kernel, nothing to turn off", path)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		root[path] = v
	}
	lab := netnstest.NewForTest(t, "cplb")
	for path, rootValue := range root {
		if diff := cmp.Diff("0\n", output(t, lab.Switch().Command(t.Context(), "cat", path))); diff != "" {
			t.Errorf("%s in the switch namespace (-want +got):\n%s", path, diff)
		}
		if got, _ := os.ReadFile(path); string(got) != string(rootValue) {
			t.Errorf("root %s: got %q, want it unchanged %q", path, got, rootValue)
		}
	}
}
