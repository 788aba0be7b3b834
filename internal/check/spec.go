package check

import (
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caplance/caplance/internal/quote"
)

// Kind is the kind of a check, the scheme of its spec.
type Kind string

// The kinds of check.
const (
	KindTCP    Kind = "tcp"
	KindHTTP   Kind = "http"
	KindHTTPS  Kind = "https"
	KindUDP    Kind = "udp"
	KindExec   Kind = "exec"
	KindTunnel Kind = "tunnel"
)

// Kinds lists every kind, in the order the documentation gives them. Do not
// modify it.
var Kinds = []Kind{KindTCP, KindHTTP, KindHTTPS, KindUDP, KindExec, KindTunnel}

// State is a backend's health as caplance-healthd tracks it; a Spec names
// the one assumed before the probes decide.
type State uint8

// The states.
const (
	StateUnknown State = iota
	StateUp
	StateDown
)

var stateNames = []string{StateUnknown: "unknown", StateUp: "up", StateDown: "down"}

// String returns "unknown", "up" or "down".
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Defaults of the tunables; see the package comment for why.
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = time.Second
	DefaultRise     = 2
	DefaultFall     = 3
	DefaultInitial  = StateUnknown
	// The default jitter is the interval.
)

// Bounds of the tunables.
const (
	MinInterval = 100 * time.Millisecond
	MaxInterval = time.Hour
	MinTimeout  = 10 * time.Millisecond
	MaxJitter   = time.Hour
	MaxRiseFall = 100
)

// Limits on what a probe reads or keeps.
const (
	// MaxBody is how much of an HTTP response body is searched for body=.
	MaxBody = 64 << 10
	// MaxOutput is how much of an exec check's output goes into the detail.
	MaxOutput = 4 << 10
	// MaxSpec bounds the length of a spec.
	MaxSpec = 8 << 10
	// maxPayload bounds send= and udp expect=.
	maxPayload = 4 << 10
	// maxBodyParam bounds body=.
	maxBodyParam = 1024
)

// Spec is a parsed check. Parse is its only constructor; a Spec is
// immutable, so one value may be shared by any number of goroutines.
//
// The exported fields are what caplance-healthd schedules by; the probe's
// own parameters are private and appear only in String and Key.
type Spec struct {
	Kind Kind
	// Interval is the time between the starts of two probes.
	Interval time.Duration
	// Timeout bounds one probe; Probe enforces it.
	Timeout time.Duration
	// Rise and Fall are how many consecutive successes or failures change
	// the state.
	Rise, Fall int
	// Initial is the state assumed before the probes decide.
	Initial State
	// Jitter bounds the random delay before the first probe.
	Jitter time.Duration

	addr netip.Addr // tcp, http(s), udp: explicit address; zero: the backend's
	port uint16     // tcp, http(s), udp, tunnel (0 for icmp)

	// http, https
	path     string // decoded request path
	rawPath  string // its escaped form
	method   string
	header   string // host=
	expect   []statusRange
	body     string
	sni      string
	insecure bool
	ca       string

	// udp
	send, reply payload

	// exec: path is the program
	args []string

	// tunnel
	icmp bool
	vip  netip.Addr
}

// Error is a spec that Parse refused. Its message names the kind, quotes
// the spec and says what is wrong with which part.
type Error struct {
	// Spec is the text given to Parse.
	Spec string
	// Kind is the spec's kind, "" when the kind itself is the problem.
	Kind Kind
	// Param is the parameter or part at fault ("expect", "port", "host",
	// "path"), "" when it is the spec as a whole.
	Param string
	// Reason says what is wrong, naming Param and its value.
	Reason string
}

// Error quotes only the start of a long spec (quote.Q).
func (e *Error) Error() string {
	spec := quote.Q(e.Spec)
	if e.Kind == "" {
		return "check " + spec + ": " + e.Reason
	}
	return string(e.Kind) + " check " + spec + ": " + e.Reason
}

type statusRange struct{ lo, hi int }

// payload is a udp send= or expect= value with the notation it was given in.
type payload struct {
	hex  bool
	data string
}

func (p payload) String() string {
	if p.hex {
		return "hex:" + hex.EncodeToString([]byte(p.data))
	}
	return "text:" + p.data
}

var (
	methodRE = regexp.MustCompile(`^[A-Z]{1,20}$`)
	// hostHeaderRE: a host name or IP literal, optionally with a port.
	hostHeaderRE = regexp.MustCompile(`^(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$`)
	dnsNameRE    = regexp.MustCompile(`^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?$`)
)

