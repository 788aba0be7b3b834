// Package testbed builds a whole Caplance deployment in a netnstest lab: a
// client, a balancer and backends on one bridge. Every caplanced is a real
// process of the built binary, started inside its host's namespace and
// followed through a real sd_notify socket; every backend runs a receiver,
// an HTTP server and a UDP echo server on the VIP that answer with the
// backend's name; a dual-stack lab (Options.IPv6) does the same for the
// IPv6 VIPs. The end-to-end tests, `make demo` and the data-path
// benchmark share it.
//
// It owns the lab it builds and the processes and files it starts; it must
// not touch the root network namespace (netnstest guarantees that).
package testbed

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caplance/caplance/internal/netnstest"
)

// The lab's addresses: RFC 2544's benchmarking range, inside the lab only.
// Every receiver serves VIP, VIP2 and VIP3, so that a balancer can have a
// service on each.
var (
	Subnet     = netip.MustParsePrefix("198.18.0.0/24")
	VIP        = netip.MustParseAddr("198.18.0.100")
	VIP2       = netip.MustParseAddr("198.18.0.101")
	VIP3       = netip.MustParseAddr("198.18.0.102")
	ClientAddr = netip.MustParseAddr("198.18.0.10")
	LBAddr     = netip.MustParseAddr("198.18.0.2")
)

// The lab's IPv6 addresses (Options.IPv6): the documentation prefix, inside
// the lab only, each the twin of an IPv4 one (…::100 is VIP6 as .100 is
// VIP). Every receiver of such a lab serves VIP6 and VIP6B too.
var (
	Subnet6     = netip.MustParsePrefix("2001:db8:18::/64")
	VIP6        = netip.MustParseAddr("2001:db8:18::100")
	VIP6B       = netip.MustParseAddr("2001:db8:18::101")
	ClientAddr6 = netip.MustParseAddr("2001:db8:18::10")
	LBAddr6     = netip.MustParseAddr("2001:db8:18::2")
)

// BackendAddr6 is the IPv6 address of backend i (0-based): …::11, …::12, …
func BackendAddr6(i int) netip.Addr {
	a := Subnet6.Addr().As16()
	a[15] = byte(0x11 + i)
	return netip.AddrFrom16(a)
}

// Service ports: HTTP on every VIP, UDP echo on EchoPort of VIP and on
// DNSPort of VIP2 (a stand-in for a DNS service).
const (
	HTTPPort = 80
	EchoPort = 7
	DNSPort  = 53
)

// ClientAddrs are more addresses of the client, for tests of hashing by
// client address: 198.18.0.20 to 198.18.0.29.
var ClientAddrs = func() []netip.Addr {
	var out []netip.Addr
	for i := range 10 {
		out = append(out, netip.AddrFrom4([4]byte{198, 18, 0, byte(20 + i)}))
	}
	return out
}()

// BackendAddr is the address of backend i (0-based).
func BackendAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(11 + i)}) }

// BackendName is the name of backend i (0-based): be1, be2, …
func BackendName(i int) string { return fmt.Sprintf("be%d", i+1) }

// Options shape a testbed.
type Options struct {
	// Binary is the caplanced to run.
	Binary string
	// Prefix names the lab's namespaces (see netnstest.New).
	Prefix string
	// Backends is how many backends to build.
	Backends int
	// Workers is the balancer's and receivers' worker count; 0: caplanced's default.
	Workers int
	// Dir holds configs, runtime directories and logs.
	Dir string
	// BalancerBus is the bus address the balancer serves its D-Bus API on;
	// "" for none. Receivers never serve it.
	BalancerBus string
	// TCPClosingTimeout is the balancer's tcp_closing_timeout; 0: the default.
	TCPClosingTimeout time.Duration
	// Dataplane is the balancer's dataplane ("auto", "xdp", "raw"); "":
	// the default.
	Dataplane string
	// IPv6 makes the lab dual-stack: every host gets its address in
	// Subnet6 as well (no DAD), and the receivers serve VIP6 and VIP6B
	// and accept tunnels from LBAddr6.
	IPv6 bool
	// Balancers are the addresses the receivers accept tunnels from,
	// when the caller builds the balancer hosts itself (a fleet of them,
	// package fleetlab): the testbed then builds no host "lb" and LB
	// stays nil. Empty: one balancer host at LBAddr (and LBAddr6).
	Balancers []netip.Addr
}

