// Package fleetlab builds a fleet of Caplance balancers behind a router's
// ECMP in a netnstest lab, with the real routing daemon (Debian's bird2): a
// client, a router running BIRD (BGP with BFD to every balancer, the paths
// merged into one multipath route, an L4 multipath hash), balancers each
// running BIRD with the shipped contrib/bird/caplance.conf and a real
// caplanced, and the testbed's backends with their receivers. It also
// drives it: HTTP load with ab, long-lived connections, UDP flows through
// the router or through one balancer directly. The fleet's end-to-end tests
// and `make demo-fleet` share it.
//
// It owns the lab it builds (through package testbed) and the processes
// and files it starts there, BIRD's included: every BIRD runs with its
// configuration, control socket and pid file in the lab's directory and is
// killed by Close. It must not touch the root network namespace, nor the
// host's BIRD (/etc/bird, /run/bird).
package fleetlab

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/testbed"
)

// The fleet's addresses, in the testbed's subnets: the router at .1 (and
// ::1), the balancers from .2 (and ::2, lb1) up. The VIPs are the testbed's.
var (
	RouterAddr  = netip.MustParseAddr("198.18.0.1")
	RouterAddr6 = netip.MustParseAddr("2001:db8:18::1")
)

// BalancerAddr is the address of balancer i (0-based; lb1 is 0).
func BalancerAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + i)}) }

// BalancerAddr6 is the IPv6 address of balancer i in a dual-stack lab.
func BalancerAddr6(i int) netip.Addr {
	a := testbed.Subnet6.Addr().As16()
	a[15] = byte(2 + i)
	return netip.AddrFrom16(a)
}

// BalancerName is the name of balancer i (0-based): lb1, lb2, …
func BalancerName(i int) string { return fmt.Sprintf("lb%d", i+1) }

// BGP: the router in one private AS, every balancer in another (they
// announce the same VIP with equal paths, so the router merges them).
const (
	RouterAS   = 65000
	BalancerAS = 65001
)

// The kernel routing table and route protocol caplanced publishes routed
// VIPs in: its defaults (route_table, route_protocol).
const (
	RouteTable    = 100
	RouteProtocol = 252
)

// SnippetPath is the shipped BIRD snippet, relative to the module's root:
// every balancer's BIRD includes it, so what ships is what the lab runs.
const SnippetPath = "contrib/bird/caplance.conf"

// Options shape a fleet.
type Options struct {
	// Caplanced is the caplanced binary to run.
	Caplanced string
	// Prefix names the lab's namespaces (see netnstest.New).
	Prefix string
	// Dir holds every configuration, socket and log.
	Dir string
	// Balancers is how many balancers New starts; MaxBalancers how many
	// the lab may have (AddBalancer starts the others): the router has a
	// BGP session for each and the receivers accept each one's tunnels.
	Balancers, MaxBalancers int
	// Backends is how many backends the testbed builds.
	Backends int
	// Workers is every caplanced's worker count; 0: caplanced's default.
	Workers int
	// WithdrawDelay is the balancers' withdraw_delay.
	WithdrawDelay time.Duration
	// IPv6 makes the lab dual-stack: every host has its IPv6 address too,
	// each balancer has a second BGP session, over IPv6, and serves
	// testbed.VIP6 over the backends' IPv6 addresses as well.
	IPv6 bool
	// Bus, when set, returns the D-Bus address the named balancer's
	// caplanced serves its API on, a private bus per balancer; nil: none.
	Bus func(balancer string) (string, error)
	// Dataplane is every caplanced's dataplane; "": the default.
	Dataplane string
}

// Lab is a running fleet.
type Lab struct {
	*testbed.Testbed
	Router     *netnstest.Host
	RouterBird *Bird
	// Balancers are the balancers started so far, lb1 first.
	Balancers []*Balancer
	opts      Options
	snippet   string
}

// Balancer is one balancer host: its BIRD and its caplanced.
type Balancer struct {
	Name string
	Addr netip.Addr
	// Addr6 is its IPv6 address in a dual-stack lab.
	Addr6 netip.Addr
	Host  *netnstest.Host
	Bird  *Bird
	// Caplanced is its caplanced, serving its API on Bus ("none": no bus).
	Caplanced *testbed.Daemon
	Bus       string
	dir       string
}