// tunables are the parameters every kind takes, in canonical order.
var tunables = []string{"interval", "timeout", "rise", "fall", "initial", "jitter"}

// kindParams are each kind's own parameters, in canonical order.
var kindParams = map[Kind][]string{
	KindTCP:    nil,
	KindHTTP:   {"method", "host", "expect", "body"},
	KindHTTPS:  {"method", "host", "expect", "body", "sni", "insecure", "ca"},
	KindUDP:    {"send", "expect"},
	KindExec:   {"arg"},
	KindTunnel: {"vip"},
}

// parser carries the spec being parsed so that errors can name it.
type parser struct {
	spec string
	kind Kind
	q    url.Values
}

// The convention is that a part of the spec is quoted (%q): every string in
// args so quoted is repeated shortened (quote.Arg).
func (p *parser) fail(param, format string, args ...any) error {
	for i, a := range args {
		if s, ok := a.(string); ok {
			args[i] = quote.Arg(s)
		}
	}
	return &Error{Spec: p.spec, Kind: p.kind, Param: param, Reason: fmt.Sprintf(format, args...)}
}

// Parse parses and validates a check spec; see the package comment for the
// syntax. Every error is an *Error.
func Parse(spec string) (*Spec, error) {
	p := &parser{spec: spec}
	if len(spec) > MaxSpec {
		return nil, p.fail("", "%d bytes long, at most %d", len(spec), MaxSpec)
	}
	scheme, _, ok := strings.Cut(spec, "://")
	if !ok {
		return nil, p.fail("", "not a check spec: want KIND://…, e.g. tcp://:443 or http://:80/healthz")
	}
	kind := Kind(strings.ToLower(scheme))
	if !slices.Contains(Kinds, kind) {
		return nil, p.fail("", "unknown kind %q (want %s)", scheme, kindList())
	}
	p.kind = kind
	u, err := url.Parse(spec)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, p.fail("", "not a URL: %v", err)
	}
	switch {
	case u.User != nil:
		return nil, p.fail("", "user information (\"…@\") is not allowed")
	case u.Fragment != "" || strings.Contains(spec, "#"):
		return nil, p.fail("", "a fragment (\"#…\") is not allowed")
	}
	p.q, err = url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, p.fail("", "query: %v", err)
	}

	s := &Spec{Kind: kind}
	if err := p.target(s, u); err != nil {
		return nil, err
	}
	if err := p.checkParams(); err != nil {
		return nil, err
	}
	if err := p.kindParams(s); err != nil {
		return nil, err
	}
	if err := p.tunables(s); err != nil {
		return nil, err
	}
	return s, nil
}

func kindList() string {
	names := make([]string, len(Kinds))
	for i, k := range Kinds {
		names[i] = string(k)
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// target parses the URL's host, port and path.
func (p *parser) target(s *Spec, u *url.URL) error {
	host, port := u.Hostname(), u.Port()
	if strings.HasSuffix(u.Host, ":") && port == "" {
		return p.fail("port", "port: empty")
	}
	switch s.Kind {
	case KindExec:
		if u.Host != "" {
			return p.fail("host", "host %q: exec takes no host (write exec:///absolute/path)", u.Host)
		}
		switch {
		case u.Path == "":
			return p.fail("path", "path: missing (write exec:///absolute/path)")
		case !filepath.IsAbs(u.Path):
			return p.fail("path", "path %q: not absolute", u.Path)
		case filepath.Clean(u.Path) != u.Path:
			return p.fail("path", "path %q: not clean (write %q)", u.Path, filepath.Clean(u.Path))
		case strings.ContainsRune(u.Path, 0):
			return p.fail("path", "path %q: contains a NUL byte", u.Path)
		}
		s.path = u.Path
		return nil
	case KindTunnel:
		if u.Path != "" {
			return p.fail("path", "path %q: tunnel checks take no path", u.Path)
		}
		switch host {
		case "icmp":
			if port != "" {
				return p.fail("port", "port %s: an ICMP echo has no port (write tunnel://icmp)", port)
			}
			s.icmp = true
			return nil
		case "":
			if port == "" {
				return p.fail("port", "port: missing (write tunnel://:PORT for a TCP SYN to the VIP or tunnel://icmp for an echo request)")
			}
			return p.port(s, port)
		default:
			return p.fail("host", "host %q: want none (tunnel://:PORT, the VIP comes from the balancer or vip=) or icmp (tunnel://icmp)", host)
		}
	}
	if host != "" {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return p.fail("host", "host %q: not an IP address (leave it empty to probe the backend's own address)", host)
		}
		if a.Zone() != "" {
			return p.fail("host", "host %q: an address with a zone is not supported", host)
		}
		s.addr = a.Unmap()
	}
	if port == "" {
		switch s.Kind {
		case KindHTTP:
			port = "80"
		case KindHTTPS:
			port = "443"
		default:
			return p.fail("port", "port: missing (write e.g. %s://:PORT)", s.Kind)
		}
	}
	if err := p.port(s, port); err != nil {
		return err
	}
	if s.Kind == KindHTTP || s.Kind == KindHTTPS {
		s.path, s.rawPath = u.Path, u.EscapedPath()
		if s.path == "" {
			s.path, s.rawPath = "/", "/"
		}
	} else if u.Path != "" {
		return p.fail("path", "path %q: %s checks take no path", u.Path, s.Kind)
	}
	return nil
}

func (p *parser) port(s *Spec, v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return p.fail("port", "port %s: must be between 1 and 65535", v)
	}
	s.port = uint16(n)
	return nil
}

