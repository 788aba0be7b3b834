package checkspec

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Endpoint is where a tcp, http(s) or udp probe goes.
type Endpoint struct {
	// Addr is the address probed; the zero Addr means the backend's own.
	Addr netip.Addr
	Port uint16
}

// unbracketed refuses an IPv6 address without brackets in the spec's
// authority, before url.Parse reads its last group as a port. Only the
// kinds with an endpoint take a host.
func (p *parser) unbracketed(rest string) error {
	if p.kind == KindExec || p.kind == KindTunnel {
		return nil
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	if strings.Count(authority, ":") > 1 && !strings.HasPrefix(authority, "[") {
		return p.fail("host", "host %q: an IPv6 address must be in brackets (write e.g. %s://[2001:db8::1]:80)", authority, p.kind)
	}
	return nil
}

// parseEndpoint parses the host and port of a tcp, http(s) or udp spec;
// defaultPort 0 means the port is required.
func (p *parser) parseEndpoint(host, port string, defaultPort string) (Endpoint, error) {
	var e Endpoint
	if host != "" {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return e, p.fail("host", "host %q: not an IP address (leave it empty to probe the backend's own address)", host)
		}
		if err := p.checkAddr("host", host, a); err != nil {
			return e, err
		}
		e.Addr = a.Unmap()
	}
	if port == "" {
		if defaultPort == "" {
			return e, p.fail("port", "port: missing (write e.g. %s://:PORT)", p.kind)
		}
		port = defaultPort
	}
	var err error
	e.Port, err = p.port(port)
	return e, err
}

// checkAddr refuses, for parameter name given as text, an address no probe
// can be sent to: with a zone, unspecified, multicast, broadcast or
// link-local (an IPv6 link-local address needs the zone a check cannot
// carry; the data path refuses link-local backends of both families). An
// IPv4-mapped IPv6 address is the IPv4 address: the caller unmaps it.
func (p *parser) checkAddr(name, text string, a netip.Addr) error {
	u := a.Unmap()
	switch {
	case a.Zone() != "":
		return p.fail(name, "%s %q: an address with a zone is not supported", name, text)
	case u.IsUnspecified():
		return p.fail(name, "%s %q: the unspecified address", name, text)
	case u.IsMulticast() || u == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return p.fail(name, "%s %q: not a unicast address", name, text)
	case u.IsLinkLocalUnicast():
		return p.fail(name, "%s %q: a link-local address (use a global or unique local one)", name, text)
	}
	return nil
}

// noPath refuses a path for the kinds that take none.
func (p *parser) noPath(u *url.URL) error {
	if u.Path != "" {
		return p.fail("path", "path %q: %s checks take no path", u.Path, p.kind)
	}
	return nil
}

// base writes kind://host:port, the host being e.Addr, else t's address
// when t is given.
func (e Endpoint) base(kind Kind, t *Target) string {
	addr := e.Addr
	if !addr.IsValid() && t != nil {
		addr = t.Address
	}
	if addr.IsValid() {
		return string(kind) + "://" + netip.AddrPortFrom(addr, e.Port).String()
	}
	return string(kind) + "://:" + strconv.Itoa(int(e.Port))
}

// TCP is a tcp check: a TCP connection to the endpoint.
type TCP struct {
	Endpoint
}

func parseTCP(p *parser, u *url.URL, host, port string) (Params, error) {
	e, err := p.parseEndpoint(host, port, "")
	if err != nil {
		return nil, err
	}
	return &TCP{e}, p.noPath(u)
}

// Kind is KindTCP.
func (*TCP) Kind() Kind                  { return KindTCP }
func (*TCP) parse(*parser) error         { return nil }
func (c *TCP) base(t *Target) string     { return c.Endpoint.base(KindTCP, t) }
func (*TCP) query() []param              { return nil }
func (*TCP) targetParams(Target) []param { return nil }

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Lo, Hi int }

// HTTP is an http or https check: one HTTP/1.1 request.
type HTTP struct {
	Endpoint
	// Path is the decoded request path, RawPath its escaped form.
	Path, RawPath string
	// Method is the request method, GET by default.
	Method string
	// Host is the Host header (host=); "" for the address connected to.
	Host string
	// Expect are the status codes that mean up.
	Expect []StatusRange
	// Body is a text the response body must contain; "" for any.
	Body string
	// TLS is nil for http, the TLS parameters for https.
	TLS *TLS
}

