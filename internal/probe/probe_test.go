package probe_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/probe"
)

var localhost = netip.MustParseAddr("127.0.0.1")

// web1 is the target of the probes that run against local servers.
var web1 = checkspec.Target{Name: "web1", Address: localhost}

// outcome is a Result without its latency, for comparisons.
type outcome struct {
	Up     bool
	Detail string
}

func mustParse(t *testing.T, spec string) *checkspec.Spec {
	t.Helper()
	s, err := checkspec.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runProbe runs spec against target and checks the outcome and that the probe
// kept to its timeout. A spec without a timeout gets 10 s instead of the
// default 1 s: a TLS handshake with the test server took longer than 1 s on
// a loaded machine, and only the specs that test the timeout name one.
func runProbe(t *testing.T, spec string, target checkspec.Target) outcome {
	t.Helper()
	s := mustParse(t, spec)
	if !strings.Contains(spec, "timeout=") {
		s.Timeout = 10 * time.Second
	}
	r := probe.Run(context.Background(), s, target)
	// Slack for a loaded machine: what this catches is a probe that ignores
	// its timeout (the hanging servers never answer).
	if r.Latency < 0 || r.Latency > s.Timeout+2*time.Second {
		t.Errorf("%s: latency %v, timeout %v", spec, r.Latency, s.Timeout)
	}
	return outcome{r.Up, r.Detail}
}

// freePort returns a local TCP or UDP port that nothing listens on.
func freePort(t *testing.T, network string) int {
	t.Helper()
	var addr net.Addr
	if network == "tcp" {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = l.Addr()
		l.Close()
	} else {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = c.LocalAddr()
		c.Close()
	}
	_, port, _ := net.SplitHostPort(addr.String())
	n, _ := strconv.Atoi(port)
	return n
}

func portOf(t *testing.T, addr net.Addr) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return n
}

// fullListener returns the port of a listener whose accept queue is full:
// listen(2) with backlog 0 queues one connection, which this fills, and the
// kernel then drops every further SYN, so a connect neither succeeds nor is
// refused.
func fullListener(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*unix.SockaddrInet4).Port
	c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Wait until the connection sits in the accept queue.
	if n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 2000); n != 1 || err != nil {
		t.Fatalf("the accept queue did not fill: %d, %v", n, err)
	}
	return port
}

// silentServer accepts TCP connections and never writes to them.
func silentServer(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return portOf(t, l.Addr())
}

