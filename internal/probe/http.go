package probe

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

	"github.com/caplance/caplance/internal/checkspec"
)

// userAgent is the User-Agent header of http and https probes.
const userAgent = "caplance-healthd"

func (p *probe) http(c *checkspec.HTTP, t checkspec.Target) (bool, string) {
	kind := string(c.Kind())
	addr, problem := p.endpoint(c.Endpoint, t)
	if problem != "" {
		return false, problem
	}
	var tlsConfig *tls.Config
	if c.TLS != nil {
		var err error
		if tlsConfig, err = tlsClientConfig(c, addr); err != nil {
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

	host := c.Host
	if host == "" {
		host = addr
		if (c.TLS == nil && c.Port == 80) || (c.TLS != nil && c.Port == 443) {
			host, _, _ = net.SplitHostPort(addr)
			if strings.Contains(host, ":") {
				host = "[" + host + "]"
			}
		}
	}
	req := &http.Request{
		Method:     c.Method,
		URL:        &url.URL{Scheme: kind, Host: host, Path: c.Path, RawPath: c.RawPath},
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
	if !statusIn(resp.StatusCode, c.Expect) {
		return false, fmt.Sprintf("%s: status %d (want %s)", kind, resp.StatusCode, checkspec.StatusString(c.Expect))
	}
	if c.Body != "" {
		body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return false, fmt.Sprintf("%s: status %d, reading the body: %s", kind, resp.StatusCode, p.failure(err))
		}
		if !bytes.Contains(body, []byte(c.Body)) {
			where := "its " + strconv.Itoa(len(body)) + " bytes"
			if len(body) == MaxBody {
				where = "its first 64 KiB"
			}
			return false, fmt.Sprintf("%s: status %d but the body does not contain %q in %s", kind, resp.StatusCode, c.Body, where)
		}
	}
	return true, fmt.Sprintf("%s: status %d", kind, resp.StatusCode)
}

func statusIn(code int, rs []checkspec.StatusRange) bool {
	for _, r := range rs {
		if r.Lo <= code && code <= r.Hi {
			return true
		}
	}
	return false
}

// tlsClientConfig builds the client configuration for a probe of addr.
func tlsClientConfig(c *checkspec.HTTP, addr string) (*tls.Config, error) {
	name := c.TLS.SNI
	if name == "" && c.Host != "" {
		name = c.Host
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
		InsecureSkipVerify: c.TLS.Insecure, //nolint:gosec // the operator asked for it with insecure=true
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"http/1.1"},
	}
	if c.TLS.CA != "" {
		pem, err := os.ReadFile(c.TLS.CA)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca %s: no PEM certificate in it", c.TLS.CA)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}
