// Package dbustest runs a private D-Bus system bus for tests: a dbus-daemon
// of its own, configured like the system bus (EXTERNAL authentication,
// method calls and name ownership denied unless a policy file allows them)
// with the shipped packaging/dbus/org.caplance.Caplance1.conf included, or a
// permissive policy instead. It connects to that bus as the test process
// (root) or as any other user and groups.
//
// It owns the dbus-daemon processes it starts (killed at the test's
// cleanup) and their files in t.TempDir(). It creates the system accounts
// the shipped policy names when they are missing (see EnsureAccounts) and
// never deletes or changes an existing account. It must not touch the
// machine's own buses.
//
// # Calling as another user
//
// ConnectAs opens the socket on an OS thread of its own whose credentials
// (uid, gid, supplementary groups) are switched with raw setresuid(2),
// setresgid(2) and setgroups(2), which on Linux change only the calling
// thread; the kernel records the connecting thread's credentials on the
// socket (SO_PEERCRED, SO_PEERGROUPS), which is what dbus-daemon believes.
// The thread is never given back to the Go scheduler: it exits with its
// goroutine. The rest of the connection, EXTERNAL authentication included,
// runs as root with the uid of the socket. The result is an ordinary
// *dbus.Conn, so every method signature can be called and a refusal is a
// dbus.Error with its name and message.
//
// Verified with dbus-daemon 1.14: the bus refuses a uid that has no passwd
// entry (it looks up the uid's groups to evaluate <allow user="*"/>), so
// the uid must exist; the supplementary groups need not be the user's in
// /etc/group: group="…" policy rules and GetConnectionCredentials'
// UnixGroupIDs both use the groups of the connecting process.
package dbustest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/godbus/dbus/v5"
)

// PolicyDir holds the shipped policy files (caplanced's and
// caplance-healthd's), relative to the module's root.
const PolicyDir = "packaging/dbus"

// Bus is a running private system bus.
type Bus struct {
	// Address is the bus's D-Bus address (unix:path=…,guid=…).
	Address string
	// Socket is the path of the bus's socket.
	Socket string
	stderr *lockedBuffer
}

type options struct {
	policy     string
	permissive bool
}

// Option changes the bus Start starts.
type Option func(*options)

// WithPolicy includes the policy file (or directory) at path instead of the
// shipped ones.
func WithPolicy(path string) Option {
	return func(o *options) { o.policy = path }
}

// Permissive replaces the shipped policy with one that lets everyone own
// every name and call every method, so that only a service's own checks
// refuse anything.
func Permissive() Option {
	return func(o *options) { o.permissive = true }
}