// closingServer accepts TCP connections, reads a request's header and closes
// the connection without answering.
func closingServer(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil || line == "\r\n" {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return portOf(t, l.Addr())
}

func TestTCP(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	up := portOf(t, l.Addr())
	refused := freePort(t, "tcp")
	full := fullListener(t)
	tests := []struct {
		spec   string
		target checkspec.Target
		want   outcome
	}{
		{fmt.Sprintf("tcp://:%d", up), web1, outcome{true, fmt.Sprintf("tcp: 127.0.0.1:%d: connected", up)}},
		{fmt.Sprintf("tcp://127.0.0.1:%d", up), checkspec.Target{Name: "x", Address: netip.MustParseAddr("192.0.2.1")}, outcome{true, fmt.Sprintf("tcp: 127.0.0.1:%d: connected", up)}},
		{fmt.Sprintf("tcp://:%d", refused), web1, outcome{false, fmt.Sprintf("tcp: 127.0.0.1:%d: connection refused", refused)}},
		{fmt.Sprintf("tcp://:%d?timeout=200ms", full), web1, outcome{false, fmt.Sprintf("tcp: 127.0.0.1:%d: timeout after 200ms", full)}},
		{"tcp://:443", checkspec.Target{Name: "x"}, outcome{false, "tcp: no address to probe (the backend has none and the spec names none)"}},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, runProbe(t, tt.spec, tt.target)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	t.Run("the timeout is kept", func(t *testing.T) {
		t.Parallel()
		r := probe.Run(context.Background(), mustParse(t, fmt.Sprintf("tcp://:%d?timeout=200ms", full)), web1)
		if r.Latency < 200*time.Millisecond || r.Latency > 400*time.Millisecond {
			t.Errorf("latency %v, want about 200ms", r.Latency)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		r := probe.Run(ctx, mustParse(t, fmt.Sprintf("tcp://:%d", full)), web1)
		want := outcome{false, fmt.Sprintf("tcp: 127.0.0.1:%d: canceled", full)}
		if diff := cmp.Diff(want, outcome{r.Up, r.Detail}); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
}

// request is what an HTTP test server saw of a request.
type request struct {
	Method, Host, Path, UserAgent, SNI string
}

// recorder keeps the last request a test server saw.
type recorder struct {
	mu   sync.Mutex
	last request
}

func (r *recorder) get() request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

func (r *recorder) setSNI(sni string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last.SNI = sni
}

func testHandler(rec *recorder) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.last.Method, rec.last.Host, rec.last.Path, rec.last.UserAgent = r.Method, r.Host, r.URL.RequestURI(), r.UserAgent()
		rec.mu.Unlock()
		switch r.URL.Path {
		case "/ok", "/a b":
			io.WriteString(w, "all good")
		case "/503":
			http.Error(w, "overloaded", http.StatusServiceUnavailable)
		case "/redirect":
			http.Redirect(w, r, "/login", http.StatusFound)
		case "/big":
			w.Write(make([]byte, probe.MaxBody))
			io.WriteString(w, "needle")
		case "/hang":
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	})
}

func quietServer(s *httptest.Server) *httptest.Server {
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	return s
}

func TestHTTP(t *testing.T) {
	t.Parallel()
	var rec recorder
	ts := quietServer(httptest.NewUnstartedServer(testHandler(&rec)))
	ts.Start()
	defer ts.Close()
	port := portOf(t, ts.Listener.Addr())
	silent, closing := silentServer(t), closingServer(t)
	base := fmt.Sprintf("http://:%d", port)
	tests := []struct {
		spec string
		want outcome
		seen request // compared when set
	}{
		{spec: base + "/ok", want: outcome{true, "http: status 200"},
			seen: request{Method: "GET", Host: fmt.Sprintf("127.0.0.1:%d", port), Path: "/ok", UserAgent: "caplance-healthd"}},
		{spec: base + "/ok?host=www.example.com&method=POST", want: outcome{true, "http: status 200"},
			seen: request{Method: "POST", Host: "www.example.com", Path: "/ok", UserAgent: "caplance-healthd"}},
		{spec: base + "/a%20b?method=HEAD", want: outcome{true, "http: status 200"},
			seen: request{Method: "HEAD", Host: fmt.Sprintf("127.0.0.1:%d", port), Path: "/a%20b", UserAgent: "caplance-healthd"}},
		{spec: base + "/503", want: outcome{false, "http: status 503 (want 200-299)"}},
		{spec: base + "/503?expect=200-299,503", want: outcome{true, "http: status 503"}},
		{spec: base + "/missing?expect=404", want: outcome{true, "http: status 404"}},
		{spec: base + "/redirect", want: outcome{false, "http: status 302 (want 200-299)"}},
		{spec: base + "/redirect?expect=200-399", want: outcome{true, "http: status 302"}},
		{spec: base + "/ok?body=good", want: outcome{true, "http: status 200"}},
		{spec: base + "/ok?body=bad", want: outcome{false, `http: status 200 but the body does not contain "bad" in its 8 bytes`}},
		{spec: base + "/big?body=needle", want: outcome{false, `http: status 200 but the body does not contain "needle" in its first 64 KiB`}},
		{spec: base + "/hang?timeout=200ms", want: outcome{false, fmt.Sprintf("http: 127.0.0.1:%d: timeout after 200ms", port)}},
		{spec: fmt.Sprintf("http://:%d/?timeout=200ms", silent), want: outcome{false, fmt.Sprintf("http: 127.0.0.1:%d: timeout after 200ms", silent)}},
		{spec: fmt.Sprintf("http://:%d/", closing), want: outcome{false, fmt.Sprintf("http: 127.0.0.1:%d: connection closed without a response", closing)}},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			// Not parallel: seen is the last request's.
			if diff := cmp.Diff(tt.want, runProbe(t, tt.spec, web1)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if tt.seen != (request{}) {
				if diff := cmp.Diff(tt.seen, rec.get()); diff != "" {
					t.Errorf("the server saw (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestHTTPS(t *testing.T) {
	t.Parallel()
	var rec recorder
	ts := quietServer(httptest.NewUnstartedServer(testHandler(&rec)))
	ts.TLS = &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		rec.setSNI(hello.ServerName)
		return nil, nil
	}}
	ts.StartTLS()
	defer ts.Close()
	port := portOf(t, ts.Listener.Addr())
	silent := silentServer(t)

	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("https://:%d/ok", port)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	tests := []struct {
		spec string
		want outcome
		sni  string
	}{
		{base, outcome{false, "https: " + addr + ": tls: failed to verify certificate: x509: certificate signed by unknown authority"}, ""},
		{base + "?insecure=true", outcome{true, "https: status 200"}, ""},
		{base + "?ca=" + ca, outcome{true, "https: status 200"}, ""},
		{base + "?ca=" + ca + "&sni=example.com", outcome{true, "https: status 200"}, "example.com"},
		{base + "?ca=" + ca + "&host=example.com", outcome{true, "https: status 200"}, "example.com"},
		{base + "?insecure=true&sni=www.example.org", outcome{true, "https: status 200"}, "www.example.org"},
		{base + "?ca=" + ca + "&sni=www.example.org", outcome{false, "https: " + addr + ": tls: failed to verify certificate: x509: certificate is valid for example.com, *.example.com, not www.example.org"}, "www.example.org"},
		{fmt.Sprintf("https://:%d/503?insecure=true", port), outcome{false, "https: status 503 (want 200-299)"}, ""},
		{base + "?ca=/nonexistent/ca.pem", outcome{false, "https: ca: open /nonexistent/ca.pem: no such file or directory"}, ""},
		{base + "?ca=" + notPEM, outcome{false, "https: ca " + notPEM + ": no PEM certificate in it"}, ""},
		{fmt.Sprintf("https://:%d/?timeout=200ms&insecure=true", silent), outcome{false, fmt.Sprintf("https: 127.0.0.1:%d: timeout after 200ms", silent)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			rec.setSNI("(no handshake)")
			if diff := cmp.Diff(tt.want, runProbe(t, tt.spec, web1)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if strings.Contains(tt.spec, "ca=/nonexistent") || strings.Contains(tt.spec, "not.pem") || strings.Contains(tt.spec, "timeout") {
				return
			}
			if got := rec.get().SNI; got != tt.sni {
				t.Errorf("the server saw SNI %q, want %q", got, tt.sni)
			}
		})
	}
}

// udpServer answers every datagram with reply(datagram), or not at all when
// reply is nil.
func udpServer(t *testing.T, reply func([]byte) []byte) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if reply != nil {
				c.WriteTo(reply(buf[:n]), from)
			}
		}
	}()
	return portOf(t, c.LocalAddr())
}

func TestUDP(t *testing.T) {
	t.Parallel()
	echo := udpServer(t, func(b []byte) []byte { return append([]byte("pong "), b...) })
	silent := udpServer(t, nil)
	closed := freePort(t, "udp")
	tests := []struct {
		spec string
		want outcome
	}{
		{fmt.Sprintf("udp://:%d?send=text:ping", echo), outcome{true, fmt.Sprintf("udp: 127.0.0.1:%d: reply of 9 bytes", echo)}},
		{fmt.Sprintf("udp://:%d?send=text:ping&expect=text:pong", echo), outcome{true, fmt.Sprintf("udp: 127.0.0.1:%d: reply of 9 bytes", echo)}},
		{fmt.Sprintf("udp://:%d?send=hex:00ff&expect=hex:ff", echo), outcome{true, fmt.Sprintf("udp: 127.0.0.1:%d: reply of 7 bytes", echo)}},
		{fmt.Sprintf("udp://:%d?send=text:ping&expect=text:nope", echo), outcome{false, fmt.Sprintf(`udp: 127.0.0.1:%d: the reply does not contain text:nope: "pong ping"`, echo)}},
		{fmt.Sprintf("udp://:%d?send=text:ping&expect=hex:ff", echo), outcome{false, fmt.Sprintf(`udp: 127.0.0.1:%d: the reply does not contain hex:ff: hex:706f6e672070696e67`, echo)}},
		{fmt.Sprintf("udp://:%d?send=text:%s&expect=text:nope", echo, strings.Repeat("a", 100)), outcome{false, fmt.Sprintf(`udp: 127.0.0.1:%d: the reply does not contain text:nope: "pong %s"…`, echo, strings.Repeat("a", 59))}},
		{fmt.Sprintf("udp://:%d?send=text:ping&timeout=200ms", silent), outcome{false, fmt.Sprintf("udp: 127.0.0.1:%d: timeout after 200ms", silent)}},
		{fmt.Sprintf("udp://:%d?send=text:ping", closed), outcome{false, fmt.Sprintf("udp: 127.0.0.1:%d: connection refused", closed)}},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, runProbe(t, tt.spec, web1)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// script writes an executable shell script into dir and returns its path.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// gone reports whether the process pid has exited (a zombie counts: it
// runs nothing and only waits for a parent to reap it).
func gone(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	return strings.HasPrefix(after, "Z") || strings.HasPrefix(after, "X")
}

func waitGone(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); !gone(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			unix.Kill(pid, unix.SIGKILL)
			t.Fatalf("process %d, which the check started, still runs", pid)
		}
	}
}

func TestExec(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ok := script(t, dir, "ok", `echo "name=$CAPLANCE_BACKEND_NAME address=$CAPLANCE_BACKEND_ADDRESS args=$*"; pwd; env | grep -v -e '^PWD=' -e '^SHLVL=' -e '^_=' -e '^OLDPWD=' | sort | tr '\n' ' '`)
	fail := script(t, dir, "fail", "echo 'disk full' >&2\nprintf 'bad\\tbytes \\377\\001\\n'\nexit 1")
	flood := script(t, dir, "flood", "head -c 1000000 /dev/zero | tr '\\0' x\nexit 1")
	notExecutable := filepath.Join(dir, "plain")
	if err := os.WriteFile(notExecutable, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := "CAPLANCE_BACKEND_ADDRESS=127.0.0.1 CAPLANCE_BACKEND_NAME=web1 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	tests := []struct {
		spec string
		want outcome
	}{
		{"exec://" + ok + "?arg=--fast&arg=a+b", outcome{true, "exec: exit status 0: name=web1 address=127.0.0.1 args=--fast a b; /; " + env}},
		{"exec://" + fail, outcome{false, "exec: exit status 1: disk full; bad bytes \uFFFD\uFFFD"}},
		{"exec://" + flood, outcome{false, "exec: exit status 1: " + strings.Repeat("x", probe.MaxOutput) + " … [995904 more bytes not shown]"}},
		{"exec:///nonexistent/check", outcome{false, "exec: /nonexistent/check: no such file or directory"}},
		{"exec://" + notExecutable, outcome{false, "exec: " + notExecutable + ": permission denied"}},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.spec), func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, runProbe(t, tt.spec, web1)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}

	// The test runs as root with every capability, or as a user with
	// none: either way the program starts with none (as root, because the
	// bounding set is emptied too).
	t.Run("an IPv6 backend's address", func(t *testing.T) {
		t.Parallel()
		web6 := checkspec.Target{Name: "web6", Address: netip.MustParseAddr("2001:db8::5")}
		want := outcome{true, "exec: exit status 0: name=web6 address=2001:db8::5 args=; /; " +
			strings.NewReplacer("127.0.0.1", "2001:db8::5", "web1", "web6").Replace(env)}
		if diff := cmp.Diff(want, runProbe(t, "exec://"+ok, web6)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})

	t.Run("the program gets no capabilities", func(t *testing.T) {
		t.Parallel()
		caps := script(t, dir, "caps", "grep ^Cap /proc/self/status")
		zero := ": 0000000000000000"
		want := outcome{true, "exec: exit status 0: CapInh" + zero + "; CapPrm" + zero + "; CapEff" + zero + "; CapBnd" + zero + "; CapAmb" + zero}
		if diff := cmp.Diff(want, runProbe(t, "exec://"+caps, web1)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})

	t.Run("a hanging command is killed with its process group", func(t *testing.T) {
		t.Parallel()
		pidFile := filepath.Join(dir, "hang.pid")
		hang := script(t, dir, "hang", `sleep 60 & echo $! > "$1"; echo started; wait`)
		got := runProbe(t, "exec://"+hang+"?timeout=300ms&arg="+pidFile, web1)
		if diff := cmp.Diff(outcome{false, "exec: timeout after 300ms, killed: started"}, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		waitGone(t, pidFile)
	})

	t.Run("what a passing command leaves running is killed", func(t *testing.T) {
		t.Parallel()
		pidFile := filepath.Join(dir, "bg.pid")
		bg := script(t, dir, "bg", `sleep 60 & echo $! > "$1"; echo done`)
		start := time.Now()
		got := runProbe(t, "exec://"+bg+"?arg="+pidFile, web1)
		if diff := cmp.Diff(outcome{true, "exec: exit status 0: done"}, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("the probe took %v: it waited for the background process", d)
		}
		waitGone(t, pidFile)
	})

	t.Run("a command flooding its output until the timeout is bounded", func(t *testing.T) {
		t.Parallel()
		yes := script(t, dir, "yes", "exec yes flood")
		r := probe.Run(context.Background(), mustParse(t, "exec://"+yes+"?timeout=200ms"), web1)
		if r.Up || !strings.HasPrefix(r.Detail, "exec: timeout after 200ms, killed: flood; flood;") || len(r.Detail) > 2*probe.MaxOutput {
			t.Errorf("got %v, %d bytes: %.100q…", r.Up, len(r.Detail), r.Detail)
		}
	})
}
