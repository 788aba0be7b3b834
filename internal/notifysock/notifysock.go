// Package notifysock is the service manager's end of NOTIFY_SOCKET, for
// tests, the demo and benchmarks; owns nothing else.
//
// A [Socket] records every sd_notify datagram with the time the kernel
// took it from its sender (SO_TIMESTAMPNS: the reader's own delays on a
// loaded machine do not show) and lets a caller wait for a state (a line
// such as READY=1) or for WATCHDOG=1 pings and look at when they were sent.
package notifysock

import (
	"errors"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Message is one sd_notify datagram and when it was sent.
type Message struct {
	At   time.Time
	Text string
}

// Socket is a listening NOTIFY_SOCKET.
type Socket struct {
	path string
	conn *net.UnixConn

	mu      sync.Mutex
	msgs    []Message
	changed chan struct{} // closed and replaced on each datagram
}

// ErrExited is what WaitFor returns (wrapped) when exited is closed first.
var ErrExited = errors.New("exited")

// Listen binds a unixgram socket at path and records what arrives on it
// until Close.
func Listen(path string) (*Socket, error) {
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	if err := stampOnSend(conn); err != nil {
		conn.Close()
		return nil, err
	}
	s := &Socket{path: path, conn: conn, changed: make(chan struct{})}
	go s.read()
	return s, nil
}

// stampOnSend asks the kernel to stamp each datagram when its sender sends
// it (af_unix does so on the send side).
func stampOnSend(conn *net.UnixConn) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_TIMESTAMPNS: %w", serr)
	}
	return nil
}

func (s *Socket) read() {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))))
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		at := sentAt(oob[:oobn])
		s.mu.Lock()
		s.msgs = append(s.msgs, Message{At: at, Text: string(buf[:n])})
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}
}

// sentAt is the kernel's timestamp in the control messages oob, or now
// when there is none.
func sentAt(oob []byte) time.Time {
	msgs, _ := unix.ParseSocketControlMessage(oob)
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
			ts := *(*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
			return time.Unix(ts.Unix())
		}
	}
	return time.Now()
}

// Path is the socket's path, the value for NOTIFY_SOCKET.
func (s *Socket) Path() string { return s.path }

// Close stops receiving; the messages received stay readable.
func (s *Socket) Close() error { return s.conn.Close() }

// Messages returns the datagrams received so far, in order.
func (s *Socket) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// WaitFor returns the index of the first message from index from on that
// has the line state (or a line starting with state, if state ends in "="),
// waiting for it up to timeout. It fails early, with an error wrapping
// ErrExited, once exited is closed (nil: never).
func (s *Socket) WaitFor(state string, from int, timeout time.Duration, exited <-chan struct{}) (int, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		msgs, changed := s.msgs, s.changed
		s.mu.Unlock()
		start := max(0, min(from, len(msgs)))
		for i := start; i < len(msgs); i++ {
			if hasState(msgs[i].Text, state) {
				return i, nil
			}
		}
		select {
		case <-changed:
		case <-exited:
			return 0, fmt.Errorf("%w before sending %s", ErrExited, state)
		case <-deadline.C:
			texts := make([]string, 0, len(msgs)-start)
			for _, m := range msgs[start:] {
				texts = append(texts, m.Text)
			}
			return 0, fmt.Errorf("no %s within %s; got %q", state, timeout, texts)
		}
	}
}

// hasState reports whether text has the line state, or a line starting
// with state if state ends in "=".
func hasState(text, state string) bool {
	for line := range strings.SplitSeq(text, "\n") {
		if line == state || strings.HasSuffix(state, "=") && strings.HasPrefix(line, state) {
			return true
		}
	}
	return false
}

// WaitPings waits up to timeout until n WATCHDOG=1 datagrams sent at or
// after from have come and returns when each was sent. It fails early, with
// an error wrapping ErrExited, once exited is closed (nil: never).
func (s *Socket) WaitPings(from time.Time, n int, timeout time.Duration, exited <-chan struct{}) ([]time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		changed := s.changed
		s.mu.Unlock()
		at := s.Pings(from, time.Now().Add(timeout))
		if len(at) >= n {
			return at[:n], nil
		}
		select {
		case <-changed:
		case <-exited:
			return nil, fmt.Errorf("%w after %d WATCHDOG=1 of %d", ErrExited, len(at), n)
		case <-deadline.C:
			return nil, fmt.Errorf("%d WATCHDOG=1 within %s, want %d", len(at), timeout, n)
		}
	}
}

// Pings returns when each WATCHDOG=1 datagram was sent within [from, to).
func (s *Socket) Pings(from, to time.Time) []time.Time {
	var at []time.Time
	for _, m := range s.Messages() {
		if m.Text == "WATCHDOG=1" && !m.At.Before(from) && m.At.Before(to) {
			at = append(at, m.At)
		}
	}
	return at
}

// TB is the part of testing.TB that CheckPingRate uses.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
}

// T is the part of testing.TB that ListenT uses.
type T interface {
	TB
	TempDir() string
	Cleanup(func())
	Fatal(args ...any)
}

// ListenT is Listen for a test: the socket is in t's temporary directory
// and closed when t ends; an error fails t.
func ListenT(t T) *Socket {
	t.Helper()
	s, err := Listen(filepath.Join(t.TempDir(), "notify.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// CheckPingRate fails t unless the consecutive pings at (when each was
// sent, as WaitPings returns them) come every every: never sooner after
// the previous one (the watchdog waits every after each tick; a tenth of
// slack for the wall clock the kernel stamps with), and at least one of them
// within twice that, so that the rate is every and not a slower one. A
// loaded machine may delay or drop a few pings, never add any, and it does
// not delay every one.
func CheckPingRate(t TB, at []time.Time, every time.Duration) {
	t.Helper()
	if len(at) < 2 {
		t.Errorf("%d WATCHDOG=1, want at least two to check their rate", len(at))
		return
	}
	shortest := time.Duration(math.MaxInt64)
	for i := 1; i < len(at); i++ {
		gap := at[i].Sub(at[i-1])
		if gap < every-every/10 {
			t.Errorf("WATCHDOG=1 only %s after the previous one, want %s", gap, every)
		}
		shortest = min(shortest, gap)
	}
	t.Logf("%d WATCHDOG=1 over %s, the shortest gap %s", len(at), at[len(at)-1].Sub(at[0]), shortest)
	if shortest >= 2*every {
		t.Errorf("WATCHDOG=1 at least %s apart, want one every %s", shortest, every)
	}
}