// busConfig is the system bus's configuration (/usr/share/dbus-1/system.conf)
// reduced to what a test needs: no service activation, no syslog, no
// switch to the messagebus user.
var busConfig = template.Must(template.New("bus").Parse(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={{.Socket}}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
{{- if .Permissive}}
  <policy context="default">
    <allow own="*"/>
    <allow send_type="method_call"/>
  </policy>
{{- else if .PolicyIsDir}}
  <includedir>{{.Policy}}</includedir>
{{- else}}
  <include>{{.Policy}}</include>
{{- end}}
</busconfig>
`))

// Start starts a private system bus for t and stops it at t's cleanup. It
// needs root (it skips t otherwise) and dbus-daemon (it fails t without
// it), and it first creates the accounts the shipped policy names when they
// are missing (EnsureAccounts), because dbus-daemon ignores the rules of
// users and groups that do not exist when it reads its configuration.
func Start(t testing.TB, opts ...Option) *Bus {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("dbustest: needs root (to connect as other users)")
	}
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.policy == "" && !o.permissive {
		o.policy = ShippedPolicy(t)
	}
	EnsureAccounts(t)

	b, stop, err := Run(SocketDir(t), o.policy, o.permissive)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop()
		// What dbus-daemon said (config warnings name ignored rules) helps
		// when the test failed.
		if s := b.stderr.String(); t.Failed() && s != "" {
			t.Logf("dbus-daemon stderr:\n%s", s)
		}
	})
	return b
}

// Run starts a private system bus with its socket and configuration in dir,
// including the policy at policy, a file or a directory of *.conf files (or,
// if permissive, allowing everything), and returns it with the function that stops it. Start is
// Run for tests; the demo uses Run directly.
func Run(dir, policy string, permissive bool) (*Bus, func(), error) {
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		return nil, nil, fmt.Errorf("dbustest: dbus-daemon is not installed (Debian package dbus-daemon): %w", err)
	}
	b := &Bus{Socket: filepath.Join(dir, "system_bus_socket"), stderr: &lockedBuffer{}}
	var cfg bytes.Buffer
	fi, err := os.Stat(policy)
	if !permissive && err != nil {
		return nil, nil, fmt.Errorf("dbustest: policy: %w", err)
	}
	err = busConfig.Execute(&cfg, map[string]any{"Socket": b.Socket, "Policy": policy,
		"PolicyIsDir": fi != nil && fi.IsDir(), "Permissive": permissive})
	if err != nil {
		return nil, nil, err
	}
	cfgPath := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o644); err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(daemon, "--config-file="+cfgPath, "--nofork", "--print-address")
	cmd.Stderr = b.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("dbustest: starting dbus-daemon: %w", err)
	}
	exited := make(chan struct{})
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
		close(exited)
	}()
	select {
	case b.Address = <-addr:
	case <-time.After(10 * time.Second):
		stop()
		return nil, nil, fmt.Errorf("dbustest: dbus-daemon printed no address within 10s; stderr:\n%s", b.stderr.String())
	}
	if b.Address == "" {
		<-exited
		return nil, nil, fmt.Errorf("dbustest: dbus-daemon exited: %v; stderr:\n%s", cmd.ProcessState, b.stderr.String())
	}
	return b, stop, nil
}

// SocketDir returns a new temporary directory for t in which every account
// can reach a bus socket: t.TempDir() and its parent are created 0700.
func SocketDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Connect connects to the bus as the test process and closes the
// connection at t's cleanup.
func (b *Bus) Connect(t testing.TB) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(b.Address)
	if err != nil {
		t.Fatalf("dbustest: connecting to %s: %v", b.Address, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// ConnectAs connects to the bus as cred (see the package comment) and
// closes the connection at t's cleanup.
func (b *Bus) ConnectAs(t testing.TB, cred Credential) *dbus.Conn {
	t.Helper()
	conn, err := b.DialAs(cred)
	if err != nil {
		t.Fatalf("dbustest: connecting as %v: %v", cred, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// DialAs connects to the bus as cred; the caller closes the connection.
func (b *Bus) DialAs(cred Credential) (*dbus.Conn, error) {
	sock, err := dialUnixAs(b.Socket, cred)
	if err != nil {
		return nil, err
	}
	// NewConn reads through godbus's generic transport, which panics,
	// outside any recover, when the socket is closed in the middle of a
	// message (decoder.align in DecodeMessage); graceful closes only once
	// the bus has hung up, between messages.
	conn, err := dbus.NewConn(&graceful{UnixConn: sock.(*net.UnixConn), eof: make(chan struct{})})
	if err != nil {
		sock.Close()
		return nil, err
	}
	if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(fmt.Sprint(cred.UID))}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("authenticating: %w", err)
	}
	if err := conn.Hello(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hello: %w", err)
	}
	return conn, nil
}

// hangUpWait bounds how long graceful.Close waits for the bus to hang up.
const hangUpWait = time.Second

// graceful is the socket under a connection made by DialAs: its Close
// shuts down the writing side first and lets the bus end the stream at a
// message boundary before closing.
type graceful struct {
	*net.UnixConn
	eof  chan struct{} // closed once a Read fails: the stream has ended
	once sync.Once
}

func (g *graceful) Read(p []byte) (int, error) {
	n, err := g.UnixConn.Read(p)
	if err != nil {
		g.once.Do(func() { close(g.eof) })
	}
	return n, err
}

func (g *graceful) Close() error {
	if err := g.UnixConn.CloseWrite(); err == nil {
		select {
		case <-g.eof:
		case <-time.After(hangUpWait):
		}
	}
	return g.UnixConn.Close()
}

// ShippedPolicy returns the absolute path of the directory of shipped policy
// files, found from the working directory up to the module's root.
func ShippedPolicy(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, PolicyDir)
			if _, err := os.Stat(p); err != nil {
				t.Fatalf("dbustest: %v", err)
			}
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("dbustest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// ErrorName returns the D-Bus error name of err ("" for nil or an error
// that is not a D-Bus error).
func ErrorName(err error) string {
	var e dbus.Error
	if errors.As(err, &e) {
		return e.Name
	}
	var p *dbus.Error
	if errors.As(err, &p) {
		return p.Name
	}
	return ""
}