// TLS are an https check's own parameters.
type TLS struct {
	// SNI is the server name sent and verified (sni=).
	SNI string
	// Insecure turns certificate verification off (insecure=true).
	Insecure bool
	// CA is the PEM file of CA certificates to trust instead of the
	// system's (ca=).
	CA string
}

var (
	httpParams = []string{"method", "host", "expect", "body"}
	tlsParams  = []string{"sni", "insecure", "ca"}

	methodRE = regexp.MustCompile(`^[A-Z]{1,20}$`)
	// hostHeaderRE: a host name or IP literal, optionally with a port.
	hostHeaderRE = regexp.MustCompile(`^(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$`)
	dnsNameRE    = regexp.MustCompile(`^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?$`)
)

func parseHTTP(p *parser, u *url.URL, host, port string) (Params, error) {
	c := &HTTP{}
	defaultPort := "80"
	if p.kind == KindHTTPS {
		c.TLS, defaultPort = &TLS{}, "443"
	}
	var err error
	if c.Endpoint, err = p.parseEndpoint(host, port, defaultPort); err != nil {
		return nil, err
	}
	c.Path, c.RawPath = u.Path, u.EscapedPath()
	if c.Path == "" {
		c.Path, c.RawPath = "/", "/"
	}
	return c, nil
}

// Kind is KindHTTPS with TLS, else KindHTTP.
func (c *HTTP) Kind() Kind {
	if c.TLS != nil {
		return KindHTTPS
	}
	return KindHTTP
}

func (c *HTTP) parse(p *parser) error {
	c.Method = "GET"
	if v, ok := p.value("method"); ok {
		if !methodRE.MatchString(v) {
			return p.fail("method", "method %q: want an upper-case HTTP method such as GET or HEAD", v)
		}
		c.Method = v
	}
	if v, ok := p.value("host"); ok {
		if !hostHeaderRE.MatchString(v) {
			return p.fail("host", "host %q: not a host name or address with an optional port", v)
		}
		c.Host = v
	}
	c.Expect = []StatusRange{{200, 299}}
	if v, ok := p.value("expect"); ok {
		r, err := parseStatus(v)
		if err != nil {
			return p.fail("expect", "expect %q: %v", v, err)
		}
		c.Expect = r
	}
	if v, ok := p.value("body"); ok {
		switch {
		case v == "":
			return p.fail("body", "body: empty (leave it out to accept any body)")
		case len(v) > maxBodyParam:
			return p.fail("body", "body: %d bytes, at most %d", len(v), maxBodyParam)
		case c.Method == "HEAD":
			return p.fail("body", "body %q: a HEAD response has no body", v)
		}
		c.Body = v
	}
	if c.TLS == nil {
		return nil
	}
	return c.TLS.parse(p)
}

func (c *TLS) parse(p *parser) error {
	if v, ok := p.value("sni"); ok {
		if _, err := netip.ParseAddr(v); err == nil {
			return p.fail("sni", "sni %q: an IP address; SNI carries host names only (leave it out to verify the address)", v)
		}
		if len(v) > 253 || !dnsNameRE.MatchString(v) {
			return p.fail("sni", "sni %q: not a host name", v)
		}
		c.SNI = v
	}
	if v, ok := p.value("insecure"); ok {
		switch v {
		case "true":
			c.Insecure = true
		case "false":
		default:
			return p.fail("insecure", "insecure %q: want true or false", v)
		}
	}
	if v, ok := p.value("ca"); ok {
		switch {
		case !filepath.IsAbs(v):
			return p.fail("ca", "ca %q: not an absolute path", v)
		case filepath.Clean(v) != v || strings.ContainsRune(v, 0):
			return p.fail("ca", "ca %q: not a clean path", v)
		case c.Insecure:
			return p.fail("ca", "ca %q: useless with insecure=true, which verifies nothing", v)
		}
		c.CA = v
	}
	return nil
}

func (c *HTTP) base(t *Target) string { return c.Endpoint.base(c.Kind(), t) + c.RawPath }

