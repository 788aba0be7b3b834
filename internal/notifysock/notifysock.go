// Package notifysock is the service manager's end of NOTIFY_SOCKET, for
// tests, the demo and benchmarks; owns nothing else.
//
// A [Socket] records every sd_notify datagram with its arrival time and lets
// a caller wait for a state (a line such as READY=1) or look at when the
// WATCHDOG=1 pings came.
package notifysock

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Message is one sd_notify datagram and when it arrived.
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
	s := &Socket{path: path, conn: conn, changed: make(chan struct{})}
	go s.read()
	return s, nil
}

func (s *Socket) read() {
	buf := make([]byte, 4096)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			return
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, Message{At: time.Now(), Text: string(buf[:n])})
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}
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

// Pings returns when each WATCHDOG=1 datagram arrived within [from, to).
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

// CheckPingRate fails t unless the pings at, seen within window, come about
// every every: a loaded machine may delay or drop a few, never add any.
func CheckPingRate(t TB, at []time.Time, window, every time.Duration) {
	t.Helper()
	want := int(window / every)
	t.Logf("%d WATCHDOG=1 within %s", len(at), window)
	if len(at) < want/2 || len(at) > want+1 {
		t.Errorf("%d WATCHDOG=1 within %s, want about %d (one every %s)", len(at), window, want, every)
	}
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < every/2 {
			t.Errorf("WATCHDOG=1 only %s after the previous one, want about %s", gap, every)
		}
	}
}