// New builds the lab: the testbed's client and backends, the router with
// its BIRD, and opts.Balancers balancers, and waits until the router routes
// the VIP to every one of them.
func New(opts Options) (*Lab, error) {
	opts.MaxBalancers = max(opts.MaxBalancers, opts.Balancers)
	snippet, err := findSnippet()
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	for i := range opts.MaxBalancers {
		addrs = append(addrs, BalancerAddr(i))
		if opts.IPv6 {
			addrs = append(addrs, BalancerAddr6(i))
		}
	}
	tb, err := testbed.New(testbed.Options{Binary: opts.Caplanced, Prefix: opts.Prefix, Backends: opts.Backends,
		Workers: opts.Workers, Dir: opts.Dir, Balancers: addrs, IPv6: opts.IPv6})
	if err != nil {
		return nil, err
	}
	l := &Lab{Testbed: tb, opts: opts, snippet: snippet}
	if err := l.build(); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

// build starts the router and the first balancers on the testbed.
func (l *Lab) build() error {
	if err := l.startRouter(); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	if err := l.setUpClient(); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	for range l.opts.Balancers {
		if _, err := l.AddBalancer(); err != nil {
			return err
		}
	}
	return l.WaitAll(convergeTimeout)
}

// WaitAll waits until the router routes every VIP (VIP6 too in a
// dual-stack lab) to every balancer started so far, or timeout passes.
func (l *Lab) WaitAll(timeout time.Duration) error {
	if err := l.WaitNextHops(testbed.VIP, l.Addrs(), timeout); err != nil {
		return err
	}
	if l.opts.IPv6 {
		return l.WaitNextHops(testbed.VIP6, l.Addrs6(), timeout)
	}
	return nil
}

// convergeTimeout bounds how long BGP (and BFD) may take to bring a path
// up or down: generous, for a busy machine.
const convergeTimeout = 30 * time.Second

// findSnippet finds SnippetPath from the working directory up to the
// module's root (tests run in their package's directory, the demo in the
// root).
func findSnippet() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, SnippetPath)
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("fleetlab: the shipped BIRD snippet: %w", err)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("fleetlab: no go.mod above the working directory, so no " + SnippetPath)
		}
		dir = parent
	}
}

// startRouter builds the router: a Linux router with an L4 multipath hash
// for both families, which sends no ICMP redirects (client and balancers
// share its link: a redirect would make the client skip it).
func (l *Lab) startRouter() error {
	r, err := l.Lab.AddHost("router", l.prefixes(RouterAddr, RouterAddr6)...)
	if err != nil {
		return err
	}
	l.Router = r
	for _, s := range [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/fib_multipath_hash_policy", "1"},
		{"net/ipv4/conf/all/send_redirects", "0"},
		{"net/ipv4/conf/eth0/send_redirects", "0"},
		{"net/ipv6/conf/all/forwarding", "1"},
		{"net/ipv6/fib_multipath_hash_policy", "1"},
	} {
		if err := r.SetSysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	cfg, err := routerBirdConfig(l.opts.MaxBalancers, l.opts.IPv6)
	if err != nil {
		return err
	}
	dir := filepath.Join(l.opts.Dir, "router")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	bird, err := startBird(r, dir, cfg)
	if err != nil {
		return err
	}
	l.RouterBird = bird
	return nil
}

// setUpClient routes the VIP through the router, has the client ignore
// redirects, and widens its port range for the load generator's many
// short connections.
func (l *Lab) setUpClient() error {
	for _, s := range [][2]string{
		{"net/ipv4/conf/all/accept_redirects", "0"},
		{"net/ipv4/conf/eth0/accept_redirects", "0"},
		{"net/ipv6/conf/all/accept_redirects", "0"},
		{"net/ipv6/conf/eth0/accept_redirects", "0"},
		{"net/ipv4/ip_local_port_range", "10000 65000"},
		{"net/ipv4/tcp_tw_reuse", "1"},
	} {
		if err := l.Client.SetSysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	return l.Via(nil)
}

// Via routes the client's traffic to the VIPs through b directly, or
// through the router for nil: the same flow can then be sent through each
// balancer in turn. (The client ignores ICMPv6 redirects: Linux has no
// switch to keep the router from sending them.)
func (l *Lab) Via(b *Balancer) error {
	gw, gw6 := RouterAddr, RouterAddr6
	if b != nil {
		gw, gw6 = b.Addr, b.Addr6
	}
	routes := map[netip.Addr]netip.Addr{testbed.VIP: gw}
	if l.opts.IPv6 {
		routes[testbed.VIP6] = gw6
	}
	return l.Client.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		for vip, gw := range routes {
			err := netlink.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index,
				Dst: prefixNet(netip.PrefixFrom(vip, vip.BitLen())), Gw: gw.AsSlice()})
			if err != nil {
				return fmt.Errorf("route to %v via %v: %w", vip, gw, err)
			}
		}
		return nil
	})
}