// checkParams refuses unknown and repeated parameters.
func (p *parser) checkParams() error {
	own := kindParams[p.kind]
	for _, name := range slices.Sorted(maps.Keys(p.q)) {
		if !slices.Contains(own, name) && !slices.Contains(tunables, name) {
			return p.fail(name, "unknown parameter %q (%s checks take %s)", name, p.kind, strings.Join(slices.Concat(own, tunables), ", "))
		}
		if n := len(p.q[name]); n > 1 && name != "arg" {
			return p.fail(name, "%s: given %d times", name, n)
		}
	}
	return nil
}

// value returns the parameter's value and whether it was given.
func (p *parser) value(name string) (string, bool) {
	v, ok := p.q[name]
	if !ok {
		return "", false
	}
	return v[0], true
}

func (p *parser) kindParams(s *Spec) error {
	switch s.Kind {
	case KindHTTP, KindHTTPS:
		return p.httpParams(s)
	case KindUDP:
		return p.udpParams(s)
	case KindExec:
		for _, a := range p.q["arg"] {
			if strings.ContainsRune(a, 0) {
				return p.fail("arg", "arg %q: contains a NUL byte", a)
			}
		}
		s.args = slices.Clone(p.q["arg"])
	case KindTunnel:
		if v, ok := p.value("vip"); ok {
			a, err := netip.ParseAddr(v)
			switch {
			case err != nil:
				return p.fail("vip", "vip %q: not an IP address", v)
			case !a.Unmap().Is4():
				return p.fail("vip", "vip %q: not an IPv4 address (tunnel checks are IPv4 only)", v)
			case !usable(a.Unmap()):
				return p.fail("vip", "vip %q: not a unicast address", v)
			}
			s.vip = a.Unmap()
		}
	}
	return nil
}

func usable(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

func (p *parser) httpParams(s *Spec) error {
	s.method = "GET"
	if v, ok := p.value("method"); ok {
		if !methodRE.MatchString(v) {
			return p.fail("method", "method %q: want an upper-case HTTP method such as GET or HEAD", v)
		}
		s.method = v
	}
	if v, ok := p.value("host"); ok {
		if !hostHeaderRE.MatchString(v) {
			return p.fail("host", "host %q: not a host name or address with an optional port", v)
		}
		s.header = v
	}
	s.expect = []statusRange{{200, 299}}
	if v, ok := p.value("expect"); ok {
		r, err := parseStatus(v)
		if err != nil {
			return p.fail("expect", "expect %q: %v", v, err)
		}
		s.expect = r
	}
	if v, ok := p.value("body"); ok {
		switch {
		case v == "":
			return p.fail("body", "body: empty (leave it out to accept any body)")
		case len(v) > maxBodyParam:
			return p.fail("body", "body: %d bytes, at most %d", len(v), maxBodyParam)
		case s.method == "HEAD":
			return p.fail("body", "body %q: a HEAD response has no body", v)
		}
		s.body = v
	}
	if s.Kind != KindHTTPS {
		return nil
	}
	if v, ok := p.value("sni"); ok {
		if _, err := netip.ParseAddr(v); err == nil {
			return p.fail("sni", "sni %q: an IP address; SNI carries host names only (leave it out to verify the address)", v)
		}
		if len(v) > 253 || !dnsNameRE.MatchString(v) {
			return p.fail("sni", "sni %q: not a host name", v)
		}
		s.sni = v
	}
	if v, ok := p.value("insecure"); ok {
		switch v {
		case "true":
			s.insecure = true
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
		case s.insecure:
			return p.fail("ca", "ca %q: useless with insecure=true, which verifies nothing", v)
		}
		s.ca = v
	}
	return nil
}

// parseStatus parses "200", "200-299" or a comma-separated list of them.
func parseStatus(v string) ([]statusRange, error) {
	bad := errors.New("not a status range (write e.g. 200, 200-299 or 200-299,304)")
	var out []statusRange
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
		out = append(out, statusRange{lo, hi})
	}
	return out, nil
}