func (c *HTTP) query() []param {
	var q []param
	if c.Method != "GET" {
		q = append(q, param{"method", c.Method})
	}
	if c.Host != "" {
		q = append(q, param{"host", c.Host})
	}
	if e := StatusString(c.Expect); e != "200-299" {
		q = append(q, param{"expect", e})
	}
	if c.Body != "" {
		q = append(q, param{"body", c.Body})
	}
	if c.TLS == nil {
		return q
	}
	if c.TLS.SNI != "" {
		q = append(q, param{"sni", c.TLS.SNI})
	}
	if c.TLS.Insecure {
		q = append(q, param{"insecure", "true"})
	}
	if c.TLS.CA != "" {
		q = append(q, param{"ca", c.TLS.CA})
	}
	return q
}

func (*HTTP) targetParams(Target) []param { return nil }

// parseStatus parses "200", "200-299" or a comma-separated list of them.
func parseStatus(v string) ([]StatusRange, error) {
	bad := errors.New("not a status range (write e.g. 200, 200-299 or 200-299,304)")
	var out []StatusRange
	for item := range strings.SplitSeq(v, ",") {
		los, his, isRange := strings.Cut(item, "-")
		if !isRange {
			his = los
		}
		lo, err1 := strconv.Atoi(los)
		hi, err2 := strconv.Atoi(his)
		switch {
		case err1 != nil || err2 != nil || len(los) != 3 || len(his) != 3:
			return nil, bad
		case lo < 100 || hi > 599:
			return nil, fmt.Errorf("%s: status codes are between 100 and 599", item)
		case lo > hi:
			return nil, fmt.Errorf("%s: the range is empty", item)
		}
		out = append(out, StatusRange{lo, hi})
	}
	return out, nil
}

// StatusString writes rs as expect= takes them: 200-299,304.
func StatusString(rs []StatusRange) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.Itoa(r.Lo)
		if r.Hi != r.Lo {
			parts[i] += "-" + strconv.Itoa(r.Hi)
		}
	}
	return strings.Join(parts, ",")
}

// Payload is a udp send= or expect= value with the notation it was given
// in.
type Payload struct {
	Hex  bool
	Data string
}

// String is the payload in its notation: text:… or hex:….
func (p Payload) String() string {
	if p.Hex {
		return "hex:" + hex.EncodeToString([]byte(p.Data))
	}
	return "text:" + p.Data
}

// UDP is a udp check: one datagram sent, one reply awaited.
type UDP struct {
	Endpoint
	// Send is the payload sent.
	Send Payload
	// Expect is what the reply must contain; empty Data for any reply.
	Expect Payload
}

func parseUDP(p *parser, u *url.URL, host, port string) (Params, error) {
	e, err := p.parseEndpoint(host, port, "")
	if err != nil {
		return nil, err
	}
	return &UDP{Endpoint: e}, p.noPath(u)
}

// Kind is KindUDP.
func (*UDP) Kind() Kind { return KindUDP }