// prefixes are a host's addresses in the lab's subnets: a4, and a6 in a
// dual-stack lab.
func (l *Lab) prefixes(a4, a6 netip.Addr) []netip.Prefix {
	out := []netip.Prefix{netip.PrefixFrom(a4, testbed.Subnet.Bits())}
	if l.opts.IPv6 {
		out = append(out, netip.PrefixFrom(a6, testbed.Subnet6.Bits()))
	}
	return out
}

// AddBalancer builds the next balancer host and starts its caplanced, then
// its BIRD; it does not wait for the router to use it (WaitNextHops).
func (l *Lab) AddBalancer() (*Balancer, error) {
	i := len(l.Balancers)
	if i >= l.opts.MaxBalancers {
		return nil, fmt.Errorf("fleetlab: balancer %d: the lab has room for %d", i+1, l.opts.MaxBalancers)
	}
	b := &Balancer{Name: BalancerName(i), Addr: BalancerAddr(i), Bus: "none"}
	if l.opts.IPv6 {
		b.Addr6 = BalancerAddr6(i)
	}
	b.dir = filepath.Join(l.opts.Dir, b.Name)
	var err error
	if l.opts.Bus != nil {
		if b.Bus, err = l.opts.Bus(b.Name); err != nil {
			return nil, fmt.Errorf("%s: bus: %w", b.Name, err)
		}
	}
	if b.Host, err = l.Lab.AddHost(b.Name, l.prefixes(b.Addr, b.Addr6)...); err != nil {
		return nil, err
	}
	// Linux removes a link's IPv6 addresses when it goes down, and a
	// balancer's link may be cut (SetLink) and restored.
	if err := b.Host.SetSysctl("net/ipv6/conf/eth0/keep_addr_on_down", "1"); err != nil {
		return nil, err
	}
	l.Balancers = append(l.Balancers, b)
	if err := l.Start(b); err != nil {
		return nil, err
	}
	return b, nil
}

// Start starts b's caplanced and then, unless it runs, its BIRD: a
// balancer that was killed comes back. caplanced goes first, so that it
// removes what a killed run left in its route table before BIRD reads it.
func (l *Lab) Start(b *Balancer) error {
	if b.Caplanced == nil {
		// Kept only once started: the lab's Close kills a process that
		// started but never got ready.
		d, err := l.StartDaemon(b.Host, b.Name, l.caplancedConfig(), b.Bus)
		if err != nil {
			return fmt.Errorf("%s: %w", b.Name, err)
		}
		b.Caplanced = d
	} else if err := b.Caplanced.Restart(b.Host, l.opts.Caplanced); err != nil {
		return fmt.Errorf("%s: %w", b.Name, err)
	}
	if b.Bird != nil && b.Bird.running() {
		return nil
	}
	cfg, err := balancerBirdConfig(b.Addr, l.opts.IPv6, l.snippet)
	if err != nil {
		return err
	}
	bird, err := startBird(b.Host, b.dir, cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", b.Name, err)
	}
	b.Bird = bird
	return nil
}

// caplancedConfig is every balancer's caplanced configuration: routed
// (its VIPs on lo, each servable one a route in RouteTable with
// RouteProtocol for BIRD to announce), and the same backends (identical
// Maglev tables are what makes a fleet): service web on testbed.VIP over
// every backend, and in a dual-stack lab web6 on testbed.VIP6 over their
// IPv6 addresses (named be1-v6, …).
func (l *Lab) caplancedConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[balancer]\ninterface = \"eth0\"\nworkers = %d\n", l.opts.Workers)
	if d := l.opts.Dataplane; d != "" {
		fmt.Fprintf(&b, "dataplane = %q\n", d)
	}
	fmt.Fprintf(&b, "routed = true\nroute_table = %d\nroute_protocol = %d\nwithdraw_delay = %q\n",
		RouteTable, RouteProtocol, l.opts.WithdrawDelay)
	service := func(name string, vip netip.Addr, backend func(*testbed.Backend) (string, netip.Addr)) {
		fmt.Fprintf(&b, "\n[[service]]\nname = %q\nvips = [%q]\n", name, vip)
		for _, be := range l.Backends {
			name, addr := backend(be)
			fmt.Fprintf(&b, "\n[[service.backend]]\nname = %q\naddress = %q\n", name, addr)
		}
	}
	service("web", testbed.VIP, func(be *testbed.Backend) (string, netip.Addr) { return be.Name, be.Addr })
	if l.opts.IPv6 {
		service("web6", testbed.VIP6, func(be *testbed.Backend) (string, netip.Addr) { return be.Name + "-v6", be.Addr6 })
	}
	return b.String()
}