// Testbed is a running deployment.
type Testbed struct {
	Lab    *netnstest.Lab
	Client *netnstest.Host
	// LB is the balancer host; nil when Options.Balancers is set.
	LB       *netnstest.Host
	Backends []*Backend
	// Balancer is the balancer's caplanced, nil until StartBalancer.
	Balancer *Daemon
	opts     Options
}

// Backend is one backend host with its receiver and servers.
type Backend struct {
	Name string
	Addr netip.Addr
	// Addr6 is the backend's IPv6 address in a dual-stack lab.
	Addr6    netip.Addr
	Host     *netnstest.Host
	Receiver *Daemon
	http     *http.Server
	echo     []net.PacketConn
}

// New builds the lab and starts every backend's receiver and servers. The
// balancer is started separately (StartBalancer), so tests can vary it.
func New(opts Options) (tb *Testbed, err error) {
	lab, err := netnstest.New(opts.Prefix)
	if err != nil {
		return nil, err
	}
	tb = &Testbed{Lab: lab, opts: opts}
	defer func() {
		if err != nil {
			tb.Close()
			tb = nil
		}
	}()
	bits := Subnet.Bits()
	// addrs are a host's prefixes: its IPv4 address, and its IPv6 one in
	// a dual-stack lab.
	addrs := func(a4, a6 netip.Addr) []netip.Prefix {
		out := []netip.Prefix{netip.PrefixFrom(a4, bits)}
		if opts.IPv6 {
			out = append(out, netip.PrefixFrom(a6, Subnet6.Bits()))
		}
		return out
	}
	clientAddrs := addrs(ClientAddr, ClientAddr6)
	for _, a := range ClientAddrs {
		clientAddrs = append(clientAddrs, netip.PrefixFrom(a, bits))
	}
	if tb.Client, err = lab.AddHost("client", clientAddrs...); err != nil {
		return nil, err
	}
	// Traffic between namespaces of one machine never gets its checksums
	// filled in by a NIC; the balancer forwards packets as they are, so the
	// client must compute them itself.
	if err := tb.Client.Do(func() error { return DisableTxChecksum("eth0") }); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if len(opts.Balancers) == 0 {
		if tb.LB, err = lab.AddHost("lb", addrs(LBAddr, LBAddr6)...); err != nil {
			return nil, err
		}
	}
	for i := range opts.Backends {
		b := &Backend{Name: BackendName(i), Addr: BackendAddr(i)}
		if opts.IPv6 {
			b.Addr6 = BackendAddr6(i)
		}
		if b.Host, err = lab.AddHost(b.Name, addrs(b.Addr, b.Addr6)...); err != nil {
			return nil, err
		}
		tb.Backends = append(tb.Backends, b)
		if err := tb.startBackend(b); err != nil {
			return nil, fmt.Errorf("backend %s: %w", b.Name, err)
		}
	}
	return tb, nil
}

func (tb *Testbed) startBackend(b *Backend) error {
	vips, balancers := []netip.Addr{VIP, VIP2, VIP3}, tb.opts.Balancers
	if len(balancers) == 0 {
		balancers = []netip.Addr{LBAddr}
		if tb.opts.IPv6 {
			balancers = append(balancers, LBAddr6)
		}
	}
	echoes := []netip.AddrPort{netip.AddrPortFrom(VIP, EchoPort), netip.AddrPortFrom(VIP2, DNSPort)}
	if tb.opts.IPv6 {
		vips = append(vips, VIP6, VIP6B)
		echoes = append(echoes, netip.AddrPortFrom(VIP6, EchoPort), netip.AddrPortFrom(VIP6B, DNSPort))
	}
	cfg := fmt.Sprintf("[receiver]\nvips = %s\nbalancers = %s\nworkers = %d\n", tomlList(vips), tomlList(balancers), tb.opts.Workers)
	d, err := tb.StartDaemon(b.Host, b.Name, cfg, "none")
	if err != nil {
		return err
	}
	b.Receiver = d
	if err := b.StartHTTP(); err != nil {
		return err
	}
	// The VIPs are on lo now, so the echo servers can bind to them.
	return b.Host.Do(func() error {
		for _, at := range echoes {
			pc, err := net.ListenPacket("udp", at.String())
			if err != nil {
				return err
			}
			go echo(pc, b.Name)
			b.echo = append(b.echo, pc)
		}
		return nil
	})
}

