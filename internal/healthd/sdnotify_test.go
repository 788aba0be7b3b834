package healthd_test

// The watchdog of the real caplance-healthd binary, over a real sd_notify
// socket: WATCHDOG=1 at half of WATCHDOG_USEC while the main loop answers,
// none once it hangs (the test hook). It needs root for the private system
// bus (dbustest); caplanced need not run.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/cmdtest"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/healthd"
	"github.com/caplance/caplance/internal/notifysock"
)

const (
	watchdogUsec = 400000 // WatchdogSec=400ms
	pingEvery    = 200 * time.Millisecond
)

// TestMain removes the binaries built for the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	cmdtest.Cleanup()
	os.Exit(code)
}

// startHealthd runs caplance-healthd on a private system bus under the
// watchdog, plus the environment extra, and waits for READY=1; it returns
// the log's path and a function that stops it (SIGTERM) and fails t unless
// it exits 0.
func startHealthd(t *testing.T, n *notifysock.Socket, extra ...string) (string, func()) {
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
	cmd := exec.CommandContext(context.Background(), cmdtest.Binary(t, "caplance-healthd"), "--config", config, "--bus", bus.Address)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+n.Path(), fmt.Sprintf("WATCHDOG_USEC=%d", watchdogUsec))
	cmd.Env = append(cmd.Env, extra...)
	cmd.Stdout, cmd.Stderr = logf, logf
	exited, stop := cmdtest.Start(t, cmd, func() string {
		log, _ := os.ReadFile(logPath)
		return string(log)
	})
	if _, err := n.WaitFor("READY=1", 0, 15*time.Second, exited); err != nil {
		t.Fatalf("caplance-healthd: %v", err)
	}
	return logPath, stop
}

// waitLog waits until the log at path has text and returns when it saw it.
func waitLog(t *testing.T, path, text string) time.Time {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		log, _ := os.ReadFile(path)
		if strings.Contains(string(log), text) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log does not say %q:\n%s", text, log)
		}
	}
}

// TestWatchdogBinary follows events, not time windows: the pings' rate is
// checked on when each was sent (the kernel's stamps), over ten of them
// however long a loaded machine takes; after the test hook has hung the
// main loop, at most two checks may still ping.
func TestWatchdogBinary(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (private system bus)")
	}
	t.Run("pings at half of WATCHDOG_USEC", func(t *testing.T) {
		n := notifysock.ListenT(t)
		_, stop := startHealthd(t, n)
		at, err := n.WaitPings(time.Time{}, 10, 30*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		notifysock.CheckPingRate(t, at, pingEvery)
		stop()
	})
	t.Run("a hung main loop stops the pings", func(t *testing.T) {
		n := notifysock.ListenT(t)
		logPath, stop := startHealthd(t, n, healthd.TestWedgeEnv+"=loop:2s")
		// Pings until the loop hangs.
		at, err := n.WaitPings(time.Time{}, 3, 30*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		notifysock.CheckPingRate(t, at, pingEvery)
		// From the hook's log line on, at most two checks may still pass:
		// the round trip the next one waits for may have come back already,
		// and the one after it may reach the loop before the hook does (it
		// logs first, then queues its hang).
		seen := waitLog(t, logPath, "hanging the main loop")
		waitLog(t, logPath, "the main loop has not answered")
		time.Sleep(10 * pingEvery) // room for pings that must not come
		if late := n.Pings(seen, time.Now().Add(time.Hour)); len(late) > 2 {
			t.Errorf("%d WATCHDOG=1 after the main loop hung, want at most two", len(late))
		}
		stop() // the hung loop still lets it stop
	})
}