// Restart restarts b's caplanced the way `systemctl restart` does:
// SIGTERM (caplanced withdraws its routes, forwards for withdraw_delay,
// stops), then a new start. BIRD keeps running.
func (l *Lab) Restart(b *Balancer) error {
	if err := b.Caplanced.Stop(); err != nil {
		return err
	}
	return l.Start(b)
}

// KillAll kills every process of b's namespace at once, as a power cut
// would: caplanced and BIRD, with SIGKILL.
func (b *Balancer) KillAll() error {
	errs := make(chan error, 2)
	go func() { errs <- b.Caplanced.Kill() }()
	go func() { errs <- b.Bird.Kill() }()
	return errors.Join(<-errs, <-errs)
}

// SetLink sets b's link (eth0) down or up: down, b neither sends nor
// receives anything, as when its cable is pulled or its power cut, and the
// router notices through BFD alone.
func (b *Balancer) SetLink(up bool) error {
	return b.Host.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if up {
			return netlink.LinkSetUp(eth0)
		}
		return netlink.LinkSetDown(eth0)
	})
}

func (b *Bird) running() bool {
	select {
	case <-b.exited:
		return false
	default:
		return true
	}
}

// Addrs returns the addresses of the balancers started so far.
func (l *Lab) Addrs(except ...*Balancer) []netip.Addr {
	return l.addrs(func(b *Balancer) netip.Addr { return b.Addr }, except)
}

// Addrs6 returns the IPv6 addresses of the balancers started so far.
func (l *Lab) Addrs6(except ...*Balancer) []netip.Addr {
	return l.addrs(func(b *Balancer) netip.Addr { return b.Addr6 }, except)
}

func (l *Lab) addrs(addr func(*Balancer) netip.Addr, except []*Balancer) []netip.Addr {
	var out []netip.Addr
	for _, b := range l.Balancers {
		if !slices.Contains(except, b) {
			out = append(out, addr(b))
		}
	}
	return out
}

// NextHops returns the next hops of the router's route to vip in its main
// table, sorted; none when it has no route.
func (l *Lab) NextHops(vip netip.Addr) ([]netip.Addr, error) {
	family := netlink.FAMILY_V4
	if vip.Is6() {
		family = netlink.FAMILY_V6
	}
	var hops []netip.Addr
	err := l.Router.Do(func() error {
		routes, err := netlink.RouteListFiltered(family,
			&netlink.Route{Dst: prefixNet(netip.PrefixFrom(vip, vip.BitLen()))}, netlink.RT_FILTER_DST)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Gw != nil {
				hops = append(hops, addrOf(r.Gw))
			}
			for _, p := range r.MultiPath {
				hops = append(hops, addrOf(p.Gw))
			}
		}
		return nil
	})
	slices.SortFunc(hops, netip.Addr.Compare)
	return hops, err
}

// WaitNextHops waits until the router's route to vip has exactly the next
// hops want (no route for none), or timeout passes.
func (l *Lab) WaitNextHops(vip netip.Addr, want []netip.Addr, timeout time.Duration) error {
	want = slices.SortedFunc(slices.Values(want), netip.Addr.Compare)
	deadline := time.Now().Add(timeout)
	for {
		got, err := l.NextHops(vip)
		if err == nil && slices.Equal(got, want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fleetlab: the router's next hops to %v are %v (%v), want %v after %v; router's BIRD:\n%s",
				vip, got, err, want, timeout, l.routerState())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// routerState is what the router's BIRD says of its sessions and routes,
// for error messages.
func (l *Lab) routerState() string {
	var out []string
	for _, what := range [][]string{{"protocols"}, {"route"}} {
		s, err := l.RouterBird.Show(what...)
		out = append(out, cmp.Or(s, fmt.Sprint(err)))
	}
	return strings.Join(out, "\n")
}

// Close stops every daemon, kills every BIRD and removes the lab.
func (l *Lab) Close() error {
	var errs []error
	for _, b := range l.Balancers {
		if b.Caplanced != nil {
			// SIGKILL: a SIGTERM would wait withdraw_delay, and the lab goes
			// with everything caplanced changed.
			errs = append(errs, ignoreDone(b.Caplanced.Signal(syscall.SIGKILL)))
		}
		if b.Bird != nil {
			errs = append(errs, b.Bird.Kill())
		}
	}
	if l.RouterBird != nil {
		errs = append(errs, l.RouterBird.Kill())
	}
	return errors.Join(append(errs, l.Testbed.Close())...)
}

func ignoreDone(err error) error {
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
