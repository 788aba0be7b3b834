package check

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// userAgent is the User-Agent header of http and https probes.
const userAgent = "caplance-healthd"

func (p *probe) http(t Target) (bool, string) {
	s := p.s
	kind := string(s.Kind)
	addr, problem := p.endpoint(t)
	if problem != "" {
		return false, problem
	}
	var tlsConfig *tls.Config
	if s.Kind == KindHTTPS {
		var err error
		if tlsConfig, err = p.tlsConfig(addr); err != nil {
			return false, "https: " + err.Error()
		}
	}

	var d net.Dialer
	conn, err := d.DialContext(p.ctx, "tcp", addr)
	if err != nil {
		return false, kind + ": " + addr + ": " + p.failure(err)
	}
	defer conn.Close()
	stop := p.deadline(conn)
	defer stop()
	if tlsConfig != nil {
		tc := tls.Client(conn, tlsConfig)
		if err := tc.HandshakeContext(p.ctx); err != nil {
			return false, kind + ": " + addr + ": " + p.failure(err)
		}
		conn = tc
	}

	host := s.header
	if host == "" {
		host = addr
		if (s.Kind == KindHTTP && s.port == 80) || (s.Kind == KindHTTPS && s.port == 443) {
			host, _, _ = net.SplitHostPort(addr)
			if strings.Contains(host, ":") {
				host = "[" + host + "]"
			}
		}
	}
	req := &http.Request{
		Method:     s.method,
		URL:        &url.URL{Scheme: kind, Host: host, Path: s.path, RawPath: s.rawPath},
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     http.Header{"User-Agent": {userAgent}, "Accept": {"*/*"}},
		Host:       host,
		Close:      true,
	}
	if err := req.Write(conn); err != nil {
		return false, kind + ": " + addr + ": send request: " + p.failure(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, kind + ": " + addr + ": connection closed without a response"
		}
		return false, kind + ": " + addr + ": " + p.failure(err)
	}
	defer resp.Body.Close()
	if !statusIn(resp.StatusCode, s.expect) {
		return false, fmt.Sprintf("%s: status %d (want %s)", kind, resp.StatusCode, statusString(s.expect))
	}
	if s.body != "" {
		body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return false, fmt.Sprintf("%s: status %d, reading the body: %s", kind, resp.StatusCode, p.failure(err))
		}
		if !bytes.Contains(body, []byte(s.body)) {
			where := "its " + strconv.Itoa(len(body)) + " bytes"
			if len(body) == MaxBody {
				where = "its first 64 KiB"
			}
			return false, fmt.Sprintf("%s: status %d but the body does not contain %q in %s", kind, resp.StatusCode, s.body, where)
		}
	}
	return true, fmt.Sprintf("%s: status %d", kind, resp.StatusCode)
}

func statusIn(code int, rs []statusRange) bool {
	for _, r := range rs {
		if r.lo <= code && code <= r.hi {
			return true
		}
	}
	return false
}

// tlsConfig builds the client configuration for a probe of addr.
func (p *probe) tlsConfig(addr string) (*tls.Config, error) {
	s := p.s
	name := s.sni
	if name == "" && s.header != "" {
		name = s.header
		if h, _, err := net.SplitHostPort(name); err == nil {
			name = h
		}
		name = strings.Trim(name, "[]")
	}
	if name == "" {
		name, _, _ = net.SplitHostPort(addr)
	}
	cfg := &tls.Config{
		ServerName:         name,
		InsecureSkipVerify: s.insecure, //nolint:gosec // the operator asked for it with insecure=true
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"http/1.1"},
	}
	if s.ca != "" {
		pem, err := os.ReadFile(s.ca)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca %s: no PEM certificate in it", s.ca)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}
