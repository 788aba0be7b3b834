package healthd_test

// The watchdog of the real caplance-healthd binary, over a real sd_notify
// socket: WATCHDOG=1 at half of WATCHDOG_USEC while the main loop answers,
// none once it hangs (the test hook). It needs root for the private system
// bus (dbustest); caplanced need not run.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/healthd"
)

const (
	watchdogUsec = 400000 // WatchdogSec=400ms
	pingEvery    = 200 * time.Millisecond
)

type notification struct {
	at   time.Time
	text string
}

// notifySocket is the service manager's end of NOTIFY_SOCKET.
type notifySocket struct {
	path    string
	mu      sync.Mutex
	msgs    []notification
	changed chan struct{}
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify.sock"), changed: make(chan struct{}, 1)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, notification{at: time.Now(), text: string(buf[:k])})
			n.mu.Unlock()
			select {
			case n.changed <- struct{}{}:
			default:
			}
		}
	}()
	return n
}

func (n *notifySocket) all() []notification {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

func (n *notifySocket) waitForReady(t *testing.T, exited <-chan struct{}) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		for _, m := range n.all() {
			if slices.Contains(strings.Split(m.text, "\n"), "READY=1") {
				return
			}
		}
		select {
		case <-n.changed:
		case <-exited:
			t.Fatal("caplance-healthd exited before READY=1")
		case <-deadline:
			t.Fatal("no READY=1 within 15s")
		}
	}
}

func (n *notifySocket) pings(from, to time.Time) []time.Time {
	var at []time.Time
	for _, m := range n.all() {
		if m.text == "WATCHDOG=1" && !m.at.Before(from) && m.at.Before(to) {
			at = append(at, m.at)
		}
	}
	return at
}

// checkPingRate fails t unless the pings within window come about every
// pingEvery: a loaded machine may delay or drop a few, never add any.
func checkPingRate(t *testing.T, at []time.Time, window time.Duration) {
	t.Helper()
	want := int(window / pingEvery)
	t.Logf("%d WATCHDOG=1 within %s", len(at), window)
	if len(at) < want/2 || len(at) > want+1 {
		t.Errorf("%d WATCHDOG=1 within %s, want about %d (one every %s)", len(at), window, want, pingEvery)
	}
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < pingEvery/2 {
			t.Errorf("WATCHDOG=1 only %s after the previous one, want about %s", gap, pingEvery)
		}
	}
}

var (
	buildOnce sync.Once
	buildDir  string
	binary    string
	buildErr  error
)

// TestMain removes the binary built for the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func healthdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		var err error
		if buildDir, err = os.MkdirTemp("", "healthd-sdnotify-"); err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(buildDir, "caplance-healthd")
		if out, err := exec.Command("go", "build", "-o", binary, "../../caplance-healthd").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// startHealthd runs caplance-healthd on a private system bus under the
// watchdog, plus the environment extra, and waits for READY=1; it returns
// the log's path and a function that stops it (SIGTERM) and fails t unless
// it exits 0.
func startHealthd(t *testing.T, n *notifySocket, extra ...string) (string, func()) {
	t.Helper()
	bus := dbustest.Start(t)
	dir := t.TempDir()
	config, logPath := filepath.Join(dir, "caplance-healthd.toml"), filepath.Join(dir, "caplance-healthd.log")
	if err := os.WriteFile(config, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.CommandContext(context.Background(), healthdBinary(t), "--config", config, "--bus", bus.Address)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+n.path, fmt.Sprintf("WATCHDOG_USEC=%d", watchdogUsec))
	cmd.Env = append(cmd.Env, extra...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
				t.Error("caplance-healthd did not exit within 10s of SIGTERM")
				return
			}
			if code := cmd.ProcessState.ExitCode(); code != 0 {
				log, _ := os.ReadFile(logPath)
				t.Errorf("caplance-healthd exited %d after SIGTERM\n%s", code, log)
			}
		})
	}
	t.Cleanup(stop)
	n.waitForReady(t, exited)
	return logPath, stop
}

func TestWatchdogBinary(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (private system bus)")
	}
	t.Run("pings at half of WATCHDOG_USEC", func(t *testing.T) {
		n := listenNotify(t)
		_, stop := startHealthd(t, n)
		ready := time.Now()
		time.Sleep(2 * time.Second)
		checkPingRate(t, n.pings(ready, time.Now()), 2*time.Second)
		stop()
	})
	t.Run("a hung main loop stops the pings", func(t *testing.T) {
		n := listenNotify(t)
		logPath, stop := startHealthd(t, n, healthd.TestWedgeEnv+"=loop:1s")
		ready := time.Now()
		time.Sleep(3 * time.Second)
		checkPingRate(t, n.pings(ready, ready.Add(time.Second)), time.Second)
		if late := n.pings(ready.Add(1800*time.Millisecond), time.Now()); len(late) > 0 {
			t.Errorf("%d WATCHDOG=1 after the main loop hung, want none", len(late))
		}
		if log, _ := os.ReadFile(logPath); !strings.Contains(string(log), "the main loop has not answered") {
			t.Errorf("the log does not say why the pings stopped:\n%s", log)
		}
		stop() // the hung loop still lets it stop
	})
}
