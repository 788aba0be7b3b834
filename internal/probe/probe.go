package probe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caplance/caplance/internal/checkspec"
)

// Limits on what a probe reads or keeps.
const (
	// MaxBody is how much of an HTTP response body is searched for body=.
	MaxBody = 64 << 10
	// MaxOutput is how much of an exec check's output goes into the detail.
	MaxOutput = 4 << 10
)

// Result is the outcome of one probe.
type Result struct {
	// Up is true when the probe succeeded.
	Up bool
	// Detail says what happened, in one line a person understands:
	// "http: status 503 (want 200-299)", "tcp: 10.0.0.5:443: connection
	// refused", "exec: exit status 1: disk full".
	Detail string
	// Latency is how long the probe took, until it succeeded or failed.
	Latency time.Duration
}

// probe is one running probe: its spec, its context (with the timeout
// applied) and the timeout it was given, for the detail.
type probe struct {
	s       *checkspec.Spec
	ctx     context.Context
	parent  context.Context
	timeout time.Duration
}

// Run runs one probe of the target as s says and reports the result. It
// returns within the spec's Timeout, or sooner when ctx ends; it never panics
// on a bad target, it reports it. It keeps no state: two calls are independent.
//
// Every socket is opened on the calling goroutine, so a caller that has
// switched its locked OS thread into a network namespace probes from there.
func Run(ctx context.Context, s *checkspec.Spec, t checkspec.Target) Result {
	start := time.Now()
	timeout := s.Timeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = max(time.Until(d), 0)
	}
	pctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	p := &probe{s: s, ctx: pctx, parent: ctx, timeout: timeout}
	var up bool
	var detail string
	switch c := s.Params.(type) {
	case *checkspec.TCP:
		up, detail = p.tcp(c, t)
	case *checkspec.HTTP:
		up, detail = p.http(c, t)
	case *checkspec.UDP:
		up, detail = p.udp(c, t)
	case *checkspec.Exec:
		up, detail = p.exec(c, t)
	case *checkspec.Tunnel:
		up, detail = p.tunnel(c, t)
	default:
		detail = fmt.Sprintf("%s: unknown kind", s.Kind())
	}
	return Result{Up: up, Detail: cleanDetail(detail), Latency: time.Since(start)}
}

// endpoint is the address a tcp, http(s) or udp probe goes to, "host:port",
// or a detail saying why there is none.
func (p *probe) endpoint(e checkspec.Endpoint, t checkspec.Target) (addr string, problem string) {
	a := e.Addr
	if !a.IsValid() {
		a = t.Address.Unmap()
	}
	if !a.IsValid() || a.IsUnspecified() {
		return "", fmt.Sprintf("%s: no address to probe (the backend has none and the spec names none)", p.s.Kind())
	}
	return netip.AddrPortFrom(a, e.Port).String(), ""
}

// failure describes why a probe failed: "timeout after 1s", "canceled",
// "connection refused", or the error's own text.
func (p *probe) failure(err error) string {
	if p.parent.Err() == context.Canceled {
		return "canceled"
	}
	if isTimeout(err) || p.ctx.Err() != nil {
		return "timeout after " + checkspec.ShortDuration(p.timeout.Round(time.Millisecond))
	}
	return describe(err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// describe strips what the caller already says (the operation and the
// address) from an error: "connection refused" rather than "dial tcp
// 10.0.0.5:443: connect: connection refused".
func describe(err error) string {
	var errno syscall.Errno
	var cert *tls.CertificateVerificationError
	switch {
	case errors.As(err, &cert):
		return cert.Error()
	case errors.As(err, &errno):
		return errno.Error()
	}
	return err.Error()
}

// cleanDetail makes s one line of valid UTF-8 without control characters:
// line breaks become "; ", other control characters and invalid bytes U+FFFD.
func cleanDetail(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	var lines []string
	for line := range strings.SplitSeq(strings.ReplaceAll(s, "\r\n", "\n"), "\n") {
		line = strings.Map(func(r rune) rune {
			switch {
			case r == '\t':
				return ' '
			case unicode.IsControl(r) || r == utf8.RuneError:
				return '\uFFFD'
			}
			return r
		}, line)
		if line = strings.TrimSpace(line); line != "" {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "; ")
}

// deadline makes c's reads and writes end with the probe's context: at its
// deadline, or at once when it is canceled. The returned function undoes the
// second part and must be called before c is closed.
func (p *probe) deadline(c interface{ SetDeadline(time.Time) error }) func() bool {
	if d, ok := p.ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	return context.AfterFunc(p.ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
}
