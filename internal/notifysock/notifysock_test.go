package notifysock_test

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/notifysock"
)

func listen(t *testing.T) (*notifysock.Socket, func(string)) {
	t.Helper()
	s, err := notifysock.Listen(filepath.Join(t.TempDir(), "n.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.Path(), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return s, func(msg string) {
		t.Helper()
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWaitFor(t *testing.T) {
	s, send := listen(t)
	send("READY=1\nSTATUS=up")
	send("X_RELOADING=1\nMONOTONIC_USEC=5")
	send("RELOADING=1\nMONOTONIC_USEC=6")
	send("READY=1\nSTATUS=reloaded")

	for _, tt := range []struct {
		state string
		from  int
		want  int
	}{
		{"READY=1", 0, 0},
		{"READY=1", 1, 3},
		{"RELOADING=1", 0, 2}, // a line, not a substring
		{"STATUS=", 1, 3},     // a KEY= prefix
		{"MONOTONIC_USEC=", -1, 1},
	} {
		i, err := s.WaitFor(tt.state, tt.from, 5*time.Second, nil)
		if err != nil || i != tt.want {
			t.Errorf("WaitFor(%q, %d) = %d, %v; want %d", tt.state, tt.from, i, err, tt.want)
		}
	}

	// A later message wakes every waiter.
	done := make(chan int, 2)
	for range 2 {
		go func() {
			i, err := s.WaitFor("STOPPING=1", 0, 5*time.Second, nil)
			if err != nil {
				t.Error(err)
			}
			done <- i
		}()
	}
	time.Sleep(50 * time.Millisecond)
	send("STOPPING=1")
	for range 2 {
		if i := <-done; i != 4 {
			t.Errorf("WaitFor(STOPPING=1) = %d, want 4", i)
		}
	}
	if got := len(s.Messages()); got != 5 {
		t.Errorf("%d messages, want 5", got)
	}
}

func TestWaitForFails(t *testing.T) {
	s, send := listen(t)
	send("STATUS=READY=1 soon")
	if _, err := s.WaitFor("READY=1", 0, 100*time.Millisecond, nil); err == nil || !strings.Contains(err.Error(), "no READY=1 within 100ms") ||
		!strings.Contains(err.Error(), "STATUS=READY=1 soon") {
		t.Errorf("WaitFor without READY=1: %v, want a timeout naming what came", err)
	}
	exited := make(chan struct{})
	close(exited)
	if _, err := s.WaitFor("READY=1", 9, time.Minute, exited); !errors.Is(err, notifysock.ErrExited) {
		t.Errorf("WaitFor after exit: %v, want ErrExited", err)
	}
}

func TestPings(t *testing.T) {
	s, send := listen(t)
	start := time.Now()
	send("WATCHDOG=1")
	send("WATCHDOG=1\nSTATUS=x")
	send("WATCHDOG=1")
	if _, err := s.WaitFor("WATCHDOG=1", 2, 5*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	if got := s.Pings(start, time.Now().Add(time.Second)); len(got) != 2 {
		t.Errorf("Pings = %v, want two", got)
	}
	if got := s.Pings(time.Now().Add(time.Second), time.Now().Add(2*time.Second)); len(got) != 0 {
		t.Errorf("Pings after they came = %v, want none", got)
	}
}

type recorder struct{ errs []string }

func (*recorder) Helper()                     {}
func (*recorder) Logf(string, ...any)         {}
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(f, a...)) }

func TestCheckPingRate(t *testing.T) {
	t0 := time.Now()
	every := func(d time.Duration, n int) []time.Time {
		var at []time.Time
		for i := range n {
			at = append(at, t0.Add(time.Duration(i)*d))
		}
		return at
	}
	const ms = time.Millisecond
	for _, tt := range []struct {
		name string
		at   []time.Time
		errs int
	}{
		{"on time", every(200*ms, 10), 0},
		{"late, some dropped", append(every(200*ms, 3), t0.Add(1000*ms), t0.Add(1390*ms)), 0},
		{"too few to tell", every(200*ms, 1), 1},
		{"too close", append(every(200*ms, 9), t0.Add(1610*ms)), 1},
		{"twice the rate", every(100*ms, 10), 9},
		{"half the rate", every(400*ms, 10), 1},
	} {
		var r recorder
		notifysock.CheckPingRate(&r, tt.at, 200*ms)
		if len(r.errs) != tt.errs {
			t.Errorf("%s: %d errors %q, want %d", tt.name, len(r.errs), r.errs, tt.errs)
		}
	}
}

// TestWaitPings: the pings sent since a time, each with when it was sent.
func TestWaitPings(t *testing.T) {
	s, send := listen(t)
	sent := time.Now()
	send("WATCHDOG=1")
	time.Sleep(50 * time.Millisecond)
	send("WATCHDOG=1")
	at, err := s.WaitPings(sent, 2, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if at[0].Before(sent.Add(-time.Millisecond)) || at[1].Sub(at[0]) < 50*time.Millisecond {
		t.Errorf("sent at %v, stamped %v", sent, at)
	}
	exited := make(chan struct{})
	close(exited)
	if _, err := s.WaitPings(sent, 3, time.Minute, exited); !errors.Is(err, notifysock.ErrExited) {
		t.Errorf("WaitPings after exit: %v, want ErrExited", err)
	}
}