// StartHTTP starts the backend's HTTP server on port 80 of every address
// of both families (the VIPs for clients, the backend's own for health
// checks).
func (b *Backend) StartHTTP() error {
	return b.Host.Do(func() error {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", HTTPPort))
		if err != nil {
			return err
		}
		b.http = &http.Server{Handler: nameHandler(b.Name), ReadHeaderTimeout: 5 * time.Second}
		go b.http.Serve(ln)
		return nil
	})
}

// StopHTTP stops the backend's HTTP server: connections to port 80 are
// refused from now on.
func (b *Backend) StopHTTP() error {
	if b.http == nil {
		return nil
	}
	err := b.http.Close()
	b.http = nil
	return err
}

// nameHandler answers every request with the backend's name, after reading
// the whole request body (so large uploads are really transferred).
func nameHandler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %d\n", name, n)
	})
}

// tomlList writes addrs as a TOML array of strings.
func tomlList(addrs []netip.Addr) string {
	quoted := make([]string, len(addrs))
	for i, a := range addrs {
		quoted[i] = strconv.Quote(a.String())
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}

// echo answers each datagram with "<name> " followed by the datagram.
func echo(pc net.PacketConn, name string) {
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(append([]byte(name+" "), buf[:n]...), from)
	}
}

// BalancerConfig is the balancer's configuration for the named backends.
func (tb *Testbed) BalancerConfig(backends []*Backend) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[balancer]\nvips = [%q]\nworkers = %d\n", VIP, tb.opts.Workers)
	if d := tb.opts.TCPClosingTimeout; d != 0 {
		fmt.Fprintf(&b, "tcp_closing_timeout = %q\n", d)
	}
	if d := tb.opts.Dataplane; d != "" {
		fmt.Fprintf(&b, "dataplane = %q\n", d)
	}
	for _, be := range backends {
		fmt.Fprintf(&b, "\n[[backend]]\nname = %q\naddress = %q\n", be.Name, be.Addr)
	}
	return b.String()
}

// ServicesConfig is a balancer's configuration with two services, each over
// its own pool: web (HTTP, TCP port HTTPPort of VIP) over the first two
// backends, and dns (UDP echo, port DNSPort of VIP2) over the second and the
// third, the second under a name of its own there ("web-be2", "dns-be2"): one
// host in two services.
func (tb *Testbed) ServicesConfig() string {
	be := tb.Backends
	dataplane := ""
	if d := tb.opts.Dataplane; d != "" {
		dataplane = fmt.Sprintf("dataplane = %q\n", d)
	}
	return fmt.Sprintf(`[balancer]
workers = %d
%s
[[service]]
name = "web"
vips = [%q]
protocols = ["tcp"]
ports = [%d]

[[service.backend]]
name = "web-%s"
address = %q

[[service.backend]]
name = "web-%s"
address = %q

[[service]]
name = "dns"
vips = [%q]
protocols = ["udp"]
ports = [%d]

[[service.backend]]
name = "dns-%s"
address = %q

[[service.backend]]
name = "dns-%s"
address = %q
`, tb.opts.Workers, dataplane, VIP, HTTPPort, be[0].Name, be[0].Addr, be[1].Name, be[1].Addr,
		VIP2, DNSPort, be[1].Name, be[1].Addr, be[2].Name, be[2].Addr)
}

// StartBalancer starts the balancer's caplanced with every backend.
func (tb *Testbed) StartBalancer() error { return tb.StartBalancerWith(tb.Backends) }

// SetDataplane sets the data plane (Options.Dataplane) of the balancers
// started from now on, for a benchmark that compares them in one lab.
func (tb *Testbed) SetDataplane(dataplane string) { tb.opts.Dataplane = dataplane }