func statusString(rs []statusRange) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.Itoa(r.lo)
		if r.hi != r.lo {
			parts[i] += "-" + strconv.Itoa(r.hi)
		}
	}
	return strings.Join(parts, ",")
}

func (p *parser) udpParams(s *Spec) error {
	v, ok := p.value("send")
	if !ok {
		return p.fail("send", "send: missing (a udp check sends a payload, e.g. send=text:ping or send=hex:00ff)")
	}
	var err error
	if s.send, err = p.payload("send", v); err != nil {
		return err
	}
	if v, ok := p.value("expect"); ok {
		if s.reply, err = p.payload("expect", v); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) payload(name, v string) (payload, error) {
	var pl payload
	switch {
	case strings.HasPrefix(v, "text:"):
		pl.data = v[len("text:"):]
	case strings.HasPrefix(v, "hex:"):
		b, err := hex.DecodeString(v[len("hex:"):])
		if err != nil {
			return pl, p.fail(name, "%s %q: not hexadecimal bytes", name, v)
		}
		pl.hex, pl.data = true, string(b)
	default:
		return pl, p.fail(name, "%s %q: want text:… or hex:…", name, v)
	}
	switch {
	case pl.data == "":
		return pl, p.fail(name, "%s %q: empty payload", name, v)
	case len(pl.data) > maxPayload:
		return pl, p.fail(name, "%s: %d bytes, at most %d", name, len(pl.data), maxPayload)
	}
	return pl, nil
}

func (p *parser) tunables(s *Spec) error {
	var err error
	s.Interval, err = p.duration("interval", DefaultInterval, MinInterval, MaxInterval)
	if err != nil {
		return err
	}
	s.Timeout, err = p.duration("timeout", min(DefaultTimeout, s.Interval), MinTimeout, MaxInterval)
	if err != nil {
		return err
	}
	if s.Timeout > s.Interval {
		return p.fail("timeout", "timeout %v: longer than the interval %v (a probe must end before the next starts)", s.Timeout, s.Interval)
	}
	if s.Rise, err = p.count("rise", DefaultRise); err != nil {
		return err
	}
	if s.Fall, err = p.count("fall", DefaultFall); err != nil {
		return err
	}
	s.Initial = DefaultInitial
	if v, ok := p.value("initial"); ok {
		i := slices.Index(stateNames, v)
		if i < 0 {
			return p.fail("initial", "initial %q: want unknown, up or down", v)
		}
		s.Initial = State(i)
	}
	s.Jitter, err = p.duration("jitter", s.Interval, 0, MaxJitter)
	return err
}

func (p *parser) duration(name string, def, lo, hi time.Duration) (time.Duration, error) {
	v, ok := p.value(name)
	if !ok {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, p.fail(name, "%s %q: not a duration (write e.g. 2s or 500ms)", name, v)
	}
	if d < lo || d > hi {
		return 0, p.fail(name, "%s %v: must be between %s and %s", name, d, shortDuration(lo), shortDuration(hi))
	}
	return d, nil
}

func (p *parser) count(name string, def int) (int, error) {
	v, ok := p.value(name)
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxRiseFall {
		return 0, p.fail(name, "%s %q: must be a whole number between 1 and %d", name, v, MaxRiseFall)
	}
	return n, nil
}

// shortDuration drops time.Duration's trailing zero units: 1h, not 1h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// String returns the canonical spec: Parse(s.String()) gives an equal Spec,
// and two specs that probe and schedule alike have the same String.
func (s *Spec) String() string {
	q := s.probeQuery()
	if s.Interval != DefaultInterval {
		q = append(q, param{"interval", shortDuration(s.Interval)})
	}
	if s.Timeout != min(DefaultTimeout, s.Interval) {
		q = append(q, param{"timeout", shortDuration(s.Timeout)})
	}
	if s.Rise != DefaultRise {
		q = append(q, param{"rise", strconv.Itoa(s.Rise)})
	}
	if s.Fall != DefaultFall {
		q = append(q, param{"fall", strconv.Itoa(s.Fall)})
	}
	if s.Initial != DefaultInitial {
		q = append(q, param{"initial", s.Initial.String()})
	}
	if s.Jitter != s.Interval {
		q = append(q, param{"jitter", shortDuration(s.Jitter)})
	}
	return s.base(s.addr) + encodeQuery(q)
}

// Target is what a probe is aimed at.
type Target struct {
	// Name and Address are the backend's.
	Name    string
	Address netip.Addr
	// VIP, EncapPort and Source are for tunnel probes: the VIP to probe
	// (unless the spec names one), the backend's encap port, and the
	// balancer host's own address, to which the backend answers (zero: the
	// address the kernel would use towards the backend).
	VIP       netip.Addr
	EncapPort uint16
	Source    netip.Addr
}

// Key identifies what a probe does to whom: two checks with the same Key
// send the same probe to the same place, so caplance-healthd runs it once and
// gives the result to both. It leaves out the scheduling tunables (interval,
// rise, fall, initial, jitter) and keeps the timeout, which changes the
// result, and everything of the Target the probe depends on.
func (s *Spec) Key(t Target) string {
	q := append(s.probeQuery(), param{"timeout", shortDuration(s.Timeout)})
	addr := s.addr
	switch s.Kind {
	case KindExec:
		q = append(q, param{"name", t.Name}, param{"address", addrString(t.Address)})
	case KindTunnel:
		if !s.vip.IsValid() {
			q = append(q, param{"vip", addrString(t.VIP)})
		}
		q = append(q, param{"backend", addrString(t.Address)}, param{"encap-port", strconv.Itoa(int(t.EncapPort))},
			param{"source", addrString(t.Source)})
	default:
		if !addr.IsValid() {
			addr = t.Address
		}
	}
	return s.base(addr) + encodeQuery(q)
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// base is the spec up to the query, with addr as the host (tcp, http(s),
// udp).
func (s *Spec) base(addr netip.Addr) string {
	var b strings.Builder
	b.WriteString(string(s.Kind))
	b.WriteString("://")
	switch s.Kind {
	case KindExec:
		b.WriteString((&url.URL{Path: s.path}).EscapedPath())
	case KindTunnel:
		if s.icmp {
			b.WriteString("icmp")
		} else {
			b.WriteString(":" + strconv.Itoa(int(s.port)))
		}
	default:
		if addr.IsValid() {
			b.WriteString(netip.AddrPortFrom(addr, s.port).String())
		} else {
			b.WriteString(":" + strconv.Itoa(int(s.port)))
		}
		if s.Kind == KindHTTP || s.Kind == KindHTTPS {
			b.WriteString(s.rawPath)
		}
	}
	return b.String()
}

type param struct{ name, value string }

// probeQuery lists the kind's own parameters that differ from their defaults,
// in canonical order.
func (s *Spec) probeQuery() []param {
	var q []param
	switch s.Kind {
	case KindHTTP, KindHTTPS:
		if s.method != "GET" {
			q = append(q, param{"method", s.method})
		}
		if s.header != "" {
			q = append(q, param{"host", s.header})
		}
		if e := statusString(s.expect); e != "200-299" {
			q = append(q, param{"expect", e})
		}
		if s.body != "" {
			q = append(q, param{"body", s.body})
		}
		if s.sni != "" {
			q = append(q, param{"sni", s.sni})
		}
		if s.insecure {
			q = append(q, param{"insecure", "true"})
		}
		if s.ca != "" {
			q = append(q, param{"ca", s.ca})
		}
	case KindUDP:
		q = append(q, param{"send", s.send.String()})
		if s.reply.data != "" {
			q = append(q, param{"expect", s.reply.String()})
		}
	case KindExec:
		for _, a := range s.args {
			q = append(q, param{"arg", a})
		}
	case KindTunnel:
		if s.vip.IsValid() {
			q = append(q, param{"vip", s.vip.String()})
		}
	}
	return q
}

func encodeQuery(q []param) string {
	if len(q) == 0 {
		return ""
	}
	var b strings.Builder
	for i, p := range q {
		if i == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString(p.name)
		b.WriteByte('=')
		b.WriteString(escapeValue(p.value))
	}
	return b.String()
}

// escapeValue percent-encodes a query value, leaving alone the characters
// that need no escaping there and read well (":" "/" "," "@" and the
// unreserved ones), so canonical specs stay legible.
func escapeValue(v string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			strings.IndexByte("-._~:/,@!$'()*", c) >= 0:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		}
	}
	return b.String()
}

// Privileged reports whether the check's probes need CAP_NET_RAW.
func (s *Spec) Privileged() bool { return s.Kind == KindTunnel }

// Program is the absolute path of an exec check's program, "" for the
// other kinds.
func (s *Spec) Program() string {
	if s.Kind != KindExec {
		return ""
	}
	return s.path
}
