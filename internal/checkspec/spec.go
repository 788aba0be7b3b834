package checkspec

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
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

// Limits on the spec.
const (
	// MaxSpec bounds the length of a spec.
	MaxSpec = 8 << 10
	// maxPayload bounds send= and udp expect=.
	maxPayload = 4 << 10
	// maxBodyParam bounds body=.
	maxBodyParam = 1024
)

// Spec is a parsed check. Parse is its only constructor; nothing changes a
// Spec or its Params afterwards, so one value may be shared by any number of
// goroutines.
//
// The tunables are what caplance-healthd schedules by; Params holds the
// kind's own parameters, which the probe reads.
type Spec struct {
	// Params are the kind's own parameters: one of *TCP, *HTTP, *UDP,
	// *Exec or *Tunnel.
	Params Params
	// Interval is the time between the starts of two probes.
	Interval time.Duration
	// Timeout bounds one probe; the probe enforces it.
	Timeout time.Duration
	// Rise and Fall are how many consecutive successes or failures change
	// the state.
	Rise, Fall int
	// Initial is the state assumed before the probes decide.
	Initial State
	// Jitter bounds the random delay before the first probe.
	Jitter time.Duration
}

// Kind is the spec's kind.
func (s *Spec) Kind() Kind { return s.Params.Kind() }

// Params are one kind's own parameters. Only this package implements it,
// so a type switch over the five kinds is exhaustive.
type Params interface {
	// Kind is the kind the parameters belong to.
	Kind() Kind
	// parse reads the kind's own query parameters, after its target.
	parse(p *parser) error
	// base is the spec up to its query. For a kind that probes an
	// address, t (when not nil) gives the backend's address when the spec
	// names none.
	base(t *Target) string
	// query lists the kind's own parameters that differ from their
	// defaults, in canonical order.
	query() []param
	// targetParams lists what of t, beyond base(&t), the probe depends on.
	targetParams(t Target) []param
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

// kindDef is what Parse needs to know of a kind.
type kindDef struct {
	// params are the kind's own parameters, in canonical order.
	params []string
	// target parses the URL's host, port and path into the kind's
	// parameters; parse then reads the query into them.
	target func(p *parser, u *url.URL, host, port string) (Params, error)
}

var kinds = map[Kind]kindDef{
	KindTCP:    {nil, parseTCP},
	KindHTTP:   {httpParams, parseHTTP},
	KindHTTPS:  {slices.Concat(httpParams, tlsParams), parseHTTP},
	KindUDP:    {[]string{"send", "expect"}, parseUDP},
	KindExec:   {[]string{"arg"}, parseExec},
	KindTunnel: {[]string{"vip"}, parseTunnel},
}

// tunables are the parameters every kind takes, in canonical order.
var tunables = []string{"interval", "timeout", "rise", "fall", "initial", "jitter"}

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
	scheme, rest, ok := strings.Cut(spec, "://")
	if !ok {
		return nil, p.fail("", "not a check spec: want KIND://…, e.g. tcp://:443 or http://:80/healthz")
	}
	kind := Kind(strings.ToLower(scheme))
	if !slices.Contains(Kinds, kind) {
		return nil, p.fail("", "unknown kind %q (want %s)", scheme, kindList())
	}
	p.kind = kind
	if err := p.unbracketed(rest); err != nil {
		return nil, err
	}
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

	host, port := u.Hostname(), u.Port()
	if strings.HasSuffix(u.Host, ":") && port == "" {
		return nil, p.fail("port", "port: empty")
	}
	params, err := kinds[kind].target(p, u, host, port)
	if err != nil {
		return nil, err
	}
	if err := p.checkParams(); err != nil {
		return nil, err
	}
	if err := params.parse(p); err != nil {
		return nil, err
	}
	s := &Spec{Params: params}
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

func (p *parser) port(v string) (uint16, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return 0, p.fail("port", "port %s: must be between 1 and 65535", v)
	}
	return uint16(n), nil
}

// checkParams refuses unknown and repeated parameters.
func (p *parser) checkParams() error {
	own := kinds[p.kind].params
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
		return 0, p.fail(name, "%s %v: must be between %s and %s", name, d, ShortDuration(lo), ShortDuration(hi))
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

// ShortDuration is d without time.Duration's trailing zero units: 1h, not
// 1h0m0s. The probes write their timeouts the same way.
func ShortDuration(d time.Duration) string {
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
	q := s.Params.query()
	if s.Interval != DefaultInterval {
		q = append(q, param{"interval", ShortDuration(s.Interval)})
	}
	if s.Timeout != min(DefaultTimeout, s.Interval) {
		q = append(q, param{"timeout", ShortDuration(s.Timeout)})
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
		q = append(q, param{"jitter", ShortDuration(s.Jitter)})
	}
	return s.Params.base(nil) + encodeQuery(q)
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
	q := append(s.Params.query(), param{"timeout", ShortDuration(s.Timeout)})
	q = append(q, s.Params.targetParams(t)...)
	return s.Params.base(&t) + encodeQuery(q)
}

// AddrString is a's text, "" for the zero Addr.
func AddrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

type param struct{ name, value string }

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
func (s *Spec) Privileged() bool { return s.Kind() == KindTunnel }

// Program is the absolute path of an exec check's program, "" for the
// other kinds.
func (s *Spec) Program() string {
	if e, ok := s.Params.(*Exec); ok {
		return e.Program
	}
	return ""
}