func (c *UDP) parse(p *parser) error {
	v, ok := p.value("send")
	if !ok {
		return p.fail("send", "send: missing (a udp check sends a payload, e.g. send=text:ping or send=hex:00ff)")
	}
	var err error
	if c.Send, err = p.payload("send", v); err != nil {
		return err
	}
	if v, ok := p.value("expect"); ok {
		if c.Expect, err = p.payload("expect", v); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) payload(name, v string) (Payload, error) {
	var pl Payload
	switch {
	case strings.HasPrefix(v, "text:"):
		pl.Data = v[len("text:"):]
	case strings.HasPrefix(v, "hex:"):
		b, err := hex.DecodeString(v[len("hex:"):])
		if err != nil {
			return pl, p.fail(name, "%s %q: not hexadecimal bytes", name, v)
		}
		pl.Hex, pl.Data = true, string(b)
	default:
		return pl, p.fail(name, "%s %q: want text:… or hex:…", name, v)
	}
	switch {
	case pl.Data == "":
		return pl, p.fail(name, "%s %q: empty payload", name, v)
	case len(pl.Data) > maxPayload:
		return pl, p.fail(name, "%s: %d bytes, at most %d", name, len(pl.Data), maxPayload)
	}
	return pl, nil
}

func (c *UDP) base(t *Target) string { return c.Endpoint.base(KindUDP, t) }

func (c *UDP) query() []param {
	q := []param{{"send", c.Send.String()}}
	if c.Expect.Data != "" {
		q = append(q, param{"expect", c.Expect.String()})
	}
	return q
}

func (*UDP) targetParams(Target) []param { return nil }

// Exec is an exec check: a program run without a shell.
type Exec struct {
	// Program is the program's absolute, clean path.
	Program string
	// Args are its arguments, in order.
	Args []string
}

func parseExec(p *parser, u *url.URL, _, _ string) (Params, error) {
	if u.Host != "" {
		return nil, p.fail("host", "host %q: exec takes no host (write exec:///absolute/path)", u.Host)
	}
	switch {
	case u.Path == "":
		return nil, p.fail("path", "path: missing (write exec:///absolute/path)")
	case !filepath.IsAbs(u.Path):
		return nil, p.fail("path", "path %q: not absolute", u.Path)
	case filepath.Clean(u.Path) != u.Path:
		return nil, p.fail("path", "path %q: not clean (write %q)", u.Path, filepath.Clean(u.Path))
	case strings.ContainsRune(u.Path, 0):
		return nil, p.fail("path", "path %q: contains a NUL byte", u.Path)
	}
	return &Exec{Program: u.Path}, nil
}

// Kind is KindExec.
func (*Exec) Kind() Kind { return KindExec }

func (c *Exec) parse(p *parser) error {
	for _, a := range p.q["arg"] {
		if strings.ContainsRune(a, 0) {
			return p.fail("arg", "arg %q: contains a NUL byte", a)
		}
	}
	c.Args = slices.Clone(p.q["arg"])
	return nil
}

func (c *Exec) base(*Target) string {
	return "exec://" + (&url.URL{Path: c.Program}).EscapedPath()
}

func (c *Exec) query() []param {
	var q []param
	for _, a := range c.Args {
		q = append(q, param{"arg", a})
	}
	return q
}

// targetParams: the program learns the backend's name and address from its
// environment.
func (*Exec) targetParams(t Target) []param {
	return []param{{"name", t.Name}, {"address", AddrString(t.Address)}}
}

// Tunnel is a tunnel check: a probe of the VIP through the data path.
type Tunnel struct {
	// ICMP is true for an ICMP echo request, false for a TCP SYN to Port.
	ICMP bool
	Port uint16
	// VIP is the VIP to probe (vip=); the zero Addr means the Target's.
	VIP netip.Addr
}

func parseTunnel(p *parser, u *url.URL, host, port string) (Params, error) {
	if u.Path != "" {
		return nil, p.fail("path", "path %q: tunnel checks take no path", u.Path)
	}
	switch host {
	case "icmp":
		if port != "" {
			return nil, p.fail("port", "port %s: an ICMP echo has no port (write tunnel://icmp)", port)
		}
		return &Tunnel{ICMP: true}, nil
	case "":
		if port == "" {
			return nil, p.fail("port", "port: missing (write tunnel://:PORT for a TCP SYN to the VIP or tunnel://icmp for an echo request)")
		}
		n, err := p.port(port)
		return &Tunnel{Port: n}, err
	default:
		return nil, p.fail("host", "host %q: want none (tunnel://:PORT, the VIP comes from the balancer or vip=) or icmp (tunnel://icmp)", host)
	}
}

// Kind is KindTunnel.
func (*Tunnel) Kind() Kind { return KindTunnel }

func (c *Tunnel) parse(p *parser) error {
	v, ok := p.value("vip")
	if !ok {
		return nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return p.fail("vip", "vip %q: not an IP address", v)
	}
	if err := p.checkAddr("vip", v, a); err != nil {
		return err
	}
	c.VIP = a.Unmap()
	return nil
}

func (c *Tunnel) base(*Target) string {
	if c.ICMP {
		return "tunnel://icmp"
	}
	return "tunnel://:" + strconv.Itoa(int(c.Port))
}

func (c *Tunnel) query() []param {
	if c.VIP.IsValid() {
		return []param{{"vip", c.VIP.String()}}
	}
	return nil
}

// targetParams: the probe goes through the backend's tunnel from the
// balancer's source address, to the Target's VIP unless vip= names one.
func (c *Tunnel) targetParams(t Target) []param {
	var q []param
	if !c.VIP.IsValid() {
		q = append(q, param{"vip", AddrString(t.VIP)})
	}
	return append(q, param{"backend", AddrString(t.Address)}, param{"encap-port", strconv.Itoa(int(t.EncapPort))},
		param{"source", AddrString(t.Source)})
}