// StartBalancerWith starts the balancer's caplanced with backends in its
// configuration file.
func (tb *Testbed) StartBalancerWith(backends []*Backend) error {
	d, err := tb.StartDaemon(tb.LB, "lb", tb.BalancerConfig(backends), cmp.Or(tb.opts.BalancerBus, "none"))
	if err != nil {
		return err
	}
	tb.Balancer = d
	return nil
}

// Close stops every daemon (SIGTERM, so they clean up) and removes the lab.
func (tb *Testbed) Close() error {
	var errs []error
	if tb.Balancer != nil {
		errs = append(errs, tb.Balancer.Stop())
	}
	for _, b := range tb.Backends {
		errs = append(errs, b.StopHTTP())
		for _, pc := range b.echo {
			pc.Close()
		}
		if b.Receiver != nil {
			errs = append(errs, b.Receiver.Stop())
		}
	}
	errs = append(errs, tb.Lab.Close())
	return errors.Join(errs...)
}

// HTTPClient makes HTTP requests from the client host; keepAlive false
// opens a new connection (a new flow) per request.
func (tb *Testbed) HTTPClient(keepAlive bool) *http.Client {
	return tb.HTTPClientFrom(netip.Addr{}, keepAlive)
}

// HTTPClientFrom is HTTPClient with src as the connections' source
// address (one of ClientAddrs), or the kernel's choice for the zero Addr.
func (tb *Testbed) HTTPClientFrom(src netip.Addr, keepAlive bool) *http.Client {
	d := &net.Dialer{}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: !keepAlive,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := tb.Client.Do(func() (err error) {
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
}

// Get fetches path from the VIP with client and returns the backend's name.
func Get(client *http.Client, path string) (string, error) {
	return GetFrom(client, VIP, path)
}

// GetFrom fetches path from port HTTPPort of vip with client and returns
// the backend's name.
func GetFrom(client *http.Client, vip netip.Addr, path string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+netip.AddrPortFrom(vip, HTTPPort).String()+path, nil)
	if err != nil {
		return "", err
	}
	return Do(client, req)
}

// Post uploads body to the VIP and returns the backend's name.
func Post(client *http.Client, body []byte) (string, error) {
	req, err := http.NewRequest(http.MethodPost, vipURL("/upload"), bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	return Do(client, req)
}

func vipURL(path string) string {
	return "http://" + netip.AddrPortFrom(VIP, HTTPPort).String() + path
}

// Do sends req to a backend's HTTP server and returns the backend's name,
// checking that the backend received the whole request body.
func Do(client *http.Client, req *http.Request) (string, error) {
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	var name string
	var n int64
	if _, err := fmt.Sscanf(string(data), "%s %d", &name, &n); err != nil || n != max(req.ContentLength, 0) {
		return "", fmt.Errorf("unexpected answer %q to a %d-byte body", data, req.ContentLength)
	}
	return name, nil
}

// DialEcho opens a UDP socket on the client, connected to the VIP's echo
// port: one flow.
func (tb *Testbed) DialEcho() (*net.UDPConn, error) {
	return tb.DialUDP(netip.AddrPortFrom(VIP, EchoPort))
}

// DialUDP opens a UDP socket on the client, connected to to: one flow.
func (tb *Testbed) DialUDP(to netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := tb.Client.Do(func() (err error) {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
		return err
	})
	return c, err
}

// Echo sends payload on c and returns the name of the backend that echoed
// it, checking the echo.
func Echo(c *net.UDPConn, payload []byte) (string, error) {
	if _, err := c.Write(payload); err != nil {
		return "", err
	}
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	name, rest, ok := bytes.Cut(buf[:n], []byte(" "))
	if !ok || !bytes.Equal(rest, payload) {
		return "", fmt.Errorf("bad echo of a %d-byte datagram: %d bytes", len(payload), n)
	}
	return string(name), nil
}

// dir returns a per-daemon directory under the testbed's Dir.
func (tb *Testbed) dir(name string) (string, error) {
	d := filepath.Join(tb.opts.Dir, name)
	return d, os.MkdirAll(d, 0o755)
}
